"""`swarm-dev fuzz` (also `swarm-node fuzz`): a seeded mutation fuzzer for every reader of untrusted bytes.

Each target starts from valid seeds and mutates them (bit flips, byte changes, truncation,
extension, splices, msgpack length bombs, deep nesting, extension types, pickles) or makes
inputs from scratch:

decode:KIND   `decode_message`, one target per wire message kind; frames are mutated, added,
              dropped, reordered and blown past the frame size limit, and headers are also
              re-packed with a random value swapped in somewhere, so that the checks behind
              the msgpack parser are reached
records       `read_records` and `verify_log_file` over a mutated log file; records are
              also re-framed with a correct checksum, so damage reaches the entry opener
entry         `open_entry` over mutated envelopes, and over mutated payloads that are
              validly signed, so that the payload parser behind the signature is reached
chain         `verify_extension` after a random head, over runs of entries with replays,
              gaps, forks, another author and another federation; the verdict must be the
              one the known layout of those chains predicts

An input must be accepted or refused with the documented error (RejectedMessage, LogError).
Anything else is a crash, and so is an accepted input that breaks an invariant (`Invariant`:
a message that does not survive re-encoding, an entry no fuzz key signed, a wrong verdict).
A crash's input is saved under the crashes directory. Memory is shown two ways: the growth
of the process's peak RSS while a target runs, and the most memory traced (tracemalloc)
while one input is handled, over a sample of inputs.
"""

from __future__ import annotations

import hashlib
import pickle
import random
import resource
import struct
import tempfile
import time
import tracemalloc
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from swarm.codec import DEFAULT_LIMITS, decode_message, encode_message
from swarm.errors import LogError, RejectedMessage
from swarm.identity import SigningKey
from swarm.log import (
    ENTRY_TYPE,
    SIGNING_DOMAIN,
    EntryBody,
    ParentRef,
    SignedEntry,
    encode_record,
    link_after,
    open_entry,
    read_records,
    sign_entry,
    verify_extension,
    verify_log_file,
)
from swarm.messages import (
    MAX_CHUNK_LEAVES,
    MESSAGE_TYPES,
    Chunk,
    ChunkRefusal,
    ChunkRequest,
    Evidence,
    ManifestUpdate,
    Message,
    ModelPush,
    ModelReply,
    ModelRequest,
    PushAck,
    Refusal,
    VersionReply,
    VersionRequest,
)
from swarm.tensors import FlatModel, TensorSpec, leaf_hashes, model_digest
from swarm.transfer import Offered

FED = hashlib.sha256(b"swarm fuzz federation").digest()
OTHER_FED = hashlib.sha256(b"swarm fuzz other federation").digest()
TRACE_EVERY = 50  # one input in this many runs under tracemalloc
MAX_SAVED_CRASHES = 20  # per target: enough to debug, not enough to fill a disk
CHAIN_LENGTH = 6

Case = list[bytes]  # frames of a message, or the one file / envelope, or see ChainTarget


class Invariant(AssertionError):
    """An input was accepted, but what came out is wrong: a bug, counted as a crash."""


def _key(name: str) -> SigningKey:
    return SigningKey.from_private_bytes(hashlib.sha256(f"swarm fuzz {name}".encode()).digest())


