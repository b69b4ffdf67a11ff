"""The signed, hash-chained, append-only update log.

Every model a site publishes is recorded as an entry signed with the site's Ed25519 key. An
entry names the hash of the author's previous entry, so a site's log is a chain that anyone
holding the public key can audit, and two different entries with the same (author, seq) are
a signed proof that the author forked its history.

One module per concern (the formats are described where they are implemented):

    entry       the signed entry and its canonical msgpack envelope and payload
    chain       which entry may follow which (check_successor, verify_extension, link_after)
    records     on-disk record framing and the torn-tail scan
    update_log  UpdateLog, a site's own append-only log file
    verify      auditing a log file (verify_log_file)
"""

from .chain import check_successor, link_after, verify_extension
from .entry import (
    ENTRY_TYPE,
    KINDS,
    MAX_ENTRY_BYTES,
    MAX_METRIC_NAME,
    MAX_METRICS,
    MAX_PARENTS,
    SIGNING_DOMAIN,
    ZERO_HASH,
    EntryBody,
    ParentRef,
    SignedEntry,
    open_entry,
    refuse_ext,
    sign_entry,
)
from .records import RECORD_HEADER_BYTES, RECORD_MAGIC, encode_record, read_records
from .update_log import UpdateLog
from .verify import VerifyResult, verify_log_file

__all__ = [
    "ENTRY_TYPE",
    "KINDS",
    "MAX_ENTRY_BYTES",
    "MAX_METRICS",
    "MAX_METRIC_NAME",
    "MAX_PARENTS",
    "RECORD_HEADER_BYTES",
    "RECORD_MAGIC",
    "SIGNING_DOMAIN",
    "ZERO_HASH",
    "EntryBody",
    "ParentRef",
    "SignedEntry",
    "UpdateLog",
    "VerifyResult",
    "check_successor",
    "encode_record",
    "link_after",
    "open_entry",
    "read_records",
    "refuse_ext",
    "sign_entry",
    "verify_extension",
    "verify_log_file",
]
