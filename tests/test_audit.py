"""`swarm-node log verify` (nodes.audit) and `swarm-node audit` (nodes.audit_report: chains
per author, forks, provenance) on a small federation trained on disk over the in-memory
network, then damaged in the ways a crash, bit-rot or a dishonest site would."""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import replace
from pathlib import Path

import msgpack
import pytest
from click.testing import CliRunner, Result

from nodes.audit import AuditReport, find_sites, verify_sites
from nodes.audit_report import audit_lines, run_audit
from nodes.cli import main as node_cli
from nodes.site import SiteDir
from swarm.checkpoint import ALIGN, load_checkpoint, save_checkpoint
from swarm.evidence import EVIDENCE_TAG, EvidenceStore, check_fork
from swarm.identity import load_site_keys
from swarm.log import SignedEntry, encode_record, link_after, open_entry, read_records, sign_entry
from swarm.manifest import load_manifest
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


def fork_a_copy(sites: dict[str, SiteDir], **changes) -> tuple[SignedEntry, SignedEntry]:
    """Replace hospital-b's copy of hospital-c's last entry by a different entry hospital-c
    signed for the same seq: a valid chain on its own, a fork across sites. Returns
    (hospital-c's own entry, the other one)."""
    key = load_site_keys(sites["hospital-c"].keys_dir).signing
    copy_path = sites["hospital-b"].peer_log_path("hospital-c")
    envelopes, _ = read_records(copy_path)
    entries = [open_entry(e) for e in envelopes]
    seq, prev = link_after(entries[-2] if len(entries) > 1 else None)
    other = sign_entry(replace(entries[-1].body, **(changes or {"samples": entries[-1].body.samples + 1})), key)
    assert (other.seq, other.prev) == (seq, prev)
    copy_path.write_bytes(b"".join(encode_record(e) for e in envelopes[:-1]) + encode_record(other.envelope))
    own = [open_entry(e) for e in read_records(sites["hospital-c"].log_path)[0]]
    return own[seq - 1], other


def test_a_fork_in_a_copy_fails(sites: dict[str, SiteDir]) -> None:
    _own, other = fork_a_copy(sites)
    seq = other.seq
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


# --------------------------------------------------------------------------- swarm-node audit


def run_audit_cli(*args) -> Result:
    return CliRunner().invoke(node_cli, ["audit", *map(str, args)], catch_exceptions=False)


def audit_json(*args) -> tuple[int, dict]:
    result = run_audit_cli(*args, "--json")
    return result.exit_code, json.loads(result.stdout)


def own_entries(site: SiteDir) -> list[SignedEntry]:
    return [open_entry(e) for e in read_records(site.log_path)[0]]


def assert_usage_error(result: Result, *fragments: str) -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def test_audit_of_a_finished_federation_passes(sites: dict[str, SiteDir]) -> None:
    result = run_audit_cli(sites["hospital-a"].root.parent)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "audited 3 sites: 9 logs, " + str(audit(sites).entries_checked) + " entries"
    for name in NAMES:
        [line] = [line for line in lines if line.startswith(f"  {name} ")]
        others = [n for n in NAMES if n != name]
        assert f"{ROUNDS} entries, head #{ROUNDS}" in line and "chain valid" in line and "FORKED" not in line, line
        assert f"own log at {name}; copies at {others[0]} (" in line and f"{others[1]} (" in line, line
    assert "forks: none" in lines and lines[-1] == "result: OK"
    code, document = audit_json(sites["hospital-a"].root.parent)
    assert code == 0 and document["ok"] and document["forks"] == []
    assert [(a["name"], a["head_seq"], a["chain_valid"], len(a["copies"])) for a in document["authors"]] == [(n, ROUNDS, True, 2) for n in NAMES]


