"""Turning a site directory into a running node, and installing a manifest into a site."""

from __future__ import annotations

import functools
import logging
import os
import random
import resource
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import zmq

from gossip.base import Resume
from swarm.codec import Limits
from swarm.errors import ConfigError, ManifestError, SwarmError, UsageError, resource_error
from swarm.identity import SiteKeys, load_site_keys
from swarm.manifest import Manifest, SignedManifest, load_manifest, save_manifest, signatures_path
from swarm.manifest_chain import verify_chain
from swarm.manifest_history import ManifestHistory, load_versions
from swarm.schedule import Schedule
from swarm.tensors import FlatModel, flatten_state, leaf_count
from swarm.messages import MAX_CHUNK_LEAVES
from swarm.transfer import TransferSettings
from swarm.transport.base import Transport
from swarm.transport.zap import ZapAuthenticator
from swarm.transport.zeromq import Curve, ZmqSettings, ZmqTransport

from .learner import Learner, Task
from .manifest_sync import ManifestSync
from .node import Node, NodeOutcome
from .plan import check_plan, protocol_params, task_input_shape
from .prometheus import start_exporter
from .site import SiteConfig, SiteDir
from .store import VersionStore

log = logging.getLogger("swarm.node")


def check_membership(manifest: Manifest, config: SiteConfig, keys: SiteKeys) -> None:
    member = manifest.member(config.name)
    if member.signing_key != keys.signing.public:
        raise ManifestError(f"manifest: the signing key listed for {config.name!r} is not this site's key; wrong --site or wrong manifest?")
    if member.transport_key != keys.transport_public.decode():
        raise ManifestError(f"manifest: the transport key listed for {config.name!r} is not this site's key; wrong --site or wrong manifest?")
    if member.reachable != (config.endpoint is not None):
        raise ManifestError(
            f"manifest: {config.name!r} is listed as {'reachable at ' + str(member.endpoint) if member.reachable else 'outbound-only'} but site.toml [node] "
            f"{'has reachable = false' if member.reachable else 'gives an endpoint'}; make site.toml match the member card the federation signed")


def install_manifest(manifest_path: Path, site_root: Path, history: Sequence[Path] = ()) -> SignedManifest:
    """Verify a manifest and add it to the site. Version 1 must be signed by every member;
    a later version is checked against the version before it, taken from the site or from
    `history` (files or directories of the earlier versions, for a site that joins). A
    node running at the site picks a new version up within a second."""
    signed = load_manifest(manifest_path)
    if signed.manifest.version > 1:
        return _install_version(signed, SiteDir(site_root), load_versions(list(history)))
    site = SiteDir(site_root)
    config = site.load_config()
    keys = load_site_keys(site.keys_dir)
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


def _install_version(signed: SignedManifest, site: SiteDir, earlier: list[SignedManifest]) -> SignedManifest:
    config = site.load_config()
    number = signed.manifest.version
    if signed.manifest.member_or_none(config.name) is None:
        raise ManifestError(f"manifest.members: {config.name!r} is not a member of version {number}; a site installs only versions it belongs to")
    check_plan(signed.manifest.plan)
    if not site.manifest_path.exists():  # a joining site: the whole history comes with it
        chain = [v for v in earlier if v.manifest.version < number]
        verify_chain([*chain, signed])
        site.manifest_path.parent.mkdir(parents=True, exist_ok=True)
        save_manifest(site.manifest_path, chain[0])
    history = ManifestHistory.open(site.manifest_path, site.evidence_dir)
    if history.versions[0].manifest.federation_id != signed.manifest.federation_id:
        raise ManifestError(f"{site.manifest_path}: this site already belongs to another federation; use a new site directory")
    for version in earlier:
        if history.current.manifest.version < version.manifest.version < number:
            history.add(version)
    history.add(signed)
    return signed


@dataclass(frozen=True)
class Links:
    """What a transport needs to know about a node's neighbours, from the manifest."""

    endpoints: dict[str, str | None]  # neighbour -> endpoint; None: outbound-only, it dials us
    transport_keys: dict[str, str]  # neighbour -> CURVE public key (z85)
    keys: SiteKeys  # this site's own keys


TransportFactory = Callable[[SiteConfig, Links, ZmqSettings], Transport]


def zmq_transport(
    config: SiteConfig,
    links: Links,
    settings: ZmqSettings,
    context: zmq.Context | None = None,
    authenticator: ZapAuthenticator | None = None,
) -> Transport:
    """A ZeroMQ transport; encrypted and limited to the manifest's keys when an
    authenticator (running on `context`) is given, plaintext otherwise."""
    curve = None
    if authenticator is not None:
        curve = Curve(links.keys.transport_public, links.keys.transport_secret, links.transport_keys, authenticator)
    return ZmqTransport(config.name, config.listen, links.endpoints, settings, context, curve, config.socks_proxy).open()


