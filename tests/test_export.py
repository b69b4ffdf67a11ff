"""`swarm-node export`: a logged version leaves the site as safetensors, TorchScript or ONNX
with a model card, loads in plain torch / safetensors / onnx, and `swarm-node audit --model
FILE` recomputes the digest from the file's tensors and finds it in the signed log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nodes.cli import main as node_cli
from nodes.export import ORDER_KEY, digest_of_export
from nodes.site import SiteDir
from swarm.log.records import read_records
from swarm.log import open_entry
from swarm.transport import InMemoryNetwork
from swarm.tensors import flatten_state, model_digest
from tests.conftest import join, start_nodes, write_scenario
from tests.test_cli import assert_user_error, invoke

IMAGES = '''[data]
source = "synthetic-imaging"
seed = 1
size = 16
samples_per_site = 40
test_samples = 10
global_test_per_site = 10
'''
CNN = 'channels = [4]\nhidden = [8]\nnorm = "batch"\nfedbn = true\n'


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Three sites that trained a small CNN with BatchNorm (kept local: FedBN) for 3 rounds."""
    from scenarios.config import ScenarioConfig
    from scenarios.federation import create_federation

    root = tmp_path_factory.mktemp("export")
    path = write_scenario(root, nodes=3, rounds=3, model_extra=CNN)
    text = path.read_text().replace('name = "mlp"', 'name = "cnn"')
    path.write_text(text[:text.index("[data]")] + IMAGES)
    federation = create_federation(ScenarioConfig.load(path), root / "run")
    nodes, threads, stop = start_nodes(federation, InMemoryNetwork())
    join(threads, stop)
    for node in nodes.values():
        node.store.close()
    return root, federation


def own_entries(site: Path):
    envelopes, _ = read_records(SiteDir(site).log_path)
    return {entry.seq: entry for entry in map(open_entry, envelopes)}


def first_site(federation) -> tuple[str, Path]:
    return next(iter(federation.sites.items()))


def test_safetensors_export_loads_in_plain_safetensors_and_its_digest_is_the_logged_one(finished):
    from safetensors.torch import load_file

    root, federation = finished
    name, site = first_site(federation)
    out = root / "model.safetensors"
    result = invoke(node_cli, ["export", "--site", site, "--out", out])
    assert result.exit_code == 0, result.output
    entries = own_entries(site)
    head = entries[max(entries)]
    card = json.loads((root / "model.safetensors.card.json").read_text())
    # plain safetensors, no swarm code: the shared tensors in the card's order give the logged digest
    tensors = load_file(str(out))
    shared = {key: tensors[key] for key in card[ORDER_KEY]}
    assert model_digest(flatten_state(shared)) == head.body.digest
    assert any(key.endswith("running_mean") for key in card["model"]["local_tensors"])  # FedBN: this site's own
    assert set(tensors) == set(shared) | set(card["model"]["local_tensors"])
    assert card["version"] == card["version"] | {"author": name, "seq": head.seq, "entry_hash": head.hash.hex(), "model_digest": head.body.digest.hex()}
    manifest = json.loads((SiteDir(site).manifest_path).read_text())
    assert card["federation"]["name"] == manifest["federation"]
    assert card["federation"]["id"] == json.loads((SiteDir(site).root / "federation" / "manifest.json.sigs.json").read_text())["federation_id"]
    # provenance: this site and both neighbours went into it, with their sample counts
    assert set(card["provenance"]["sites"]) == set(federation.sites)
    assert all(share["samples"] > 0 for share in card["provenance"]["sites"].values())
    assert set(card["metrics"]) >= {"accuracy", "loss"}
    markdown = (root / "model.safetensors.card.md").read_text()
    assert head.hash.hex() in markdown and head.body.digest.hex() in markdown
    audited = invoke(node_cli, ["audit", root / "run", "--model", out])
    assert audited.exit_code == 0, audited.output
    assert f"= {name}#{head.seq} as logged" in audited.output and "result: OK" in audited.output


