"""The ZAP handler that makes CurveZMQ mean "federation members only".

A CURVE server without a ZAP handler on its context completes the handshake with anyone
who knows its public key. `ZapAuthenticator` answers libzmq's authentication requests
(RFC 27) for every node on one context: each node's ROUTER sets its name as ZAP domain, and
its allow-list maps the transport keys of its neighbours in the manifest to their names. An
accepted connection carries the member name as User-Id on every message it delivers, which
the transport compares with the routing id the sender claims.

`decide` is the pure part (tested without sockets); the thread only moves frames."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence

import zmq
from zmq.utils import z85

log = logging.getLogger("swarm.transport")

ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by RFC 27; one handler per context
ZAP_VERSION = b"1.0"


def decide(frames: Sequence[bytes], allowed: Mapping[str, Mapping[bytes, str]]) -> tuple[list[bytes], str | None]:
    """The ZAP reply to a request, and the reason when it is a refusal.

    allowed: ZAP domain (node name) -> {32-byte CURVE public key: member name}."""
    if len(frames) < 6:
        request_id = frames[1] if len(frames) > 1 else b""
        return _reply(request_id, b"400", b"malformed request"), "malformed_zap_request"
    version, request_id, domain, _address, _identity, mechanism, *credentials = frames
    if version != ZAP_VERSION:
        return _reply(request_id, b"400", b"unsupported ZAP version"), "bad_zap_version"
    if mechanism != b"CURVE" or len(credentials) != 1:
        return _reply(request_id, b"400", b"CURVE required"), "not_curve"
    members = allowed.get(domain.decode("utf-8", "replace"))
    if members is None:
        return _reply(request_id, b"400", b"unknown domain"), "unknown_domain"
    name = members.get(credentials[0])
    if name is None:
        return _reply(request_id, b"400", b"key not in the manifest"), "key_not_allowed"
    return _reply(request_id, b"200", b"OK", name.encode()), None


def _reply(request_id: bytes, status: bytes, text: bytes, user_id: bytes = b"") -> list[bytes]:
    return [ZAP_VERSION, request_id, status, text, user_id, b""]


class ZapAuthenticator:
    """Runs `decide` in a thread on `context`'s ZAP endpoint. Start it before any CURVE server
    binds; `running` is what transports check before they do."""

    def __init__(self, context: zmq.Context, log_interval: float = 10.0) -> None:
        self.context = context
        self.allowed: dict[str, dict[bytes, str]] = {}
        self.denied: Counter[str] = Counter()  # reason -> count
        self.log_interval = log_interval
        self._last_logged: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._serve, name="zap-authenticator", daemon=True)

    def allow(self, domain: str, members: Mapping[str, str]) -> None:
        """Let members (name -> z85 CURVE public key) connect to the node whose domain this is."""
        keys = {z85.decode(key.encode() if isinstance(key, str) else key): name for name, key in members.items()}
        with self._lock:
            self.allowed = self.allowed | {domain: keys}  # replaced whole: the thread reads without the lock

    def start(self) -> ZapAuthenticator:
        self._thread.start()
        self._ready.wait(10.0)
        if self._error is not None or not self._ready.is_set():
            raise RuntimeError(f"the ZAP authenticator could not start: {self._error or 'timeout'}")
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and self._ready.is_set() and not self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def _serve(self) -> None:
        try:
            socket = self.context.socket(zmq.REP)
            socket.setsockopt(zmq.LINGER, 0)
            socket.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not socket.poll(100):
                    continue
                reply, refused = decide(socket.recv_multipart(), self.allowed)
                socket.send_multipart(reply)
                if refused:
                    self._count(refused)
        finally:
            socket.close()

    def _count(self, reason: str) -> None:
        self.denied[reason] += 1
        now = time.monotonic()
        if now - self._last_logged.get(reason, -1e18) >= self.log_interval:
            self._last_logged[reason] = now
            log.warning("refused a connection: %s (%d so far)", reason.replace("_", " "), self.denied[reason])