def limits_for(model: FlatModel, transfer: TransferSettings) -> tuple[Limits, ZmqSettings]:
    """Wire limits fitted to the plan's model, which every member trains. Models travel in
    chunks (swarm.transfer), so no frame is larger than a 4 MiB leaf or an offer's header
    (its log entries, 4 MiB at most, and the model's leaf hashes), and libzmq refuses
    anything larger before buffering it. Each neighbour's send queue holds a window of
    chunks and a few small messages; what a connection can make us buffer is bounded by
    the receive high-water mark times the largest message."""
    header = 4 * 1024 * 1024 + 32 * leaf_count(model.specs)
    limits = replace(Limits(), max_header_bytes=header, max_frames=1 + MAX_CHUNK_LEAVES)
    settings = ZmqSettings(
        max_frame_bytes=max(header, limits.max_frame_bytes),
        max_frames=limits.max_frames,
        send_hwm=transfer.window + 8,
        recv_hwm=2 * transfer.window + 8,  # the neighbour's chunks for us and its requests to us
    )
    return limits, settings


LearnerFactory = Callable[[Task, SiteConfig, Path, Mapping[str, str]], Learner]  # (plan's task, site.toml, site directory, hardware)


def honest_learner(task: Task, config: SiteConfig, site_root: Path, hardware: Mapping[str, str]) -> Learner:
    """A hospital's learner. A site.toml with an [attack] table belongs to a scenario's
    simulated Byzantine site (scenarios.byzantine), which a hospital's node never runs."""
    if config.attack:
        raise ConfigError(f"{SiteDir(site_root).config_path} [attack]: simulated attacks run only under swarm-scenario "
                          "(python -m scenarios.worker); remove [attack] from a real site")
    return Learner.for_site(task, config.data, config.name, site_root, hardware)


def open_node(site_root: Path, make_transport: TransportFactory = zmq_transport, device: str | None = None,
              make_learner: LearnerFactory = honest_learner) -> tuple[Node, Transport]:
    """The node of the site at `site_root`; `device` (swarm-node run --device) overrides site.toml's."""
    site = SiteDir(site_root)
    config = site.load_config()
    logging.getLogger().setLevel(config.log_level.upper())
    keys = load_site_keys(site.keys_dir)
    if not site.manifest_path.exists():
        raise ManifestError(f"{site.manifest_path}: no manifest installed; run `swarm-node federation install MANIFEST --site {site.root}`")
    history = ManifestHistory.open(site.manifest_path, site.evidence_dir)
    manifest = history.current.manifest
    check_membership(manifest, config, keys)
    plan = manifest.plan
    task = check_plan(plan)
    torch.set_num_threads(config.threads)
    hardware = config.training | ({"device": device} if device else {})
    learner = make_learner(task, config, site.root, hardware)
    log.info("%s trains on %s%s", config.name, learner.device, f" ({learner.task.training.amp})" if learner.task.training.amp != "none" else "")
    for key, actual, planned in (
        ("input shape", learner.data.input_shape, task_input_shape(plan.task)),
        ("number of classes", learner.data.num_classes, plan.task.get("num_classes")),
    ):
        if actual != planned:
            raise ConfigError(f"data: this site's data has {key} {actual} but the plan's task says {planned}; fix [data] in site.toml")
    schedule = Schedule.from_plan(plan.neighbours, plan.schedule)
    neighbours = list(schedule.peers(config.name))
    limits, settings = limits_for(flatten_state(learner.shared_state()), config.transfer)
    links = Links({p: manifest.member(p).endpoint for p in neighbours}, {p: manifest.member(p).transport_key for p in neighbours}, keys)
    transport = make_transport(config, links, settings)
    try:
        store = VersionStore(site, manifest, keys.signing, neighbours, [v.manifest for v in history.versions])
    except BaseException:
        transport.close()
        raise
    protocol_cls, params = protocol_params(plan.protocol)
    head = store.head
    resume = Resume(
        published_seq=head.seq if head else 0,
        merged=store.merged_versions(),
        peer_heads=store.peer_heads(),
        last_metrics=dict(head.body.metrics) if head else {},
    )
    protocol = protocol_cls(config.name, schedule, plan.rounds, learner.samples, params, random.Random(), resume)
    node = Node(manifest, config.name, protocol, store, learner, transport, site.metrics_path, site.status_path, limits=limits, manifests=ManifestSync(history, time.monotonic), transfer=config.transfer)
    return node, transport


INSECURE_WARNING = (
    "INSECURE MODE (--insecure): CurveZMQ is off. Traffic is plaintext and anyone who can reach "
    "this node's port can send it messages under any member's name. Use only for debugging."
)


def run_site(site_root: Path, insecure: bool = False, device: str | None = None) -> NodeOutcome:
    """Run a site's node until the plan is done or SIGINT/SIGTERM; state is on disk either way."""
    return run_sites([site_root], insecure, device)[0]


