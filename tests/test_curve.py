"""CurveZMQ with the ZAP allow-list: only neighbours listed in the manifest get a message
through, and each message's authenticated sender must match the name it claims. Real
sockets on loopback."""

from __future__ import annotations

import time

import pytest
import zmq
from zmq.utils import z85

from swarm.errors import UsageError
from swarm.transport.zap import ZAP_VERSION, ZapAuthenticator, decide
from swarm.transport.zeromq import Curve, ZmqTransport, free_tcp_ports


def keypair() -> tuple[bytes, bytes]:
    return zmq.curve_keypair()


def test_decide_admits_only_listed_keys_for_the_domain():
    good, _ = keypair()
    allowed = {"a": {z85.decode(good): "b"}}

    def request(domain=b"a", mechanism=b"CURVE", key=z85.decode(good)):
        return [ZAP_VERSION, b"42", domain, b"127.0.0.1", b"", mechanism, key]

    assert decide(request(), allowed) == ([ZAP_VERSION, b"42", b"200", b"OK", b"b", b""], None)
    assert decide(request(key=z85.decode(keypair()[0])), allowed)[1] == "key_not_allowed"
    assert decide(request(domain=b"z"), allowed)[1] == "unknown_domain"
    assert decide(request(mechanism=b"NULL")[:6], allowed)[1] == "not_curve"
    assert decide([ZAP_VERSION, b"1"], allowed)[1] == "malformed_zap_request"
    reply, reason = decide([b"9.9", b"7", b"a", b"", b"", b"CURVE", b"k"], allowed)
    assert reason == "bad_zap_version" and reply[2] == b"400"


@pytest.fixture
def federation():
    """Members a, b, c with CURVE keys; a's neighbours are b and c; everyone on one context."""
    context = zmq.Context()
    auth = ZapAuthenticator(context).start()
    keys = {name: keypair() for name in "abc"}
    ports = dict(zip("abc", free_tcp_ports("127.0.0.1", 3)))
    endpoints = {name: f"tcp://127.0.0.1:{port}" for name, port in ports.items()}
    neighbours = {"a": ["b", "c"], "b": ["a"], "c": ["a"]}
    transports = {}
    for name, peers in neighbours.items():
        curve = Curve(keys[name][0], keys[name][1], {p: keys[p][0].decode() for p in peers}, auth)
        transports[name] = ZmqTransport(name, endpoints[name], {p: endpoints[p] for p in peers}, context=context, curve=curve).open()
    yield transports, keys, endpoints, context, auth
    for transport in transports.values():
        transport.close()
    auth.stop()
    context.term()


