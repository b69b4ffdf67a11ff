"""Transports move raw multipart frames between named members; the codec and the protocol
sit above them. `InMemoryNetwork` and `ZmqTransport` share one interface and one test suite."""

from .base import Received, Transport
from .inmemory import InMemoryNetwork, InMemoryTransport

__all__ = ["InMemoryNetwork", "InMemoryTransport", "Received", "Transport"]
