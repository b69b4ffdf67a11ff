"""A deterministic federation of the real protocol state machines: a fake clock, the
in-memory network and the real wire codec. Tests run whole federations on it, and
scripts/simulate_braintorrent.py runs it with real training.

What the runtime does with tensors is a `train` callback: it gets a node's MergeAndTrain
together with the models it names (a `Job`) and returns the node's next model. The default,
`merge_values`, makes a model one float, merged exactly as the learner merges tensors (the
protocol's weighted mean) and never trained, so tests can check the arithmetic by hand.

A model does not travel on the wire; its log entry does, as a JSON stand-in carrying what
the runtime reads from a signed entry (seq, round, samples, age), and the receiver takes the
model the sender published under that seq (the runtime pulls its tensors in chunks,
swarm.transfer; the protocols only see the offer)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from swarm.codec import decode_message, encode_message
from swarm.errors import RejectedMessage
from swarm.messages import ModelPush, ModelReply
from swarm.schedule import Schedule
from swarm.transport import InMemoryNetwork

from .base import Dropped, Finished, MergeAndTrain, ModelInfo, Params, ProtocolMachine, PulledVersion, PushModel, Resume, Send, SendModel
from .braintorrent import BrainTorrent

FEDERATION = bytes(range(32))

M = TypeVar("M")


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Job(Generic[M]):
    """A node's MergeAndTrain with the models it names: what the runtime's learner gets."""

    node: str
    action: MergeAndTrain
    model: M  # the node's latest model; its merge weight is action.self_weight
    pulled: tuple[tuple[PulledVersion, M], ...]  # the staged neighbour models, with their merge weights


Train = Callable[[Job[Any]], Any]


def merge_values(job: Job[float]) -> float:
    """The stand-in learner: the weighted mean of the values (weights normalised, as the
    merge does); no training, so the arithmetic can be checked by hand."""
    if not job.pulled:
        return job.model
    total = job.action.self_weight + sum(p.weight for p, _ in job.pulled)
    return (job.action.self_weight * job.model + sum(p.weight * value for p, value in job.pulled)) / total


def make_protocol(
    cls: type[ProtocolMachine],
    name: str,
    neighbours: Mapping[str, Sequence[str]] | Schedule,
    rounds: int,
    samples: int,
    params: Params,
    rng: random.Random | None = None,
    **resume,
) -> ProtocolMachine:
    """A protocol for member `name` of a federation with these neighbour lists (every
    member's, or a Schedule); `resume` fields (published_seq, merged, ...) as keywords."""
    schedule = neighbours if isinstance(neighbours, Schedule) else Schedule(_symmetric(name, neighbours))
    return cls(name, schedule, rounds, samples, params, rng or random.Random(1), Resume(**resume))


def _symmetric(name: str, neighbours: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Accept just `name`'s list too ({"a": ["b", "c"]}): fill in the other ends."""
    full = {member: list(peers) for member, peers in neighbours.items()}
    for member, peers in list(full.items()):
        for peer in peers:
            full.setdefault(peer, [])
            if member not in full[peer]:
                full[peer].append(member)
    return full


@dataclass
class SimNode:
    name: str
    protocol: ProtocolMachine
    transport: object
    train_seconds: float
    value: Any  # the model: a float by default, whatever `train` returns otherwise
    job: tuple[float, MergeAndTrain] | None = None  # (finishes at, action)
    history: list[MergeAndTrain] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)  # the model after each published round
    dropped: list[str] = field(default_factory=list)
    finished_at: float | None = None
    entry: dict = field(default_factory=dict)  # what our latest "log entry" says
    staged: dict[str, tuple[int, Any]] = field(default_factory=dict)  # peer -> (seq, model)


class Simulation:
    """`values`: each member's initial model (default: its index, as a float); `samples`:
    the training samples each member signs (default 100); `train`: what a finished job
    turns a node's model into (default `merge_values`); `train_seconds`: how long a job
    takes on the fake clock."""

    def __init__(
        self,
        neighbours: Mapping[str, Sequence[str]],
        rounds: int,
        params: Params,
        seed: int = 0,
        train_seconds: float = 0.05,
        protocol: type[ProtocolMachine] = BrainTorrent,
        schedule: Schedule | None = None,
        values: Mapping[str, Any] | None = None,
        samples: Mapping[str, int] | None = None,
        train: Train = merge_values,
    ) -> None:
        self.clock = FakeClock()
        self.network = InMemoryNetwork()
        self.train = train
        self.published: dict[tuple[str, int], Any] = {}  # (member, seq) -> the model it published
        rng = random.Random(seed)
        schedule = schedule or Schedule(neighbours)
        self.nodes = {}
        for i, name in enumerate(neighbours):
            machine = make_protocol(protocol, name, schedule, rounds, (samples or {}).get(name, 100), params, random.Random(rng.random()))
            value = (values or {}).get(name, float(i))
            self.nodes[name] = SimNode(name, machine, self.network.endpoint(name), train_seconds, value)

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
                    self._publish(node)
                self._execute(node, node.protocol.tick(self.clock.now))

    def _publish(self, node: SimNode) -> None:
        _, action = node.job
        node.job = None
        used = [(p, node.staged.pop(p.peer)) for p in action.pulled if p.peer in node.staged]
        node.value = self.train(Job(node.name, action, node.value, tuple((p, model) for p, (_, model) in used)))
        node.values.append(node.value)
        seq = node.protocol.published_seq + 1
        self.published[(node.name, seq)] = node.value
        node.entry = {"seq": seq, "round": action.round, "samples": node.protocol.samples, "age": action.signed.get("age", seq)}
        merged = {p.peer: s for p, (s, _) in used}
        self._execute(node, node.protocol.published(seq, merged, self.clock.now))

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
        now, msg, peer = self.clock.now, decoded.msg, received.peer
        if isinstance(msg, (ModelReply, ModelPush)):
            req = msg.req if isinstance(msg, ModelReply) else None
            wanted = node.protocol.expects_model(peer, req) if req is not None else node.protocol.wants_push(peer)
            if not wanted:
                node.dropped.append("unwanted_model")
                return
            entry = json.loads(msg.entries[-1])
            held = node.staged.get(peer)
            if held is None or entry["seq"] > held[0]:
                node.staged[peer] = (entry["seq"], self.published[(peer, entry["seq"])])
            info = ModelInfo(entry["seq"], entry["round"], entry["samples"], float(entry["age"]))
            self._execute(node, node.protocol.model_arrived(peer, req, info, now))
        else:
            self._execute(node, node.protocol.receive(peer, msg, now))

    def _execute(self, node: SimNode, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                node.transport.send(action.peer, encode_message(FEDERATION, action.msg))
            elif isinstance(action, (SendModel, PushModel)):
                entries = (json.dumps(node.entry).encode(),)
                leaves = (bytes(32),)
                msg = ModelReply(action.req, entries, leaves) if isinstance(action, SendModel) else ModelPush(entries, leaves)
                node.transport.send(action.peer, encode_message(FEDERATION, msg))
            elif isinstance(action, MergeAndTrain):
                node.history.append(action)
                node.job = (self.clock.now + node.train_seconds, action)
            elif isinstance(action, Dropped):
                node.dropped.append(action.reason)
            elif isinstance(action, Finished):
                node.finished_at = self.clock.now