# -- seeds -------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """Valid inputs to start from: signed chains, wire messages of every kind, a model (whose
    leaf hashes the offers carry and whose leaves the chunks carry)."""

    alice: SigningKey = field(default_factory=lambda: _key("alice"))
    bob: SigningKey = field(default_factory=lambda: _key("bob"))
    main: list[SignedEntry] = field(init=False)  # alice's chain in FED
    fork: list[SignedEntry] = field(init=False)  # alice's other history after main's seq 2
    strangers: list[SignedEntry] = field(init=False)  # bob's chain, and alice's in OTHER_FED
    model: FlatModel = field(init=False)
    served: Offered = field(init=False)  # the model as a sender serves it in chunks

    def __post_init__(self) -> None:
        self.model = FlatModel(
            (TensorSpec("a.weight", "float32", (2, 3)), TensorSpec("b.bias", "bfloat16", (4,)),
             TensorSpec("c.count", "int64", (1,)), TensorSpec("d.mask", "bool", (3,)),
             TensorSpec("e.empty", "uint8", (0, 5))),
            (bytes(range(24)), bytes(8), bytes(8), b"\x01\x00\x01", b""),
        )
        self.served = Offered(self.model, leaf_hashes(self.model), model_digest(self.model))
        self.main = _chain(self.alice, FED, CHAIN_LENGTH, None, 0)
        self.fork = _chain(self.alice, FED, CHAIN_LENGTH - 2, self.main[1], 1)
        self.strangers = _chain(self.bob, FED, 3, None, 0) + _chain(self.alice, OTHER_FED, 3, None, 0)

    @property
    def entries(self) -> list[SignedEntry]:
        return self.main + self.fork + self.strangers

    def messages(self, kind: str) -> list[tuple[Message, list[Any]]]:
        """Seed messages of `kind`, each with its data frames (a Chunk's leaves; else none)."""
        envelopes = tuple(e.envelope for e in self.main[:3])
        hashes, digest = self.served.hashes, self.served.digest
        # A chunk of the most leaves a message may carry, so that frame edits cross the limit.
        full = [bytes([i]) * i for i in range(MAX_CHUNK_LEAVES)]
        examples: dict[str, list[tuple[Message, list[Any]]]] = {
            "version_req": [(VersionRequest(0), []), (VersionRequest(2**63 - 1), [])],
            "version_reply": [(VersionReply(7, 3, 100, False), []), (VersionReply(1, 0, 0, True), [])],
            "model_req": [(ModelRequest(5, 0), []), (ModelRequest(2**40, 3), [])],
            "model_reply": [(ModelReply(9, envelopes, hashes), []), (ModelReply(1, envelopes[-1:], hashes[:1]), [])],
            "model_push": [(ModelPush(envelopes, hashes), []), (ModelPush(envelopes[:1], hashes[-1:]), [])],
            "chunk_req": [(ChunkRequest(digest, 0, 1), []), (ChunkRequest(digest, 2**40, MAX_CHUNK_LEAVES), [])],
            "chunk": [(Chunk(digest, 0, len(hashes)), self.served.frames(0, len(hashes))),
                      (Chunk(digest, 1, 2), self.served.frames(1, 2)),
                      (Chunk(digest, 2**40, MAX_CHUNK_LEAVES), full)],
            "chunk_refusal": [(ChunkRefusal(digest, "version_gone"), [])],
            "push_ack": [(PushAck(0), []), (PushAck(12), [])],
            "evidence": [(Evidence((self.main[2].envelope, self.fork[0].envelope)), [])],
            "manifest": [(ManifestUpdate(b'{"name": "fuzz", "version": 2}', b'{"hospital-a": "c2ln"}'), [])],
            "refusal": [(Refusal(3, "no_model_yet"), []), (Refusal(0, "reply_too_large"), [])],
        }
        if kind not in examples:
            raise ValueError(f"no seed messages of kind {kind!r}: add some to Corpus.messages")
        return examples[kind]


def _chain(key: SigningKey, federation: bytes, count: int, after: SignedEntry | None, salt: int) -> list[SignedEntry]:
    out: list[SignedEntry] = []
    head = after
    for _ in range(count):
        seq, prev = link_after(head)
        parents = (ParentRef(_key("carol").public, seq, bytes([seq]) * 32),) if seq % 2 else ()
        body = EntryBody(federation, key.public, seq, prev, "update" if seq % 3 else "merge",
                         bytes([seq, salt]) * 16, 10 * seq, parents, seq, {"acc": 0.5, "loss": 1.0 / seq}, 1.7e9 + seq)
        head = sign_entry(body, key)
        out.append(head)
    return out


# -- mutation ----------------------------------------------------------------------------------

INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF, *range(0xC0, 0xE0))
LENGTH_BOMBS = (
    b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
    b"\xc9\xff\xff\xff\xff\x05", b"\xdc\xff\xff", b"\xde\xff\xff", b"\xc5\xff\xff", b"\xda\xff\xff",
    b"\xc8\xff\xff\x05", b"\xc4\xff", b"\xd9\xff", b"\xc7\xff\x05",
)
EXT_VALUES = (b"\xd4\x05\x00", b"\xd5\x80\x00\x00", b"\xd6\xff" + bytes(4), b"\xd7\xff" + bytes(8),
              b"\xc7\x0c\xff" + bytes(12), b"\xd8\x7f" + bytes(16), b"\xc7\x00\x01")