def receive_within(transport: ZmqTransport, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        received = transport.receive(0.1)
        if received is not None:
            return received
    return None


def send_until_queued(transport: ZmqTransport, peer: str, frames: list[bytes], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not transport.send(peer, frames):  # IMMEDIATE: queued only once the handshake is done
        assert time.monotonic() < deadline, f"{transport.name} never connected to {peer}"
        time.sleep(0.05)


def test_members_talk_encrypted_and_authenticated(federation):
    transports, *_ = federation
    send_until_queued(transports["b"], "a", [b"hello from b"])
    received = receive_within(transports["a"], 5.0)
    assert received.peer == "b" and received.rejected is None and bytes(received.frames[0]) == b"hello from b"


def test_a_key_outside_the_manifest_gets_nothing_processed(federation):
    transports, keys, endpoints, context, auth = federation
    public, secret = keypair()  # a stranger who knows a's public key and claims to be b
    intruder = context.socket(zmq.DEALER)
    intruder.setsockopt(zmq.ROUTING_ID, b"b")
    intruder.setsockopt(zmq.LINGER, 0)
    intruder.curve_serverkey, intruder.curve_publickey, intruder.curve_secretkey = keys["a"][0], public, secret
    intruder.connect(endpoints["a"])
    plain = context.socket(zmq.DEALER)  # and one without CURVE at all
    plain.setsockopt(zmq.ROUTING_ID, b"c")
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(endpoints["a"])
    try:
        for _ in range(5):
            intruder.send_multipart([b"forged"], flags=zmq.NOBLOCK)
            plain.send_multipart([b"plain"], flags=zmq.NOBLOCK)
        assert receive_within(transports["a"], 2.0) is None
        assert auth.denied["key_not_allowed"] >= 1
    finally:
        intruder.close()
        plain.close()


def test_a_member_cannot_speak_or_be_blamed_under_another_members_name(federation):
    """c is a's neighbour (its key is allowed) and claims b's routing id: what it sends is
    c's, and the real b, connected all along, still gets through as b."""
    transports, keys, endpoints, context, auth = federation
    send_until_queued(transports["b"], "a", [b"hello from b"])
    assert receive_within(transports["a"], 5.0).peer == "b"
    liar = context.socket(zmq.DEALER)
    liar.setsockopt(zmq.ROUTING_ID, b"b")
    liar.setsockopt(zmq.LINGER, 0)
    liar.curve_serverkey, liar.curve_publickey, liar.curve_secretkey = keys["a"][0], keys["c"][0], keys["c"][1]
    liar.connect(endpoints["a"])
    try:
        deadline = time.monotonic() + 5.0
        received = None
        while received is None and time.monotonic() < deadline:
            liar.send_multipart([b"i am b"], flags=zmq.NOBLOCK)
            received = receive_within(transports["a"], 0.3)
        assert received is not None and received.peer == "c" and received.rejected is None
        assert bytes(received.frames[0]) == b"i am b"
        send_until_queued(transports["b"], "a", [b"still b"])
        deadline = time.monotonic() + 5.0
        while (got := receive_within(transports["a"], 0.3)) is None or got.peer != "b":
            assert time.monotonic() < deadline, "the real b was cut off by c's claim to its routing id"
        assert bytes(got.frames[0]) == b"still b"
    finally:
        liar.close()


def test_a_curve_server_refuses_to_listen_without_a_running_authenticator():
    context = zmq.Context()
    auth = ZapAuthenticator(context)  # never started
    public, secret = keypair()
    [port] = free_tcp_ports("127.0.0.1", 1)
    transport = ZmqTransport("a", f"tcp://127.0.0.1:{port}", {}, context=context, curve=Curve(public, secret, {}, auth))
    with pytest.raises(UsageError, match="ZAP authenticator"):
        transport.open()
    context.term()


def reopen(name: str, endpoints, peers, curve: Curve, context) -> ZmqTransport:
    """A restarted node's transport: its old socket may hold the port for a moment."""
    deadline = time.monotonic() + 5.0
    while True:
        try:
            return ZmqTransport(name, endpoints[name], peers, context=context, curve=curve).open()
        except UsageError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_new_manifest_version_changes_who_gets_through(federation):
    """update_links after a manifest version removed c and gave b new keys: b's new key gets
    through both ways, c's key is refused from its next handshake on."""
    transports, keys, endpoints, context, auth = federation
    transports["b"].close()  # b restarts with its new keys
    new_b = keypair()
    transports["a"].update_links({"b": endpoints["b"]}, {"b": new_b[0].decode()})
    assert set(transports["a"].dealers) == {"b"} and auth.allowed["a"] == {z85.decode(new_b[0]): "b"}
    peer_of_a = {"a": endpoints["a"]}, {"a": keys["a"][0].decode()}
    transports["b"] = reopen("b", endpoints, peer_of_a[0], Curve(*new_b, peer_of_a[1], auth), context)
    send_until_queued(transports["b"], "a", [b"from the new b"])
    received = receive_within(transports["a"], 5.0)
    assert received.peer == "b" and received.rejected is None
    send_until_queued(transports["a"], "b", [b"to the new b"])
    assert bytes(receive_within(transports["b"], 5.0).frames[0]) == b"to the new b"

    transports["c"].close()  # c comes back with the key the manifest no longer lists
    denied = auth.denied["key_not_allowed"]
    transports["c"] = reopen("c", endpoints, peer_of_a[0], Curve(*keys["c"], peer_of_a[1], auth), context)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert not transports["c"].send("a", [b"still here"])  # never connected: the handshake fails
        time.sleep(0.1)
    assert receive_within(transports["a"], 0.5) is None and auth.denied["key_not_allowed"] > denied
