"""The `swarm-node` and `swarm-scenario` command lines: the operator's workflow, and bad
input giving one clear line and exit 2."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from nodes.cli import main as node_cli
from scenarios.cli import main as scenario_cli
from tests.conftest import write_scenario

PLAN = """
[plan]
rounds = 3
[topology]
name = "ring"
[protocol]
name = "braintorrent"
[model]
name = "mlp"
[training]
epochs = 1
[task]
num_features = 32
num_classes = 3
"""


def invoke(cli, args: list[str]):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def three_sites(tmp_path: Path) -> tuple[Path, list[Path]]:
    sites = []
    for i in range(3):
        site = tmp_path / f"s{i}"
        result = invoke(node_cli, ["init", "--site", site, "--name", f"h{i}", "--endpoint", f"tcp://127.0.0.1:{17300 + i}", "--data-site", i, "--data-sites", 3])
        assert result.exit_code == 0, result.output
        sites.append(site)
    (tmp_path / "plan.toml").write_text(PLAN)
    return tmp_path, sites


def create_manifest(root: Path, sites: list[Path]) -> Path:
    manifest = root / "manifest.json"
    args = ["federation", "create", "--name", "test-fed", "--plan", root / "plan.toml", "--out", manifest]
    for site in sites:
        args += ["--member", site / "member.json"]
    result = invoke(node_cli, args)
    assert result.exit_code == 0, result.output
    return manifest


def test_init_writes_private_keys_0600_and_a_member_card(three_sites):
    _, sites = three_sites
    keys = sites[0] / "keys"
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o700
    for private in ("signing.key", "transport.key"):
        assert stat.S_IMODE(os.stat(keys / private).st_mode) == 0o600
    card = json.loads((sites[0] / "member.json").read_text())
    assert card["name"] == "h0" and len(card["signing_key"]) == 64 and len(card["transport_key"]) == 40


def test_manifest_create_sign_verify_install(three_sites):
    root, sites = three_sites
    manifest = create_manifest(root, sites)
    assert_user_error(invoke(node_cli, ["federation", "verify", manifest]), "'h0' has not signed", "swarm-node federation sign")
    for site in sites:
        assert invoke(node_cli, ["federation", "sign", manifest, "--site", site]).exit_code == 0
    verified = invoke(node_cli, ["federation", "verify", manifest])
    assert verified.exit_code == 0 and "all signed" in verified.output
    federation_id = json.loads((root / "manifest.json.sigs.json").read_text())["federation_id"]
    assert federation_id in verified.output
    shown = invoke(node_cli, ["federation", "show", manifest])
    assert "h1" in shown.output and "neighbours: h0, h2" in shown.output
    for site in sites:
        assert invoke(node_cli, ["federation", "install", manifest, "--site", site]).exit_code == 0
    assert (sites[1] / "federation" / "manifest.json").read_bytes() == manifest.read_bytes()


def test_a_changed_manifest_no_longer_verifies(three_sites):
    root, sites = three_sites
    manifest = create_manifest(root, sites)
    for site in sites:
        invoke(node_cli, ["federation", "sign", manifest, "--site", site])
    manifest.write_bytes(manifest.read_bytes().replace(b'"rounds": 3', b'"rounds": 4'))
    result = invoke(node_cli, ["federation", "verify", manifest])
    assert_user_error(result, "belong to another manifest")
    result = invoke(node_cli, ["federation", "install", manifest, "--site", sites[0]])
    assert result.exit_code == 2


def test_forged_signature_is_refused(three_sites):
    root, sites = three_sites
    manifest = create_manifest(root, sites)
    for site in sites:
        invoke(node_cli, ["federation", "sign", manifest, "--site", site])
    sigs_path = root / "manifest.json.sigs.json"
    sigs = json.loads(sigs_path.read_text())
    sigs["signatures"]["h1"] = sigs["signatures"]["h0"]
    sigs_path.write_text(json.dumps(sigs))
    assert_user_error(invoke(node_cli, ["federation", "verify", manifest]), "'h1' does not verify")


def test_bad_inputs_give_one_line_and_exit_2(three_sites, tmp_path):
    root, sites = three_sites
    assert_user_error(invoke(node_cli, ["run", "--site", tmp_path / "nowhere"]), "no such site directory", "swarm-node init")
    assert_user_error(invoke(node_cli, ["run", "--site", sites[0]]), "no manifest installed", "federation install")
    (sites[1] / "keys" / "signing.key").unlink()
    assert_user_error(invoke(node_cli, ["federation", "sign", root / "x.json", "--site", sites[1]]), "signing.key")
    (root / "plan.toml").write_text(PLAN.replace('name = "ring"', 'name = "hypercube"'))
    result = invoke(node_cli, ["federation", "create", "--name", "f", "--member", sites[0] / "member.json", "--member", sites[2] / "member.json", "--plan", root / "plan.toml", "--out", root / "m.json"])
    assert_user_error(result, "topology.name", "hypercube", "ring")
    (sites[2] / "site.toml").write_text("[site]\nname = 'h2'\n[node]\nendpoint = 'udp://x'\n")
    assert_user_error(invoke(node_cli, ["run", "--site", sites[2]]), "node.endpoint", "tcp://")
    assert_user_error(invoke(node_cli, ["init", "--site", sites[0], "--name", "h9", "--endpoint", "tcp://127.0.0.1:1"]), "already a site directory")


def test_scenario_config_errors_exit_2(tmp_path):
    scenario = write_scenario(tmp_path)
    text = scenario.read_text()
    cases = {
        'name = "ring"': ('name = "moebius"', "topology.name"),
        "rounds = 3": ("rounds = -1", "plan.rounds"),
        "epochs = 1": ("epochs = 'many'", "training.epochs"),
        "seed = 3": ("seed = 3\nbogus = 1", "data.bogus"),
    }
    for original, (replacement, field) in cases.items():
        scenario.write_text(text.replace(original, replacement))
        assert_user_error(invoke(scenario_cli, ["run", scenario, "--out", tmp_path / "out"]), field)
    assert_user_error(invoke(scenario_cli, ["run", tmp_path / "missing.toml"]), "not found")


def test_log_verify_and_show_on_a_finished_federation(small_federation, tmp_path):
    from swarm.transport import InMemoryNetwork
    from tests.conftest import join, start_nodes

    _, federation = small_federation(nodes=3, rounds=2)
    nodes, threads, stop = start_nodes(federation, InMemoryNetwork())
    join(threads, stop)
    for node in nodes.values():
        node.store.close()
    run_dir = tmp_path / "run"
    ok = invoke(node_cli, ["log", "verify", run_dir])
    assert ok.exit_code == 0 and "OK 9 logs" in ok.output
    shown = invoke(node_cli, ["log", "show", run_dir / "sites" / "hospital-b"])
    assert "#2" in shown.output and "update by hospital-b" in shown.output and "merged from: hospital-b#1" in shown.output
    # One flipped byte in one log entry: caught, named, exit 1.
    log_path = run_dir / "sites" / "hospital-c" / "log" / "updates.log"
    data = bytearray(log_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    log_path.write_bytes(bytes(data))
    bad = invoke(node_cli, ["log", "verify", run_dir])
    assert bad.exit_code == 1 and "hospital-c/log/updates.log" in bad.output and "entry" in bad.output
    # A checkpoint whose bytes no longer match the digest its entry signed.
    log_path.write_bytes(bytes(data[: len(data) // 2]) + bytes([data[len(data) // 2] ^ 0x01]) + bytes(data[len(data) // 2 + 1 :]))
    checkpoint = run_dir / "sites" / "hospital-a" / "checkpoints" / "00000002.swt"
    blob = bytearray(checkpoint.read_bytes())
    blob[-5] ^= 0xFF
    checkpoint.write_bytes(bytes(blob))
    bad = invoke(node_cli, ["log", "verify", run_dir])
    assert bad.exit_code == 1 and "digest_mismatch" in bad.output and "hospital-a" in bad.output


def test_click_usage_mistakes_are_one_line_too():
    import subprocess
    import sys

    for module, args, fragment in (("nodes", ["run"], "Missing option '--site'"), ("nodes", ["bogus"], "No such command"), ("scenarios", ["run"], "SCENARIO_PATH")):
        result = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and fragment in result.stderr


def test_a_plan_can_list_neighbours_explicitly(three_sites):
    root, sites = three_sites
    (root / "plan.toml").write_text(PLAN.replace('name = "ring"', 'name = "explicit"') + '[neighbours]\nh0 = ["h1"]\nh1 = ["h0", "h2"]\nh2 = ["h1"]\n')
    manifest = create_manifest(root, sites)
    plan = json.loads(manifest.read_text())["plan"]
    assert plan["neighbours"] == {"h0": ["h1"], "h1": ["h0", "h2"], "h2": ["h1"]} and plan["topology"]["name"] == "explicit"
    (root / "plan.toml").write_text(PLAN.replace('name = "ring"', 'name = "explicit"') + '[neighbours]\nh0 = ["h1"]\nh1 = ["h2"]\nh2 = ["h1"]\n')
    args = ["federation", "create", "--name", "f", "--plan", root / "plan.toml", "--out", root / "m2.json"]
    for site in sites:
        args += ["--member", site / "member.json"]
    assert_user_error(invoke(node_cli, args), "symmetric")


def test_the_documented_example_plan_makes_a_valid_manifest(three_sites):
    root, sites = three_sites
    (root / "plan.toml").write_text((Path(__file__).parent.parent / "docs" / "plan-example.toml").read_text())
    manifest = create_manifest(root, sites)
    plan = json.loads(manifest.read_text())["plan"]
    assert plan["rounds"] == 30 and plan["protocol"]["poll_timeout"] == 10.0


def test_run_overrides_are_validated_before_anything_runs(tmp_path):
    scenario = write_scenario(tmp_path)
    out = tmp_path / "out"
    cases = [
        (["--nodes", "1"], "--nodes"),
        (["--rounds", "0"], "--rounds"),
        (["--protocol", "flooding"], "protocol.name"),
        (["--topology", "moebius"], "topology.name"),
        (["--nodes-per-worker", "0"], "--nodes-per-worker"),
    ]
    for args, field in cases:
        assert_user_error(invoke(scenario_cli, ["run", scenario, "--out", out, *args]), field)
    assert not (out / "sites").exists()


def test_overrides_keep_a_tables_settings_only_when_its_name_is_unchanged(tmp_path):
    from scenarios.config import ScenarioConfig

    config = ScenarioConfig.load(write_scenario(tmp_path))
    config = config.with_overrides(topology={"name": "random-regular", "degree": 2})
    assert config.with_overrides(topology="random-regular").topology == {"name": "random-regular", "degree": 2}
    assert config.with_overrides(topology="complete").topology == {"name": "complete"}
    changed = config.with_overrides(nodes=5, rounds=7, protocol="dpsgd", seed=9)
    assert (changed.nodes, changed.rounds, changed.protocol, changed.data["seed"], changed.topology["seed"]) == (5, 7, {"name": "dpsgd"}, 9, 9)


def test_a_write_the_machine_refuses_in_a_federation_command_is_one_line_exit_3(three_sites, monkeypatch):
    import errno

    import swarm.manifest

    root, sites = three_sites

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(swarm.manifest, "write_atomic", full)
    args = ["federation", "create", "--name", "f", "--plan", root / "plan.toml", "--out", root / "m.json"]
    for site in sites:
        args += ["--member", site / "member.json"]
    result = invoke(node_cli, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 3 and len(lines) == 1, result.output
    assert lines[0].startswith(f"error: cannot write {root / 'm.json'}: its file system is full") and "run the command again" in lines[0]