class _Unpickled:
    """Unpickling this creates a marker file: the fuzzer checks that it never appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def hostile_blobs(marker: Path) -> list[bytes]:
    """Whole frames / files / envelopes that are hostile on their own."""
    blobs = [pickle.dumps(_Unpickled(marker), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    blobs += [pickle.dumps({"v": 1, "kind": "version_req"}, protocol=p) for p in (0, 2, 5)]
    blobs += [b"\x91" * 100_000 + b"\xc0", b"\x81\xa1k" * 50_000 + b"\xc0", *LENGTH_BOMBS, *EXT_VALUES, b""]
    # Real, bounded container bombs: every byte an empty list (the decoder's worst case).
    blobs += [b"\xdc\x10\x00" + b"\x90" * 4096, b"\xdc\x01\x00" + (b"\xdc\x01\x00" + b"\x90" * 256) * 256]
    return blobs


def mutate_bytes(rng: random.Random, data: bytes, donors: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        _mutate_once(rng, out, donors)
    return bytes(out)


def _mutate_once(rng: random.Random, out: bytearray, donors: list[bytes]) -> None:
    at = rng.randrange(len(out) + 1)
    op = rng.randrange(10)
    if op == 0 and out:
        out[at % len(out)] ^= 1 << rng.randrange(8)
    elif op == 1 and out:
        out[at % len(out)] = rng.choice(INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)
    elif op == 2:
        del out[at:]
    elif op == 3:
        out += rng.choice((rng.randbytes(rng.randrange(1, 64)), bytes(rng.randrange(1, 300)), bytes(out)))
    elif op == 4:
        out[at:at] = rng.randbytes(rng.randrange(1, 17))
    elif op == 5:
        del out[at:at + rng.randrange(1, 33)]
    elif op == 6:
        out[at:at] = out[at:at + rng.randrange(1, 65)]
    elif op == 7 and donors:
        donor = rng.choice(donors)
        out[at:] = donor[rng.randrange(len(donor) + 1):]
    elif op == 8:
        out[at:at] = rng.choice(LENGTH_BOMBS + EXT_VALUES)
    else:
        out[at:at] = rng.choice((b"\x91", b"\x81\xa1k")) * rng.randrange(1, 2000)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random msgpack-able value, biased towards the edges of what the readers check."""
    choice = rng.randrange(14 if depth < 3 else 10)
    if choice == 0:
        return rng.choice((0, 1, -1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), True, False, None))
    if choice == 1:
        return rng.randrange(-(2**63), 2**64)
    if choice == 2:
        return rng.choice((0.0, -0.0, 1.5, float("nan"), float("inf"), float("-inf"), 1e308))
    if choice == 3:
        return rng.choice(("", "a", "a\0b", "\x1b[2J", "é" * 40, "x" * 300, "float32", "update", "v"))
    if choice == 4:
        return rng.randbytes(rng.choice((0, 1, 31, 32, 33, 64, 65)))
    if choice == 5:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.randrange(4)))
    if choice == 6:
        return msgpack.Timestamp(rng.randrange(2**32), 0)
    if choice == 7:
        return rng.choice(list(MESSAGE_TYPES) + ["version_req\0", "exec"])
    if choice == 8:  # around the chunk and leaf counts
        return rng.choice((MAX_CHUNK_LEAVES, MAX_CHUNK_LEAVES + 1, 65536, 65537, 2**32))
    if choice == 9:
        return [rng.randrange(-2, 5) for _ in range(rng.randrange(10))]
    if choice in (10, 11):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(("v", "fed", "kind", "body", "tensors", "req", "entries", "leaves", "digest", "count", "x", "")): random_value(rng, depth + 1)
            for _ in range(rng.randrange(5))}


