"""The node's version store across restarts: what survives, what is cleaned up, what refuses."""

from __future__ import annotations

import pytest

from nodes.site import SiteDir
from nodes.store import VersionStore
from swarm.checkpoint import save_checkpoint
from swarm.errors import LogError
from swarm.identity import load_site_keys
from swarm.tensors import flatten_state, model_digest
from swarm.transport import InMemoryNetwork
from tests.conftest import join, start_nodes


@pytest.fixture
def finished_site(small_federation):
    _, federation = small_federation(nodes=3, rounds=3)
    nodes, threads, stop = start_nodes(federation, InMemoryNetwork())
    join(threads, stop)
    for node in nodes.values():
        node.store.close()
    site = SiteDir(federation.sites["hospital-a"])

    def reopen() -> VersionStore:
        key = load_site_keys(site.keys_dir).signing
        return VersionStore(site, federation.manifest, key, ["hospital-b", "hospital-c"])

    return site, reopen


def test_reopening_restores_head_model_and_merge_state(finished_site):
    site, reopen = finished_site
    store = reopen()
    try:
        assert store.head.seq == 3 and store.latest.entry == store.head
        assert model_digest(store.latest.flat) == store.head.body.digest
        merged = store.merged_versions()
        assert set(merged) <= {"hospital-b", "hospital-c"} and merged, "V_i must come back from the log"
        assert store.peer_heads() == {p: (log.head.seq if log.head else 0) for p, log in store.peer_logs.items()}
        assert [len(e) > 0 for e in store.entries_after(1, 10)] == [True, True]
        assert len(store.entries_after(3, 10)) == 1  # always at least the head, for the model
    finally:
        store.close()


def test_a_checkpoint_written_but_never_logged_is_removed(finished_site):
    site, reopen = finished_site
    store = reopen()
    flat = store.latest.flat
    store.close()
    orphan = site.checkpoint_path(4)
    save_checkpoint(orphan, flat, model_digest(flat), {"seq": 4})
    store = reopen()
    store.close()
    assert not orphan.exists() and site.checkpoint_seqs() == [1, 2, 3]


def test_a_missing_or_wrong_head_checkpoint_refuses_to_start(finished_site):
    site, reopen = finished_site
    head_checkpoint = site.checkpoint_path(3)
    saved = head_checkpoint.read_bytes()
    head_checkpoint.unlink()
    with pytest.raises(LogError, match="missing_checkpoint"):
        reopen()
    other = flatten_state({"w": __import__("torch").zeros(2)})
    save_checkpoint(head_checkpoint, other, model_digest(other), {})
    with pytest.raises(LogError, match="digest_mismatch"):
        reopen()
    head_checkpoint.write_bytes(saved)
    reopen().close()
