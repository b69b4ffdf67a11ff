"""The manifest rotation rule (TUF's): version k+1 needs threshold(k) signatures by version
k's members with their version-k keys, plus the signature of every member that joins or
changes its signing key, with its new key; and the on-disk history that picks the current
version and keeps equivocation as evidence."""

from __future__ import annotations

import json

import pytest
import zmq

from swarm.errors import ManifestError
from swarm.identity import SigningKey
from swarm.manifest import Member, SignedManifest, build_manifest, load_manifest, parse_manifest, save_manifest, signatures_path
from swarm.manifest_chain import approval, check_keys_not_reused, check_next_version, key_history, propose, verify_chain
from swarm.manifest_history import ManifestEquivocation, ManifestHistory


def member(name: str, port: int) -> tuple[Member, SigningKey]:
    key = SigningKey.generate()
    public, _secret = zmq.curve_keypair()
    return Member(name, key.public, public.decode(), f"tcp://127.0.0.1:{port}"), key


def ring_plan(names: list[str]) -> dict:
    n = len(names)
    neighbours = {name: sorted({names[(i - 1) % n], names[(i + 1) % n]}) for i, name in enumerate(names)}
    return {"rounds": 3, "topology": {"name": "ring"}, "neighbours": neighbours, "protocol": {"name": "braintorrent"}, "model": {}, "training": {}, "task": {}}


@pytest.fixture
def genesis():
    """hospital-a, -b, -c, all signed (version 1, threshold 2: a majority)."""
    pairs = [member(f"hospital-{x}", 7000 + i) for i, x in enumerate("abc")]
    keys = {m.name: k for m, k in pairs}
    manifest = build_manifest("fed", [m for m, _ in pairs], ring_plan(list(keys)))
    signed = SignedManifest(manifest, {})
    for name, key in keys.items():
        signed.sign(name, key)
    signed.verify()
    return signed, keys


def signed_by(manifest, keys: dict[str, SigningKey], names, previous=None) -> SignedManifest:
    signed = SignedManifest(manifest, {})
    for name in names:
        signed.sign(name, keys[name], previous)
    return signed


def test_genesis_gets_a_majority_threshold_and_is_its_own_federation_id(genesis):
    signed, _ = genesis
    assert signed.manifest.threshold == 2 and signed.manifest.genesis is None
    assert signed.manifest.federation_id == signed.manifest.digest
    raw = json.loads(signed.manifest.raw)
    for bad in (0, 4, True, "2"):
        with pytest.raises(ManifestError, match="manifest.threshold"):
            parse_manifest(json.dumps(raw | {"threshold": bad}).encode())


def test_a_later_version_keeps_the_federation_id_and_names_its_previous(genesis):
    signed, _ = genesis
    v2 = propose(signed.manifest, threshold=3)
    assert v2.version == 2 and v2.federation_id == signed.manifest.federation_id
    assert v2.previous == signed.manifest.digest and v2.digest != signed.manifest.digest
    with pytest.raises(ManifestError, match="verified against version 1"):
        SignedManifest(v2, {}).verify()  # the genesis rule alone never passes a later version


def test_threshold_of_the_previous_version_met_or_not(genesis):
    signed, keys = genesis
    v2 = propose(signed.manifest, threshold=3)
    one = signed_by(v2, keys, ["hospital-a"])
    result = approval(signed.manifest, one)
    assert not result.ok and result.problems() == ["version 2 needs 2 of the 3 members of version 1; have 1: hospital-a"]
    with pytest.raises(ManifestError, match="needs 2 of the 3 members of version 1; have 1: hospital-a"):
        check_next_version(signed.manifest, one)
    two = signed_by(v2, keys, ["hospital-a", "hospital-c"])
    assert check_next_version(signed.manifest, two).approvers == ("hospital-a", "hospital-c")


def test_a_removed_member_counts_towards_the_threshold_with_its_old_key(genesis):
    signed, keys = genesis
    v2 = propose(signed.manifest, remove=["hospital-c"])
    assert [m.name for m in v2.members] == ["hospital-a", "hospital-b"] and v2.plan.neighbours == {"hospital-a": ("hospital-b",), "hospital-b": ("hospital-a",)}
    both = signed_by(v2, keys, ["hospital-a", "hospital-c"], previous=signed.manifest)
    assert check_next_version(signed.manifest, both).approvers == ("hospital-a", "hospital-c")