def mutate_tree(rng: random.Random, tree: Any) -> Any:
    """Replace, delete or add one value somewhere inside a decoded msgpack map."""
    slots: list[tuple[Any, Any]] = []
    _collect_slots(tree, slots)
    container, key = rng.choice(slots)
    op = rng.random()
    if op < 0.15 and isinstance(container, dict):
        del container[key]
    elif op < 0.25 and isinstance(container, dict):
        container[rng.choice(("x", "v", "req", "seq", ""))] = random_value(rng)
    elif op < 0.35 and isinstance(container, list):
        container.insert(key, random_value(rng))
    else:
        container[key] = random_value(rng)
    return tree


def _collect_slots(node: Any, slots: list[tuple[Any, Any]], depth: int = 0) -> None:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items)[:5000]:  # a mutated header may be a deep or wide bomb
        slots.append((node, key))
        if depth < 20:
            _collect_slots(value, slots, depth + 1)


def pack_loosely(rng: random.Random, value: Any) -> bytes:
    """msgpack bytes of `value`, sometimes in a form a strict reader must refuse."""
    try:
        return msgpack.packb(value, use_bin_type=rng.random() < 0.9, use_single_float=rng.random() < 0.1)
    except (ValueError, OverflowError, TypeError):
        return msgpack.packb(None)  # e.g. an int past 2**64: msgpack cannot write it


# -- targets -----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    make: Callable[[random.Random], Case]
    check: Callable[[Case], None]  # returns when accepted; raises RejectedMessage/LogError when refused


def decode_target(kind: str, corpus: Corpus, blobs: list[bytes]) -> Target:
    seeds = [[bytes(f) for f in encode_message(FED, msg, data)] for msg, data in corpus.messages(kind)]
    donors = [frame for frames in seeds for frame in frames]

    def make(rng: random.Random) -> Case:
        frames = list(rng.choice(seeds))
        for _ in range(rng.choice((1, 1, 2, 3))):
            frames = _mutate_frames(rng, frames, donors, blobs)
        return frames

    def check(frames: Case) -> None:
        decoded = decode_message(frames, FED)
        again = decode_message([bytes(f) for f in encode_message(FED, decoded.msg, decoded.data)], FED)
        if again != decoded:
            raise Invariant(f"an accepted {decoded.msg.KIND} changes when re-encoded")

    return Target(f"decode:{kind}", make, check)


def _mutate_frames(rng: random.Random, frames: Case, donors: list[bytes], blobs: list[bytes]) -> Case:
    op = rng.randrange(8)
    at = rng.randrange(len(frames)) if frames else 0
    if op in (0, 1) and frames:  # the header (or a data frame) as bytes
        frames[at if op else 0] = mutate_bytes(rng, frames[at if op else 0], donors)
    elif op in (2, 3) and frames:  # the header as a tree, body fields included
        try:
            tree = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
        except Exception:  # noqa: BLE001 -- already mutated past parsing: leave it so
            return frames
        if isinstance(tree, (dict, list)) and tree:
            frames[0] = pack_loosely(rng, mutate_tree(rng, tree))
    elif op == 4:
        frames = _reshape_frames(rng, frames)
    elif op == 5 and frames:
        frames[at] = rng.choice(blobs)
    elif op == 6:
        frames = [rng.randbytes(rng.randrange(64)) for _ in range(rng.randrange(1, 5))]
    elif frames:
        frames[at] = rng.choice(donors)
    return frames


def _reshape_frames(rng: random.Random, frames: Case) -> Case:
    op = rng.randrange(6)
    if op == 0 and frames:
        del frames[rng.randrange(len(frames))]
    elif op == 1 and frames:
        frames.insert(rng.randrange(len(frames) + 1), rng.choice(frames))
    elif op == 2 and len(frames) > 2:
        i, j = rng.sample(range(1, len(frames)), 2)
        frames[i], frames[j] = frames[j], frames[i]
    elif op == 3:  # an endless multipart message, as far as the frame limit and past it
        frames += [b""] * rng.choice((1, 15, 16, 17, 100, 5000))
    elif op == 4:  # a leaf at the frame size limit, or one byte past it
        frames.insert(rng.randint(min(1, len(frames)), len(frames)), bytes(DEFAULT_LIMITS.max_frame_bytes + rng.randrange(2)))
    else:
        frames.append(rng.randbytes(rng.randrange(16)))
    return frames


