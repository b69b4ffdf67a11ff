"""Model-exchange benchmark: the chunked swarm path against raw ZeroMQ, on loopback TCP,
with sender and receiver in two processes (each with its own libzmq context, as two nodes).

Per repeat, interleaved with the baseline so that load from other programs hits both alike:

swarm    from "the trained weights are in memory" to "the neighbour holds verified tensors":
         the sender copies the weights into its snapshot, reusing the previous
         version's tensors once no chunk is in transit from them (`snapshot`), hashes the
         leaves (`digest`), signs a log entry (`sign`) and offers the version; the receiver
         checks the entry's signature and that the leaf hashes make up the signed digest,
         pulls the chunks with its credit window, hashes each leaf as it arrives and writes
         it into buffers preallocated from the specs (`pull`), then checks that every weight
         is finite (`finite`). `ratio_vs_raw_zmq` leaves the snapshot out (a node makes it
         once per version, not per neighbour); `ratio_with_snapshot` includes it.
raw_zmq  plain pyzmq DEALER -> ROUTER sending the same tensor buffers as one multipart
         message, `send_multipart(copy=False)` and `recv_multipart(copy=False)`.

Both clocks are `time.perf_counter` (CLOCK_MONOTONIC, one clock for every process on
Linux): the sender stamps the start, the receiver the end. Peak RSS (VmHWM, reset before each
swarm repeat through /proc/self/clear_refs) is reported per side for the swarm path only.

`resume`: the sender serves half the chunks of a fresh version, then closes its sockets
(as a node that crashes), opens new ones and offers the same version again; the receiver
keeps its verified chunks and pulls only the rest. `resent_fraction` is what the sender
served after the cut, as a fraction of the model. `receiver_restart`: the receiver stops
half way through a pull, saves it as a stopping node does (nodes.transfers), starts over
with nothing but the saved file, and is offered the same version again.

Sender and receiver share this machine's cores, so on a small machine every pass over the
bytes (hashing, copying) competes with the transfer itself: the figures are a pessimistic
bound for two hospitals, whose CPUs are separate.
"""

from __future__ import annotations

import math
import multiprocessing
import statistics
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import zmq

from nodes.transfers import Transfers
from swarm.codec import decode_message, encode_message
from swarm.errors import RejectedMessage
from swarm.identity import SigningKey
from swarm.log import EntryBody, open_entry, sign_entry
from swarm.messages import MAX_CHUNK_LEAVES, Chunk, ChunkRequest, ModelPush
from swarm.tensors import digest_from_leaves, first_non_finite, flatten_state, leaf_hashes, rebuild_state, snapshot_state
from swarm.transfer import Offered, TransferSettings
from swarm.transport.zeromq import ZmqSettings, ZmqTransport, free_tcp_ports

MIB = 1024 * 1024
HOST = "127.0.0.1"
SENDER, RECEIVER = "bench-sender", "bench-receiver"
LIMIT_S = 300.0  # a transfer that has not completed by then is a failure, not a slow run
FEDERATION = b"bench-federation".ljust(32, b"\0")
SENDER_STAGES = ("snapshot", "digest", "sign")
RECEIVER_STAGES = ("verify_entry", "pull", "finite")


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


# --------------------------------------------------------------------------- both sides


def _zmq_settings(transfer: TransferSettings) -> ZmqSettings:
    return ZmqSettings(max_frame_bytes=8 * MIB, max_frames=1 + MAX_CHUNK_LEAVES, send_hwm=transfer.window + 8, recv_hwm=2 * transfer.window + 8, linger_ms=0)


def _open(name: str, port: int, peer: str, peer_port: int, transfer: TransferSettings) -> ZmqTransport:
    deadline = time.monotonic() + 10
    while True:  # after a "crash" the port may take a moment to be free again
        try:
            return ZmqTransport(name, f"tcp://{HOST}:{port}", {peer: f"tcp://{HOST}:{peer_port}"}, _zmq_settings(transfer)).open()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _peak_reset() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets VmHWM to the current RSS