def run_sites(site_roots: Sequence[Path], insecure: bool = False, device: str | None = None, metrics: tuple[str, int] | None = None,
              make_learner: LearnerFactory = honest_learner) -> list[NodeOutcome]:
    """Run several sites' nodes in this process, one thread each (a packed scenario worker).
    Each node keeps its own sockets, keys, log and checkpoints; they share one ZeroMQ
    context (one I/O thread), one ZAP authenticator with an allow-list per node, and
    torch's thread pool. With more than one site, each node's log lines also go to its
    own SITE/node.log. `make_learner` builds each site's learner (a scenario's worker
    passes one that also builds simulated Byzantine sites)."""
    raise_fd_limit(sum(fds_needed(root) for root in site_roots) + 64)
    context = zmq.Context()
    context.max_sockets = 65536  # the default (1023) is below a packed worker's socket count
    authenticator = None
    if insecure:
        log.warning(INSECURE_WARNING)
    else:
        authenticator = ZapAuthenticator(context).start()
    opened: list[tuple[Node, Transport]] = []
    handlers: list[logging.Handler] = []
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        log.info("received %s: finishing the current step and shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    outcomes: list[NodeOutcome | None] = [None] * len(site_roots)
    exporter = None
    errors: list[BaseException | None] = [None] * len(site_roots)
    try:
        for root in site_roots:
            try:
                opened.append(open_node(root, functools.partial(zmq_transport, context=context, authenticator=authenticator), device, make_learner))
            except OSError as exc:  # e.g. a log or key file the node may not write
                error = resource_error(exc)
                if error is None:
                    raise
                raise error from None
        if metrics is not None:  # (host, port): the nodes' snapshots for Prometheus
            exporter = start_exporter(metrics[1], metrics[0], lambda: [node.snapshot for node, _ in opened])
            log.info("Prometheus metrics on http://%s:%d/metrics", *metrics)
        if len(opened) > 1:
            handlers = [_node_log_handler(node.name, SiteDir(root).root / "node.log") for (node, _), root in zip(opened, site_roots)]
        elif not _is_stderr(SiteDir(site_roots[0]).root / "node.log"):  # a scenario worker sends stderr there already
            handlers = [_site_log_handler(SiteDir(site_roots[0]).root / "node.log")]

        def run_one(index: int, node: Node) -> None:
            try:
                outcomes[index] = node.run(stop)
            except BaseException as exc:
                errors[index] = exc
                stop.set()  # one node failing stops the others in this process
                if not isinstance(exc, SwarmError):
                    raise  # a bug: the thread prints its traceback

        threads = [threading.Thread(target=run_one, args=(i, node), name=f"node-{node.name}") for i, (node, _) in enumerate(opened)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(0.2)  # short joins: the main thread must stay free for signals
    finally:
        stop.set()
        if exporter is not None:
            exporter.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for node, transport in opened:
            node.store.close()
            transport.close()
        if authenticator is not None:
            authenticator.stop()
        context.term()
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
    results = []
    for error in errors:
        if isinstance(error, SwarmError):  # e.g. a full disk: one line, its own exit code
            raise error
    for (node, _), outcome in zip(opened, outcomes):
        if outcome is None:
            where = "its node.log" if len(opened) > 1 else "the traceback above"
            raise RuntimeError(f"node {node.name} stopped with an error; see {where}")
        log.info("%s %s at version %d; rejected messages: %s", node.name, outcome.state, outcome.published_seq, outcome.rejected or "none")
        results.append(outcome)
    return results


def _site_log_handler(path: Path) -> logging.Handler:
    """A single node's log lines also go to SITE/node.log (the operator's record of the run)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _is_stderr(path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(2), os.stat(path))
    except OSError:
        return False


def _node_log_handler(name: str, path: Path) -> logging.Handler:
    """Route the records of one node's threads (node-NAME and train-NAME_*) to its log file."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(lambda record: record.threadName == f"node-{name}" or record.threadName.startswith(f"train-{name}_"))
    logging.getLogger().addHandler(handler)
    return handler


def fds_needed(site_root: Path) -> int:
    """File descriptors one node holds: per neighbour a socket with its mailbox, the TCP
    connections both ways and a peer log; plus the router, its listener, our own log and
    the wake-up pipe."""
    try:
        manifest = load_manifest(SiteDir(site_root).manifest_path).manifest
        peers = len(manifest.plan.neighbours[SiteDir(site_root).load_config().name])
    except Exception:  # open_node reports a broken site properly; estimate generously here
        peers = 16
    return 5 * peers + 12


def raise_fd_limit(needed: int) -> None:
    """Lift the soft file-descriptor limit to what the nodes need (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise UsageError(
            f"these nodes need about {needed} open files but the hard limit is {hard}; raise it "
            "(`ulimit -Hn`, /etc/security/limits.conf, or LimitNOFILE= for a service) or run fewer nodes per worker (--nodes-per-worker)"
        )
    target = needed if hard == resource.RLIM_INFINITY else min(hard, max(needed, 2 * needed))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot raise the open-file limit from {soft} to {target} ({exc}); raise it with `ulimit -n {target}` or run fewer nodes per worker") from None
    log.info("raised the open-file limit from %d to %d for %d nodes' sockets and logs", soft, target, needed)
