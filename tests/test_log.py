"""The signed update log: entries, chains, the on-disk file, its repair and its audit."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.errors import LogError
from swarm.identity import SigningKey
from swarm.log import (
    MAX_ENTRY_BYTES,
    MAX_PARENTS,
    RECORD_HEADER_BYTES,
    SIGNING_DOMAIN,
    ZERO_HASH,
    EntryBody,
    ParentRef,
    SignedEntry,
    UpdateLog,
    check_successor,
    encode_record,
    link_after,
    open_entry,
    read_records,
    sign_entry,
    verify_extension,
    verify_log_file,
)

FED = bytes([7]) * 32
OTHER_FED = bytes([8]) * 32
ALICE = SigningKey.from_private_bytes(bytes([1]) * 32)
BOB = SigningKey.from_private_bytes(bytes([2]) * 32)


def digest_of(seq: int, salt: int = 0) -> bytes:
    return bytes([seq % 256, salt]) * 16


def body(key: SigningKey, seq: int, prev: bytes, *, fed: bytes = FED, salt: int = 0,
         **changes: Any) -> EntryBody:
    fields: dict[str, Any] = dict(
        federation=fed, author=key.public, seq=seq, prev=prev, kind="update",
        digest=digest_of(seq, salt), samples=100 * seq, parents=(), round=seq,
        metrics={"loss": 1.0 / seq, "acc": 0.5}, timestamp=1700000000.0 + seq,
    )
    fields.update(changes)
    return EntryBody(**fields)


def chain(key: SigningKey, n: int, *, fed: bytes = FED, start: SignedEntry | None = None,
          salt: int = 0) -> list[SignedEntry]:
    out: list[SignedEntry] = []
    head = start
    for _ in range(n):
        seq, prev = link_after(head)
        head = sign_entry(body(key, seq, prev, fed=fed, salt=salt), key)
        out.append(head)
    return out


def log_bytes(entries: Iterable[SignedEntry]) -> bytes:
    return b"".join(encode_record(e.envelope) for e in entries)


def members(*keys: SigningKey):
    allowed = {k.public for k in keys}
    return lambda author: author in allowed


def audit(path: Path, **kwargs: Any):
    kwargs.setdefault("federation", FED)
    kwargs.setdefault("is_member", members(ALICE))
    return verify_log_file(path, **kwargs)


# Raw builders for envelopes that sign_entry refuses to make.

def payload_map(key: SigningKey, seq: int = 1, prev: bytes = ZERO_HASH) -> dict[str, Any]:
    return {"fed": FED, "author": key.public, "seq": seq, "prev": prev, "kind": "update",
            "digest": digest_of(seq), "samples": 10, "parents": [], "round": 0,
            "metrics": {"acc": 0.5, "loss": 0.25}, "ts": 1700000000.0}


def seal(payload: bytes, signer: SigningKey, author: bytes | None = None,
         signature: bytes | None = None) -> bytes:
    sig = signature if signature is not None else signer.sign(SIGNING_DOMAIN + payload)
    return msgpack.packb({"t": "swarm.log.entry/1", "a": author or signer.public,
                          "p": payload, "s": sig})


def sealed(payload: dict[str, Any], signer: SigningKey = ALICE) -> bytes:
    return seal(msgpack.packb(payload), signer)


# --------------------------------------------------------------------------- entries


def test_sign_then_open_round_trip() -> None:
    parents = (ParentRef(BOB.public, 3, digest_of(3)),)
    entry = sign_entry(body(ALICE, 1, ZERO_HASH, kind="merge", parents=parents), ALICE)
    opened = open_entry(entry.envelope)
    assert opened == entry and opened.body == entry.body
    assert opened.hash == entry.hash and len(entry.hash) == 32
    assert opened.parents == parents and opened.kind == "merge"
    assert list(opened.body.metrics) == ["acc", "loss"]  # canonical order


def test_sign_refuses_foreign_author_and_invalid_bodies() -> None:
    with pytest.raises(ValueError, match="key.public"):
        sign_entry(body(BOB, 1, ZERO_HASH), ALICE)
    for changes in [dict(timestamp=17), dict(metrics={"loss": 1}), dict(kind="upload"),
                    dict(seq=0), dict(samples=-1), dict(digest=b"short"), dict(seq=True),
                    dict(parents=(ParentRef(BOB.public, 0, digest_of(1)),)),
                    dict(parents=(ParentRef(BOB.public, 1, digest_of(1)),) * (MAX_PARENTS + 1))]:
        with pytest.raises(ValueError, match="invalid log entry"):
            sign_entry(replace(body(ALICE, 1, ZERO_HASH), **changes), ALICE)


def test_forged_signature_is_rejected() -> None:
    good = payload_map(ALICE)
    # Signed by Bob but claiming to be Alice's.
    with pytest.raises(LogError) as err:
        open_entry(seal(msgpack.packb(good), BOB, author=ALICE.public))
    assert err.value.reason == "bad_signature"
    # Alice's signature, payload changed afterwards.
    entry = sign_entry(body(ALICE, 1, ZERO_HASH), ALICE)
    env = msgpack.unpackb(entry.envelope)
    changed = env["p"].replace(digest_of(1), digest_of(9))
    assert changed != env["p"]
    with pytest.raises(LogError) as err:
        open_entry(seal(changed, ALICE, signature=env["s"]))
    assert err.value.reason == "bad_signature"


def test_payload_author_must_be_envelope_signer() -> None:
    payload = payload_map(ALICE)  # says Alice, but Bob signs and is the envelope author
    with pytest.raises(LogError) as err:
        open_entry(seal(msgpack.packb(payload), BOB))
    assert err.value.reason == "author_mismatch"


def _payload_variants() -> list[tuple[str, Any]]:
    base = payload_map(ALICE)

    def with_(**kv: Any) -> dict[str, Any]:
        return {**base, **kv}

    extra = {**base, "x": 1}
    missing = {k: v for k, v in base.items() if k != "round"}
    unsorted = with_(metrics={"loss": 0.25, "acc": 0.5})
    return [
        ("extra key", extra), ("missing key", missing), ("seq 0", with_(seq=0)),
        ("seq bool", with_(seq=True)), ("seq float", with_(seq=1.0)),
        ("kind", with_(kind="rollback")), ("short digest", with_(digest=b"x" * 31)),
        ("fed text", with_(fed="f" * 32)), ("int metric", with_(metrics={"acc": 1})),
        ("int ts", with_(ts=1700000000)), ("prev nonzero at seq 1", with_(prev=b"\1" * 32)),
        ("bad parent", with_(parents=[[BOB.public, 1]])),
        ("too many parents", with_(parents=[[BOB.public, 1, digest_of(1)]] * (MAX_PARENTS + 1))),
        ("unsorted metrics", unsorted), ("not a map", [1, 2, 3]),
    ]


@pytest.mark.parametrize(("label", "payload"), _payload_variants(),
                         ids=[label for label, _ in _payload_variants()])
def test_strict_payload_parsing(label: str, payload: Any) -> None:
    with pytest.raises(LogError) as err:
        open_entry(sealed(payload))
    assert err.value.reason == "bad_payload", label


def test_payload_bytes_must_be_canonical() -> None:
    canonical = msgpack.packb(payload_map(ALICE))
    assert open_entry(seal(canonical, ALICE)).seq == 1
    # Same values, seq written as a 4-byte uint instead of a fixint: another encoding.
    padded = canonical.replace(b"\xa3seq\x01", b"\xa3seq\xce\x00\x00\x00\x01")
    assert msgpack.unpackb(padded) == msgpack.unpackb(canonical)
    with pytest.raises(LogError, match="canonical"):
        open_entry(seal(padded, ALICE))
    trailing = canonical + b"\xc0"
    with pytest.raises(LogError) as err:
        open_entry(seal(trailing, ALICE))
    assert err.value.reason == "bad_payload"


def test_strict_envelope_parsing() -> None:
    entry = sign_entry(body(ALICE, 1, ZERO_HASH), ALICE)
    env = msgpack.unpackb(entry.envelope)
    reordered = msgpack.packb({"a": env["a"], "t": env["t"], "p": env["p"], "s": env["s"]})
    # Same map, the signature's length written as bin16 instead of bin8: another encoding.
    wide_sig = entry.envelope.replace(b"\xa1s\xc4\x40", b"\xa1s\xc5\x00\x40")
    assert wide_sig != entry.envelope and msgpack.unpackb(wide_sig) == env
    bad = [
        b"", b"\xc1", b"garbage", entry.envelope + b"\x00", reordered, wide_sig,
        msgpack.packb({**env, "x": 1}), msgpack.packb({**env, "t": "swarm.log.entry/2"}),
        msgpack.packb({**env, "s": env["s"][:63]}), msgpack.packb([env["t"], env["a"]]),
        msgpack.packb({**env, "a": msgpack.ExtType(1, b"x" * 32)}),
    ]
    for envelope in bad:
        with pytest.raises(LogError) as err:
            open_entry(envelope)
        assert err.value.reason == "bad_envelope", envelope[:20]
    with pytest.raises(LogError) as err:
        open_entry(b"\x00" * (MAX_ENTRY_BYTES + 1))
    assert err.value.reason == "too_large"


# --------------------------------------------------------------------------- chains


def test_check_successor_accepts_the_chain() -> None:
    entries = chain(ALICE, 3)
    check_successor(None, entries[0])
    check_successor(entries[0], entries[1])
    check_successor(entries[1], entries[2])


def reason_of(fn: Any, *args: Any) -> str:
    with pytest.raises(LogError) as err:
        fn(*args)
    return err.value.reason


def test_fork_is_rejected() -> None:
    e1, e2 = chain(ALICE, 2)
    fork = sign_entry(body(ALICE, 2, e1.hash, salt=9), ALICE)  # a valid, different seq 2
    check_successor(e1, fork)  # alone it is a fine successor of e1 ...
    assert fork != e2
    assert reason_of(check_successor, e2, fork) == "bad_seq"  # ... but not after e2
    with pytest.raises(LogError, match="fork"):
        check_successor(e2, fork)
    assert reason_of(verify_extension, e1, [e2.envelope, fork.envelope], FED,
                     ALICE.public) == "bad_seq"


def test_replay_and_gaps_are_rejected() -> None:
    e1, e2, e3, e4 = chain(ALICE, 4)
    assert reason_of(check_successor, e3, e2) == "bad_seq"
    assert reason_of(check_successor, e3, e3) == "bad_seq"
    assert reason_of(check_successor, e2, e4) == "bad_seq"
    assert reason_of(check_successor, None, e2) == "bad_seq"
    assert reason_of(verify_extension, e3, [e2.envelope], FED, ALICE.public) == "bad_seq"


def test_broken_chain_is_rejected() -> None:
    e1, e2 = chain(ALICE, 2)
    other = chain(ALICE, 1, salt=5)[0]  # another valid seq 1: e2 does not name it
    assert reason_of(check_successor, other, e2) == "broken_chain"


def test_author_and_federation_must_stay_the_same() -> None:
    a1 = chain(ALICE, 1)[0]
    b2 = sign_entry(body(BOB, 2, a1.hash), BOB)
    assert reason_of(check_successor, a1, b2) == "author_mismatch"
    f2 = sign_entry(body(ALICE, 2, a1.hash, fed=OTHER_FED), ALICE)
    assert reason_of(check_successor, a1, f2) == "wrong_federation"


def test_verify_extension_good_suffixes() -> None:
    entries = chain(ALICE, 5)
    envelopes = [e.envelope for e in entries]
    assert verify_extension(None, envelopes, FED, ALICE.public) == entries
    assert verify_extension(entries[1], envelopes[2:], FED, ALICE.public) == entries[2:]
    assert verify_extension(entries[4], [], FED, ALICE.public) == []


def test_verify_extension_bad_suffixes() -> None:
    entries = chain(ALICE, 4)
    envs = [e.envelope for e in entries]
    tampered = envs[2][:-1] + bytes([envs[2][-1] ^ 1])
    cases = [
        ((None, envs[1:], FED, ALICE.public), "bad_seq"),  # does not start at seq 1
        ((entries[0], [envs[1], envs[3]], FED, ALICE.public), "bad_seq"),  # gap
        ((entries[1], [tampered], FED, ALICE.public), "bad_signature"),
        ((None, envs, OTHER_FED, ALICE.public), "wrong_federation"),
        ((None, envs, FED, BOB.public), "author_mismatch"),
        ((None, [chain(BOB, 1)[0].envelope], FED, ALICE.public), "author_mismatch"),
        ((entries[0], [b"junk"], FED, ALICE.public), "bad_envelope"),
    ]
    for args, reason in cases:
        with pytest.raises(LogError) as err:
            verify_extension(*args)
        assert err.value.reason == reason, (reason, err.value)
        assert "extension entry" in err.value.where


# --------------------------------------------------------------------------- the log file


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "sites" / "a" / "log" / "updates.log"


def test_append_and_reopen_round_trip(log_path: Path) -> None:
    entries = chain(ALICE, 3)
    with UpdateLog.open(log_path, FED, ALICE.public) as log:
        assert log.head is None and log.entries == []
        for entry in entries:
            log.append(entry)
    with UpdateLog.open(log_path, FED, ALICE.public) as log:
        assert log.entries == entries and log.head == entries[-1]
        assert log.repaired_bytes == 0
        assert log.since(0) == entries and log.since(1) == entries[1:] and log.since(3) == []
        assert log.find(2) == entries[1] and log.find(0) is None and log.find(4) is None
        log.append(chain(ALICE, 1, start=entries[-1])[0])
    assert log_path.read_bytes() == log_bytes(log.entries)
    assert read_records(log_path) == ([e.envelope for e in log.entries], None)


def test_append_refuses_fork_replay_and_foreign_entries(log_path: Path) -> None:
    e1, e2 = chain(ALICE, 2)
    with UpdateLog.open(log_path, FED, ALICE.public) as log:
        log.append(e1)
        log.append(e2)
        before = log_path.read_bytes()
        fork = sign_entry(body(ALICE, 2, e1.hash, salt=3), ALICE)
        for bad, reason in [(fork, "bad_seq"), (e1, "bad_seq"), (e2, "bad_seq"),
                            (sign_entry(body(BOB, 3, e2.hash), BOB), "author_mismatch"),
                            (sign_entry(body(ALICE, 3, e2.hash, fed=OTHER_FED), ALICE),
                             "wrong_federation")]:
            with pytest.raises(LogError) as err:
                log.append(bad)
            assert err.value.reason == reason
        assert log_path.read_bytes() == before and len(log) == 2


def test_first_entry_must_be_ours(log_path: Path) -> None:
    with UpdateLog.open(log_path, FED, ALICE.public) as log:
        assert reason_of(log.append, chain(BOB, 1)[0]) == "author_mismatch"
        assert reason_of(log.append, chain(ALICE, 1, fed=OTHER_FED)[0]) == "wrong_federation"
        assert reason_of(log.append, chain(ALICE, 2)[1]) == "bad_seq"


def test_append_does_not_trust_a_mismatched_signed_entry(log_path: Path) -> None:
    real = chain(ALICE, 1)[0]
    lying = SignedEntry(b"not an envelope", real.body)
    with UpdateLog.open(log_path, FED, ALICE.public) as log:
        assert reason_of(log.append, lying) == "bad_envelope"
    assert log_path.read_bytes() == b""


def test_second_open_is_refused_while_in_use(log_path: Path) -> None:
    with UpdateLog.open(log_path, FED, ALICE.public):
        assert reason_of(UpdateLog.open, log_path, FED, ALICE.public) == "in_use"
    UpdateLog.open(log_path, FED, ALICE.public).close()


def test_open_refuses_a_log_of_another_site_or_federation(log_path: Path) -> None:
    log_path.parent.mkdir(parents=True)
    log_path.write_bytes(log_bytes(chain(ALICE, 2)))
    assert reason_of(UpdateLog.open, log_path, FED, BOB.public) == "author_mismatch"
    assert reason_of(UpdateLog.open, log_path, OTHER_FED, ALICE.public) == "wrong_federation"


# Torn writes: a crash in the middle of the last append.

TORN_ENTRIES = chain(ALICE, 3)
TORN_FILE = log_bytes(TORN_ENTRIES)
LAST_START = len(log_bytes(TORN_ENTRIES[:2]))


def test_torn_last_record_is_repaired_at_every_offset(tmp_path: Path) -> None:
    path = tmp_path / "updates.log"
    nxt = sign_entry(body(ALICE, 3, TORN_ENTRIES[1].hash, salt=1), ALICE)
    for cut in range(LAST_START + 1, len(TORN_FILE)):
        path.write_bytes(TORN_FILE[:cut])
        with UpdateLog.open(path, FED, ALICE.public) as log:
            assert log.repaired_bytes == cut - LAST_START, cut
            assert log.entries == TORN_ENTRIES[:2]
            assert path.stat().st_size == LAST_START
            if cut % 16 == 0 or cut in (LAST_START + 1, len(TORN_FILE) - 1):
                log.append(nxt)  # the next append lands right after the last good record
        if cut % 16 == 0:
            with UpdateLog.open(path, FED, ALICE.public) as log:
                assert log.entries == [*TORN_ENTRIES[:2], nxt] and log.repaired_bytes == 0


@pytest.mark.parametrize("tail", ["crc", "zeros"])
def test_other_torn_tails_are_repaired(tmp_path: Path, tail: str) -> None:
    path = tmp_path / "updates.log"
    if tail == "crc":  # the last record's bytes reached the disk damaged
        data = TORN_FILE[:-1] + bytes([TORN_FILE[-1] ^ 0xFF])
    else:  # the file grew, its data never arrived
        data = log_bytes(TORN_ENTRIES[:2]) + bytes(300)
    path.write_bytes(data)
    with UpdateLog.open(path, FED, ALICE.public) as log:
        assert log.entries == TORN_ENTRIES[:2]
        assert log.repaired_bytes == len(data) - LAST_START


def _damaged_files() -> list[tuple[str, bytes, str]]:
    first = encode_record(TORN_ENTRIES[0].envelope)
    rest = TORN_FILE[len(first):]
    e1, e2, e3 = TORN_ENTRIES

    def flip(data: bytes, at: int) -> bytes:
        return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]

    forged_env = seal(msgpack.unpackb(e2.envelope)["p"], BOB, author=ALICE.public)
    grown_len = TORN_FILE[:LAST_START + 4] + struct.pack(">I", len(e3.envelope) + 5) \
        + TORN_FILE[LAST_START + 8:]
    return [
        ("bad magic mid-file", flip(first, 0) + rest, "bad_record"),
        ("bad crc mid-file", flip(first, 9) + rest, "bad_checksum"),
        ("bad envelope byte mid-file", flip(first, 40) + rest, "bad_checksum"),
        ("huge declared length", first + b"SWLE" + struct.pack(">II", MAX_ENTRY_BYTES + 1, 0)
         + rest, "too_large"),
        ("garbage after the last record", TORN_FILE + b"garbage!garbage!", "bad_record"),
        ("forged signature, valid crc", log_bytes([e1]) + encode_record(forged_env)
         + log_bytes([e3]), "bad_signature"),
        ("missing middle entry", log_bytes([e1, e3]), "bad_seq"),
        ("fork inside the file", log_bytes([e1, e2, sign_entry(
            body(ALICE, 2, e1.hash, salt=4), ALICE)]), "bad_seq"),
        ("damaged length of the last record", grown_len, "bad_record"),
    ]


@pytest.mark.parametrize(("label", "data", "reason"), _damaged_files(),
                         ids=[label for label, _, _ in _damaged_files()])
def test_other_damage_is_refused_and_left_alone(tmp_path: Path, label: str, data: bytes,
                                                reason: str) -> None:
    path = tmp_path / "updates.log"
    path.write_bytes(data)
    with pytest.raises(LogError) as err:
        UpdateLog.open(path, FED, ALICE.public)
    assert err.value.reason == reason, label
    assert str(path) in err.value.where and "entry" in err.value.where
    assert path.read_bytes() == data
    assert audit(path).ok is False


SECOND_START = len(encode_record(TORN_ENTRIES[0].envelope))


@pytest.mark.parametrize("bit", range(32))
def test_damaged_length_of_the_second_to_last_record_is_not_cut(tmp_path: Path,
                                                                bit: int) -> None:
    """A flipped length bit in a record that is not the last is damage inside the file, even
    when the declared length runs past the end: cutting would drop two published entries,
    and the node would then re-publish different ones under their seqs (a fork)."""
    path = tmp_path / "updates.log"
    data = bytearray(TORN_FILE)
    length_at = SECOND_START + 4 + (3 - bit // 8)  # big-endian u32
    data[length_at] ^= 1 << (bit % 8)
    data = bytes(data)
    path.write_bytes(data)
    with pytest.raises(LogError) as err:
        UpdateLog.open(path, FED, ALICE.public)
    assert err.value.reason in ("bad_record", "bad_checksum", "too_large"), err.value
    assert f"entry 2 at byte {SECOND_START}" in err.value.where
    assert path.read_bytes() == data
    assert audit(path).ok is False
    with pytest.raises(LogError):
        read_records(path)


def test_length_past_the_end_with_a_record_after_it_is_damage(tmp_path: Path) -> None:
    path = tmp_path / "updates.log"
    e2_length = len(TORN_ENTRIES[1].envelope)
    for declared in (e2_length + 1000, len(TORN_FILE) - SECOND_START - RECORD_HEADER_BYTES):
        data = TORN_FILE[:SECOND_START + 4] + struct.pack(">I", declared) \
            + TORN_FILE[SECOND_START + 8:]
        path.write_bytes(data)
        with pytest.raises(LogError) as err:
            UpdateLog.open(path, FED, ALICE.public)
        assert err.value.reason == "bad_record" and "valid record starts" in err.value.detail
        assert path.read_bytes() == data
        result = audit(path)
        assert not result.ok and result.failure is not None
        assert result.failure.reason == "bad_record"


def test_flipping_any_byte_before_the_last_record_is_never_repaired(tmp_path: Path) -> None:
    path = tmp_path / "updates.log"
    for position in range(LAST_START):
        for xor in (0x01, 0x80):
            data = bytearray(TORN_FILE)
            data[position] ^= xor
            path.write_bytes(bytes(data))
            with pytest.raises(LogError):
                UpdateLog.open(path, FED, ALICE.public).close()
                pytest.fail(f"byte {position} ^ {xor:#x} was repaired, not refused")
            assert path.read_bytes() == bytes(data)


def test_a_torn_tail_that_contains_no_valid_record_is_still_repaired(tmp_path: Path) -> None:
    # The last record's length runs past the end and the bytes after it hold "SWLE" magic
    # that is not a sound record: nothing valid follows, so it is a torn tail.
    path = tmp_path / "updates.log"
    data = TORN_FILE[:LAST_START] + b"SWLE" + struct.pack(">II", 500, 0) + b"SWLE" * 20
    path.write_bytes(data)
    with UpdateLog.open(path, FED, ALICE.public) as log:
        assert log.entries == TORN_ENTRIES[:2] and log.repaired_bytes == len(data) - LAST_START


# --------------------------------------------------------------------------- auditing

AUDIT_ENTRIES = chain(ALICE, 3)
AUDIT_FILE = log_bytes(AUDIT_ENTRIES)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_audit_accepts_a_good_log(log_path: Path) -> None:
    write(log_path, AUDIT_FILE)
    checkpoints = {e.seq: e.digest for e in AUDIT_ENTRIES}
    result = audit(log_path, checkpoint_digest=checkpoints.get)
    assert result.ok and result.entries_checked == 3 and result.failure is None
    assert audit(log_path, federation=None).ok
    assert audit(write(log_path.with_name("empty.log"), b"")).ok


@pytest.fixture(scope="module")
def flip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("flips")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, len(AUDIT_FILE) - 1), xor=st.integers(1, 255))
def test_flipping_any_byte_fails_the_audit(flip_dir: Path, position: int, xor: int) -> None:
    data = bytearray(AUDIT_FILE)
    data[position] ^= xor
    result = audit(write(flip_dir / "flipped.log", bytes(data)))
    assert result.ok is False and result.failure is not None


def test_flipping_every_byte_fails_the_audit(tmp_path: Path) -> None:
    path = tmp_path / "flipped.log"
    for position in range(len(AUDIT_FILE)):
        xor = 0x01 if position % 2 else 0x80  # single-bit flips, low and high
        data = bytearray(AUDIT_FILE)
        data[position] ^= xor
        path.write_bytes(data)
        assert audit(path).ok is False, (position, xor)


def test_audit_names_file_and_entry(log_path: Path) -> None:
    path = write(log_path, AUDIT_FILE)
    result = audit(path, is_member=lambda author: False)
    assert not result.ok and result.entries_checked == 0
    assert result.failure is not None and result.failure.reason == "not_member"
    assert result.failure.where == f"{path} entry 1 (seq 1)"


def test_audit_checks_membership(log_path: Path) -> None:
    result = audit(write(log_path, AUDIT_FILE), is_member=members(BOB))
    assert result.failure is not None and result.failure.reason == "not_member"


def test_audit_checks_federation(log_path: Path) -> None:
    result = audit(write(log_path, AUDIT_FILE), federation=OTHER_FED)
    assert result.failure is not None and result.failure.reason == "wrong_federation"
    mixed = log_bytes(AUDIT_ENTRIES[:1]) + log_bytes(
        [sign_entry(body(ALICE, 2, AUDIT_ENTRIES[0].hash, fed=OTHER_FED), ALICE)])
    result = audit(write(log_path, mixed), federation=None)
    assert result.failure is not None and result.failure.reason == "wrong_federation"
    assert result.entries_checked == 1


@pytest.mark.parametrize(("checkpoints", "reason"), [
    ({1: digest_of(1), 2: digest_of(2, salt=1), 3: digest_of(3)}, "digest_mismatch"),
    ({1: digest_of(1), 3: digest_of(3)}, "missing_checkpoint"),
])
def test_audit_checks_checkpoints(log_path: Path, checkpoints: dict[int, bytes],
                                  reason: str) -> None:
    result = audit(write(log_path, AUDIT_FILE), checkpoint_digest=checkpoints.get)
    assert not result.ok and result.entries_checked == 1
    assert result.failure is not None and result.failure.reason == reason
    assert result.failure.where == f"{log_path} entry 2 (seq 2)"


def test_audit_fails_a_torn_tail_that_open_would_repair(log_path: Path) -> None:
    path = write(log_path, AUDIT_FILE[:-3])
    result = audit(path)
    assert not result.ok and result.entries_checked == 2
    assert result.failure is not None and result.failure.reason == "torn_tail"
    assert path.read_bytes() == AUDIT_FILE[:-3]
    envelopes, problem = read_records(path)
    assert len(envelopes) == 2 and problem is not None and "entry 3" in problem


def test_audit_of_a_missing_file(tmp_path: Path) -> None:
    result = audit(tmp_path / "nope.log")
    assert not result.ok and result.failure is not None
    assert result.failure.reason == "unreadable"


def test_records_carry_length_and_crc() -> None:
    envelope = AUDIT_ENTRIES[0].envelope
    record = encode_record(envelope)
    assert record[:4] == b"SWLE"
    assert struct.unpack(">II", record[4:12]) == (len(envelope), zlib.crc32(envelope))
    assert record[12:] == envelope


def test_verify_returns_the_opened_entries(log_path: Path) -> None:
    write(log_path, AUDIT_FILE)
    result = audit(log_path)
    assert result.ok and result.entries == AUDIT_ENTRIES
    assert [e.body for e in result.entries] == [e.body for e in AUDIT_ENTRIES]
    result = audit(write(log_path, AUDIT_FILE[:-3]))
    assert not result.ok and result.entries == AUDIT_ENTRIES[:2]