def test_an_earlier_version_and_a_changed_file(finished):
    from safetensors.torch import load_file, save_file

    root, federation = finished
    name, site = first_site(federation)
    out = root / "v1.safetensors"
    assert invoke(node_cli, ["export", "--site", site, "--version", 1, "--out", out]).exit_code == 0
    digest, card = digest_of_export(out)
    assert card["version"]["seq"] == 1 and digest == own_entries(site)[1].body.digest
    # one weight changed after export: the file is no logged version, and the audit says so
    tensors = load_file(str(out))
    key = card[ORDER_KEY][0]
    tensors[key] = tensors[key] + 1e-3
    from safetensors import safe_open
    with safe_open(str(out), framework="pt") as handle:
        metadata = handle.metadata()
    forged = root / "forged.safetensors"
    save_file(tensors, str(forged), metadata=metadata)
    audited = invoke(node_cli, ["audit", site, "--model", forged])
    assert audited.exit_code == 1, audited.output
    assert "NOT any logged version" in audited.output and f"claims {name}#1" in audited.output


def test_torchscript_export_runs_without_swarm_and_matches_the_model(finished):
    root, federation = finished
    name, site = first_site(federation)
    out = root / "model.pt"
    assert invoke(node_cli, ["export", "--site", site, "--format", "torchscript", "--out", out]).exit_code == 0
    extra = {"swarm-card.json": ""}
    module = torch.jit.load(str(out), _extra_files=extra)
    card = json.loads(extra["swarm-card.json"])
    x = torch.rand(5, *card["model"]["input_shape"])
    scores = module(x)
    assert scores.shape == (5, card["model"]["num_classes"])
    # the same weights in the plan's model give the same scores
    from safetensors.torch import load_file
    assert invoke(node_cli, ["export", "--site", site, "--out", root / "same.safetensors"]).exit_code == 0
    from nodes.models import build_model
    model = build_model("cnn", {"channels": [4], "hidden": [8], "norm": "batch"}, tuple(card["model"]["input_shape"]), card["model"]["num_classes"], 0)
    model.load_state_dict(load_file(str(root / "same.safetensors")))
    assert torch.allclose(model.eval()(x), scores, atol=1e-6)
    audited = invoke(node_cli, ["audit", site, "--model", out])
    assert audited.exit_code == 0 and f"{name}#{card['version']['seq']} as logged" in audited.output, audited.output


def test_onnx_export_keeps_the_exact_weights_and_runs_in_the_reference_evaluator(finished):
    onnx = pytest.importorskip("onnx", reason='optional extra: pip install "swarm-hospitals[export]"')
    pytest.importorskip("onnxscript", reason='optional extra: pip install "swarm-hospitals[export]"')
    from onnx.reference import ReferenceEvaluator

    root, federation = finished
    name, site = first_site(federation)
    out = root / "model.onnx"
    result = invoke(node_cli, ["export", "--site", site, "--format", "onnx", "--out", out])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(str(out))
    digest, card = digest_of_export(out)
    assert digest.hex() == card["version"]["model_digest"]
    x = torch.rand(3, *card["model"]["input_shape"])
    (scores,) = ReferenceEvaluator(str(out)).run(None, {"image": x.numpy()})
    traced = root / "reference.pt"  # the same version as TorchScript: the two must agree
    assert invoke(node_cli, ["export", "--site", site, "--format", "torchscript", "--out", traced]).exit_code == 0
    assert torch.allclose(torch.from_numpy(scores), torch.jit.load(str(traced))(x), atol=1e-4)
    audited = invoke(node_cli, ["audit", root / "run", "--model", out])
    assert audited.exit_code == 0 and "as logged" in audited.output, audited.output


def test_export_mistakes_are_one_line(finished, tmp_path):
    root, federation = finished
    _, site = first_site(federation)
    assert_user_error(invoke(node_cli, ["export", "--site", site, "--version", 99, "--out", tmp_path / "m.safetensors"]), "--version 99", "holds versions 1 to 3")
    assert_user_error(invoke(node_cli, ["export", "--site", site, "--out", tmp_path / "no" / "m.safetensors"]), "does not exist")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 100)
    assert_user_error(invoke(node_cli, ["audit", site, "--model", junk]), "not a model exported by swarm-node export")


def test_a_damaged_checkpoint_is_not_exported(finished, tmp_path):
    import shutil

    _, federation = finished
    name, site = first_site(federation)
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    checkpoint = SiteDir(copy).checkpoint_path(3)
    data = bytearray(checkpoint.read_bytes())
    data[-8] ^= 0xFF  # one byte of the last tensor
    checkpoint.write_bytes(bytes(data))
    result = invoke(node_cli, ["export", "--site", copy, "--version", 3, "--out", tmp_path / "m.safetensors"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "digest" in result.output and "swarm-node audit" in result.output, result.output
    assert not (tmp_path / "m.safetensors").exists()
