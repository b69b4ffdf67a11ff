"""Tensor frames and model digests.

A model travels and is stored as a `FlatModel`: tensor specs sorted by name plus one raw
little-endian byte buffer per tensor. Flattening and rebuilding are zero-copy wherever torch
allows it, so a 100 MB model is never duplicated on its way to or from a socket or a file.
The model digest (docs/ARCHITECTURE.md) is computed over those buffers in 4 MiB chunks.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from blake3 import blake3

from .errors import brief

if sys.byteorder != "little":  # the wire and checkpoint formats are raw little-endian bytes
    raise ImportError("swarm.tensors supports little-endian hosts only")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}

MAX_NDIM = 8
MAX_NAME_CHARS = 256
MAX_DIM = 2**63 - 1  # dims travel as msgpack ints; anything larger cannot be a real tensor

DIGEST_DOMAIN = b"swarm-model-digest-v1\n"
DIGEST_CHUNK_BYTES = 4 * 1024 * 1024
# Below this the thread hand-off costs more than hashing a couple of chunks serially.
PARALLEL_MIN_BYTES = 8 * 1024 * 1024
DIGEST_WORKERS = min(4, max(2, os.cpu_count() or 2))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class FlatModel:
    """Specs sorted by name and, in the same order, one contiguous byte view per tensor.

    Construction normalises any buffer-protocol object (bytes, a zmq frame's buffer, a numpy
    array) to a 1-D unsigned-byte memoryview and checks that its length matches the spec, so
    every FlatModel in circulation is internally consistent."""

    specs: tuple[TensorSpec, ...]
    buffers: tuple[memoryview, ...]

    def __post_init__(self) -> None:
        if len(self.specs) != len(self.buffers):
            raise ValueError(f"{len(self.specs)} specs but {len(self.buffers)} buffers")
        names = [spec.name for spec in self.specs]
        if any(a >= b for a, b in zip(names, names[1:])):
            raise ValueError("tensor names must be unique and sorted")
        views = tuple(byte_view(buffer) for buffer in self.buffers)
        for spec, view in zip(self.specs, views):
            if view.nbytes != spec.nbytes:
                raise ValueError(f"tensor {spec.name!r}: buffer has {view.nbytes} bytes, spec needs {spec.nbytes}")
        object.__setattr__(self, "buffers", views)

    @property
    def total_bytes(self) -> int:
        return sum(spec.nbytes for spec in self.specs)


def byte_view(buffer: Any) -> memoryview:
    """A flat unsigned-byte view of a C-contiguous buffer, without copying."""
    view = buffer if isinstance(buffer, memoryview) else memoryview(buffer)
    if view.format == "B" and view.ndim == 1:
        return view
    if not view.c_contiguous:
        raise ValueError("tensor buffers must be C-contiguous")
    return view.cast("B")


def validate_spec(
    name: Any,
    dtype: Any,
    shape: Any,
    *,
    max_ndim: int = MAX_NDIM,
    max_name_chars: int = MAX_NAME_CHARS,
) -> TensorSpec:
    """Check an untrusted (name, dtype, shape) triple and return it as a TensorSpec.

    Raises ValueError saying what is wrong; the codec and the checkpoint reader turn that
    into their own errors."""
    if not isinstance(name, str) or not 0 < len(name) <= max_name_chars:
        raise ValueError(f"tensor name must be a non-empty str of at most {max_name_chars} characters")
    # NUL separates fields in the digest input, so a name containing it could alias another.
    if "\0" in name:
        raise ValueError(f"tensor name {name!r} contains NUL")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"tensor name {name!r} is not valid unicode") from None
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"tensor {name!r}: unsupported dtype {brief(dtype)}")
    if not isinstance(shape, (list, tuple)) or len(shape) > max_ndim:
        raise ValueError(f"tensor {name!r}: shape must be a list of at most {max_ndim} dims")
    if not all(type(dim) is int and 0 <= dim <= MAX_DIM for dim in shape):
        raise ValueError(f"tensor {name!r}: dims must be non-negative ints, got {brief(shape)}")
    return TensorSpec(name, dtype, tuple(shape))


def flatten_state(state: Mapping[str, torch.Tensor], *, copy: bool = False) -> FlatModel:
    """Turn a state dict into a FlatModel.

    Zero-copy for CPU-contiguous tensors: the buffers alias the tensors' memory (and keep
    them alive), so training that updates the tensors in place also changes the FlatModel.
    Pass `copy=True` to snapshot a model that keeps changing while the FlatModel is in use."""
    specs, buffers = [], []
    # key=str so that a non-str name reaches validate_spec's clear error, not a sort TypeError.
    for name in sorted(state, key=str):
        spec, buffer = _flatten_tensor(name, state[name], copy)
        specs.append(spec)
        buffers.append(buffer)
    return FlatModel(tuple(specs), tuple(buffers))


def _flatten_tensor(name: Any, tensor: torch.Tensor, copy: bool) -> tuple[TensorSpec, memoryview]:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name!r} is a {type(tensor).__name__}, not a tensor")
    if tensor.device.type != "cpu" or tensor.layout != torch.strided:
        raise ValueError(f"tensor {name!r} must be a dense CPU tensor (move it with .cpu() first)")
    if tensor.dtype not in _DTYPE_NAMES:
        raise ValueError(f"tensor {name!r}: unsupported dtype {tensor.dtype}")
    spec = validate_spec(name, _DTYPE_NAMES[tensor.dtype], tuple(tensor.shape))
    flat = tensor.detach().reshape(-1)  # a view when contiguous, a copy otherwise
    if copy:
        flat = flat.clone()
    # Viewing as uint8 before .numpy() sidesteps numpy's lack of bfloat16; the ndarray holds
    # a reference to the tensor, and the memoryview to the ndarray.
    return spec, memoryview(flat.view(torch.uint8).numpy()).toreadonly()


def snapshot_state(state: Mapping[str, torch.Tensor], into: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """A contiguous copy of `state` that later changes to it cannot reach: written into
    `into` when that has the same tensors (pages already mapped make the copy several times
    faster, and a sender keeps one snapshot in memory instead of two), else newly allocated."""
    fits = into is not None and into.keys() == state.keys() and all(
        into[k].shape == v.shape and into[k].dtype == v.dtype and into[k].is_contiguous() for k, v in state.items()
    )
    if not fits:
        return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in state.items()}
    assert into is not None
    for key, tensor in state.items():
        into[key].copy_(tensor)
    return into


def rebuild_state(flat: FlatModel, *, copy: bool = False) -> dict[str, torch.Tensor]:
    """Turn a FlatModel back into a state dict.

    Without `copy` the tensors alias the FlatModel's buffers. Those may be read-only (bytes,
    a received zmq frame), which torch cannot express: writing to such a tensor corrupts the
    buffer it came from. Callers that modify tensors in place must pass `copy=True`
    (`module.load_state_dict` copies by itself, so it is safe either way)."""
    return {spec.name: _rebuild_tensor(spec, buffer, copy) for spec, buffer in zip(flat.specs, flat.buffers)}


def _rebuild_tensor(spec: TensorSpec, buffer: memoryview, copy: bool) -> torch.Tensor:
    if len(buffer) != spec.nbytes:
        raise ValueError(f"tensor {spec.name!r}: buffer has {len(buffer)} bytes, spec needs {spec.nbytes}")
    dtype = DTYPES[spec.dtype]
    if spec.nbytes == 0:  # torch.frombuffer refuses empty buffers
        return torch.empty(spec.shape, dtype=dtype)
    with warnings.catch_warnings():
        # Read-only buffers are expected here; the docstring tells callers what that means.
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        tensor = torch.frombuffer(buffer, dtype=dtype).reshape(spec.shape)
    return tensor.clone() if copy else tensor


def first_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding NaN or Inf, None if there is none.
    One reduction per tensor (NaN propagates through min and max), no temporary the size of
    the tensor: a 100 MiB model is checked in a few ms."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.numel():
            low, high = torch.aminmax(tensor)
            if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
                return name
    return None


def model_digest(flat: FlatModel, *, parallel: bool | None = None) -> bytes:
    """The 32-byte model digest of docs/ARCHITECTURE.md.

    `parallel=None` hashes chunks on a thread pool only for models of PARALLEL_MIN_BYTES or
    more; the result is the same either way, since chunk hashes are combined in order."""
    return digest_from_leaves(flat.specs, leaf_hashes(flat, parallel=parallel))


def leaf_hashes(flat: FlatModel, *, parallel: bool | None = None) -> list[bytes]:
    """The BLAKE3 hash of every leaf (each tensor's bytes in DIGEST_CHUNK_BYTES pieces), in
    digest order: what the model digest combines, and what a chunked transfer checks."""
    chunks = [chunk for buffer in flat.buffers for chunk in _chunks(buffer)]
    return _run_chunk_jobs(_chunk_hash, chunks, _use_pool(flat, parallel))


def leaf_count(specs: Sequence[TensorSpec]) -> int:
    return sum(_chunk_count(spec.nbytes) for spec in specs)


def leaf_ranges(specs: Sequence[TensorSpec]) -> list[tuple[int, int, int]]:
    """(tensor index, start, stop) byte ranges of every leaf, in digest order."""
    return [
        (index, start, min(start + DIGEST_CHUNK_BYTES, spec.nbytes))
        for index, spec in enumerate(specs)
        for start in range(0, spec.nbytes, DIGEST_CHUNK_BYTES)
    ]


def digest_from_leaves(specs: Sequence[TensorSpec], hashes: Sequence[bytes]) -> bytes:
    """The model digest from the leaf hashes of `leaf_hashes`; ValueError if their number
    does not fit the specs."""
    if len(hashes) != leaf_count(specs):
        raise ValueError(f"{len(hashes)} leaf hashes, the specs have {leaf_count(specs)} leaves")
    return _combine(specs, hashes)


def _use_pool(flat: FlatModel, parallel: bool | None) -> bool:
    return flat.total_bytes >= PARALLEL_MIN_BYTES if parallel is None else parallel


def _combine(specs: Sequence[TensorSpec], chunk_hashes: Sequence[bytes]) -> bytes:
    remaining = iter(chunk_hashes)
    digest = blake3(DIGEST_DOMAIN)
    for spec in specs:
        digest.update(_spec_preamble(spec))
        for _ in range(_chunk_count(spec.nbytes)):
            digest.update(next(remaining))
    return digest.digest()


def _spec_preamble(spec: TensorSpec) -> bytes:
    shape = ",".join(str(dim) for dim in spec.shape)
    return f"{spec.name}\0{spec.dtype}\0{shape}\0{spec.nbytes}\0".encode("utf-8")


def _chunk_count(nbytes: int) -> int:
    return -(-nbytes // DIGEST_CHUNK_BYTES)


def _chunks(buffer: memoryview) -> Iterable[memoryview]:
    return (buffer[start : start + DIGEST_CHUNK_BYTES] for start in range(0, len(buffer), DIGEST_CHUNK_BYTES))


def _chunk_hash(chunk: memoryview) -> bytes:
    return blake3(chunk).digest()


def _run_chunk_jobs(work: Callable[[Any], bytes], jobs: Sequence[Any], parallel: bool) -> list[bytes]:
    if parallel and len(jobs) > 1:
        # blake3 and numpy release the GIL on large inputs, so threads work concurrently;
        # map() returns results in input order.
        return list(_digest_pool().map(work, jobs))
    return [work(job) for job in jobs]


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _digest_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=DIGEST_WORKERS, thread_name_prefix="swarm-digest")
        return _pool


def _forget_pool_in_child() -> None:
    """A forked child inherits the pool object and lock but not the threads behind them;
    submitting to that pool would hang forever, so the child starts afresh."""
    global _pool, _pool_lock
    _pool = None
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)
