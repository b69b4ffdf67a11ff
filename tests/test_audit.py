"""`swarm-node log verify` (nodes.audit) on a small federation trained on disk over the
in-memory network, then damaged in the ways a crash, bit-rot or a dishonest site would."""

from __future__ import annotations

import shutil
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from nodes.audit import AuditReport, find_sites, verify_sites
from nodes.site import SiteDir
from swarm.checkpoint import ALIGN, load_checkpoint, save_checkpoint
from swarm.identity import load_site_keys
from swarm.log import encode_record, link_after, open_entry, read_records, sign_entry
from swarm.transport import InMemoryNetwork
from tests.conftest import join, start_nodes

NAMES = ("hospital-a", "hospital-b", "hospital-c")
ROUNDS = 3

# One trained federation per test module: training is the slow part, damage is per test.
_PRISTINE: dict[str, Path] = {}


@pytest.fixture
def sites(small_federation, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> dict[str, SiteDir]:
    """A fresh copy of a finished 3-site ring federation: name -> its site directory."""
    if "run" not in _PRISTINE:
        _config, federation = small_federation(nodes=len(NAMES), rounds=ROUNDS)
        assert tuple(federation.sites) == NAMES
        nodes, threads, stop = start_nodes(federation, InMemoryNetwork())
        join(threads, stop)
        for node in nodes.values():
            assert node.store.head.seq == ROUNDS
            node.store.close()
        keep = tmp_path_factory.mktemp("pristine") / "sites"
        shutil.copytree(next(iter(federation.sites.values())).parent, keep)
        _PRISTINE["run"] = keep
    copy = tmp_path / "copy" / "sites"
    shutil.copytree(_PRISTINE["run"], copy)
    return {name: SiteDir(copy / name) for name in NAMES}


def audit(sites: dict[str, SiteDir], *names: str) -> AuditReport:
    return verify_sites([sites[name].root for name in (names or NAMES)])


def reasons(report: AuditReport) -> set[str]:
    return {failure.reason for failure in report.failures}


def failures_for(report: AuditReport, reason: str) -> list[str]:
    return [str(failure) for failure in report.failures if failure.reason == reason]


def checkpoint_layout(path: Path) -> tuple[int, list[tuple[int, int]]]:
    """(header end, [(tensor start, tensor end), ...]), parsed from the file's prefix."""
    data = path.read_bytes()
    (header_len,) = struct.unpack(">I", data[8:12])
    header_end = 16 + header_len
    flat, _digest, _meta = load_checkpoint(path, verify=False)
    offset, spans = -(-header_end // ALIGN) * ALIGN, []
    for spec in flat.specs:
        spans.append((offset, offset + spec.nbytes))
        offset = -(-(offset + spec.nbytes) // ALIGN) * ALIGN
    assert offset == len(data)
    return header_end, spans


def flip(path: Path, position: int, xor: int = 0x01) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= xor
    path.write_bytes(bytes(data))


def test_a_finished_federation_passes(sites: dict[str, SiteDir]) -> None:
    report = audit(sites)
    assert report.ok, [str(f) for f in report.failures]
    # 3 own logs and, on a 3-ring, copies of both neighbours' logs at every site.
    assert report.logs_checked == 9
    logs = [s.log_path for s in sites.values()] + [p for s in sites.values() for p in s.peers_dir.glob("*.log")]
    assert len(logs) == 9
    assert report.entries_checked == sum(len(read_records(p)[0]) for p in logs) >= 3 * ROUNDS + 6


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_with_a_lying_stored_digest_fails(sites: dict[str, SiteDir]) -> None:
    # Tensors intact, the header's digest wrong (but a consistent, well-formed file): the node
    # refuses this checkpoint on restart (load_checkpoint(verify=True)), so must the audit.
    path = sites["hospital-b"].checkpoint_path(2)
    flat, _digest, meta = load_checkpoint(path)
    save_checkpoint(path, flat, bytes(32), meta)
    report = audit(sites)
    assert failures_for(report, "digest_mismatch"), report.failures
    assert "hospital-b" in failures_for(report, "digest_mismatch")[0]
    assert "seq 2" in failures_for(report, "digest_mismatch")[0]


def test_checkpoint_with_a_flipped_stored_digest_byte_fails(sites: dict[str, SiteDir]) -> None:
    path = sites["hospital-a"].checkpoint_path(1)
    data = path.read_bytes()
    _flat, digest, _meta = load_checkpoint(path)
    flip(path, data.index(digest) + 7)
    report = audit(sites)
    assert reasons(report) == {"bad_checkpoint"}, report.failures


def test_checkpoint_with_damaged_padding_fails(sites: dict[str, SiteDir]) -> None:
    path = sites["hospital-c"].checkpoint_path(3)
    header_end, spans = checkpoint_layout(path)
    gaps = [(header_end, spans[0][0])] + [(end, nxt) for (_, end), (nxt, _) in zip(spans, spans[1:])]
    gaps.append((spans[-1][1], path.stat().st_size))
    padding = [start for start, end in gaps if end > start]
    assert padding, "this model's checkpoint has no padding to damage"
    flip(path, padding[-1])
    report = audit(sites)
    assert reasons(report) == {"bad_checkpoint"}, report.failures
    assert "hospital-c" in str(report.failures[0]) and "padding" in report.failures[0].detail


def test_checkpoint_with_damaged_tensor_bytes_fails(sites: dict[str, SiteDir]) -> None:
    path = sites["hospital-a"].checkpoint_path(2)
    _header_end, spans = checkpoint_layout(path)
    start, end = spans[-1]
    flip(path, (start + end) // 2, 0xFF)
    report = audit(sites)
    assert reasons(report) == {"digest_mismatch"}, report.failures


def test_missing_checkpoint_fails(sites: dict[str, SiteDir]) -> None:
    sites["hospital-b"].checkpoint_path(1).unlink()
    assert reasons(audit(sites)) == {"missing_checkpoint"}


# --------------------------------------------------------------------------- across sites


def cut_own_log(site: SiteDir, keep: int) -> None:
    """Leave only the first `keep` entries (and their checkpoints): a consistent site whose
    log lost published versions."""
    envelopes, torn = read_records(site.log_path)
    assert torn is None and len(envelopes) == ROUNDS
    site.log_path.write_bytes(b"".join(encode_record(e) for e in envelopes[:keep]))
    for seq in range(keep + 1, ROUNDS + 1):
        site.checkpoint_path(seq).unlink()


@pytest.mark.parametrize("lost", ["all", "last copied"])
def test_an_author_log_that_lost_published_entries_fails(sites: dict[str, SiteDir], lost: str) -> None:
    copies = {name: len(read_records(sites[name].peer_log_path("hospital-a"))[0]) for name in ("hospital-b", "hospital-c")}
    keep = 0 if lost == "all" else max(copies.values()) - 1
    cut_own_log(sites["hospital-a"], keep)
    # On its own, hospital-a's shortened log is a perfectly good log.
    assert audit(sites, "hospital-a").ok
    report = audit(sites)
    missing = failures_for(report, "missing_in_author_log")
    # Every neighbour's copy of an entry hospital-a lost is reported.
    assert len(missing) == sum(max(0, held - keep) for held in copies.values()) > 0, report.failures
    assert all("peers/hospital-a.log" in m and "hospital-a's own log has no entry" in m for m in missing)
    assert f"seq {keep + 1}" in " ".join(missing)


def test_copies_of_an_author_not_audited_are_not_failures(sites: dict[str, SiteDir]) -> None:
    cut_own_log(sites["hospital-a"], 0)
    assert audit(sites, "hospital-b", "hospital-c").ok


def test_a_fork_in_a_copy_fails(sites: dict[str, SiteDir]) -> None:
    # hospital-b's copy of hospital-c's last entry replaced by a different entry that
    # hospital-c signed for the same seq: a valid chain on its own, a fork across sites.
    author = sites["hospital-c"]
    key = load_site_keys(author.keys_dir).signing
    copy_path = sites["hospital-b"].peer_log_path("hospital-c")
    envelopes, _ = read_records(copy_path)
    entries = [open_entry(e) for e in envelopes]
    seq, prev = link_after(entries[-2])
    other = sign_entry(replace(entries[-1].body, samples=entries[-1].body.samples + 1), key)
    assert (other.seq, other.prev) == (seq, prev)
    copy_path.write_bytes(b"".join(encode_record(e) for e in envelopes[:-1]) + encode_record(other.envelope))
    report = audit(sites)
    forks = failures_for(report, "fork")
    assert len(forks) == 1 and "peers/hospital-c.log" in forks[0] and f"seq {seq}" in forks[0]


def test_damage_inside_a_log_fails_and_leaves_the_file_alone(sites: dict[str, SiteDir]) -> None:
    # The length field of the second-to-last record, bit-rotted to run past the end.
    path = sites["hospital-b"].log_path
    envelopes, _ = read_records(path)
    second = len(encode_record(envelopes[0]))
    data = bytearray(path.read_bytes())
    data[second + 6] ^= 0x10
    path.write_bytes(bytes(data))
    report = audit(sites)
    assert "bad_record" in reasons(report), report.failures
    assert path.read_bytes() == bytes(data)


# --------------------------------------------------------------------------- finding sites


def test_find_sites_accepts_site_dirs_logs_peer_logs_and_run_dirs(sites: dict[str, SiteDir]) -> None:
    a, b = sites["hospital-a"], sites["hospital-b"]
    root = a.root.resolve()
    assert find_sites([a.root]) == [root]
    assert find_sites([a.log_path]) == [root]
    assert find_sites([a.peer_log_path("hospital-b")]) == [root]
    assert find_sites([a.root.parent]) == [s.root.resolve() for s in sites.values()]
    assert find_sites([a.peer_log_path("hospital-c"), b.log_path, a.log_path]) == [root, b.root.resolve()]
    report = verify_sites([b.peer_log_path("hospital-a")])
    assert report.ok and report.logs_checked == 3


def test_each_log_is_read_once(sites: dict[str, SiteDir], monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    original = Path.read_bytes

    def counting(self: Path) -> bytes:
        if self.suffix == ".log":
            reads.append(str(self))
        return original(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    report = audit(sites)
    assert report.ok and len(reads) == report.logs_checked == 9
    assert len(set(reads)) == len(reads)
