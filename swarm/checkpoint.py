"""Pickle-free model checkpoints.

Layout: `b"SWCKPT2\\n"`, a big-endian u32 header length, a big-endian u32 crc32 of the
header, a msgpack header `{"specs": [[name, dtype, [shape...]], ...], "digest": <32 bytes>,
"meta": {...}}`, zero padding up to a 64-byte boundary, then each tensor's raw bytes, each
padded with zeros to a 64-byte boundary. Nothing in the file is executed on load (unlike
`torch.load` of a pickle), and tensor bytes are written and read without intermediate copies.

Every byte is checked on load: the magic, the header against its crc32 (which covers `meta`,
which no digest does), the padding (must be zeros) and the total size; with `verify`, also the
tensors (and their specs) against the stored model digest. So any flipped byte is caught.
(Version 1 files, without the crc, are not read: their `meta` could change undetected.)
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack

from .atomic import write_chunks_atomic
from .errors import SwarmError
from .tensors import FlatModel, TensorSpec, model_digest, validate_spec

MAGIC = b"SWCKPT2\n"
ALIGN = 64
DIGEST_BYTES = 32
HEADER_KEYS = frozenset({"specs", "digest", "meta"})
_LENGTH_CRC = struct.Struct(">II")  # header length, crc32 of the header
_PREFIX_BYTES = len(MAGIC) + _LENGTH_CRC.size
_ZEROS = bytes(ALIGN)


class CheckpointError(SwarmError):
    """A checkpoint file is damaged, truncated, or does not match its digest. `reason` is
    "digest_mismatch" when only the tensor data disagrees with the stored digest, otherwise
    "bad_checkpoint"."""

    def __init__(self, message: str, reason: str = "bad_checkpoint") -> None:
        super().__init__(message)
        self.reason = reason


def save_checkpoint(path: str | os.PathLike[str], flat: FlatModel, digest: bytes, meta: dict[str, Any], *, mode: int = 0o600) -> None:
    """Write `flat` atomically and durably. `digest` is stored as given (it is the
    `model_digest(flat)` the caller already computed; `load_checkpoint` checks it). `meta` is
    any msgpack-serialisable map with str keys; tuples in it come back as lists. The default
    mode keeps a hospital's model private to the account running the node."""
    if type(digest) is not bytes or len(digest) != DIGEST_BYTES:
        raise ValueError(f"digest must be {DIGEST_BYTES} bytes")
    if not isinstance(meta, dict):
        raise ValueError("meta must be a dict")
    header = msgpack.packb(
        {"specs": [[s.name, s.dtype, list(s.shape)] for s in flat.specs], "digest": digest, "meta": meta},
        use_bin_type=True,
    )
    prefix = MAGIC + _LENGTH_CRC.pack(len(header), zlib.crc32(header)) + header
    chunks: list[bytes | memoryview] = [prefix + _padding(len(prefix))]
    for buffer in flat.buffers:
        chunks += [buffer, _padding(len(buffer))]
    write_chunks_atomic(Path(path), chunks, mode)


def load_checkpoint(path: str | os.PathLike[str], verify: bool = True) -> tuple[FlatModel, bytes, dict[str, Any]]:
    """Read a checkpoint: (model, stored digest, meta). The model's buffers are writable
    views into one bytearray holding the file. With `verify`, the digest is recomputed and
    a mismatch raises CheckpointError (reason "digest_mismatch"). Any other damage (magic,
    header crc, non-zero padding, size) raises CheckpointError with or without `verify`."""
    path = Path(path)
    data = _read_file(path)
    specs, digest, meta, data_start = _parse_header(data, path)
    flat = _tensor_views(data, data_start, specs, path)
    if verify and model_digest(flat) != digest:
        raise CheckpointError(f"{path}: tensor data does not match the stored digest", "digest_mismatch")
    return flat, digest, meta


def checkpoint_digest(path: str | os.PathLike[str]) -> bytes:
    """The model digest of the tensors stored in `path`, recomputed from their bytes and
    ignoring the digest the header claims (for audits)."""
    flat, _, _ = load_checkpoint(path, verify=False)
    return model_digest(flat)


def _align(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def _padding(length: int) -> bytes:
    return _ZEROS[: _align(length) - length]


def _check_zeros(data: bytearray, start: int, end: int, path: Path) -> None:
    if start < end <= len(data) and any(memoryview(data)[start:end]):
        raise CheckpointError(f"{path}: non-zero padding at bytes {start}..{end} (damaged file)")


def _read_file(path: Path) -> bytearray:
    with open(path, "rb", buffering=0) as file:
        data = bytearray(os.fstat(file.fileno()).st_size)
        view = memoryview(data)
        filled = 0
        while filled < len(data):
            count = file.readinto(view[filled:])
            if not count:
                raise CheckpointError(f"{path}: file shrank while being read")
            filled += count
    return data


def _parse_header(data: bytearray, path: Path) -> tuple[tuple[TensorSpec, ...], bytes, dict[str, Any], int]:
    if len(data) < _PREFIX_BYTES or data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{path}: not a swarm checkpoint (bad magic)")
    header_len, header_crc = _LENGTH_CRC.unpack_from(data, len(MAGIC))
    header_end = _PREFIX_BYTES + header_len
    if header_end > len(data):
        raise CheckpointError(f"{path}: truncated header")
    if zlib.crc32(memoryview(data)[_PREFIX_BYTES:header_end]) != header_crc:
        raise CheckpointError(f"{path}: header checksum does not match (damaged header)")
    _check_zeros(data, header_end, _align(header_end), path)
    try:
        header = msgpack.unpackb(
            memoryview(data)[_PREFIX_BYTES:header_end], raw=False, strict_map_key=True, max_ext_len=0
        )
    except (msgpack.UnpackException, ValueError, TypeError, OverflowError, RecursionError) as error:
        raise CheckpointError(f"{path}: unreadable header ({type(error).__name__})") from None
    if not isinstance(header, dict) or set(header) != HEADER_KEYS:
        raise CheckpointError(f"{path}: header keys must be exactly {sorted(HEADER_KEYS)}")
    digest, meta = header["digest"], header["meta"]
    if type(digest) is not bytes or len(digest) != DIGEST_BYTES or not isinstance(meta, dict):
        raise CheckpointError(f"{path}: bad digest or meta in header")
    return _parse_specs(header["specs"], path), digest, meta, _align(header_end)


def _parse_specs(items: Any, path: Path) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list) or not all(isinstance(item, list) and len(item) == 3 for item in items):
        raise CheckpointError(f"{path}: specs must be a list of [name, dtype, shape]")
    try:
        return tuple(validate_spec(*item) for item in items)
    except ValueError as error:
        raise CheckpointError(f"{path}: {error}") from None


def _tensor_views(data: bytearray, offset: int, specs: tuple[TensorSpec, ...], path: Path) -> FlatModel:
    view = memoryview(data)
    buffers = []
    for spec in specs:
        buffers.append(view[offset : offset + spec.nbytes])
        end = offset + spec.nbytes
        offset = _align(end)
        if offset > len(data):
            break
        _check_zeros(data, end, offset, path)
    if offset != len(data):
        raise CheckpointError(f"{path}: {len(data)} bytes, the header describes {offset} (truncated or padded)")
    try:
        return FlatModel(specs, tuple(buffers))
    except ValueError as error:  # unsorted or duplicate names
        raise CheckpointError(f"{path}: {error}") from None
