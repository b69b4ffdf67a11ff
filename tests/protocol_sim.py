"""A deterministic federation of protocol state machines for tests: a fake clock, the
in-memory network, the real wire codec, and instant stand-ins for merging and training.

A "model" here is a one-tensor FlatModel holding (author index, seq), so a test can check
what was pulled without any torch training."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from gossip.base import Dropped, Finished, MergeAndTrain, Send, SendModel
from gossip.braintorrent import BrainTorrent, BrainTorrentParams
from swarm.codec import decode_message, encode_message
from swarm.errors import RejectedMessage
from swarm.messages import ModelReply
from swarm.tensors import flatten_state
from swarm.transport import InMemoryNetwork

FEDERATION = bytes(range(32))


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class SimNode:
    name: str
    protocol: BrainTorrent
    transport: object
    train_seconds: float
    job: tuple[float, MergeAndTrain] | None = None  # (finishes at, action)
    history: list[MergeAndTrain] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    finished_at: float | None = None


class Simulation:
    def __init__(self, neighbours: dict[str, list[str]], rounds: int, params: BrainTorrentParams, seed: int = 0, train_seconds: float = 0.05) -> None:
        self.clock = FakeClock()
        self.network = InMemoryNetwork()
        rng = random.Random(seed)
        self.nodes = {
            name: SimNode(name, BrainTorrent(name, peers, rounds, 100, params, random.Random(rng.random())), self.network.endpoint(name), train_seconds)
            for name, peers in neighbours.items()
        }

    def kill(self, name: str) -> None:
        self.network.down.add(name)
        del self.nodes[name]

    def run(self, until: float) -> None:
        for node in self.nodes.values():
            self._execute(node, node.protocol.start(self.clock.now))
        while self.clock.now < until and not all(n.protocol.finished for n in self.nodes.values()):
            self._deliver_all()
            self.clock.now = min(self._next_event(), until)
            for node in self.nodes.values():
                if node.job and node.job[0] <= self.clock.now:
                    _, action = node.job
                    node.job = None
                    merged = {p.peer: p.seq for p in action.pulled}
                    self._execute(node, node.protocol.published(action.round, merged, self.clock.now))
                self._execute(node, node.protocol.tick(self.clock.now))

    def _next_event(self) -> float:
        times = [n.protocol.next_deadline() for n in self.nodes.values()] + [n.job[0] for n in self.nodes.values() if n.job]
        pending = [t for t in times if t is not None]
        return max(self.clock.now, min(pending)) if pending else self.clock.now + 1.0

    def _deliver_all(self) -> None:
        progressed = True
        while progressed:
            progressed = False
            for node in list(self.nodes.values()):
                received = node.transport.receive(0)
                while received is not None:
                    progressed = True
                    self._on_received(node, received)
                    received = node.transport.receive(0)

    def _on_received(self, node: SimNode, received) -> None:
        try:
            decoded = decode_message(received.frames, FEDERATION)
        except RejectedMessage as exc:
            node.dropped.append(exc.reason)
            return
        now = self.clock.now
        if isinstance(decoded.msg, ModelReply):
            if not node.protocol.expects_model(received.peer, decoded.msg.req):
                node.dropped.append("stale_model_reply")
                return
            seq = int(decoded.msg.entries[-1].decode())
            self._execute(node, node.protocol.model_arrived(received.peer, decoded.msg.req, seq, now))
        else:
            self._execute(node, node.protocol.receive(received.peer, decoded.msg, now))

    def _execute(self, node: SimNode, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                node.transport.send(action.peer, encode_message(FEDERATION, action.msg))
            elif isinstance(action, SendModel):
                seq = node.protocol.published_seq
                model = flatten_state({"version": torch.tensor([seq])})
                reply = ModelReply(action.req, (str(seq).encode(),))
                node.transport.send(action.peer, encode_message(FEDERATION, reply, model))
            elif isinstance(action, MergeAndTrain):
                node.history.append(action)
                node.job = (self.clock.now + node.train_seconds, action)
            elif isinstance(action, Dropped):
                node.dropped.append(action.reason)
            elif isinstance(action, Finished):
                node.finished_at = self.clock.now