def records_target(corpus: Corpus, blobs: list[bytes], workdir: Path) -> Target:
    main, fork = corpus.main, corpus.fork
    histories = [main[:n] for n in range(len(main) + 1)] + [main[:2] + fork[:n] for n in range(1, len(fork) + 1)]
    records = [encode_record(e.envelope) for e in corpus.entries]
    known = {e.envelope for e in corpus.entries}
    path = workdir / "updates.log"

    def make(rng: random.Random) -> Case:
        parts = [encode_record(e.envelope) for e in rng.choice(histories)]
        op = rng.randrange(6)
        if op == 0 and parts:  # a damaged envelope behind a correct checksum
            i = rng.randrange(len(parts))
            parts[i] = encode_record(mutate_bytes(rng, parts[i][12:], records))
        elif op == 1:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(records))
        elif op == 2 and parts:
            del parts[rng.randrange(len(parts))]
        elif op == 3:
            parts.append(rng.choice(blobs))
        data = b"".join(parts)
        if op >= 4 or rng.random() < 0.5:
            data = mutate_bytes(rng, data, records)
        return [data]

    def check(case: Case) -> None:
        path.write_bytes(case[0])
        result = verify_log_file(path, federation=FED, is_member=lambda author: author == corpus.alice.public)
        try:
            envelopes, torn = read_records(path)
        except LogError:
            if result.ok:
                raise Invariant("read_records refuses a file that verifies") from None
            raise result.failure from None
        if result.ok and (torn is not None or envelopes != [e.envelope for e in result.entries]):
            raise Invariant("verify_log_file and read_records disagree on a file that verifies")
        if result.ok and not set(envelopes) <= known:
            raise Invariant("a log verified with an entry that no fuzz key signed")
        if not result.ok:
            raise result.failure

    return Target("records", make, check)


def entry_target(corpus: Corpus, blobs: list[bytes]) -> Target:
    envelopes = [e.envelope for e in corpus.entries]
    payloads = [msgpack.unpackb(env)["p"] for env in envelopes]
    keys = {key.public: key for key in (corpus.alice, corpus.bob)}

    def make(rng: random.Random) -> Case:
        op = rng.randrange(5)
        if op == 0:
            return [rng.choice(blobs)]
        if op == 1:
            return [mutate_bytes(rng, rng.choice(envelopes), envelopes)]
        envelope = msgpack.unpackb(rng.choice(envelopes))
        if op == 2:  # the same fields, packed another way or in another order
            items = list(envelope.items())
            rng.shuffle(items)
            return [pack_loosely(rng, dict(items))]
        # A validly signed payload that is wrong inside: only the payload parser stands guard.
        if op == 3:
            payload = mutate_bytes(rng, rng.choice(payloads), payloads)
        else:
            payload = pack_loosely(rng, mutate_tree(rng, msgpack.unpackb(rng.choice(payloads))))
        signer = rng.choice(list(keys.values()))
        author = signer.public if rng.random() < 0.9 else rng.choice(list(keys))
        return [msgpack.packb({"t": ENTRY_TYPE, "a": author, "p": payload, "s": signer.sign(SIGNING_DOMAIN + payload)})]

    def check(case: Case) -> None:
        entry = open_entry(case[0])
        key = keys.get(entry.author)
        if key is None:
            raise Invariant("opened an entry that no fuzz key signed")
        if sign_entry(entry.body, key).envelope != case[0]:
            raise Invariant("opened an envelope that is not the canonical encoding of its body")

    return Target("entry", make, check)


@dataclass(frozen=True)
class _Fact:
    """What the chain target knows about an entry it did not mutate."""

    author_ok: bool
    federation_ok: bool
    seq: int
    parent: bytes | None  # the envelope this entry names as prev


