"""One suite for both transports: what the node runtime relies on."""

from __future__ import annotations

import time

import pytest
import zmq

from swarm.errors import UsageError
from swarm.transport import InMemoryNetwork
from swarm.transport.zeromq import ZmqSettings, ZmqTransport, free_tcp_ports


class InMemoryPair:
    def __init__(self) -> None:
        network = InMemoryNetwork()
        self.a, self.b, self.c = network.endpoint("a"), network.endpoint("b"), network.endpoint("c")

    def close(self) -> None:
        pass


class ZmqPair:
    def __init__(self, settings: ZmqSettings = ZmqSettings()) -> None:
        ports = free_tcp_ports("127.0.0.1", 3)
        endpoints = {name: f"tcp://127.0.0.1:{port}" for name, port in zip("abc", ports)}
        self.context = zmq.Context()
        peers = {"a": ["b"], "b": ["a"], "c": ["a"]}  # c knows a, but a does not list c
        self.a, self.b, self.c = (
            ZmqTransport(n, endpoints[n], {p: endpoints[p] for p in peers[n]}, settings, self.context).open() for n in "abc"
        )
        wait_connected(self.a, "b")
        wait_connected(self.b, "a")

    def close(self) -> None:
        for t in (self.a, self.b, self.c):
            t.close()
        self.context.term()


def wait_connected(transport, peer: str, limit: float = 5.0) -> None:
    """With IMMEDIATE set, sends fail until the TCP connection is up; wait for it (bounded)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if transport.dealers[peer].poll(10, zmq.POLLOUT):
            return
    raise AssertionError(f"{transport.name} never connected to {peer}")


def receive(transport, limit: float = 5.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = transport.receive(0.05)
        if got is not None:
            return got
    return None


@pytest.fixture(params=["inmemory", "zmq"])
def pair(request):
    pair = InMemoryPair() if request.param == "inmemory" else ZmqPair()
    yield pair
    pair.close()


def frame_bytes(frame) -> bytes:
    return bytes(frame.buffer if hasattr(frame, "buffer") else frame)


def test_frames_arrive_whole_in_order_and_name_the_sender(pair):
    payload = [b"header", memoryview(b"x" * 100_000), b""]
    assert pair.a.send("b", payload)
    assert pair.a.send("b", [b"second"])
    got = receive(pair.b)
    assert got.peer == "a" and got.rejected is None
    assert [frame_bytes(f) for f in got.frames] == [b"header", b"x" * 100_000, b""]
    assert [frame_bytes(f) for f in receive(pair.b).frames] == [b"second"]
    assert pair.b.send("a", [b"reply"])
    assert receive(pair.a).peer == "b"


def test_sending_to_an_unknown_peer_fails_without_blocking(pair):
    assert pair.a.send("nobody", [b"x"]) is False


def test_receive_times_out_with_none(pair):
    started = time.monotonic()
    assert pair.a.receive(0.05) is None
    assert time.monotonic() - started < 1.0


def test_zmq_refuses_senders_that_are_not_neighbours():
    pair = ZmqPair()
    try:
        wait_connected(pair.c, "a")
        assert pair.c.send("a", [b"hello"])
        got = receive(pair.a)
        assert got.peer == "c" and got.rejected == "not_a_neighbour" and got.frames == []
    finally:
        pair.close()


def test_zmq_caps_frames_per_message_and_drops_the_rest():
    pair = ZmqPair(ZmqSettings(max_frames=3))
    try:
        assert pair.b.send("a", [b"f"] * 10)
        assert pair.b.send("a", [b"ok"])
        got = receive(pair.a)
        assert got.rejected == "too_many_frames"
        assert [frame_bytes(f) for f in receive(pair.a).frames] == [b"ok"]  # the stream stays in sync
    finally:
        pair.close()


def test_zmq_drops_frames_over_the_size_limit():
    pair = ZmqPair(ZmqSettings(max_frame_bytes=1024))
    try:
        assert pair.b.send("a", [b"x" * 4096])  # the receiver's MAXMSGSIZE cuts the connection
        time.sleep(0.3)
        wait_connected(pair.b, "a")  # the DEALER reconnects
        assert pair.b.send("a", [b"small"])
        got = receive(pair.a)
        assert got is not None and [frame_bytes(f) for f in got.frames] == [b"small"]
        assert receive(pair.a, limit=0.3) is None  # the oversized message never arrived
    finally:
        pair.close()


def test_zmq_port_in_use_is_a_usage_error():
    port = free_tcp_ports("127.0.0.1", 1)[0]
    first = ZmqTransport("a", f"tcp://127.0.0.1:{port}", {}).open()
    try:
        with pytest.raises(UsageError, match="port is in use"):
            ZmqTransport("b", f"tcp://127.0.0.1:{port}", {}).open()
    finally:
        first.close()


def test_a_tracked_send_says_when_the_transport_let_go_of_the_callers_memory(pair):
    data = bytearray(b"y" * 1_000_000)  # zero-copy over ZeroMQ: the socket reads this memory
    released = pair.a.send_tracked("b", [b"header", memoryview(data), b"tail"])
    assert released is not None
    got = receive(pair.b)
    assert got is not None and [frame_bytes(f) for f in got.frames] == [b"header", bytes(data), b"tail"]
    deadline = time.monotonic() + 10
    while not released():  # sent: libzmq releases the frames soon after
        assert time.monotonic() < deadline, "the transport never let go of the frames"
        time.sleep(0.01)
    assert pair.a.send_tracked("nobody", [b"x"]) is None