def test_audit_reports_a_fork_between_a_copy_and_the_own_log(sites: dict[str, SiteDir]) -> None:
    own, other = fork_a_copy(sites)
    result = run_audit_cli(sites["hospital-a"].root.parent)
    assert result.exit_code == 1 and result.stdout.splitlines()[-1] == "result: PROBLEMS FOUND"
    [author_line] = [line for line in result.stdout.splitlines() if line.startswith("  hospital-c ")]
    assert f"FORKED at seq {own.seq}" in author_line
    assert f"FORK hospital-c#{own.seq}: 2 signed entries" in result.stdout
    for entry in (own, other):
        assert f"entry {entry.hash.hex()[:16]} model {entry.digest.hex()[:16]}" in result.stdout
    code, document = audit_json(sites["hospital-a"].root.parent)
    [fork] = document["forks"]
    assert code == 1 and (fork["author"], fork["seq"]) == ("hospital-c", own.seq)
    held = {entry["hash"]: entry["logs"] for entry in fork["entries"]}
    assert set(held) == {own.hash.hex(), other.hash.hex()}
    assert held[other.hash.hex()] == [str(sites["hospital-b"].peer_log_path("hospital-c").resolve())]
    assert str(sites["hospital-c"].log_path.resolve()) in held[own.hash.hex()]


def write_fork_evidence(sites: dict[str, SiteDir], holder: str) -> tuple[SignedEntry, SignedEntry, Path]:
    """hospital-b signs a second, different entry for its seq 2; `holder` keeps the evidence
    (as a node does when it is sent both). No log holds the second entry."""
    manifest = load_manifest(sites[holder].manifest_path).manifest
    key = load_site_keys(sites["hospital-b"].keys_dir).signing
    held = own_entries(sites["hospital-b"])[1]
    other = sign_entry(replace(held.body, digest=bytes(range(32))), key)
    EvidenceStore(sites[holder].evidence_dir, manifest).record(check_fork(held.envelope, other.envelope, manifest))
    return held, other, sites[holder].evidence_dir / "hospital-b-2.fork"


def test_audit_reports_a_fork_known_only_from_an_evidence_file(sites: dict[str, SiteDir]) -> None:
    held, other, path = write_fork_evidence(sites, "hospital-a")
    assert audit(sites).ok  # the logs alone show nothing
    result = run_audit_cli(sites["hospital-a"].root.parent)
    assert result.exit_code == 1, result.output
    assert "FORK hospital-b#2: 2 signed entries" in result.stdout and f"evidence at hospital-a: {path.resolve()}" in result.stdout
    assert f"model {other.digest.hex()[:16]}" in result.stdout
    code, document = audit_json(sites["hospital-a"].root.parent)
    [fork] = document["forks"]
    held_by = [{"site": "hospital-a", "path": str(path.resolve())}]
    assert code == 1 and fork["evidence"] == held_by
    forged = next(e for e in fork["entries"] if e["hash"] == other.hash.hex())
    assert forged["logs"] == [] and forged["evidence"] == held_by
    honest = next(e for e in fork["entries"] if e["hash"] == held.hash.hex())
    assert str(sites["hospital-b"].log_path.resolve()) in honest["logs"]
    # A model built on the forked version says so.
    _code, document = audit_json(sites["hospital-a"].root.parent, "--model", f"hospital-b#{ROUNDS}")
    assert [(v["author"], v["seq"]) for v in document["provenance"]["versions"] if v["forked"]] == [("hospital-b", 2)]


def test_evidence_whose_signature_fails_is_a_problem_not_a_fork(sites: dict[str, SiteDir]) -> None:
    held, other, path = write_fork_evidence(sites, "hospital-c")
    damaged = other.envelope[:-1] + bytes([other.envelope[-1] ^ 1])  # the signature's last byte
    path.write_bytes(msgpack.packb({"t": EVIDENCE_TAG, "entries": [held.envelope, damaged]}, use_bin_type=True))
    code, document = audit_json(sites["hospital-a"].root.parent)
    assert code == 1 and document["forks"] == []
    [failure] = document["other_failures"]
    assert failure["reason"] == "bad_evidence" and "bad_signature" in failure["detail"] and failure["where"].endswith("hospital-b-2.fork")


