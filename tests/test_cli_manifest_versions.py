"""`swarm-node federation propose / sign / verify / show / install` for manifest versions
after the genesis: the rotation rule from the operator's side, and its errors as one line."""

from __future__ import annotations

import json
from pathlib import Path

from nodes.cli import main as node_cli
from tests.test_cli import assert_user_error, create_manifest, invoke, three_sites  # noqa: F401 (fixture)


def genesis(root: Path, sites: list[Path]) -> Path:
    """Version 1 of h0, h1, h2, signed by all and installed at every site."""
    manifest = create_manifest(root, sites)
    for site in sites:
        assert invoke(node_cli, ["federation", "sign", manifest, "--site", site]).exit_code == 0
    for site in sites:
        assert invoke(node_cli, ["federation", "install", manifest, "--site", site]).exit_code == 0
    return manifest


def new_site(root: Path, directory: str, name: str, port: int) -> Path:
    site = root / directory
    result = invoke(node_cli, ["init", "--site", site, "--name", name, "--endpoint", f"tcp://127.0.0.1:{port}", "--data-site", 0, "--data-sites", 3])
    assert result.exit_code == 0, result.output
    return site


def sign(manifest: Path, site: Path):
    result = invoke(node_cli, ["federation", "sign", manifest, "--site", site])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_member_joins_signed_by_a_threshold_and_by_itself(three_sites):
    root, sites = three_sites
    v1 = genesis(root, sites)
    joining = new_site(root, "s3", "h3", 17303)
    v2 = root / "v2.json"
    proposed = invoke(node_cli, ["federation", "propose", "--from", v1, "--out", v2, "--add", joining / "member.json"])
    assert proposed.exit_code == 0, proposed.output
    assert "version 2 of test-fed (adds: h3; threshold 2 -> 3; new neighbour lists), unsigned" in proposed.output and "needs 2 of the 3 members of version 1 to sign, and also h3 (joining);" in proposed.output
    assert_user_error(invoke(node_cli, ["federation", "verify", v2]), "manifest.version", "--history")

    assert "needs 2 of the 3 members of version 1; have 1: h0" in sign(v2, sites[0])
    result = invoke(node_cli, ["federation", "verify", v2, "--history", v1])
    assert_user_error(result, "needs 2 of the 3 members of version 1; have 1: h0", "h3 joins in version 2 and must sign it")
    assert_user_error(invoke(node_cli, ["federation", "install", v2, "--site", sites[0]]), "have 1: h0")
    sign(v2, sites[1])
    assert_user_error(invoke(node_cli, ["federation", "verify", v2, "--history", v1]), "h3 joins")  # the threshold alone is not enough
    sign(v2, joining)

    verified = invoke(node_cli, ["federation", "verify", v2, "--history", sites[0] / "federation"])
    federation_id = json.loads((root / "manifest.json.sigs.json").read_text())["federation_id"]
    assert verified.exit_code == 0 and "signed by 2 of the 3 members of version 1 (h0, h1; 2 needed), plus h3 (joining)" in verified.output
    assert federation_id in verified.output  # the genesis hash stays the federation id

    shown = invoke(node_cli, ["federation", "show", v2]).output
    assert "version 2" in shown and "previous: version 1, sha256 " in shown
    assert "threshold: 3 of its 4 members must sign version 3" in shown and "signed by: h0, h1, h3" in shown

    for site in sites[:2]:
        assert invoke(node_cli, ["federation", "install", v2, "--site", site]).exit_code == 0
    assert (sites[0] / "federation" / "v0002.json").read_bytes() == v2.read_bytes()
    # The joining site has nothing installed: it brings the history along.
    assert_user_error(invoke(node_cli, ["federation", "install", v2, "--site", joining]), "must start at version 1", "--history")
    installed = invoke(node_cli, ["federation", "install", v2, "--site", joining, "--history", v1])
    assert installed.exit_code == 0 and "version 2" in installed.output
    assert (joining / "federation" / "manifest.json").read_bytes() == v1.read_bytes()


def test_a_second_valid_version_2_is_refused_at_install_and_kept_as_evidence(three_sites):
    root, sites = three_sites
    v1 = genesis(root, sites)
    first, second = root / "v2a.json", root / "v2b.json"
    assert invoke(node_cli, ["federation", "propose", "--from", v1, "--out", first, "--threshold", 3]).exit_code == 0
    assert invoke(node_cli, ["federation", "propose", "--from", v1, "--out", second, "--remove", "h2"]).exit_code == 0
    for site in sites[:2]:
        sign(first, site)
        sign(second, site)
    assert "with its key (leaving)" in sign(second, sites[2])  # a removed member may approve its removal
    assert invoke(node_cli, ["federation", "install", first, "--site", sites[0]]).exit_code == 0
    result = invoke(node_cli, ["federation", "install", second, "--site", sites[0]])
    assert result.exit_code == 1 and "two different valid manifests for version 2" in result.output
    assert "signed both: h0, h1" in result.output and "Traceback" not in result.output
    assert (sites[0] / "federation" / "v0002.json").read_bytes() == first.read_bytes()
    kept = sorted(p.name for p in (sites[0] / "evidence").glob("manifest-v0002-*.json") if not p.name.endswith(".sigs.json"))
    assert len(kept) == 2
    # h2 is not a member of the second: it cannot install it.
    assert_user_error(invoke(node_cli, ["federation", "install", second, "--site", sites[2]]), "'h2' is not a member of version 2")


def test_a_rotated_key_signs_with_the_new_key_and_approves_with_the_old(three_sites):
    root, sites = three_sites
    v1 = genesis(root, sites)
    fresh = new_site(root, "s1-new-keys", "h1", 17301)  # h1's new keys and card
    v2 = root / "v2.json"
    proposed = invoke(node_cli, ["federation", "propose", "--from", v1, "--out", v2, "--rotate", fresh / "member.json"])
    assert proposed.exit_code == 0 and "new cards: h1" in proposed.output and "and also h1 (new key);" in proposed.output
    assert "with its key" in sign(v2, fresh)
    assert "needs 2 of the 3 members of version 1; have 1: h0" in sign(v2, sites[0])  # h1's new key is no version-1 key
    approved = sign(v2, sites[1])
    assert "with its old key of version 1" in approved and "enough signatures" in approved
    verified = invoke(node_cli, ["federation", "verify", v2, "--history", v1])
    assert verified.exit_code == 0 and "(h0, h1; 2 needed), plus h1 (new key)" in verified.output
    assert "h1 (old key)" in invoke(node_cli, ["federation", "show", v2]).output


def test_propose_mistakes_are_one_line_and_exit_2(three_sites):
    root, sites = three_sites
    v1 = genesis(root, sites)
    out = root / "v2.json"
    assert_user_error(invoke(node_cli, ["federation", "propose", "--from", v1, "--out", out]), "nothing changes", "--add")
    assert_user_error(invoke(node_cli, ["federation", "propose", "--from", v1, "--out", out, "--remove", "h9"]), "--remove h9", "not a member")
    assert_user_error(invoke(node_cli, ["federation", "propose", "--from", v1, "--out", out, "--threshold", 4]), "manifest.threshold", "from 1 to the 3 members")
    assert_user_error(invoke(node_cli, ["federation", "propose", "--from", v1, "--out", out, "--add", sites[0] / "member.json"]), "--add", "'h0' is a member already")
    assert_user_error(invoke(node_cli, ["federation", "propose", "--from", root / "nope.json", "--out", out, "--remove", "h2"]), "manifest not found")
    assert not out.exists()
