"""Turning a site directory into a running node, and installing a manifest into a site."""

from __future__ import annotations

import logging
import random
import shutil
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from swarm.codec import Limits
from swarm.errors import ConfigError, ManifestError
from swarm.identity import SiteKeys, load_site_keys
from swarm.manifest import Manifest, SignedManifest, load_manifest, signatures_path
from swarm.tensors import FlatModel, flatten_state
from swarm.transport.base import Transport
from swarm.transport.zeromq import ZmqSettings, ZmqTransport

from .learner import Learner
from .node import Node, NodeOutcome
from .plan import check_plan, protocol_params, task_input_shape
from .site import SiteConfig, SiteDir
from .store import VersionStore

log = logging.getLogger("swarm.node")


def check_membership(manifest: Manifest, config: SiteConfig, keys: SiteKeys) -> None:
    member = manifest.member(config.name)
    if member.signing_key != keys.signing.public:
        raise ManifestError(f"manifest: the signing key listed for {config.name!r} is not this site's key; wrong --site or wrong manifest?")
    if member.transport_key != keys.transport_public.decode():
        raise ManifestError(f"manifest: the transport key listed for {config.name!r} is not this site's key; wrong --site or wrong manifest?")


def install_manifest(manifest_path: Path, site_root: Path) -> SignedManifest:
    """Verify a fully signed manifest and copy it (with its signatures) into the site."""
    site = SiteDir(site_root)
    config = site.load_config()
    keys = load_site_keys(site.keys_dir)
    signed = load_manifest(manifest_path)
    signed.verify()
    check_membership(signed.manifest, config, keys)
    check_plan(signed.manifest.plan)
    site.manifest_path.parent.mkdir(parents=True, exist_ok=True)
    installed = site.manifest_path
    if installed.exists() and load_manifest(installed).manifest.federation_id != signed.manifest.federation_id:
        raise ManifestError(f"{installed}: this site already belongs to another federation; use a new site directory")
    for source, target in ((Path(manifest_path), installed), (signatures_path(Path(manifest_path)), signatures_path(installed))):
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
    return signed


TransportFactory = Callable[[SiteConfig, dict[str, str], ZmqSettings], Transport]


def zmq_transport(config: SiteConfig, peers: dict[str, str], settings: ZmqSettings) -> Transport:
    return ZmqTransport(config.name, config.listen, peers, settings).open()


def limits_for(model: FlatModel) -> tuple[Limits, ZmqSettings]:
    """Wire limits fitted to the plan's model, which every member trains: no frame larger than
    the header limit or the largest tensor, no more frames than tensors + 1, no model larger
    than ours. libzmq then refuses oversized frames before they are buffered."""
    limits = replace(Limits(), max_frames=len(model.specs) + 1, max_tensors=len(model.specs), max_model_bytes=model.total_bytes)
    largest = max((spec.nbytes for spec in model.specs), default=0)
    settings = ZmqSettings(max_frame_bytes=max(limits.max_header_bytes, largest), max_frames=limits.max_frames, recv_hwm=16)
    return limits, settings


def open_node(site_root: Path, make_transport: TransportFactory = zmq_transport) -> tuple[Node, Transport]:
    site = SiteDir(site_root)
    config = site.load_config()
    logging.getLogger().setLevel(config.log_level.upper())
    keys = load_site_keys(site.keys_dir)
    if not site.manifest_path.exists():
        raise ManifestError(f"{site.manifest_path}: no manifest installed; run `swarm-node federation install MANIFEST --site {site.root}`")
    signed = load_manifest(site.manifest_path)
    signed.verify()
    manifest = signed.manifest
    check_membership(manifest, config, keys)
    plan = manifest.plan
    task = check_plan(plan)
    torch.set_num_threads(config.threads)
    learner = Learner.for_site(task, config.data, config.name)
    for key, actual, planned in (
        ("input shape", learner.data.input_shape, task_input_shape(plan.task)),
        ("number of classes", learner.data.num_classes, plan.task.get("num_classes")),
    ):
        if actual != planned:
            raise ConfigError(f"data: this site's data has {key} {actual} but the plan's task says {planned}; fix [data] in site.toml")
    neighbours = list(plan.neighbours[config.name])
    limits, settings = limits_for(flatten_state(learner.shared_state()))
    transport = make_transport(config, {p: manifest.member(p).endpoint for p in neighbours}, settings)
    try:
        store = VersionStore(site, manifest, keys.signing, neighbours)
    except BaseException:
        transport.close()
        raise
    protocol_cls, params = protocol_params(plan.protocol)
    protocol = protocol_cls(
        config.name,
        neighbours,
        plan.rounds,
        learner.samples,
        params,
        random.Random(),
        published_seq=store.head.seq if store.head else 0,
        merged=store.merged_versions(),
        peer_heads=store.peer_heads(),
    )
    node = Node(manifest, config.name, protocol, store, learner, transport, site.metrics_path, site.status_path, limits=limits)
    return node, transport


def run_site(site_root: Path) -> NodeOutcome:
    """Run a site's node until the plan is done or SIGINT/SIGTERM; state is on disk either way."""
    node, transport = open_node(site_root)
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        log.info("received %s: finishing the current step and shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        outcome = node.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        node.store.close()
        transport.close()
    log.info("%s at version %d; rejected messages: %s", outcome.state, outcome.published_seq, outcome.rejected or "none")
    return outcome