def _peak_rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _sender_main(conn: Connection, layout: list, ports: Sequence[int], transfer: TransferSettings) -> None:
    torch.set_num_threads(1)
    state = make_state(layout)
    key = SigningKey.generate()
    conn.send(key.public)
    transport = _open(SENDER, ports[0], RECEIVER, ports[1], transfer)
    _wait_connected(transport)
    context = zmq.Context()
    raw = context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(f"tcp://{HOST}:{ports[2]}")
    transfers = Transfers(flatten_state(state).specs, transfer)
    seq, prev = 0, bytes(32)

    def publish() -> tuple[Offered, bytes, dict[str, float]]:
        nonlocal seq, prev
        times, started = {}, time.perf_counter()
        snapshot = snapshot_state(state, transfers.reclaim())  # as nodes.learner does
        flat = flatten_state(snapshot)
        times["snapshot"], started = time.perf_counter() - started, time.perf_counter()
        leaves = leaf_hashes(flat)
        digest = digest_from_leaves(flat.specs, leaves)
        times["digest"], started = time.perf_counter() - started, time.perf_counter()
        seq += 1
        entry = sign_entry(EntryBody(FEDERATION, key.public, seq, prev, "update", digest, 1, (), seq, {}, 0.0), key)
        prev = entry.hash
        times["sign"] = time.perf_counter() - started
        offered = Offered(flat, leaves, digest, snapshot)
        transfers.offer(offered)
        return offered, entry.envelope, times

    def offer(envelope: bytes, offered: Offered) -> None:
        if not transport.send(RECEIVER, encode_message(FEDERATION, ModelPush((envelope,), offered.hashes))):
            raise BenchError("the receiver is not connected")

    def serve(cut_after: int | None = None) -> int:
        """Answer chunk requests until the parent speaks (or `cut_after` chunks were served)."""
        served = 0
        while not conn.poll(0):
            received = transport.receive(0.01)
            if received is None:
                continue
            msg = decode_message(received.frames, FEDERATION).msg
            if isinstance(msg, ChunkRequest):
                before = transfers.counts["chunk_bytes_sent"]

                def send(frames: list, msg: ChunkRequest = msg) -> Any:
                    return transport.send_tracked(RECEIVER, encode_message(FEDERATION, Chunk(msg.digest, msg.first, msg.count), frames))

                if transfers.serve(RECEIVER, msg.digest, msg.first, msg.count, send):
                    served += transfers.counts["chunk_bytes_sent"] - before
                    if cut_after is not None and served >= cut_after:
                        return served
        return served

    while (command := conn.recv()) != "stop":
        if command == "raw":
            _peak_reset()
            started = time.perf_counter()
            raw.send_multipart([b"header", *flatten_state(state).buffers], copy=False)
            conn.send(started)
        elif command == "swarm":
            _peak_reset()
            started = time.perf_counter()
            offered, envelope, times = publish()
            offer(envelope, offered)
            conn.send((started, times))
            serve()
            conn.send(_peak_rss())
        elif command == "restart":
            offered, envelope, _ = publish()
            offer(envelope, offered)
            conn.send(serve())
        elif command == "resume":
            offered, envelope, _ = publish()
            offer(envelope, offered)
            serve(cut_after=offered.flat.total_bytes // 2)
            transport.close()  # a crash: whatever was queued is lost
            transport = _open(SENDER, ports[0], RECEIVER, ports[1], transfer)
            _wait_connected(transport)
            offer(envelope, offered)
            conn.send(serve())
    transport.close()
    raw.close()
    context.term()


def _wait_connected(transport: ZmqTransport) -> None:
    dealer = transport.dealers[RECEIVER]
    if not dealer.poll(10_000, zmq.POLLOUT):
        raise BenchError("the sender never connected to the receiver")


def _receiver_main(conn: Connection, ports: Sequence[int], transfer: TransferSettings, specs: Any, incoming_dir: str) -> None:
    torch.set_num_threads(1)
    sender_key = conn.recv()
    transport = _open(RECEIVER, ports[1], SENDER, ports[0], transfer)
    context = zmq.Context()
    raw = context.socket(zmq.ROUTER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.bind(f"tcp://{HOST}:{ports[2]}")
    transfers = Transfers(specs, transfer)
    conn.send("ready")

    def pull(pulling: Any = None, cut_after: int | None = None) -> tuple[dict[str, float], dict[str, Any]]:
        """Pull the next offered model (or go on with `pulling`); with `cut_after`, stop
        once that many bytes arrived and return the unfinished pull under "cut"."""
        times: dict[str, float] = {"pull": time.perf_counter()}
        deadline = time.monotonic() + LIMIT_S
        while True:
            if time.monotonic() > deadline:
                raise BenchError(f"no complete model within {LIMIT_S:.0f} s")
            if pulling is not None and pulling.active:
                wanted = pulling.transfer.requests(time.monotonic())
                for position, (first, count) in enumerate(wanted):
                    if not transport.send(SENDER, encode_message(FEDERATION, ChunkRequest(pulling.transfer.digest, first, count))):
                        for unsent, _ in reversed(wanted[position:]):
                            pulling.transfer.not_sent(unsent)
                        break
            received = transport.receive(0.05)
            if received is None:
                continue
            if received.rejected:
                # Chunks still in flight on the sender's old connection when its restart
                # takes the name over (ROUTER_HANDOVER, --insecure): they arrive under a
                # generated routing id and are refused, as a node refuses them.
                continue
            decoded = decode_message(received.frames, FEDERATION)
            msg = decoded.msg
            if isinstance(msg, ModelPush):
                started = time.perf_counter()
                entry = open_entry(msg.entries[-1])
                if entry.author != sender_key:
                    raise BenchError("the entry is not signed by the sender")
                pulling = transfers.start(SENDER, None, [entry], entry, msg.leaves)
                times["verify_entry"] = time.perf_counter() - started
                times["pull"] = time.perf_counter()
            elif isinstance(msg, Chunk):
                try:
                    done = transfers.accept(SENDER, msg, decoded.data)
                except RejectedMessage:  # asked for before a restart: a node refuses it the same way
                    continue
                if cut_after is not None and pulling is not None and pulling.transfer.bytes_received >= cut_after:
                    return times, {"cut": pulling}
                if done is not None:
                    ended = time.perf_counter()
                    times["pull"] = ended - times["pull"]
                    state = rebuild_state(done.transfer.model())
                    if first_non_finite(state) is not None:
                        raise BenchError("non-finite weights arrived")
                    times["finite"] = time.perf_counter() - ended
                    return times, {"end": time.perf_counter(), "model": state, "buffers": done.transfer.tensors}

    while (command := conn.recv()) != "stop":
        if command == "raw":
            _peak_reset()
            raw.recv_multipart(copy=False)
            conn.send(time.perf_counter())
        elif command == "swarm":
            _peak_reset()
            times, got = pull()
            conn.send((got["end"], times, _peak_rss()))
            transfers.recycle(got["buffers"])  # as a node does once it merged the model
            del got
        elif command == "resume":
            before = transfers.counts["chunk_bytes_received"]
            times, got = pull()
            conn.send({"received": transfers.counts["chunk_bytes_received"] - before, "resumed": transfers.counts["resumed"]})
            del got
        elif command == "restart":  # the receiver stops half way, saves, starts again, is offered the same version
            _, got = pull(cut_after=sum(spec.nbytes for spec in specs) // 2)
            cut = got["cut"]
            started = time.perf_counter()
            transfers.save(Path(incoming_dir))
            saved_s = time.perf_counter() - started
            transport.close()
            del got
            transfers = Transfers(specs, transfer)  # a new process would know nothing else
            started = time.perf_counter()
            transfers.load(Path(incoming_dir), [SENDER])
            transport = _open(RECEIVER, ports[1], SENDER, ports[0], transfer)
            pulling = transfers.start(SENDER, None, cut.entries, cut.last, cut.transfer.hashes)
            loaded_s = time.perf_counter() - started
            del cut
            times, got = pull(pulling)
            conn.send({"received_after_restart": transfers.counts["chunk_bytes_received"], "from_disk": transfers.counts["resumed_from_disk_bytes"],
                       "save_seconds": saved_s, "load_seconds": loaded_s})
            del got
    transport.close()
    raw.close()
    context.term()


# --------------------------------------------------------------------------- the run


def run_bench(size_mb: float = 100.0, repeats: int = 5, tensors: int = 0, window: int = 4, chunk_mib: int = 4, resume: bool = True) -> dict:
    layout = model_layout(int(size_mb * MIB), tensors)
    transfer = TransferSettings(chunk_bytes=chunk_mib * MIB, window=window)
    specs = flatten_state({name: torch.empty(shape) for name, shape in layout}).specs  # pages never touched
    model_bytes = sum(spec.nbytes for spec in specs)
    ports = free_tcp_ports(HOST, 3)
    incoming = tempfile.TemporaryDirectory(prefix="swarm-bench-incoming-")  # the receiver's SITE/incoming
    spawn = multiprocessing.get_context("spawn")
    to_sender, sender_end = spawn.Pipe()
    to_receiver, receiver_end = spawn.Pipe()
    processes = [
        spawn.Process(target=_sender_main, args=(sender_end, layout, ports, transfer), daemon=True),
        spawn.Process(target=_receiver_main, args=(receiver_end, ports, transfer, specs, incoming.name), daemon=True),
    ]
    for process in processes:
        process.start()
    try:
        to_receiver.send(_recv(to_sender, processes))  # the sender's public key
        _recv(to_receiver, processes)  # listening
        raw_s, swarm_s, snapshot_s = [], [], []
        stages: dict[str, list[float]] = {name: [] for name in SENDER_STAGES + RECEIVER_STAGES}
        rss_sender, rss_receiver = [], []
        for repeat in range(repeats + 1):  # the first of each is a warm-up
            for path in (("raw", "swarm") if repeat % 2 else ("swarm", "raw")):
                to_receiver.send(path)
                to_sender.send(path)
                if path == "raw":
                    started, ended = _recv(to_sender, processes), _recv(to_receiver, processes)
                    if repeat:
                        raw_s.append(ended - started)
                    continue
                started, sent_times = _recv(to_sender, processes)
                ended, received_times, rss = _recv(to_receiver, processes)
                to_sender.send("done")
                sender_rss = _recv(to_sender, processes)
                if repeat:
                    swarm_s.append(ended - started - sent_times["snapshot"])
                    snapshot_s.append(sent_times["snapshot"])
                    for name, value in (sent_times | received_times).items():
                        stages[name].append(value)
                    rss_sender.append(sender_rss)
                    rss_receiver.append(rss)
        resumed = None
        if resume:
            to_receiver.send("resume")
            to_sender.send("resume")
            received = _recv(to_receiver, processes)
            to_sender.send("done")
            resent = _recv(to_sender, processes)
            resumed = {"resent_bytes": resent, "resent_fraction": round(resent / model_bytes, 4), "resumed": received["resumed"] >= 1}
            to_receiver.send("restart")
            to_sender.send("restart")
            received = _recv(to_receiver, processes)
            to_sender.send("done")
            _recv(to_sender, processes)
            resumed["receiver_restart"] = {
                "pulled_after_restart_fraction": round(received["received_after_restart"] / model_bytes, 4),
                "from_disk_fraction": round(received["from_disk"] / model_bytes, 4),
                "save_seconds": round(received["save_seconds"], 3),
                "load_seconds": round(received["load_seconds"], 3),
            }
        for conn in (to_sender, to_receiver):
            conn.send("stop")
        for process in processes:
            process.join(timeout=30)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        incoming.cleanup()
    raw_median, swarm_median, snapshot_median = statistics.median(raw_s), statistics.median(swarm_s), statistics.median(snapshot_s)

    def mib_per_s(seconds: float) -> float:
        return round(model_bytes / MIB / seconds, 1)

    return {
        "model_bytes": model_bytes,
        "tensors": len(specs),
        "repeats": repeats,
        "chunk_bytes": transfer.chunk_bytes,
        "window": transfer.window,
        "raw_zmq": {"seconds": raw_s, "median_seconds": raw_median, "median_mib_per_s": mib_per_s(raw_median)},
        "swarm": {"seconds": swarm_s, "median_seconds": swarm_median, "median_mib_per_s": mib_per_s(swarm_median),
                  "stage_medians": {name: statistics.median(values) for name, values in stages.items()}},
        "ratio_vs_raw_zmq": round(raw_median / swarm_median, 3),
        "ratio_with_snapshot": round(raw_median / (swarm_median + snapshot_median), 3),
        "peak_rss_bytes": {"sender": max(rss_sender), "receiver": max(rss_receiver)},
        "peak_rss_over_model": {side: round(max(values) / model_bytes, 2) for side, values in (("sender", rss_sender), ("receiver", rss_receiver))},
        "resume": resumed,
    }


def _recv(conn: Connection, processes: Sequence[Any] = ()) -> Any:
    deadline = time.monotonic() + LIMIT_S
    while not conn.poll(1.0):
        if any(not process.is_alive() for process in processes):
            raise BenchError("a benchmark process died (its traceback is above)")
        if time.monotonic() > deadline:
            raise BenchError(f"a benchmark process gave no answer within {LIMIT_S:.0f} s")
    return conn.recv()


def format_bench(result: dict) -> str:
    mib = result["model_bytes"] / MIB
    lines = [
        f"model {mib:.0f} MiB in {result['tensors']} tensors; chunks of {result['chunk_bytes'] // MIB} MiB, window {result['window']}; {result['repeats']} timed repeats (medians)",
        f"raw zmq   {result['raw_zmq']['median_mib_per_s']:8.1f} MiB/s  ({result['raw_zmq']['median_seconds'] * 1000:.0f} ms)",
        f"swarm     {result['swarm']['median_mib_per_s']:8.1f} MiB/s  ({result['swarm']['median_seconds'] * 1000:.0f} ms)",
        f"ratio vs raw zmq {result['ratio_vs_raw_zmq']:.2f}; with the per-version snapshot {result['ratio_with_snapshot']:.2f}",
        "stages (ms): " + ", ".join(f"{name} {seconds * 1000:.0f}" for name, seconds in result["swarm"]["stage_medians"].items()),
        "peak RSS: " + ", ".join(f"{side} {rss / MIB:.0f} MiB ({result['peak_rss_over_model'][side]:.2f} x model)" for side, rss in result["peak_rss_bytes"].items()),
    ]
    if result["resume"] is not None:
        r = result["resume"]
        lines.append(f"resume after the sender crashed half way: resumed {r['resumed']}, sent again {r['resent_bytes'] / MIB:.0f} MiB = {r['resent_fraction']:.0%} of the model")
        rr = r["receiver_restart"]
        lines.append(f"resume after the receiver restarted half way: {rr['from_disk_fraction']:.0%} of the model from its saved pull "
                     f"(save {rr['save_seconds'] * 1000:.0f} ms, load and check {rr['load_seconds'] * 1000:.0f} ms), {rr['pulled_after_restart_fraction']:.0%} pulled again")
    return "\n".join(lines)
