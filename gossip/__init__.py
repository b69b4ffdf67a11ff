"""Decentralized learning protocols as pure state machines.

A protocol sees messages, timer ticks and "job finished" events, and answers with actions
(messages to send, models to ship, a merge-and-train job to run). It never touches a socket,
a tensor or the wall clock, so tests drive it with a fake clock and an in-memory network and
assert the exact actions it takes. All four share the node runtime and the wire messages."""

from .base import Action, Dropped, Finished, MergeAndTrain, ModelInfo, Params, ProtocolMachine, PulledVersion, PushModel, Resume, Send, SendModel
from .braintorrent import BrainTorrent, BrainTorrentParams
from .dpsgd import DPSGD, DPSGDParams
from .epidemic import Epidemic, EpidemicParams
from .gossip_learning import GossipLearning, GossipParams

PROTOCOLS: dict[str, tuple[type[ProtocolMachine], type[Params]]] = {
    "braintorrent": (BrainTorrent, BrainTorrentParams),
    "gossip": (GossipLearning, GossipParams),
    "dpsgd": (DPSGD, DPSGDParams),
    "epidemic": (Epidemic, EpidemicParams),
}

__all__ = [
    "PROTOCOLS",
    "Action",
    "BrainTorrent",
    "BrainTorrentParams",
    "DPSGD",
    "DPSGDParams",
    "Dropped",
    "Epidemic",
    "EpidemicParams",
    "Finished",
    "GossipLearning",
    "GossipParams",
    "MergeAndTrain",
    "ModelInfo",
    "Params",
    "ProtocolMachine",
    "PulledVersion",
    "PushModel",
    "Resume",
    "Send",
    "SendModel",
]
