"""Model-exchange benchmark: the full swarm path against raw ZeroMQ, on loopback TCP.

`run_bench` times, in one run and with the repeats of both paths interleaved (so that load
from other programs on a shared machine hits both alike):

swarm    what a model exchange costs, from "have a state_dict" to "rebuilt tensors
         verified" on the receiver: `flatten_state` (zero-copy serialization) ->
         `model_digest` -> `sign_entry` -> `encode_message(ModelReply)` -> `ZmqTransport.send`
         -> `ZmqTransport.receive` -> `decode_message` -> `open_entry` (signature check) ->
         `model_digest` of the received tensors == the signed digest -> `rebuild_state`.
         A node also copies its weights once per published version (`flatten_state(copy=True)`,
         so training can go on while neighbours pull); that copy is timed separately and
         reported as `publish_snapshot`, with the ratio it would give if it were included.
raw_zmq  plain pyzmq DEALER -> ROUTER over TCP sending the same bytes: the same number of
         frames with the same sizes (a header frame as long as the swarm header, then the
         state_dict's tensor buffers), `send_multipart(copy=False)` and `recv(copy=False)`.

Both paths are timed identically: the clock starts in the sending thread just before the
first step (serialize, or send_multipart) and stops in the receiving thread once the last
step is done (rebuild, or the last frame received). Throughput is model bytes (tensor bytes,
the header is a few hundred bytes) per second, in MiB/s.

Why a sender *thread* rather than a process. Each side owns its own zmq.Context, hence its
own libzmq I/O thread, as two nodes would; the transfer itself runs in those I/O threads and
the kernel, outside the GIL. The Python work of the two sides does not overlap either: the
sender's steps (BLAKE3 on the digest pool, Ed25519, send) all come before the
message can be delivered (ZeroMQ hands over a multipart message only once its last frame
has arrived), and the receiver sits in `poll` (GIL released) until then. So a second
process would not add parallelism that a thread lacks; it would add a 100 MB state copy
and IPC to hand timestamps back, and on a 2-core machine both processes compete for the
same cores exactly as both threads do (measured, 100 MiB, interleaved: median 148 ms with a
thread, 157 ms with a forked sender process). A thread also keeps one clock
(`perf_counter`) for start and end. The real deployment differs in that sender and
receiver are different machines, so the CPU work of each side (digest and sign on one, digest on the other) would
not share cores with the transfer: numbers here are a pessimistic bound for the swarm path.

What bounds the ratio on a small machine. Sender and receiver share two cores here, so the
swarm path is CPU-bound: raw loopback ZeroMQ moves 100 MiB in ~40 ms using ~70 CPU-ms, and
every extra pass over the bytes (a digest on each side, the snapshot copy) competes for the
same cores. With SHA-256 (~1 GiB/s per core on cold memory) the two digests alone cost ~200
CPU-ms and capped the ratio near 0.28; BLAKE3 (~5 GiB/s per core, chunks hashed on two
threads) brings each digest to ~11 ms. The `serve` figures leave out serialize, digest and sign, which a node does once per
published version (nodes/learner.py) rather than once per pull.

Reading the stage breakdown: `serialize`, `digest` and `sign` run on the sender;
`encode_send_receive` runs from the start of `encode_message` until `ZmqTransport.receive`
returned the whole message (the wire time); `decode`, `verify_signature`,
`digest_on_receive`, `rebuild` run on the receiver. The stage medians add up to about the
median total.
"""

from __future__ import annotations

import math
import os
import queue
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import torch
import zmq

from swarm.codec import decode_message, encode_message
from swarm.identity import SigningKey
from swarm.log import EntryBody, SignedEntry, link_after, open_entry, sign_entry
from swarm.messages import ModelReply
from swarm.tensors import DIGEST_WORKERS, flatten_state, model_digest, rebuild_state
from swarm.transport.zeromq import ZmqTransport, free_tcp_ports

MIB = 1024 * 1024
HOST = "127.0.0.1"
SENDER, RECEIVER = "bench-sender", "bench-receiver"
RECEIVE_LIMIT_S = 60.0  # a transfer that has not arrived by then is a failure, not a slow run

STAGES = (
    "serialize",
    "digest",
    "sign",
    "encode_send_receive",
    "decode",
    "verify_signature",
    "digest_on_receive",
    "rebuild",
)
PUBLISH_STAGES = ("serialize", "digest", "sign")  # once per published version in a real node