def member_names(sites: dict[str, SiteDir]) -> dict[bytes, str]:
    return {load_site_keys(site.keys_dir).signing.public: name for name, site in sites.items()}


def expected_ancestry(sites: dict[str, SiteDir], name: str, seq: int, unseen: str = "") -> dict[tuple[str, int], SignedEntry | None]:
    """The ancestors of name#seq, walked here from the authors' own logs as if no log of
    `unseen` had been given (its versions: None, their parents not followed)."""
    names = member_names(sites)
    logs = {n: own_entries(site) for n, site in sites.items()}
    found: dict[tuple[str, int], SignedEntry | None] = {}
    todo = [(name, seq)]
    while todo:
        author, number = todo.pop()
        if (author, number) not in found:
            found[(author, number)] = entry = None if author == unseen else logs[author][number - 1]
            todo += [(names[p.author], p.seq) for p in entry.parents] if entry else []
    return found


def test_provenance_of_a_final_model_reaches_every_hospitals_initial_model(sites: dict[str, SiteDir]) -> None:
    code, document = audit_json(sites["hospital-a"].root.parent, "--model", f"hospital-a#{ROUNDS}")
    assert code == 0, document
    provenance = document["provenance"]
    versions = {(v["author"], v["seq"]): v for v in provenance["versions"]}
    assert len(versions) == len(provenance["versions"])  # each version once
    expected = expected_ancestry(sites, "hospital-a", ROUNDS)
    assert set(versions) == set(expected) and {author for author, _ in versions} == set(NAMES)
    for key, entry in expected.items():
        assert versions[key]["status"] == "ok" and versions[key]["samples"] == entry.body.samples
        assert versions[key]["digest"] == entry.digest.hex()
    # It reaches the initial models: the versions without parents, each a hospital's first
    # (a first version may itself merge a neighbour's first one, if that came earlier).
    roots = [key for key, v in versions.items() if v["parents"] == []]
    assert roots and all(seq == 1 for _, seq in roots)
    assert all(versions[(name, 1)]["parents"] == [] or all(p["seq"] == 1 for p in versions[(name, 1)]["parents"]) for name in NAMES)
    for name in NAMES:
        mine = [entry for (author, _), entry in expected.items() if author == name]
        share = provenance["contributions"][name]
        assert share["versions"] == len(mine) and share["samples"] == sum(e.body.samples for e in mine)
    assert (provenance["versions"][0]["author"], provenance["versions"][0]["seq"]) == ("hospital-a", ROUNDS)
    text = run_audit_cli(sites["hospital-a"].root.parent, "--model", expected[("hospital-a", ROUNDS)].digest.hex()[:10])
    assert text.exit_code == 0 and f"provenance of hospital-a#{ROUNDS} (model" in text.stdout
    author, seq = roots[0]
    [root_line] = [line for line in text.stdout.splitlines() if line.startswith(f"  {author}#{seq} ")]
    assert root_line.endswith("<- initial model")


def test_provenance_marks_ancestors_no_given_log_holds(sites: dict[str, SiteDir]) -> None:
    # Only hospital-a's site, whose copy of hospital-b's log is emptied: no hospital-b entry
    # is left, though hospital-a merged some (its copy held them).
    copy = sites["hospital-a"].peer_log_path("hospital-b")
    assert read_records(copy)[0]
    copy.write_bytes(b"")
    assert run_audit_cli(sites["hospital-a"].root).exit_code == 0
    code, document = audit_json(sites["hospital-a"].root, "--model", f"hospital-a#{ROUNDS}")
    versions = {(v["author"], v["seq"]): v["status"] for v in document["provenance"]["versions"]}
    expected = expected_ancestry(sites, "hospital-a", ROUNDS, unseen="hospital-b")
    assert code == 1 and versions == {key: "ok" if entry else "missing" for key, entry in expected.items()}
    missing = [key for key, status in versions.items() if status == "missing"]
    assert missing and all(author == "hospital-b" for author, _ in missing)
    text = run_audit_cli(sites["hospital-a"].root, "--model", f"hospital-a#{ROUNDS}")
    assert text.exit_code == 1 and f"hospital-b#{missing[0][1]}" in text.stdout and "MISSING" in text.stdout