def chain_target(corpus: Corpus) -> Target:
    """Inputs are [head seq as a 4-byte big-endian int (0: no head), *envelopes]."""
    facts: dict[bytes, _Fact] = {}
    for lineage in (corpus.main, corpus.main[:2] + corpus.fork, corpus.strangers[:3], corpus.strangers[3:]):
        for prev, entry in zip([None, *lineage], lineage):
            facts[entry.envelope] = _Fact(entry.author == corpus.alice.public, entry.federation == FED,
                                          entry.seq, None if prev is None else prev.envelope)
    successors: dict[bytes | None, list[bytes]] = {}
    for envelope, fact in facts.items():
        if fact.author_ok and fact.federation_ok:
            successors.setdefault(fact.parent, []).append(envelope)
    pool = list(facts)

    def make(rng: random.Random) -> Case:
        head_seq = rng.randrange(len(corpus.main) + 1)
        prev = corpus.main[head_seq - 1].envelope if head_seq else None
        run: list[bytes] = []
        for _ in range(rng.randrange(8)):
            nexts = successors.get(prev, [])
            draw = rng.random()
            if draw < 0.6 and nexts:
                envelope = rng.choice(nexts)
            elif draw < 0.7 and run:
                envelope = rng.choice(run)  # a replay
            elif draw < 0.75:
                envelope = mutate_bytes(rng, rng.choice(pool), pool)
            else:
                envelope = rng.choice(pool)
            run.append(envelope)
            prev = envelope
        return [struct.pack(">I", head_seq), *run]

    def check(case: Case) -> None:
        head_seq = struct.unpack(">I", case[0])[0]
        head = corpus.main[head_seq - 1] if head_seq else None
        expected = _expected_verdict(facts, head, case[1:])
        try:
            verify_extension(head, case[1:], FED, corpus.alice.public)
        except LogError as exc:
            if expected is None or expected not in ("*", exc.reason):
                raise Invariant(f"refused with {exc.reason}, expected {expected or 'acceptance'}") from None
            raise
        if expected is not None:
            raise Invariant(f"accepted, expected {expected}")

    return Target("chain", make, check)


def _expected_verdict(facts: dict[bytes, _Fact], head: SignedEntry | None, envelopes: Case) -> str | None:
    """The reason verify_extension must give (None: accept; "*": any, the envelope is damaged)."""
    prev, prev_seq = (None, 0) if head is None else (head.envelope, head.seq)
    for envelope in envelopes:
        fact = facts.get(envelope)
        if fact is None:
            return "*"
        if not fact.author_ok:
            return "author_mismatch"
        if not fact.federation_ok:
            return "wrong_federation"
        if fact.seq != prev_seq + 1:
            return "bad_seq"
        if fact.parent != prev:
            return "broken_chain"
        prev, prev_seq = envelope, fact.seq
    return None


# -- running -----------------------------------------------------------------------------------


@dataclass
class TargetStats:
    inputs: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    seconds: float = 0.0
    max_input_bytes: int = 0
    peak_rss_growth_kib: int = 0
    max_traced_kib: float = 0.0  # the most memory one sampled input made the reader hold
    max_traced_input_bytes: int = 0  # ... and that input's size
    first_crash: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["rejected"] = dict(self.rejected.most_common())
        out["seconds"] = round(self.seconds, 2)
        out["max_traced_kib"] = round(self.max_traced_kib, 1)
        return out


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def make_targets(workdir: Path, marker: Path) -> list[Target]:
    corpus = Corpus()
    blobs = hostile_blobs(marker)
    targets = [decode_target(kind, corpus, blobs) for kind in MESSAGE_TYPES]
    return targets + [records_target(corpus, blobs, workdir), entry_target(corpus, blobs), chain_target(corpus)]


def fuzz_target(target: Target, rng: random.Random, seconds: float, marker: Path, crashes_dir: Path) -> TargetStats:
    stats = TargetStats()
    rss_before = _peak_rss_kib()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        case = target.make(rng)
        stats.inputs += 1
        size = sum(len(part) for part in case)
        stats.max_input_bytes = max(stats.max_input_bytes, size)
        try:
            reason = _run_one(target, case, stats, traced=stats.inputs % TRACE_EVERY == 1, size=size)
            if marker.exists():
                raise Invariant("a pickle was unpickled: its marker file exists")
        except Exception as exc:  # noqa: BLE001 -- anything but the documented refusal is a crash
            marker.unlink(missing_ok=True)
            _record_crash(target, case, exc, stats, crashes_dir)
            continue
        if reason is None:
            stats.accepted += 1
        else:
            stats.rejected[reason] += 1
    stats.seconds = time.perf_counter() - start
    stats.peak_rss_growth_kib = _peak_rss_kib() - rss_before
    return stats