def test_a_joining_member_must_sign_itself(genesis):
    signed, keys = genesis
    card, d_key = member("hospital-d", 7003)
    v2 = propose(signed.manifest, add=[card])
    assert v2.threshold == 3  # was a majority of 3, stays a majority of 4
    by_old_members = signed_by(v2, keys, ["hospital-a", "hospital-b", "hospital-c"])
    with pytest.raises(ManifestError, match="hospital-d joins in version 2 and must sign it"):
        check_next_version(signed.manifest, by_old_members)
    by_old_members.sign("hospital-d", d_key)
    result = check_next_version(signed.manifest, by_old_members)
    assert result.must_sign == ("hospital-d",) and result.missing == ()
    # The newcomer alone is nothing: version 1's members decide.
    with pytest.raises(ManifestError, match="have 0: nobody"):
        check_next_version(signed.manifest, signed_by(v2, {"hospital-d": d_key}, ["hospital-d"]))


def test_a_rotated_key_signs_with_its_new_key_and_the_old_key_signature_is_not_counted(genesis):
    signed, keys = genesis
    new_card, new_key = member("hospital-b", 7001)
    v2 = propose(signed.manifest, rotate=[new_card])
    assert v2.member("hospital-b").signing_key == new_key.public
    # b signs only with its old key: that is neither its consent (new key) nor, since its
    # key changes, one of the approvals in `signatures`.
    old_only = signed_by(v2, keys, ["hospital-a", "hospital-c"])
    old_only.signatures["hospital-b"] = keys["hospital-b"].sign(b"swarm.manifest/1\0" + v2.raw)
    result = approval(signed.manifest, old_only)
    assert result.missing == ("hospital-b",) and "hospital-b" not in result.approvers
    with pytest.raises(ManifestError, match="hospital-b changes its signing key in version 2 and must sign it with its new key"):
        check_next_version(signed.manifest, old_only)
    # With its new key it consents; its old key (old_key_signatures) can approve as well.
    assert old_only.sign("hospital-b", new_key, signed.manifest) == "its key"
    assert check_next_version(signed.manifest, old_only).approvers == ("hospital-a", "hospital-c")
    two = signed_by(v2, keys | {"hospital-b": new_key}, ["hospital-a", "hospital-b"])
    with pytest.raises(ManifestError, match="have 1: hospital-a"):  # b's new key is no version-1 key
        check_next_version(signed.manifest, two)
    assert two.sign("hospital-b", keys["hospital-b"], signed.manifest) == "its old key of version 1"
    assert check_next_version(signed.manifest, two).approvers == ("hospital-a", "hospital-b")
    assert key_history([signed.manifest, v2], "hospital-b") == (keys["hospital-b"].public, new_key.public)