class BenchError(RuntimeError):
    """The benchmark could not complete a transfer (not connected, lost, or mis-verified)."""


# --------------------------------------------------------------------------- the model


def model_layout(total_bytes: int, tensors: int = 0) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of float32 tensors adding up to `total_bytes` (rounded to whole floats).

    `tensors=0` gives a transformer-like layout: a few dozen tensors, big weight matrices
    next to small biases and norm vectors, and an embedding that takes what is left.
    `tensors=N` splits the bytes over N 1-D tensors of deterministic, varied sizes."""
    numel = max(1, round(total_bytes / 4))
    if tensors <= 0:
        layout = _transformer_layout(numel)
        if layout is not None:
            return layout
        tensors = min(numel, 8)
    if tensors > numel:
        raise ValueError(f"cannot split {numel} floats into {tensors} tensors")
    weights = [1 + (i * 7919) % 97 for i in range(tensors)]
    total_weight = sum(weights)
    sizes = [max(1, numel * w // total_weight) for w in weights]
    sizes[-1] += numel - sum(sizes)
    if sizes[-1] < 1:  # only when the max(1, ...) floors pushed the sum over numel
        raise ValueError(f"cannot split {numel} floats into {tensors} tensors")
    return [(f"tensor{i:04d}", (size,)) for i, size in enumerate(sizes)]


def _transformer_layout(numel: int, layers: int = 4) -> list[tuple[str, tuple[int, ...]]] | None:
    # 12 d^2 weights per block; let the blocks hold about 80% of the model.
    d = max(16, int(math.sqrt(0.8 * numel / (12 * layers))) // 16 * 16)
    block = [
        ("attn.qkv.weight", (3 * d, d)), ("attn.qkv.bias", (3 * d,)),
        ("attn.proj.weight", (d, d)), ("attn.proj.bias", (d,)),
        ("norm1.weight", (d,)), ("norm1.bias", (d,)),
        ("mlp.fc1.weight", (4 * d, d)), ("mlp.fc1.bias", (4 * d,)),
        ("mlp.fc2.weight", (d, 4 * d)), ("mlp.fc2.bias", (d,)),
        ("norm2.weight", (d,)), ("norm2.bias", (d,)),
    ]
    layout = [(f"blocks.{i}.{name}", shape) for i in range(layers) for name, shape in block]
    layout += [("norm.weight", (d,)), ("norm.bias", (d,))]
    rest = numel - sum(math.prod(shape) for _, shape in layout)
    rows, leftover = divmod(rest, d)
    if rows < 1:
        return None
    layout.append(("embed.weight", (rows, d)))
    if leftover:
        layout.append(("head.bias", (leftover,)))
    return layout


def make_state(layout: list[tuple[str, tuple[int, ...]]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) for name, shape in layout}


# --------------------------------------------------------------------------- plumbing


class _SenderThread:
    """Runs one callable at a time in a separate thread and hands back its result."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self._results: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self.failed = threading.Event()  # lets the receiver stop waiting for a message that never left
        self._thread = threading.Thread(target=self._loop, name="bench-sender", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._results.put((True, job()))
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the caller's thread
                self.failed.set()
                self._results.put((False, exc))

    def submit(self, job: Callable[[], Any]) -> None:
        self._jobs.put(job)

    def result(self, timeout: float = RECEIVE_LIMIT_S) -> Any:
        ok, value = self._results.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)


def _wait_connected(dealer: zmq.Socket, limit: float = 10.0) -> None:
    if not dealer.poll(int(limit * 1000), zmq.POLLOUT):
        raise BenchError("the sender never connected to the receiver")


def _no_message(abort: threading.Event) -> NoReturn:
    # When the sender failed, the caller's sender.result() then raises the sender's own error.
    raise BenchError("the sender failed" if abort.is_set() else f"no message arrived within {RECEIVE_LIMIT_S:.0f} s")