def test_provenance_marks_a_parent_whose_digest_does_not_match(sites: dict[str, SiteDir]) -> None:
    # hospital-a re-signs its last entry naming another model for one parent; the copies
    # that would show this as a fork are gone.
    a = sites["hospital-a"]
    entries = own_entries(a)
    last = entries[-1].body
    index, parent = next((i, p) for i, p in enumerate(last.parents) if p.author != last.author)
    wrong = replace(parent, digest=bytes(32))
    forged = sign_entry(replace(last, parents=last.parents[:index] + (wrong,) + last.parents[index + 1:]), load_site_keys(a.keys_dir).signing)
    a.log_path.write_bytes(b"".join(encode_record(e.envelope) for e in entries[:-1]) + encode_record(forged.envelope))
    for name in ("hospital-b", "hospital-c"):
        sites[name].peer_log_path("hospital-a").unlink()
    code, document = audit_json(a.root.parent, "--model", f"hospital-a#{ROUNDS}")
    assert code == 1
    bad = [v for v in document["provenance"]["versions"] if v["status"] == "digest_mismatch"]
    assert [(v["author"], v["seq"], v["digest"]) for v in bad] == [(member_names(sites)[parent.author], parent.seq, bytes(32).hex())]


def test_unknown_or_ambiguous_models_are_usage_errors(sites: dict[str, SiteDir]) -> None:
    root = sites["hospital-a"].root.parent
    assert_usage_error(run_audit_cli(root, "--model", "nobody#1"), "nobody is not a member", "hospital-a")
    assert_usage_error(run_audit_cli(root, "--model", "hospital-a#99"), "no entry hospital-a#99", f"up to #{ROUNDS}")
    assert_usage_error(run_audit_cli(root, "--model", "00000000"), "no model with digest 00000000")
    assert_usage_error(run_audit_cli(root, "--model", "abc"), "at least 8 hex digits")
    # A fork in a copy with another model: hospital-c#seq now names two models.
    _own, other = fork_a_copy(sites, digest=bytes(range(32)))
    assert_usage_error(run_audit_cli(root, "--model", f"hospital-c#{other.seq}"), "ambiguous", "forked")
    # hospital-c publishes hospital-a's first model again (hospital-a holds the entry): one
    # digest, two versions.
    copy = sites["hospital-a"].peer_log_path("hospital-c")
    head = open_entry(read_records(copy)[0][-1])
    first_of_a = own_entries(sites["hospital-a"])[0]
    again = sign_entry(replace(head.body, seq=head.seq + 1, prev=head.hash, digest=first_of_a.digest), load_site_keys(sites["hospital-c"].keys_dir).signing)
    copy.write_bytes(copy.read_bytes() + encode_record(again.envelope))
    assert_usage_error(run_audit_cli(root, "--model", first_of_a.digest.hex()[:8]), "ambiguous", "hospital-a#1", f"hospital-c#{again.seq}", "longer digest prefix")


@pytest.mark.slow
def test_audit_flags_a_free_rider_that_republishes_received_models(tmp_path: Path) -> None:
    from scenarios.config import ScenarioConfig
    from scenarios.run import run_scenario
    from tests.conftest import write_scenario

    path = write_scenario(tmp_path, nodes=4, rounds=4, topology="complete")
    path.write_text(path.read_text() + '\n[attack]\nkind = "free_riding"\nsites = [1]\n')
    out = tmp_path / "run"
    summary = run_scenario(ScenarioConfig.load(path), out, lambda line: None)
    assert summary["attack"]["sites"] == ["hospital-b"]
    audit = run_audit([out])
    assert audit.ok  # a suspicion, not a broken chain
    assert audit.republished and {r.author for r in audit.republished} == {"hospital-b"}
    assert all(r.source != "hospital-b" for r in audit.republished)
    assert "possible free riding" in "\n".join(audit_lines(audit))
