"""The ZeroMQ adapter: one ROUTER bound per node receives everything; one DEALER per
neighbour sends everything. A reply therefore travels on the replier's own DEALER, so each
socket does one job and the ROUTER's routing id always names the sender.

Only socket handling lives here: no protocol, no codec. Limits enforced at this level are the
ones only the socket can see (frame size via MAXMSGSIZE, frame count while reading).
With `Curve` settings every connection is encrypted and authenticated with CurveZMQ: the
ROUTER is a CURVE server whose ZAP domain is the node's name, and a running
`ZapAuthenticator` on the same context admits only the neighbours' manifest keys. Each
message's User-Id (the member the authenticator recognised from its key) names the sender;
the routing id is not used at all (DEALERs set none, so the ROUTER picks one per
connection). A member therefore cannot speak, or be blamed, under another's name, nor take
over another member's connection by claiming its routing id. Without CURVE (`--insecure`)
the routing id is the sender's name, a claim anyone can make.

Outbound-only sites (no `listen`) bind nothing: they only dial, and a reachable neighbour
answers over that same connection, from its ROUTER to the routing id the connection has
(learned from the outbound site's messages; an empty one-frame hello is sent every second so
that it is known, and kept current after a reconnect, before there is anything to say). The
outbound site reads what comes back on its DEALERs: a DEALER only talks to the server whose
CURVE key it checked, so that key names the sender. With `socks_proxy` every DEALER
connects through that SOCKS5 proxy (libzmq's SOCKS_PROXY).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import zmq

from ..errors import UsageError
from .base import NOT_A_NEIGHBOUR, Buffer, Received
from .zap import ZapAuthenticator

HELLO_INTERVAL = 1.0  # seconds between an outbound-only node's hellos on each connection


@dataclass(frozen=True)
class ZmqSettings:
    max_frame_bytes: int = 1 << 30
    max_frames: int = 4097
    send_hwm: int = 64  # messages queued per neighbour before send() says no
    recv_hwm: int = 1024
    linger_ms: int = 1000  # on close, try this long to flush replies, then drop them
    heartbeat_ivl_ms: int = 1000
    heartbeat_timeout_ms: int = 5000
    handshake_ivl_ms: int = 5000
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 2000


@dataclass(frozen=True)
class Curve:
    """This node's CURVE key pair and its neighbours' public keys (z85 text, from the manifest)."""

    public: bytes
    secret: bytes
    peer_keys: Mapping[str, str]
    authenticator: ZapAuthenticator


class ZmqTransport:
    def __init__(
        self,
        name: str,
        listen: str | None,
        peers: Mapping[str, str | None],
        settings: ZmqSettings = ZmqSettings(),
        context: zmq.Context | None = None,
        curve: Curve | None = None,
        socks_proxy: str | None = None,
    ) -> None:
        self.name = name
        self.listen = listen  # None: outbound-only, bind nothing
        self.peers = dict(peers)  # neighbour name -> endpoint; None: an outbound-only neighbour that dials us
        self.settings = settings
        self.curve = curve
        self.socks_proxy = socks_proxy
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.router: zmq.Socket | None = None
        self.dealers: dict[str, zmq.Socket] = {}
        self.routes: dict[str, bytes] = {}  # outbound-only neighbour -> routing id of its connection to our ROUTER
        self._hello_at = 0.0
        self.bytes_sent: Counter[str] = Counter()
        self.bytes_received: Counter[str] = Counter()
        self._poller = zmq.Poller()
        self._wake_r, self._wake_w = -1, -1

    def open(self) -> ZmqTransport:
        if self.curve is not None:
            missing = sorted(set(self.peers) - set(self.curve.peer_keys))
            if missing:
                raise UsageError(f"no transport key for neighbour {missing[0]!r} in the manifest")
        if self.listen is not None:
            self._bind()
        else:
            unreachable = sorted(peer for peer, endpoint in self.peers.items() if endpoint is None)
            if unreachable:
                raise UsageError(f"an outbound-only node cannot reach {unreachable[0]!r}, which is outbound-only too; fix the manifest's neighbours")
        for peer, endpoint in self.peers.items():
            if endpoint is not None:
                self.dealers[peer] = self._dealer(peer, endpoint)
        # wake() comes from other threads, which must not touch a ZeroMQ socket: a pipe
        # polled beside the sockets lets them interrupt receive() safely.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        if self.router is not None:
            self._poller.register(self.router, zmq.POLLIN)
        for dealer in self.dealers.values():
            self._poller.register(dealer, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        return self

    def _bind(self) -> None:
        if self.curve is not None and not self.curve.authenticator.running:
            # A CURVE server without a ZAP handler accepts anyone who knows its public key.
            raise UsageError("refusing to listen: no ZAP authenticator is running on this ZeroMQ context")
        self.router = self._socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a reply to a gone connection fails at once
        self.router.setsockopt(zmq.SNDHWM, self.settings.send_hwm)  # per connection, as for a DEALER
        if self.curve is not None:
            self.curve.authenticator.allow(self.name, {peer: self.curve.peer_keys[peer] for peer in self.peers})
            self.router.setsockopt(zmq.ZAP_DOMAIN, self.name.encode())
            self.router.setsockopt(zmq.CURVE_SERVER, 1)
            self.router.setsockopt(zmq.CURVE_SECRETKEY, self.curve.secret)
            self.router.setsockopt(zmq.CURVE_PUBLICKEY, self.curve.public)
        # ROUTER_HANDOVER only without CURVE (a restarted peer takes its name back at once).
        # With it, connections that claim a connected peer's routing id take its pipe over,
        # and libzmq 4.3.5 then aborts the process (`Assertion failed: !_io_error`,
        # stream_engine_base.cpp:310) when a heartbeat timer fires on a torn-down engine.
        # With CURVE, routing ids are the ROUTER's own (DEALERs set none), so no handover is
        # needed and no member can provoke one; --insecure stays exposed (debugging only).
        if self.curve is None:
            self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.router.setsockopt(zmq.RCVHWM, self.settings.recv_hwm)
        try:
            self.router.bind(self.listen)
        except zmq.ZMQError as exc:
            self.close()
            if exc.errno == errno.EADDRINUSE:
                raise UsageError(
                    f"cannot listen on {self.listen}: the port is in use; stop the other process or set another port in site.toml [node] listen"
                ) from None
            raise UsageError(f"cannot listen on {self.listen}: {exc.strerror}; check [node] listen in site.toml") from None

    def _dealer(self, peer: str, endpoint: str) -> zmq.Socket:
        dealer = self._socket(zmq.DEALER)
        if self.curve is None:  # with CURVE the receiver knows us by our key, not by a name we claim
            dealer.setsockopt(zmq.ROUTING_ID, self.name.encode())
        dealer.setsockopt(zmq.SNDHWM, self.settings.send_hwm)
        dealer.setsockopt(zmq.IMMEDIATE, 1)  # do not queue for a peer that is not connected
        if self.curve is not None:
            dealer.setsockopt(zmq.CURVE_SERVERKEY, self.curve.peer_keys[peer].encode())
            dealer.setsockopt(zmq.CURVE_PUBLICKEY, self.curve.public)
            dealer.setsockopt(zmq.CURVE_SECRETKEY, self.curve.secret)
        if self.socks_proxy is not None:
            dealer.setsockopt(zmq.SOCKS_PROXY, self.socks_proxy.encode())
        dealer.connect(endpoint)
        if self.listen is None:  # so that the neighbour can answer before we have anything to say
            self._hello(dealer)
        return dealer

    def _hello(self, dealer: zmq.Socket) -> None:
        try:
            dealer.send(b"", flags=zmq.NOBLOCK)
        except zmq.Again:  # not connected yet: the next hello goes
            pass

    def update_links(self, peers: Mapping[str, str], peer_keys: Mapping[str, str]) -> None:
        """Follow a new manifest version: `peers` (name -> endpoint) and their CURVE keys
        replace the neighbours. The allow-list of this node's ZAP domain is replaced, so
        a removed member's key is refused from its next handshake on; a neighbour whose
        endpoint or key changed gets a new DEALER. (A connection a removed member already
        has stays up until it drops: the node refuses what comes over it.)"""
        old_keys = dict(self.curve.peer_keys) if self.curve is not None else {}
        if self.curve is not None:
            missing = sorted(set(peers) - set(peer_keys))
            if missing:
                raise UsageError(f"no transport key for neighbour {missing[0]!r} in the manifest")
            self.curve = Curve(self.curve.public, self.curve.secret, {p: peer_keys[p] for p in peers}, self.curve.authenticator)
            self.curve.authenticator.allow(self.name, self.curve.peer_keys)
        for peer in list(self.dealers):
            if self.peers.get(peer) != peers.get(peer) or old_keys.get(peer) != (self.curve.peer_keys.get(peer) if self.curve else None):
                dealer = self.dealers.pop(peer)
                self._poller.unregister(dealer)
                dealer.close()
        self.peers = dict(peers)
        self.routes = {peer: route for peer, route in self.routes.items() if peer in self.peers and self.peers[peer] is None}
        for peer, endpoint in self.peers.items():
            if peer not in self.dealers and endpoint is not None:
                self.dealers[peer] = self._dealer(peer, endpoint)
                self._poller.register(self.dealers[peer], zmq.POLLIN)

    def _socket(self, kind: int) -> zmq.Socket:
        socket = self.context.socket(kind)
        s = self.settings
        socket.setsockopt(zmq.LINGER, s.linger_ms)
        socket.setsockopt(zmq.MAXMSGSIZE, s.max_frame_bytes)
        socket.setsockopt(zmq.HEARTBEAT_IVL, s.heartbeat_ivl_ms)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, s.heartbeat_timeout_ms)
        socket.setsockopt(zmq.HANDSHAKE_IVL, s.handshake_ivl_ms)
        socket.setsockopt(zmq.RECONNECT_IVL, s.reconnect_ivl_ms)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, s.reconnect_ivl_max_ms)
        return socket

    def _route(self, peer: str) -> tuple[zmq.Socket, list[bytes]] | None:
        """The socket a message for `peer` goes out on, and the routing frames before it:
        our DEALER to it, or our ROUTER over the connection an outbound-only neighbour opened."""
        if peer in self.dealers:
            return self.dealers[peer], []
        route = self.routes.get(peer)
        if route is not None and self.router is not None:
            return self.router, [route]
        return None

    def connected(self, peer: str) -> bool:
        route = self._route(peer)
        if route is None:
            return False
        socket, prefix = route
        if prefix:  # over an outbound-only neighbour's connection: known until a send finds it gone
            return True
        # With IMMEDIATE a DEALER has a pipe, and so POLLOUT, only while connected (and not full).
        return bool(socket.getsockopt(zmq.EVENTS) & zmq.POLLOUT)

    def send(self, peer: str, frames: Sequence[Buffer]) -> bool:
        route = self._route(peer)
        if route is None:
            return False
        socket, prefix = route
        try:
            socket.send_multipart([*prefix, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        except zmq.ZMQError as exc:  # EHOSTUNREACH: that connection is gone (ROUTER_MANDATORY)
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self.routes.pop(peer, None)
            return False
        self.bytes_sent[peer] += sum(memoryview(f).nbytes for f in frames)
        return True

    def send_tracked(self, peer: str, frames: Sequence[Buffer]) -> Callable[[], bool] | None:
        route = self._route(peer)
        if route is None or not frames:
            return None
        socket, prefix = route
        trackers = []
        try:
            for part in prefix:
                socket.send(part, flags=zmq.NOBLOCK | zmq.SNDMORE)
            # Frame by frame: send_multipart tracks only the last frame, which pyzmq copies
            # (and releases at once) when it is small. Once the first frame is queued, the
            # high-water mark lets the rest of the message through.
            for index, frame in enumerate(frames):
                more = zmq.SNDMORE if index < len(frames) - 1 else 0
                trackers.append(socket.send(frame, flags=zmq.NOBLOCK | more, copy=False, track=True))
        except zmq.Again:
            return None
        except zmq.ZMQError as exc:
            if exc.errno != errno.EHOSTUNREACH:
                raise
            self.routes.pop(peer, None)
            return None
        self.bytes_sent[peer] += sum(memoryview(f).nbytes for f in frames)
        return lambda: all(tracker.done for tracker in trackers)

    def receive(self, timeout: float) -> Received | None:
        assert self._wake_r >= 0, "open() first"
        if self.listen is None and time.monotonic() >= self._hello_at + HELLO_INTERVAL:
            self._hello_at = time.monotonic()
            for dealer in self.dealers.values():  # keeps our routing id known at each neighbour
                self._hello(dealer)
        events = dict(self._poller.poll(max(0, int(timeout * 1000))))
        if self._wake_r in events:
            try:
                os.read(self._wake_r, 4096)
            except BlockingIOError:
                pass
        if self.router is not None and self.router in events:
            return self._from_router()
        for peer, dealer in self.dealers.items():
            if dealer in events:
                return self._from_dealer(peer, dealer)
        return None

    def _read_frames(self, socket: zmq.Socket) -> tuple[list[zmq.Frame], bool]:
        """The rest of a message, at most max_frames of it (and whether there was more)."""
        frames: list[zmq.Frame] = []
        too_many = False
        while socket.getsockopt(zmq.RCVMORE):
            frame = socket.recv(copy=False)
            if len(frames) < self.settings.max_frames:
                frames.append(frame)
            else:
                too_many = True  # keep reading to drop the rest of this message
        return frames, too_many

    def _from_dealer(self, peer: str, dealer: zmq.Socket) -> Received | None:
        """A message a reachable neighbour's ROUTER sent back over our connection to it."""
        first = dealer.recv(copy=False)
        rest, too_many = self._read_frames(dealer)
        frames = [first, *rest]
        self.bytes_received[peer] += sum(len(f) for f in frames)
        if too_many:
            return Received(peer, [], rejected="too_many_frames")
        return Received(peer, frames)

    def _from_router(self) -> Received | None:
        assert self.router is not None
        identity_frame = self.router.recv(copy=False)
        identity = identity_frame.bytes
        frames, too_many = self._read_frames(self.router)
        size = sum(len(f) for f in frames)
        if self.curve is not None:
            peer = _user_id(identity_frame)  # the member whose key the authenticator admitted
            if peer is None:  # cannot happen behind ZAP; refuse rather than guess
                self.bytes_received[NOT_A_NEIGHBOUR] += size
                return Received(NOT_A_NEIGHBOUR, [], rejected="not_authenticated")
        else:
            try:
                peer = identity.decode()
            except UnicodeDecodeError:
                return Received(identity[:32].hex(), [], rejected="bad_sender_id")
        if peer not in self.peers:
            self.bytes_received[NOT_A_NEIGHBOUR] += size  # strangers pick their names: one bucket
            return Received(peer, [], rejected="not_a_neighbour")
        if self.peers[peer] is None:  # outbound-only: answer over the connection it last spoke on
            self.routes[peer] = identity
            if len(frames) == 1 and len(frames[0]) == 0:
                return None  # its hello: no message (see the module docstring)
        self.bytes_received[peer] += size
        if too_many:
            return Received(peer, [], rejected="too_many_frames")
        return Received(peer, frames)

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except (BlockingIOError, OSError):  # already awake (pipe full) or closed
            pass

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        for dealer in self.dealers.values():
            dealer.close()
        self.dealers = {}
        if self.router is not None:
            self.router.close()
            self.router = None
        if self._own_context:
            self.context.term()


def _user_id(frame: zmq.Frame) -> str | None:
    """The member name the ZAP handler gave this connection, None when unauthenticated."""
    try:
        return frame.get("User-Id")
    except zmq.ZMQError:
        return None


def free_tcp_ports(host: str, count: int) -> list[int]:
    """Ports the OS says are free now. Another program may still take one before we bind it;
    the node then fails with a clear 'port in use' error."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()