def _run_one(target: Target, case: Case, stats: TargetStats, traced: bool, size: int) -> str | None:
    if traced:
        tracemalloc.start()
    try:
        target.check(case)
    except (RejectedMessage, LogError) as exc:
        return exc.reason
    finally:
        if traced:
            peak_kib = tracemalloc.get_traced_memory()[1] / 1024
            tracemalloc.stop()
            if peak_kib > stats.max_traced_kib:
                stats.max_traced_kib, stats.max_traced_input_bytes = peak_kib, size
    return None


def _record_crash(target: Target, case: Case, exc: Exception, stats: TargetStats, crashes_dir: Path) -> None:
    stats.crashes += 1
    text = "".join(traceback.format_exception(exc))
    if stats.first_crash is None:
        stats.first_crash = f"{type(exc).__name__}: {exc}"[:300]
    if stats.crashes > MAX_SAVED_CRASHES:
        return
    where = crashes_dir / f"{target.name.replace(':', '-')}-{stats.crashes:03d}"
    where.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(case):
        (where / f"part-{i:04d}.bin").write_bytes(part)
    (where / "error.txt").write_text(f"target {target.name}\n{text}")


def run_fuzz(seconds: float = 60.0, seed: int = 0, crashes_dir: Path = Path("fuzz-crashes")) -> dict[str, Any]:
    """Fuzz every target for an equal share of `seconds`; the figures as a JSON-ready dict."""
    with tempfile.TemporaryDirectory(prefix="swarm-fuzz-") as tmp:
        workdir = Path(tmp)
        marker = workdir / "unpickled.marker"
        targets = make_targets(workdir, marker)
        start_rss = _peak_rss_kib()
        share = seconds / len(targets)
        results = {t.name: fuzz_target(t, random.Random(f"{seed}:{t.name}"), share, marker, crashes_dir) for t in targets}
    crashes = sum(s.crashes for s in results.values())
    return {
        "seed": seed,
        "seconds": seconds,
        "inputs": sum(s.inputs for s in results.values()),
        "crashes": crashes,
        "crashes_dir": str(crashes_dir) if crashes else None,
        "start_peak_rss_kib": start_rss,
        "end_peak_rss_kib": _peak_rss_kib(),
        "targets": {name: stats.as_dict() for name, stats in results.items()},
    }


def format_fuzz(result: dict[str, Any]) -> str:
    lines = [
        f"fuzzed {result['inputs']} inputs in {result['seconds']:.0f} s (seed {result['seed']}); "
        f"crashes: {result['crashes']}; peak RSS {result['start_peak_rss_kib'] / 1024:.0f} MiB at start, "
        f"{result['end_peak_rss_kib'] / 1024:.0f} MiB at the end",
        f"  {'target':20} {'inputs':>8} {'accepted':>8} {'crashes':>7} {'RSS+ KiB':>8} {'traced KiB':>10} {'(input B)':>9} {'max input':>9}  rejected by reason",
    ]
    for name, stats in result["targets"].items():
        reasons = ", ".join(f"{reason} {count}" for reason, count in stats["rejected"].items())
        lines.append(f"  {name:20} {stats['inputs']:8} {stats['accepted']:8} {stats['crashes']:7} "
                     f"{stats['peak_rss_growth_kib']:8} {stats['max_traced_kib']:10.1f} {stats['max_traced_input_bytes']:9} "
                     f"{stats['max_input_bytes']:9}  {reasons}")
        if stats["first_crash"]:
            lines.append(f"    first crash: {stats['first_crash']}")
    if result["crashes"]:
        lines.append(f"crashing inputs saved under {result['crashes_dir']}")
    return "\n".join(lines)