def relinked(manifest, **changes) -> object:
    document = json.loads(manifest.raw) | changes
    return parse_manifest((json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


def test_wrong_previous_wrong_genesis_and_version_gaps_are_refused(genesis):
    signed, keys = genesis
    v2 = propose(signed.manifest, threshold=3)
    cases = {
        "manifest.previous": relinked(v2, previous="00" * 32),
        "manifest.genesis": relinked(v2, genesis="11" * 32),
        "manifest.version": relinked(v2, version=3),
        "manifest.federation": relinked(v2, federation="other"),
    }
    for field, manifest in cases.items():
        with pytest.raises(ManifestError, match=field):
            check_next_version(signed.manifest, signed_by(manifest, keys, list(keys)))
    with pytest.raises(ManifestError, match="only versions after the first"):
        relinked(signed.manifest, previous="00" * 32)
    with pytest.raises(ManifestError, match="manifest.previous"):
        parse_manifest(json.dumps(json.loads(v2.raw) | {"previous": "zz"}).encode())


def test_a_forged_or_stranger_signature_is_an_error(genesis):
    signed, keys = genesis
    v2 = signed_by(propose(signed.manifest, threshold=3), keys, ["hospital-a", "hospital-b"])
    v2.signatures["hospital-b"] = v2.signatures["hospital-a"]
    with pytest.raises(ManifestError, match="'hospital-b' does not verify"):
        check_next_version(signed.manifest, v2)
    v2.signatures = {"hospital-a": v2.signatures["hospital-a"], "mallory": b"\0" * 64}
    with pytest.raises(ManifestError, match="'mallory'"):
        check_next_version(signed.manifest, v2)


def test_a_chain_of_versions_verifies_in_order(genesis):
    signed, keys = genesis
    v2 = signed_by(propose(signed.manifest, remove=["hospital-c"]), keys, ["hospital-a", "hospital-b"])
    v3 = signed_by(propose(v2.manifest, threshold=1), keys, ["hospital-a", "hospital-b"])
    assert len(verify_chain([signed, v2, v3])) == 2
    with pytest.raises(ManifestError, match="cannot follow version 1"):
        verify_chain([signed, v3])
    with pytest.raises(ManifestError, match="must start at version 1"):
        verify_chain([v2, v3])


def test_propose_refuses_what_would_not_change_or_does_not_fit(genesis):
    signed, _ = genesis
    with pytest.raises(ManifestError, match="nothing changes"):
        propose(signed.manifest)
    with pytest.raises(ManifestError, match="--remove hospital-x"):
        propose(signed.manifest, remove=["hospital-x"])
    with pytest.raises(ManifestError, match="needs at least 2 members"):
        propose(signed.manifest, remove=["hospital-b", "hospital-c"])
    with pytest.raises(ManifestError, match="manifest.threshold"):
        propose(signed.manifest, threshold=4)


# -- on disk ------------------------------------------------------------------------------------


def test_history_adds_versions_in_order_and_the_highest_valid_is_current(genesis, tmp_path):
    signed, keys = genesis
    (tmp_path / "federation").mkdir()
    save_manifest(tmp_path / "federation" / "manifest.json", signed)
    history = ManifestHistory.open(tmp_path / "federation" / "manifest.json", tmp_path / "evidence")
    v2 = signed_by(propose(signed.manifest, threshold=3), keys, ["hospital-a", "hospital-b"])
    v3 = signed_by(propose(v2.manifest, threshold=1), keys, list(keys))
    with pytest.raises(ManifestError, match="cannot follow version 1"):
        history.add(v3)
    with pytest.raises(ManifestError, match="have 1"):
        history.add(signed_by(v2.manifest, keys, ["hospital-a"]))
    assert not (tmp_path / "federation" / "v0002.json").exists()
    assert history.add(v2) is True and history.add(v2) is False
    assert history.add(v3) is True and history.current.manifest.version == 3
    # Reopened: the same chain. A damaged version 3 on disk leaves version 2 current.
    assert ManifestHistory.open(tmp_path / "federation" / "manifest.json", tmp_path / "evidence").current.manifest.raw == v3.manifest.raw
    signatures_path(tmp_path / "federation" / "v0003.json").unlink()
    assert ManifestHistory.open(tmp_path / "federation" / "manifest.json", tmp_path / "evidence").current.manifest.version == 2


def test_a_second_valid_manifest_for_a_held_version_is_refused_and_kept_as_evidence(genesis, tmp_path):
    signed, keys = genesis
    (tmp_path / "federation").mkdir()
    save_manifest(tmp_path / "federation" / "manifest.json", signed)
    history = ManifestHistory.open(tmp_path / "federation" / "manifest.json", tmp_path / "evidence")
    first = signed_by(propose(signed.manifest, remove=["hospital-c"]), keys, ["hospital-a", "hospital-b"])
    second = signed_by(propose(signed.manifest, threshold=3), keys, ["hospital-a", "hospital-b"])
    assert history.add(first)
    with pytest.raises(ManifestEquivocation, match="signed both: hospital-a, hospital-b") as raised:
        history.add(second)
    assert raised.value.version == 2 and history.current.manifest.raw == first.manifest.raw
    kept = sorted(p.name for p in (tmp_path / "evidence").iterdir())
    assert len(kept) == 4 and all(name.startswith("manifest-v0002-") for name in kept)
    assert {load_manifest(tmp_path / "evidence" / n).manifest.raw for n in kept if n.endswith(".json") and not n.endswith(".sigs.json")} == {first.manifest.raw, second.manifest.raw}
    # An invalid second version is a plain refusal, not evidence against anyone.
    with pytest.raises(ManifestError, match="have 1"):
        history.add(signed_by(propose(signed.manifest, threshold=1), keys, ["hospital-a"]))
    assert len(list((tmp_path / "evidence").iterdir())) == 4


# -- a member's log across a key rotation --------------------------------------------------------


def rotation_chain():
    """b's chain across a rotation: entries 1 and 2 under its old key, 3 under its new one;
    and a maker of further entries, entry(key, seq, prev)."""
    from swarm.log import EntryBody, sign_entry

    fed, old, new = b"\x07" * 32, SigningKey.generate(), SigningKey.generate()

    def entry(key, seq, prev):
        return sign_entry(EntryBody(fed, key.public, seq, prev, "update", b"\x01" * 32, 1, (), seq, {}, 0.0), key)

    e1 = entry(old, 1, bytes(32))
    e2 = entry(old, 2, e1.hash)
    return fed, old, new, entry, (e1, e2, entry(new, 3, e2.hash))


def test_a_members_log_goes_on_under_its_rotated_key_and_not_back(tmp_path):
    from swarm.errors import LogError
    from swarm.log import UpdateLog, verify_extension, verify_log_file

    fed, old, new, entry, (e1, e2, e3) = rotation_chain()
    with UpdateLog.open(tmp_path / "b.log", fed, old.public) as log:
        log.append(e1)
        log.append(e2)
        log.rotate_to(new.public)
        log.append(e3)
        with pytest.raises(LogError, match="author_mismatch"):
            log.append(entry(old, 4, e3.hash))  # the old key after the rotation
    with UpdateLog.open(tmp_path / "b.log", fed, new.public, earlier_keys=(old.public,)) as log:
        assert [e.seq for e in log.entries] == [1, 2, 3]
    with pytest.raises(LogError, match="author_mismatch"):
        UpdateLog.open(tmp_path / "b.log", fed, new.public)  # without the key history
    keys = {old.public: (old.public, new.public), new.public: (old.public, new.public)}
    assert verify_log_file(tmp_path / "b.log", federation=fed, is_member=keys.__contains__, key_history=keys.get).ok
    assert verify_log_file(tmp_path / "b.log", federation=fed, is_member=keys.__contains__).failure.reason == "author_mismatch"
    assert verify_extension(e2, [e3.envelope], fed, new.public, earlier_keys=(old.public,)) == [e3]
    # Old-key entries come from a peer only with a new-key entry after them.
    assert verify_extension(e1, [e2.envelope, e3.envelope], fed, new.public, earlier_keys=(old.public,)) == [e2, e3]
    with pytest.raises(LogError, match="revoked_key"):
        verify_extension(e1, [e2.envelope], fed, new.public, earlier_keys=(old.public,))
    with pytest.raises(LogError, match="author_mismatch"):
        verify_extension(e2, [e3.envelope], fed, new.public)
    with pytest.raises(LogError, match="author_mismatch"):  # no going back to the old key
        verify_extension(e3, [entry(old, 4, e3.hash).envelope, entry(new, 5, e3.hash).envelope], fed, new.public, earlier_keys=(old.public,))


def test_a_peer_log_takes_old_key_entries_only_with_a_new_key_entry_after_them(tmp_path):
    from swarm.errors import LogError
    from swarm.log import UpdateLog

    fed, old, new, entry, (e1, e2, e3) = rotation_chain()
    with UpdateLog.open(tmp_path / "b.log", fed, old.public) as log:
        log.append(e1)
        log.rotate_to(new.public)  # our copy of b's log, when we adopt b's new key
        with pytest.raises(LogError, match="revoked_key"):
            log.extend([e2])  # nothing signed with the new key vouches for it
        with pytest.raises(LogError, match="author_mismatch"):
            log.append(e2)
        log.extend([e2, e3])
        with pytest.raises(LogError, match="author_mismatch"):  # no going back to the old key
            log.extend([entry(old, 4, e3.hash), entry(new, 5, e3.hash)])
        assert [e.seq for e in log.entries] == [1, 2, 3]
    with UpdateLog.open(tmp_path / "b.log", fed, new.public, earlier_keys=(old.public,)) as log:
        assert [e.envelope for e in log.entries] == [e1.envelope, e2.envelope, e3.envelope]


def test_what_a_running_node_applies_at_once_and_what_at_its_next_start(genesis):
    from nodes.manifest_sync import version_change

    signed, _ = genesis
    v1 = signed.manifest
    removal = propose(v1, remove=["hospital-c"])
    change = version_change(v1, removal, "hospital-a")
    assert (change.removed, change.halt, change.summary()) == (("hospital-c",), None, "removed: hospital-c")
    assert change.later == ("new neighbours (hospital-b): members it removes are refused at once; the new neighbour lists apply from the next start",)
    assert version_change(v1, removal, "hospital-c").halt == "removed"
    new_card, _ = member("hospital-b", 7001)
    assert version_change(v1, propose(v1, rotate=[new_card]), "hospital-b").halt == "own_card_changed"
    rotation = version_change(v1, propose(v1, rotate=[new_card]), "hospital-a")
    assert rotation.rotated == ("hospital-b",) and rotation.halt is None and rotation.later == ()
    plan = json.loads(v1.raw)["plan"] | {"rounds": 9}
    assert version_change(v1, propose(v1, plan=plan), "hospital-a").later == ("a new training plan (rounds): this run keeps its plan; the new one applies from the next start",)


def test_a_replaced_signing_key_never_comes_back(genesis):
    # Found in review: rotating b A -> B -> A made b's own log refuse its next entry (keys
    # may only move forward), and an old key may be in someone else's hands.
    signed, keys = genesis
    old_card = signed.manifest.member("hospital-b")
    new_card, _ = member("hospital-b", 7001)
    v2 = propose(signed.manifest, rotate=[new_card])
    back = propose(v2, rotate=[old_card])
    with pytest.raises(ManifestError, match="hospital-b's signing key was hospital-b's in version 1 and later replaced"):
        check_keys_not_reused([signed.manifest, v2], back)
    stolen = propose(v2, rotate=[Member("hospital-c", old_card.signing_key, signed.manifest.member("hospital-c").transport_key, signed.manifest.member("hospital-c").endpoint)])
    with pytest.raises(ManifestError, match="hospital-c's signing key was hospital-b's"):
        check_keys_not_reused([signed.manifest, v2], stolen)
    check_keys_not_reused([signed.manifest, v2], propose(v2, threshold=3))  # unchanged keys are fine
