"""The node runtime: joins a protocol, a transport, a version store and a learner.

One thread owns the sockets and the protocol; merge+train runs in a worker thread so the
node keeps answering its neighbours while it trains. Everything a neighbour sends is decoded
with limits and verified before it can reach the model; anything refused is logged (rate
limited) and counted, never raised."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path


from gossip.base import ANNOUNCEMENT, Action, Dropped, Finished, MergeAndTrain, ModelInfo, ProtocolMachine, PulledVersion, PushModel, Send, SendModel
from swarm.codec import Limits, decode_message, encode_message
from swarm.errors import LogError, RejectedMessage, resource_error
from swarm.log import ParentRef, SignedEntry
from swarm.evidence import EvidenceStore, ForkEvidence
from swarm.manifest import Manifest, SignedManifest
from swarm.messages import Chunk, ChunkRefusal, ChunkRequest, Evidence, ManifestUpdate, ModelPush, ModelReply, Refusal, VersionReply
from swarm.tensors import flatten_state, leaf_hashes, rebuild_state
from swarm.transfer import Offered, TransferSettings, TransferStalled
from swarm.transport.base import Received, Transport

from .backoff import PeerBackoff
from .learner import Learner, RoundResult
from .records import RejectionLog, append_metrics_line, disk_free_bytes, metrics_line, peak_rss_bytes, write_status
from .manifest_sync import ManifestSync, update_message, version_change
from .round_timer import RoundTimer
from .store import ForkDetected, VersionStore
from .transfers import Pull, Transfers
from .verification import Verifier
from .watch import Watch

log = logging.getLogger("swarm.node")

MAX_ENTRIES_PER_REPLY = 1024
UNREACHABLE_S = 2.0  # a pull whose sender has had no connection this long is put aside (reconnects take ~0.1 s)
AGE = "age"  # gossip learning's signed model age; see gossip.gossip_learning


@dataclass
class Staged:
    entry: SignedEntry
    state: dict  # rebuilt tensors of the pulled model (views of `buffers`)
    buffers: list  # the transfer's buffers, recycled for the next pull once merged


@dataclass
class NodeOutcome:
    state: str  # "finished" or "stopped"
    published_seq: int
    rejected: dict[str, int] = field(default_factory=dict)


class Node:
    def __init__(
        self,
        manifest: Manifest,
        name: str,
        protocol: ProtocolMachine,
        store: VersionStore,
        learner: Learner,
        transport: Transport,
        metrics_path: Path,
        status_path: Path,
        clock: Callable[[], float] = time.monotonic,
        limits: Limits = Limits(),
        manifests: ManifestSync | None = None,
        transfer: TransferSettings = TransferSettings(),
    ) -> None:
        self.name = name
        self.protocol = protocol
        self.store = store
        self.learner = learner
        self.transport = transport
        self.metrics_path = metrics_path
        self.status_path = status_path
        self.clock = clock
        self.limits = limits
        self.federation = manifest.federation_id
        self.rejections = RejectionLog(clock, set(protocol.neighbours))
        self.backoff = PeerBackoff()
        self.evidence = EvidenceStore(store.site.evidence_dir, manifest)
        self.dropped: Counter[str] = Counter()
        self.staged: dict[str, Staged] = {}
        self.job: Future[RoundResult] | None = None
        self.job_pulled: list[Staged] = []
        self.job_signed: dict[str, float] = {}
        self.timer = RoundTimer(clock)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"train-{name}_")
        # Every member trains the plan's model: a neighbour's model must have exactly its
        # tensor names, dtypes and shapes, or merging it would fail (or be meaningless).
        self.expected_specs = flatten_state(learner.shared_state()).specs
        self.transfers = Transfers(self.expected_specs, transfer, clock)
        self.transfers.load(store.site.incoming_dir, protocol.neighbours)
        self.verifier = Verifier(store, self.evidence, self.transfers)
        self.started = clock()
        self.manifests = manifests  # None: the manifest never changes while this node runs
        versions = [v.manifest for v in manifests.history.versions] if manifests else [manifest]
        self.names = {m.signing_key: m.name for v in versions for m in v.members}  # every key any version listed
        self.former_members = {m.name for v in versions for m in v.members} - {m.name for m in manifest.members}
        self.halted: str | None = None  # why this node stopped early (a manifest version it cannot run under)
        self.last_heard: dict[str, float] = {}  # neighbour -> wall-clock time of its last message
        self.last_published: float | None = None  # wall-clock time of the last publish
        self.round_seconds: list[float] = []  # wall time of each round this run (a plan has at most 1000)
        self.watch = Watch(protocol.neighbours, clock())
        self._unreachable: dict[str, float] = {}  # pulling from this neighbour, without a connection since
        self.snapshot: dict = {}  # the latest status document (see _snapshot)
        self._snapshot_at = -1e18

    @property
    def manifest(self) -> Manifest:
        """The manifest version this node runs under: the store's, which checks every
        neighbour's entries against it (ManifestSync keeps the signed history)."""
        return self.store.manifest

    # -- main loop -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> NodeOutcome:
        """Run until the plan is done, `stop` is set, or a manifest version halts the node.
        A resource the machine refuses (a full disk, a permission) stops it with a
        ResourceError naming the path and the fix; status.json says so where it can."""
        try:
            return self._run(stop)
        except OSError as exc:
            error = resource_error(exc)
            if error is None:
                raise
            log.error("stopping: %s", error)
            try:
                self._write_status("stopped", error=str(error))
            except OSError:  # the same full disk, most likely: the log line above must do
                pass
            raise error from None

    def _run(self, stop: threading.Event) -> NodeOutcome:
        latest = self.store.latest
        if latest is not None:
            state = rebuild_state(latest.flat, copy=True)
            if latest.local_flat is not None:
                state |= rebuild_state(latest.local_flat, copy=True)
            self.learner.load(state)
            self.transfers.offer(Offered(latest.flat, leaf_hashes(latest.flat), latest.entry.body.digest))
            log.info("resuming from published version %d", self.store.latest.entry.seq)
        self._write_status("running")
        self._execute(self.protocol.start(self.clock()))
        try:
            while not self.protocol.finished and not stop.is_set() and self.halted is None:
                self._step()
            if self.job is not None:  # stopping mid-round: finish and publish what is training
                self.job.result()
                self._finish_round()
        finally:
            self.executor.shutdown(wait=True)
            if not self.protocol.finished:  # pulls cut by the stop resume after a restart
                self.transfers.save(self.store.site.incoming_dir)
        state = "finished" if self.protocol.finished else "stopped"
        self._write_status(state)
        return NodeOutcome(state, self.protocol.published_seq, dict(self.rejections.counts))

    def _step(self) -> None:
        deadline = self.protocol.next_deadline()
        wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - self.clock()))
        if self.job is not None and self.job.done():
            wait = 0.0
        # A finished training job wakes the transport (see _start_round), so no busy polling.
        received = self.transport.receive(wait)
        self.timer.charge(self.protocol.activity)
        if received is not None:
            self._on_received(received)
        if self.job is not None and self.job.done():
            self._finish_round()
        self._watch_pulls()
        self._request_chunks()
        self._execute(self.protocol.tick(self.clock()))
        self._log_suspicions()
        if self.manifests is not None:
            self._follow_manifests()
        if self.clock() - self._snapshot_at >= 1.0:  # fresh enough for a scrape, cheap enough to build
            snapshot = self._snapshot("running")
            for line in [*self.watch.check(self.clock()), self.watch.disk(snapshot["disk_free_bytes"])]:
                if line:
                    log.warning(line)

    def _log_suspicions(self) -> None:
        for peer, suspected, _ in self.protocol.liveness.drain_changes():
            if suspected:
                log.warning("%s did not answer in time: suspected; rounds go on without it, asking it every %.0f s whether it is back",
                            peer, self.protocol.params.probe_interval)
            else:
                log.info("%s answers again: back in rounds", peer)

    # -- incoming --------------------------------------------------------------------------------

    def _on_received(self, received: Received) -> None:
        peer = received.peer
        if peer in self.former_members:  # removed by a manifest version; its connection may linger
            self._reject(peer, "not_a_member")
            return
        if self.backoff.blocked(peer, self.clock()):
            self.rejections.counts["peer_in_backoff"] += 1  # dropped unread; logged when it began
            return
        if received.rejected:
            self._reject(peer, received.rejected)
            return
        if peer in self.rejections.known_peers:  # authenticated by the transport: it is alive
            self.last_heard[peer] = time.time()
            back = self.watch.heard(peer, self.clock())
            if back:
                log.info(back)
            self._execute(self.protocol.heard(peer, self.clock()))
        try:
            decoded = decode_message(received.frames, self.federation, self.limits)
        except RejectedMessage as exc:
            self._reject(peer, exc.reason, exc.detail)
            return
        msg = decoded.msg
        if isinstance(msg, ModelReply):
            if not self.protocol.expects_model(peer, msg.req):
                self._execute([Dropped(peer, "stale_model_reply")])
                return
            self._on_offer(peer, msg.req, msg.entries, msg.leaves)
        elif isinstance(msg, ModelPush):
            if not self.protocol.wants_push(peer):
                self._execute([Dropped(peer, "unwanted_push")])
                return
            self._on_offer(peer, None, msg.entries, msg.leaves)
        elif isinstance(msg, ChunkRequest):
            self._on_chunk_request(peer, msg)
        elif isinstance(msg, Chunk):
            self._on_chunk(peer, msg, decoded.data)
        elif isinstance(msg, ChunkRefusal):
            self._on_chunk_refusal(peer, msg)
        elif isinstance(msg, Evidence):
            self._on_evidence(peer, msg)
        elif isinstance(msg, ManifestUpdate):
            self._on_manifest(peer, msg)
        else:
            self._execute(self.protocol.receive(peer, msg, self.clock()))

    # -- model transfers (swarm.transfer) ----------------------------------------------------------

    def _on_offer(self, peer: str, req: int | None, entries: tuple[bytes, ...], leaves: tuple[bytes, ...]) -> None:
        """A model reply (to `req`) or push (None) offers a version: verify its entries'
        signatures and chain, and that the offered leaf hashes make up the signed digest,
        then pull the tensors chunk by chunk (or resume pulling them)."""
        with self.timer.measure("verify", self.protocol.activity):
            try:
                self.verifier.offer(peer, req, entries, leaves)
            except ForkDetected as exc:
                self._on_fork(peer, exc)
                self._execute(self.protocol.model_failed(peer, req, "fork", self.clock()))
                return
            except (RejectedMessage, LogError) as exc:
                self._reject(peer, exc.reason, exc.detail)
                self._execute(self.protocol.model_failed(peer, req, exc.reason, self.clock()))
                return
        self._request_chunks(peer)

    def _request_chunks(self, only: str | None = None) -> None:
        """Keep each active pull's window of chunk requests full, asking again for chunks
        that did not come in time."""
        now = self.clock()
        for peer, pull in list(self.transfers.pulls.items()):
            if not pull.active or (only is not None and peer != only):
                continue
            try:
                wanted = pull.transfer.requests(now)
            except TransferStalled as exc:
                self._pull_failed(pull, "transfer_stalled", str(exc))
                continue
            for position, (first, count) in enumerate(wanted):
                if not self._send(peer, encode_message(self.federation, ChunkRequest(pull.transfer.digest, first, count))):
                    for unsent, _ in reversed(wanted[position:]):  # not connected now: ask on a later step
                        pull.transfer.not_sent(unsent)
                    break

    def _watch_pulls(self) -> None:
        """A neighbour that died while we wait for its model (its offer or its chunks), or
        whose link is cut, loses its connection: after UNREACHABLE_S put the pull aside,
        suspect the neighbour and let the round go on without it, rather than wait out chunk
        time-outs or the protocol's pull time-out."""
        now = self.clock()
        waiting = {peer: pull.req for peer, pull in self.transfers.pulls.items() if pull.active}
        for peer, req in self.protocol.awaiting_models().items():
            waiting.setdefault(peer, req)
        for peer in list(self._unreachable):
            if peer not in waiting:
                del self._unreachable[peer]
        for peer, req in waiting.items():
            if self.transport.connected(peer):
                self._unreachable.pop(peer, None)
                continue
            since = self._unreachable.setdefault(peer, now)
            if now - since < UNREACHABLE_S:
                continue
            del self._unreachable[peer]
            self.protocol.liveness.missed(peer, now)
            pull = self.transfers.pulls.get(peer)
            if pull is not None and pull.active:
                self._pull_failed(pull, "peer_unreachable", f"no connection to {peer} for {now - since:.0f} s")
            elif req is not None:  # asked for its model, no offer yet
                log.info("%s lost its connection before offering its model: the round goes on without it", peer)
                self._execute(self.protocol.model_failed(peer, req, "peer_unreachable", now))

    def _on_chunk_request(self, peer: str, msg: ChunkRequest) -> None:
        if peer in self.former_members or self.backoff.blocked(peer, self.clock()):
            self.dropped["chunk_not_served"] += 1
            return

        def send(frames: list) -> Callable[[], bool] | None:
            return self.transport.send_tracked(peer, encode_message(self.federation, Chunk(msg.digest, msg.first, msg.count), frames, self.limits))

        with self.timer.measure("transfer", self.protocol.activity):
            try:
                sent = self.transfers.serve(peer, msg.digest, msg.first, msg.count, send)
            except RejectedMessage as exc:
                self._reject(peer, exc.reason, exc.detail)
                return
        if sent is None:  # we published since offering it: the neighbour asks anew
            self.dropped["version_gone"] += 1
            self._send(peer, encode_message(self.federation, ChunkRefusal(msg.digest, "version_gone")))
        elif not sent:
            self.dropped["send_failed"] += 1

    def _on_chunk(self, peer: str, msg: Chunk, data: Sequence) -> None:
        with self.timer.measure("transfer", self.protocol.activity):
            try:
                pull = self.transfers.accept(peer, msg, data)
            except TransferStalled as exc:
                self._pull_failed(self.transfers.pulls[peer], "transfer_stalled", str(exc))
                return
            except RejectedMessage as exc:
                self._reject(peer, exc.reason, exc.detail)
                self._request_chunks(peer)  # a refused chunk is asked for again
                return
        if pull is None:
            self._request_chunks(peer)
        else:
            self._on_model(pull)

    def _on_chunk_refusal(self, peer: str, msg: ChunkRefusal) -> None:
        pull = self.transfers.pulls.get(peer)
        if pull is None or pull.transfer.digest != msg.digest:
            self.dropped["stale_chunk_refusal"] += 1
            return
        self.transfers.end(peer)
        self._execute(self.protocol.model_failed(peer, pull.req, msg.reason, self.clock()))

    def _pull_failed(self, pull: Pull, reason: str, detail: str) -> None:
        """The sender stopped answering: tell the protocol, keep what arrived for a resume."""
        log.info("pulling %s's version %d paused: %s (%d of %d bytes kept for a resume)", pull.peer, pull.last.seq, detail, pull.transfer.bytes_received, pull.transfer.total_bytes)
        self.transfers.pause(pull.peer)
        self.transfers.counts["paused"] += 1
        self._execute(self.protocol.model_failed(pull.peer, pull.req, reason, self.clock()))

    def _on_model(self, pull: Pull) -> None:
        """Every chunk of `pull` arrived and matched its signed leaf hash: check the weights
        are finite, then log the entries and tell the protocol."""
        peer, req, last = pull.peer, pull.req, pull.last
        with self.timer.measure("verify", self.protocol.activity):
            try:
                state = self.verifier.model(pull)
            except (RejectedMessage, LogError) as exc:
                self._reject(peer, exc.reason, exc.detail)
                self._execute(self.protocol.model_failed(peer, req, exc.reason, self.clock()))
                return
        held = self.staged.get(peer)
        if held is None or last.seq > held.entry.seq:  # keep the newest verified model per neighbour
            self.staged[peer] = Staged(last, state, pull.transfer.tensors)
        body = last.body
        info = ModelInfo(last.seq, body.round, body.samples, float(body.metrics.get(AGE, last.seq)))
        self._execute(self.protocol.model_arrived(peer, req, info, self.clock()))

    # -- equivocation ----------------------------------------------------------------------------

    def _on_fork(self, peer: str, fork: ForkDetected) -> None:
        """A neighbour sent an entry that contradicts one we hold. If both are signed by it,
        that is proof of equivocation: keep it, quarantine the author, tell the neighbours."""
        try:
            evidence = self.verifier.fork(peer, fork)
        except LogError as exc:  # e.g. someone else's signature: a forgery, not a fork
            self._reject(peer, exc.reason, exc.detail)
            return
        self._reject(peer, "fork", fork.detail)
        self._keep_evidence(evidence, source=None)

    def _on_evidence(self, peer: str, msg: Evidence) -> None:
        try:
            evidence = self.verifier.evidence_from(msg.entries)
        except LogError as exc:
            self._reject(peer, "bad_evidence", exc.detail)
            return
        self._keep_evidence(evidence, source=peer)

    def _keep_evidence(self, evidence: ForkEvidence, source: str | None) -> None:
        if not self.evidence.record(evidence):
            return  # known already: passed on when it was new, so the flood stops here
        how = f"evidence from {source}" if source else "it sent us two different entries"
        log.warning("quarantining %s: it signed two different entries for seq %d (%s); no further merges of its models", evidence.author, evidence.seq, how)
        self.staged.pop(evidence.author, None)
        self.transfers.forget(evidence.author)
        frames = encode_message(self.federation, Evidence(evidence.envelopes))
        for peer in self.protocol.neighbours:
            if peer not in (source, evidence.author):
                self._send(peer, frames)

    # -- manifest versions -----------------------------------------------------------------------

    def _on_manifest(self, peer: str, msg: ManifestUpdate) -> None:
        if self.manifests is None:
            self.dropped["manifest_ignored"] += 1
            return
        result = self.manifests.receive(peer, msg)
        if result.rejected is not None:
            self._reject(peer, *result.rejected)
        if result.dropped is not None:
            self.dropped[result.dropped] += 1
        if result.equivocation is not None:
            self.rejections.counts["manifest_equivocation"] += 1
            log.error("MANIFEST EQUIVOCATION (from %s): %s", peer, result.equivocation)
        for signed in result.reply:
            self._send(peer, encode_message(self.federation, update_message(signed)))
        for signed in result.adopted:
            self._adopt(signed, peer)

    def _follow_manifests(self) -> None:
        assert self.manifests is not None
        for signed in self.manifests.poll_disk():
            self._adopt(signed, None)
        if self.manifests.announce_due():
            self._announce(self.manifests.current)

    def _announce(self, signed: SignedManifest, skip: str | None = None, removed: Sequence[str] = ()) -> None:
        """Send `signed` to the neighbours that are members of it (and, once, to those it
        removes, so that they stop)."""
        frames = encode_message(self.federation, update_message(signed))
        for peer in self.protocol.neighbours:
            if peer != skip and (signed.manifest.member_or_none(peer) is not None or peer in removed):
                self._send(peer, frames)

    def _adopt(self, signed: SignedManifest, sender: str | None) -> None:
        """Run under version `signed` from now on, as far as a running node can (see
        docs/ARCHITECTURE.md, "Manifest versions"): removed members and revoked keys are
        refused at once; what needs new sockets, keys or a new plan waits for a restart."""
        new = signed.manifest
        change = version_change(self.manifest, new, self.name)
        if self.manifests is not None:
            self._announce(signed, skip=sender, removed=change.removed)
            self.manifests.adopted_now()
        self.store.use_manifest(new, [v.manifest for v in self.manifests.history.versions] if self.manifests else [new])
        self.names |= {m.signing_key: m.name for m in new.members}
        self.former_members = (self.former_members | set(change.removed)) - {m.name for m in new.members}
        still = [p for p in self.protocol.neighbours if new.member_or_none(p) is not None]
        self.transport.update_links({p: new.member(p).endpoint for p in still}, {p: new.member(p).transport_key for p in still})
        for name in change.removed:
            self.staged.pop(name, None)
            self.transfers.forget(name)
            if name in self.protocol.neighbours:
                # For the protocol a removed member is a neighbour that finished with nothing
                # more to give: no round waits for it, and lingering does not either.
                self._execute(self.protocol.receive(name, VersionReply(ANNOUNCEMENT, 0, 0, True), self.clock()))
        source = f"from {sender}" if sender else "installed in the site"
        log.info("adopted manifest version %d (%s; %s; threshold %d)", new.version, source, change.summary(), new.threshold)
        for sentence in change.later:
            log.warning("manifest version %d brings %s", new.version, sentence)
        self.halted = change.halt
        if change.halt == "removed":
            log.error("this site is not a member of manifest version %d: stopping; it can no longer take part in this federation", new.version)
        elif change.halt == "own_card_changed":
            log.warning("manifest version %d changes this site's own keys or endpoint: stopping; put the new keys in the site's keys/ (and the endpoint in site.toml) and start the node again", new.version)
        self._write_status("running")

    # -- actions ---------------------------------------------------------------------------------

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action.peer, encode_message(self.federation, action.msg))
            elif isinstance(action, SendModel):
                self._send_model(action.peer, action.have, action.req)
            elif isinstance(action, PushModel):
                self._send_model(action.peer, action.have, None)
            elif isinstance(action, MergeAndTrain):
                self._start_round(action)
            elif isinstance(action, Dropped):
                self.dropped[action.reason] += 1
                log.debug("dropped message from %s: %s", action.peer, action.reason)
            elif isinstance(action, Finished):
                log.info("plan finished at version %d", self.protocol.published_seq)

    def _reject(self, peer: str, reason: str, detail: str = "") -> None:
        self.rejections.reject(peer, reason, detail)
        if peer in self.rejections.known_peers:  # strangers are refused by the transport already
            seconds = self.backoff.strike(peer, self.clock())
            if seconds is not None:
                log.warning("ignoring %s for %.0f s: it keeps sending messages we reject (last: %s)", peer, seconds, reason)

    def _send(self, peer: str, frames: list) -> bool:
        if peer in self.former_members:
            self.dropped["not_a_member"] += 1
            return False
        if self.backoff.blocked(peer, self.clock()):
            self.dropped["peer_in_backoff"] += 1
            return False
        if not self.transport.send(peer, frames):
            self.dropped["send_failed"] += 1
            log.debug("could not queue a message to %s (not connected or queue full)", peer)
            return False
        return True

    def _send_model(self, peer: str, have: int, req: int | None) -> None:
        """Offer our latest published model with the log entries after `have` (what `peer`
        holds), as the reply to model request `req` or as a push (None); the neighbour
        pulls the tensors in chunks."""
        latest = self.store.latest
        assert latest is not None, "the protocol only sends models after publishing"
        offered = self.transfers.offered.get(latest.entry.body.digest)
        if offered is None:  # its snapshot is being overwritten by the next version's
            self.dropped["publishing"] += 1
            if req is not None:
                self._send(peer, encode_message(self.federation, Refusal(req, "publishing")))
            return
        with self.timer.measure("transfer", self.protocol.activity):
            entries = self.store.entries_after(have, MAX_ENTRIES_PER_REPLY)
            msg = ModelReply(req, tuple(entries), offered.hashes) if req is not None else ModelPush(tuple(entries), offered.hashes)
            if latest.entry.author != self.store.key.public:
                # Our latest version was signed with the key a manifest version replaced
                # (we restarted with new keys): neighbours take entries signed with an earlier
                # key only with one signed with our current key after them (swarm.log.chain),
                # so until we publish again there is nothing they could accept.
                self.dropped["head_under_old_key"] += 1
                if isinstance(msg, ModelReply):
                    self._send(peer, encode_message(self.federation, Refusal(msg.req, "head_under_old_key")))
                return
            try:
                frames = encode_message(self.federation, msg, limits=self.limits)
            except ValueError as exc:  # e.g. the entries would not fit the header limit
                log.warning("cannot send our model to %s: %s", peer, exc)
                self.dropped["reply_too_large"] += 1
                if not isinstance(msg, ModelReply):
                    return
                frames = encode_message(self.federation, Refusal(msg.req, "reply_too_large"))
                self._send(peer, frames)
                return
            if self._send(peer, frames):
                self.transfers.offered_to(peer, offered.digest)

    def _start_round(self, action: MergeAndTrain) -> None:
        used: list[tuple[PulledVersion, Staged]] = [(p, self.staged.pop(p.peer)) for p in action.pulled if p.peer in self.staged]
        self.job_pulled = [staged for _, staged in used]
        self.job_signed = dict(action.signed)
        pulled_states = [(p.weight, staged.state) for p, staged in used]
        self.job = self.executor.submit(self.learner.run_round, action.round, pulled_states, action.self_weight, self.transfers.reclaim)
        self.job.add_done_callback(lambda _: self.transport.wake())

    def _finish_round(self) -> None:
        assert self.job is not None
        # Received models were checked against the plan's specs before staging, so an
        # exception here is a bug in merging or training: let it surface.
        result = self.job.result()
        self.job = None
        with self.timer.measure("publish", self.protocol.activity):
            previous = self.store.latest
            parents = [ParentRef(previous.entry.body.author, previous.entry.seq, previous.entry.body.digest)] if previous else []
            if result.merge_skipped:  # too few models for the merge rule: none was used
                self.job_pulled = []
            parents += [ParentRef(s.entry.body.author, s.entry.seq, s.entry.body.digest) for s in self.job_pulled]
            metrics = result.metrics | self.job_signed
            published = self.store.publish(result.round, result.flat, result.digest, self.learner.samples, parents, metrics, result.local_flat)
            self.transfers.offer(Offered(result.flat, result.leaves, result.digest, result.snapshot))
        merged = {self.names[s.entry.body.author]: s.entry.seq for s in self.job_pulled}
        spent = self.timer.take(self.protocol.activity)
        self._append_metrics(result, metrics, published.entry.seq, merged, spent)
        self.last_published = time.time()
        self.round_seconds.append(sum(spent.values()) + sum(result.timings.values()))
        alone = self.watch.round(merged)
        if alone:
            log.warning(alone)
        score = next((f"{key} {metrics[key]:.3f}" for key in ("accuracy", "dice") if key in metrics), "")
        log.info("round %d: published version %d, merged %s%s; %.1f s", result.round, published.entry.seq,
                 ", ".join(f"{peer}#{seq}" for peer, seq in sorted(merged.items())) or "nothing (trained alone)",
                 f"; {score}" if score else "", self.round_seconds[-1])
        if self.job_pulled:  # merged: the learner keeps no reference to the pulled tensors
            self.transfers.recycle(self.job_pulled[-1].buffers)
        self.job_pulled = []
        self._execute(self.protocol.published(published.entry.seq, merged, self.clock()))
        # Staged models no newer than what we merged from their author are of no further use.
        for peer in [p for p, staged in self.staged.items() if staged.entry.seq <= self.protocol.merged.get(p, 0)]:
            del self.staged[peer]
        self._write_status("running")

    # -- records ---------------------------------------------------------------------------------

    def _append_metrics(self, result: RoundResult, metrics: dict[str, float], seq: int, merged: dict[str, int], spent: dict[str, float]) -> None:
        line = metrics_line(
            self.name, result.round, seq, self.clock() - self.started, metrics, self.learner.samples, merged,
            sum(self.transport.bytes_sent.values()), sum(self.transport.bytes_received.values()), spent | result.timings,
        )
        append_metrics_line(self.metrics_path, line)

    def _write_status(self, state: str, error: str | None = None) -> None:
        write_status(self.status_path, self._snapshot(state, error))

    def _snapshot(self, state: str, error: str | None = None) -> dict:
        """What status.json says; also kept as `self.snapshot` for readers in other threads
        (the Prometheus exporter), replaced whole so that they never see it half-built."""
        heads = self.store.peer_heads()
        status = {
            "node": self.name,
            "state": state,
            **({"error": error} if error else {}),
            "published_seq": self.protocol.published_seq,
            "rounds": self.protocol.rounds,
            "rejected": dict(self.rejections.counts),
            "rejected_by_peer": {peer: dict(counts) for peer, counts in sorted(self.rejections.by_peer.items())},
            "quarantined": sorted(self.evidence.quarantined),
            "manifest_version": self.manifest.version,
            **({"halted": self.halted} if self.halted else {}),
            "dropped": dict(self.dropped),
            "bytes_sent": dict(self.transport.bytes_sent),
            "bytes_received": dict(self.transport.bytes_received),
            "transfers": self.transfers.status(),
            "peak_rss_bytes": peak_rss_bytes(),
            "updated": time.time(),
            "last_published": self.last_published,
            "neighbours": {
                peer: {"last_heard": self.last_heard.get(peer), "head": heads.get(peer, 0), "merged": self.protocol.merged.get(peer, 0),
                       "suspected": peer in self.protocol.suspects}
                for peer in sorted(self.protocol.neighbours)
            },
            "disk_free_bytes": disk_free_bytes(self.store.site.root),
            "round_seconds": list(self.round_seconds),
        }
        self.snapshot, self._snapshot_at = status, self.clock()
        return status
