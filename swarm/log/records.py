"""On-disk framing of log records, and the scan that tells a torn last write from damage.

Format (fixed by docs/ARCHITECTURE.md):

    record    b"SWLE" | u32 length | u32 crc32(envelope) | envelope   (big-endian)
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import LogError
from .entry import MAX_ENTRY_BYTES, open_entry

RECORD_MAGIC = b"SWLE"
_HEADER = struct.Struct(">4sII")
RECORD_HEADER_BYTES = _HEADER.size


def encode_record(envelope: bytes) -> bytes:
    """The on-disk record for one envelope."""
    return _HEADER.pack(RECORD_MAGIC, len(envelope), zlib.crc32(envelope)) + envelope


@dataclass
class _Scan:
    envelopes: list[bytes]
    good_end: int  # byte offset just past the last good record
    torn: LogError | None = None  # a torn last record: safe to cut off
    damage: LogError | None = None  # anything else: refuse


def _scan(data: bytes, name: str) -> _Scan:
    """Split a log file into envelopes. Stops at the first bad record and says whether it is
    a torn last write (repairable) or damage (not)."""
    scan = _Scan([], 0)
    pos, size = 0, len(data)
    while pos < size:
        where = f"{name} entry {len(scan.envelopes) + 1} at byte {pos}"
        problem = _record_problem(data, pos, size)
        if problem is not None:
            torn, reason, detail = problem
            later = _find_valid_record(data, pos + 1) if torn else None
            if later is not None:
                # A crash can only tear the last record: a sound record after this one means
                # this is damage inside the file (say, to a length field), never to be cut.
                torn, reason = False, "bad_record"
                detail = (f"{detail}, but a valid record starts at byte {later}: damage "
                          "inside the file, not a torn last write")
            error = LogError(reason, detail, where)
            if torn:
                scan.torn = error
            else:
                scan.damage = error
            break
        length = _HEADER.unpack_from(data, pos)[1]
        scan.envelopes.append(data[pos + RECORD_HEADER_BYTES:pos + RECORD_HEADER_BYTES + length])
        pos += RECORD_HEADER_BYTES + length
    scan.good_end = pos
    return scan


def _record_problem(data: bytes, pos: int, size: int) -> tuple[bool, str, str] | None:
    """(torn, reason, detail) for the record at `pos`, or None when it is sound."""
    rest = data[pos:pos + RECORD_HEADER_BYTES]
    if len(rest) < RECORD_HEADER_BYTES:
        if RECORD_MAGIC.startswith(rest[:4]) or not any(rest):
            return True, "torn_tail", f"file ends inside a record header ({len(rest)} bytes)"
        return False, "bad_record", "trailing bytes that are not a record header"
    magic, length, crc = _HEADER.unpack(rest)
    if magic != RECORD_MAGIC:
        # A crash after the file grew but before its data reached the disk leaves zeros.
        if not any(data[pos:]) and size - pos <= RECORD_HEADER_BYTES + MAX_ENTRY_BYTES:
            return True, "torn_tail", "file ends in zeros where a record should start"
        return False, "bad_record", f"bad record magic {magic!r}"
    if length > MAX_ENTRY_BYTES:
        return False, "too_large", f"declared length {length} exceeds {MAX_ENTRY_BYTES}"
    start, end = pos + RECORD_HEADER_BYTES, pos + RECORD_HEADER_BYTES + length
    if end > size:
        if zlib.crc32(data[start:]) == crc:
            # The bytes present are the whole envelope: the length field was damaged.
            return False, "bad_record", "record length field is damaged"
        return True, "torn_tail", f"file ends inside a record ({size - start} of {length} bytes)"
    if zlib.crc32(data[start:end]) != crc:
        if end == size:
            return True, "torn_tail", "checksum fails on the last record"
        return False, "bad_checksum", "record checksum does not match"
    return None


def _find_valid_record(data: bytes, start: int) -> int | None:
    """The offset of the first sound record (magic, plausible length, matching crc32, an
    envelope that opens) at or after `start`, at any byte offset; None if there is none."""
    pos = data.find(RECORD_MAGIC, start)
    while pos != -1:
        if _is_valid_record(data, pos):
            return pos
        pos = data.find(RECORD_MAGIC, pos + 1)
    return None


def _is_valid_record(data: bytes, pos: int) -> bool:
    if pos + RECORD_HEADER_BYTES > len(data):
        return False
    _magic, length, crc = _HEADER.unpack_from(data, pos)
    start, end = pos + RECORD_HEADER_BYTES, pos + RECORD_HEADER_BYTES + length
    if not 0 < length <= MAX_ENTRY_BYTES or end > len(data):
        return False
    envelope = data[start:end]
    if zlib.crc32(envelope) != crc:
        return False
    try:
        open_entry(envelope)
    except LogError:
        return False
    return True


def read_records(path: Path) -> tuple[list[bytes], str | None]:
    """The envelopes in a log file and a description of a torn last record (None if there is
    none). Any other damage raises LogError naming the file and record. OSError passes."""
    scan = _scan(Path(path).read_bytes(), str(path))
    if scan.damage is not None:
        raise scan.damage
    return scan.envelopes, None if scan.torn is None else str(scan.torn)