class _SwarmPath:
    """Sender and receiver ZmqTransports, a signing key, and one timed exchange."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state
        self.federation = os.urandom(32)
        self.key = SigningKey.generate()
        self.head: SignedEntry | None = None
        self.req = 0
        send_port, recv_port = free_tcp_ports(HOST, 2)
        send_at, recv_at = f"tcp://{HOST}:{send_port}", f"tcp://{HOST}:{recv_port}"
        # Each transport gets its own zmq.Context (and I/O thread), as separate nodes have.
        self.receiver = ZmqTransport(RECEIVER, recv_at, {SENDER: send_at}).open()
        try:
            self.sender = ZmqTransport(SENDER, send_at, {RECEIVER: recv_at}).open()
        except BaseException:
            self.receiver.close()
            raise
        _wait_connected(self.sender.dealers[RECEIVER])

    def header_bytes(self) -> int:
        """The length of the header frame this path sends (for the raw path to match)."""
        flat = flatten_state(self.state)
        entry = sign_entry(self._body(bytes(32)), self.key)
        return len(encode_message(self.federation, ModelReply(1, (entry.envelope,)), flat)[0])

    def _body(self, digest: bytes) -> EntryBody:
        seq, prev = link_after(self.head)
        return EntryBody(
            federation=self.federation, author=self.key.public, seq=seq, prev=prev,
            kind="update", digest=digest, samples=1000, parents=(), round=seq,
            metrics={"loss": 0.5}, timestamp=time.time(),
        )

    def send(self) -> dict[str, float]:
        """Sender side (runs in the sender thread)."""
        t0 = time.perf_counter()
        flat = flatten_state(self.state)  # zero-copy serialization, as on the wire
        t1 = time.perf_counter()
        digest = model_digest(flat)
        t2 = time.perf_counter()
        entry = sign_entry(self._body(digest), self.key)
        t3 = time.perf_counter()
        self.req += 1
        frames = encode_message(self.federation, ModelReply(self.req, (entry.envelope,)), flat)
        if not self.sender.send(RECEIVER, frames):
            raise BenchError("ZmqTransport.send refused the model (not connected or queue full)")
        self.head = entry
        return {"start": t0, "serialize": t1 - t0, "digest": t2 - t1, "sign": t3 - t2, "encode_start": t3}

    def receive(self, abort: threading.Event) -> tuple[float, dict[str, float], dict[str, torch.Tensor], bool]:
        """Receiver side: (end time, receiver stage times with the arrival time, state, verified)."""
        deadline = time.perf_counter() + RECEIVE_LIMIT_S
        got = None
        while got is None and time.perf_counter() < deadline and not abort.is_set():
            got = self.receiver.receive(0.2)
        t0 = time.perf_counter()
        if got is None:
            _no_message(abort)
        if got.rejected:
            raise BenchError(f"the receiving transport refused the message: {got.rejected}")
        decoded = decode_message(got.frames, self.federation)
        t1 = time.perf_counter()
        entry = open_entry(decoded.msg.entries[-1])
        t2 = time.perf_counter()
        assert decoded.model is not None  # decode_message refuses a ModelReply without one
        verified = model_digest(decoded.model) == entry.body.digest and entry.author == self.key.public
        t3 = time.perf_counter()
        state = rebuild_state(decoded.model)
        t4 = time.perf_counter()
        stages = {"arrived": t0, "decode": t1 - t0, "verify_signature": t2 - t1,
                  "digest_on_receive": t3 - t2, "rebuild": t4 - t3}
        return t4, stages, state, verified

    def close(self) -> None:
        self.sender.close()
        self.receiver.close()


class _RawPath:
    """Plain pyzmq DEALER -> ROUTER with the same frames; nothing but the transfer."""

    def __init__(self, state: dict[str, torch.Tensor], header_bytes: int) -> None:
        flat = flatten_state(state)  # zero-copy views of the same tensor memory
        self.frames: list[Any] = [os.urandom(header_bytes), *flat.buffers]
        (port,) = free_tcp_ports(HOST, 1)
        endpoint = f"tcp://{HOST}:{port}"
        self.recv_context, self.send_context = zmq.Context(), zmq.Context()
        self.router = self.recv_context.socket(zmq.ROUTER)
        self.dealer = self.send_context.socket(zmq.DEALER)
        for sock in (self.router, self.dealer):
            sock.setsockopt(zmq.LINGER, 0)
        self.router.bind(endpoint)
        self.dealer.connect(endpoint)
        _wait_connected(self.dealer)

    def send(self) -> dict[str, float]:
        t0 = time.perf_counter()
        self.dealer.send_multipart(self.frames, copy=False)
        return {"start": t0}

    def receive(self, abort: threading.Event) -> tuple[float, list[zmq.Frame]]:
        deadline = time.perf_counter() + RECEIVE_LIMIT_S
        while not self.router.poll(200):
            if time.perf_counter() >= deadline or abort.is_set():
                _no_message(abort)
        self.router.recv(copy=False)  # the routing id
        frames = []
        while self.router.getsockopt(zmq.RCVMORE):
            frames.append(self.router.recv(copy=False))
        return time.perf_counter(), frames

    def close(self) -> None:
        self.dealer.close()
        self.router.close()
        self.send_context.term()
        self.recv_context.term()


def _same_state(received: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> bool:
    return list(received) == sorted(original) and all(
        received[name].shape == original[name].shape and torch.equal(received[name], original[name])
        for name in original
    )


# --------------------------------------------------------------------------- the benchmark


def run_bench(size_mb: float = 100.0, repeats: int = 5, tensors: int = 0, warmup: int = 1) -> dict:
    """Time `repeats` swarm exchanges and `repeats` raw ZeroMQ sends of a `size_mb` MiB
    float32 model (after `warmup` untimed rounds of each), interleaved, on loopback TCP.

    Returns a JSON-ready dict: the model layout, per-repeat seconds and MiB/s and their
    medians for both paths, the swarm path's per-stage seconds and medians,
    `ratio_vs_raw_zmq` (median swarm MiB/s / median raw MiB/s), and whether every received
    model matched its signed digest and the sent tensors."""
    if size_mb <= 0 or repeats < 1 or warmup < 0 or tensors < 0:
        raise ValueError("need size_mb > 0, repeats >= 1, warmup >= 0, tensors >= 0")
    layout = model_layout(int(size_mb * MIB), tensors)
    state = make_state(layout)
    model_bytes = sum(t.numel() * t.element_size() for t in state.values())

    swarm_seconds: list[float] = []
    snapshot_seconds: list[float] = []
    raw_seconds: list[float] = []
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    digest_verified = True
    tensors_equal = True

    sender = _SenderThread()
    swarm = raw = None
    try:
        swarm = _SwarmPath(state)
        raw = _RawPath(state, swarm.header_bytes())
        for i in range(warmup + repeats):
            timed = i >= warmup
            # -- the node's once-per-version copy of the weights, timed on its own
            started = time.perf_counter()
            snapshot = flatten_state(state, copy=True)
            if timed:
                snapshot_seconds.append(time.perf_counter() - started)
            del snapshot
            # -- swarm exchange
            sender.submit(swarm.send)
            try:
                end, recv_stages, received, verified = swarm.receive(sender.failed)
            finally:
                sent = sender.result()
            if timed:
                swarm_seconds.append(end - sent["start"])
                for name in PUBLISH_STAGES:
                    stages[name].append(sent[name])
                stages["encode_send_receive"].append(recv_stages["arrived"] - sent["encode_start"])
                for name in ("decode", "verify_signature", "digest_on_receive", "rebuild"):
                    stages[name].append(recv_stages[name])
            # Checked after the clock stopped: the rebuilt tensors are the ones that were sent.
            digest_verified &= verified
            tensors_equal &= _same_state(received, state)
            del received
            # -- raw ZeroMQ, same bytes
            sender.submit(raw.send)
            try:
                end, frames = raw.receive(sender.failed)
            finally:
                sent = sender.result()
            if len(frames) != len(raw.frames) or sum(len(f) for f in frames) != sum(len(memoryview(f)) for f in raw.frames):
                raise BenchError("the raw path lost frames or bytes")
            del frames
            if timed:
                raw_seconds.append(end - sent["start"])
    finally:
        sender.stop()
        for path in (swarm, raw):
            if path is not None:
                path.close()

    def throughput(seconds: list[float]) -> list[float]:
        return [model_bytes / MIB / s for s in seconds]

    swarm_mibs, raw_mibs = throughput(swarm_seconds), throughput(raw_seconds)
    swarm_median, raw_median = statistics.median(swarm_mibs), statistics.median(raw_mibs)
    # A node serializes, digests and signs once per published version and then serves it to
    # every neighbour that asks; per pull only the remaining stages recur.
    serve_seconds = [
        total - sum(stages[name][i] for name in PUBLISH_STAGES) for i, total in enumerate(swarm_seconds)
    ]
    serve_median = statistics.median(throughput(serve_seconds))
    return {
        "size_mib": model_bytes / MIB,
        "model_bytes": model_bytes,
        "tensors": len(layout),
        "frames": len(layout) + 1,
        "repeats": repeats,
        "warmup": warmup,
        "sender": "thread",
        "swarm": {
            "seconds": swarm_seconds,
            "mib_per_s": swarm_mibs,
            "median_seconds": statistics.median(swarm_seconds),
            "median_mib_per_s": swarm_median,
            "stages": stages,
            "stage_medians": {name: statistics.median(values) for name, values in stages.items()},
        },
        "raw_zmq": {
            "seconds": raw_seconds,
            "mib_per_s": raw_mibs,
            "median_seconds": statistics.median(raw_seconds),
            "median_mib_per_s": raw_median,
        },
        "ratio_vs_raw_zmq": swarm_median / raw_median,
        "publish_snapshot": {
            "median_seconds": statistics.median(snapshot_seconds),
            "ratio_including_snapshot": model_bytes / MIB / (statistics.median(swarm_seconds) + statistics.median(snapshot_seconds)) / raw_median,
        },
        "serve": {
            "seconds": serve_seconds,
            "median_seconds": statistics.median(serve_seconds),
            "median_mib_per_s": serve_median,
            "ratio_vs_raw_zmq": serve_median / raw_median,
        },
        "digest_verified": digest_verified,
        "tensors_equal": tensors_equal,
        "environment": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "digest_workers": DIGEST_WORKERS,
            "libzmq": zmq.zmq_version(),
            "pyzmq": zmq.__version__,
        },
    }


def format_bench(result: dict) -> str:
    """A readable multi-line report of a `run_bench` result."""
    swarm, raw = result["swarm"], result["raw_zmq"]
    env = result["environment"]

    def series(values: list[float], fmt: str) -> str:
        return " ".join(format(v, fmt) for v in values)

    lines = [
        f"model exchange over loopback TCP: {result['size_mib']:.1f} MiB float32 in "
        f"{result['tensors']} tensors ({result['frames']} frames), "
        f"{result['repeats']} repeat(s) after {result['warmup']} warm-up, sender in a {result['sender']}",
        f"  {'':8} {'median':>10} {'MiB/s':>9}   per repeat (MiB/s)",
        f"  {'swarm':8} {swarm['median_seconds'] * 1000:8.1f}ms {swarm['median_mib_per_s']:9.1f}   {series(swarm['mib_per_s'], '.0f')}",
        f"  {'raw zmq':8} {raw['median_seconds'] * 1000:8.1f}ms {raw['median_mib_per_s']:9.1f}   {series(raw['mib_per_s'], '.0f')}",
        f"  ratio vs raw zmq: {result['ratio_vs_raw_zmq']:.3f}",
        f"  a node also copies the weights once per published version (so training can go on while it serves): "
        f"{result['publish_snapshot']['median_seconds'] * 1000:.1f}ms; ratio with that copy included: "
        f"{result['publish_snapshot']['ratio_including_snapshot']:.3f}",
        f"  serving an already published model (swarm minus serialize/digest/sign, derived): "
        f"{result['serve']['median_seconds'] * 1000:.1f}ms, {result['serve']['median_mib_per_s']:.1f} MiB/s, "
        f"ratio {result['serve']['ratio_vs_raw_zmq']:.3f}",
        "  swarm stages (median ms, share of median total):",
    ]
    total = swarm["median_seconds"]
    for name, value in swarm["stage_medians"].items():
        lines.append(f"    {name:20} {value * 1000:8.2f}ms {100 * value / total:5.1f}%")
    lines.append(f"    {'sum of medians':20} {sum(swarm['stage_medians'].values()) * 1000:8.2f}ms")
    lines.append(
        f"  received digest verified: {'yes' if result['digest_verified'] else 'NO'}; "
        f"rebuilt tensors equal sent: {'yes' if result['tensors_equal'] else 'NO'}"
    )
    lines.append(
        f"  {env['cpus']} CPUs, torch threads {env['torch_threads']}, digest workers "
        f"{env['digest_workers']}, libzmq {env['libzmq']}, pyzmq {env['pyzmq']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_bench(run_bench()))
