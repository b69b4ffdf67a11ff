"""Decentralized learning protocols as pure state machines.

A protocol sees messages, timer ticks and "job finished" events, and answers with actions
(messages to send, models to ship, a merge-and-train job to run). It never touches a socket,
a tensor or the wall clock, so tests drive it with a fake clock and an in-memory network and
assert the exact actions it takes."""

from .base import Action, Dropped, Finished, MergeAndTrain, Send, SendModel
from .braintorrent import BrainTorrent, BrainTorrentParams

PROTOCOLS = {"braintorrent": (BrainTorrent, BrainTorrentParams)}

__all__ = [
    "PROTOCOLS",
    "Action",
    "BrainTorrent",
    "BrainTorrentParams",
    "Dropped",
    "Finished",
    "MergeAndTrain",
    "Send",
    "SendModel",
]
