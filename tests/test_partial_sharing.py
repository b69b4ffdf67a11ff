"""Partial sharing and FedBN: named tensors stay at their site -- never sent, never merged,
never signed -- and survive a restart."""

from __future__ import annotations

import pytest

from nodes.audit import verify_sites
from nodes.models import build_model, norm_layer_names
from nodes.sharing import SharingPolicy
from nodes.site import SiteDir
from nodes.store import VersionStore
from scenarios.config import ScenarioConfig
from swarm.checkpoint import load_checkpoint
from swarm.codec import decode_message
from swarm.errors import ConfigError
from swarm.identity import load_site_keys
from swarm.messages import Chunk, ModelReply
from swarm.tensors import leaf_count
from swarm.transport import InMemoryNetwork
from tests.conftest import join, start_nodes, write_scenario


class RecordingNetwork(InMemoryNetwork):
    """Keeps a copy of every message that crosses the network."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[list[bytes]] = []

    def _deliver(self, sender, peer, frames):
        self.messages.append([bytes(f) for f in frames])
        return super()._deliver(sender, peer, frames)


def test_kept_tensors_never_leave_the_site_and_survive_a_restart(small_federation):
    _, federation = small_federation(nodes=3, rounds=3, model_extra='keep_local = ["4.*"]\n')
    network = RecordingNetwork()
    nodes, threads, stop = start_nodes(federation, network)
    join(threads, stop)
    fed = federation.manifest.federation_id
    decoded = [decode_message(m, fed) for m in network.messages]
    chunks: dict[bytes, dict[int, int]] = {}
    for d in decoded:
        if isinstance(d.msg, Chunk):
            chunks.setdefault(d.msg.digest, {})[d.msg.first] = sum(len(frame) for frame in d.data)
    assert chunks, "no model was exchanged"
    shared_specs = nodes["hospital-a"].store.latest.flat.specs
    assert [s.name for s in shared_specs] == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for sent in chunks.values():  # every model that travelled is the shared tensors' bytes, no more
        assert sum(sent.values()) == sum(spec.nbytes for spec in shared_specs)
    assert all(len(d.msg.leaves) == leaf_count(shared_specs) for d in decoded if isinstance(d.msg, ModelReply))
    heads = {name: node.learner.state()["4.weight"].clone() for name, node in nodes.items()}
    for node in nodes.values():  # what each site signed covers the shared tensors only
        assert "4.weight" not in [s.name for s in node.store.latest.flat.specs]
    for node in nodes.values():
        node.store.close()
    assert verify_sites(federation.sites.values()).ok
    site = SiteDir(federation.sites["hospital-a"])
    local, _, _ = load_checkpoint(site.local_checkpoint_path(3))
    assert [s.name for s in local.specs] == ["4.bias", "4.weight"]
    shared, _, _ = load_checkpoint(site.checkpoint_path(3))
    assert "4.weight" not in [s.name for s in shared.specs]
    store = VersionStore(site, federation.manifest, load_site_keys(site.keys_dir).signing, ["hospital-b", "hospital-c"])
    try:
        restored = dict(zip([s.name for s in store.latest.local_flat.specs], store.latest.local_flat.buffers))
        assert bytes(restored["4.weight"]) == heads["hospital-a"].numpy().tobytes()
    finally:
        store.close()


def test_fedbn_keeps_exactly_the_normalization_layers_local():
    cnn = build_model("cnn", {"norm": "batch"}, (1, 28, 28), 3, 0)
    assert SharingPolicy(fedbn=True).local_names(cnn) == frozenset(norm_layer_names(cnn))
    both = SharingPolicy(("head.*",), fedbn=True).local_names(cnn)
    assert both == frozenset(norm_layer_names(cnn)) | {"head.weight", "head.bias"}


@pytest.mark.parametrize(
    "extra, field",
    [
        ('keep_local = ["nothing.*"]\n', "model.keep_local"),
        ('keep_local = ["*"]\n', "model.keep_local"),
        ("keep_local = \"4.*\"\n", "model.keep_local"),
        ("fedbn = true\n", "model.fedbn"),
    ],
)
def test_sharing_settings_that_cannot_work_are_refused_at_load(tmp_path, extra, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ScenarioConfig.load(write_scenario(tmp_path, model_extra=extra))
