"""Show that libzmq buffers a whole multipart message before the application sees any of
it, however small MAXMSGSIZE is (it limits each frame, not the message), so one connection
can make a node hold as much memory as it cares to send (issue 13, item 5).

A ROUTER with MAXMSGSIZE 6 MiB and RCVHWM 4 (as a node's) receives one message of N frames
of 4 MiB from a DEALER in a child process; the script prints the receiver's RSS when the
first frame becomes readable.

    python scripts/libzmq_multipart_buffering.py --frames 200   # ~800 MiB held before the first frame is readable
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import zmq

FRAME = 4 * 1024 * 1024


def rss_mib() -> int:
    with open("/proc/self/status") as handle:
        return int(handle.read().split("VmRSS:")[1].split()[0]) // 1024


def send(endpoint: str, frames: int) -> None:
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(endpoint)
    frame = bytes(FRAME)
    dealer.send_multipart([frame] * frames, copy=False)
    time.sleep(60)  # killed by the parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--send-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send_to:
        send(args.send_to, args.frames)
        return
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.MAXMSGSIZE, 6 * 1024 * 1024)
    router.setsockopt(zmq.RCVHWM, 4)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    before = rss_mib()
    child = subprocess.Popen([sys.executable, __file__, "--frames", str(args.frames), "--send-to", f"tcp://127.0.0.1:{port}"])
    try:
        if not router.poll(60_000):
            sys.exit("nothing arrived within 60 s")
        print(f"message of {args.frames * FRAME // 2**20} MiB in {args.frames} frames of 4 MiB (each under MAXMSGSIZE)")
        print(f"receiver RSS {before} MiB before, {rss_mib()} MiB when its first frame became readable")
    finally:
        child.kill()


if __name__ == "__main__":
    main()
