"""Durable file writes: what we write for keys, manifests and checkpoints survives a crash
at any moment either whole or not at all."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | memoryview, mode: int = 0o644) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never half."""
    write_chunks_atomic(path, [data], mode)


def write_chunks_atomic(path: Path, chunks: list[bytes | memoryview], mode: int = 0o644) -> None:
    """Write the concatenation of `chunks` to `path` atomically and durably, without joining
    them into one copy first (a header and tensor bytes, say).

    The temporary file is created with `mode` from the start, so a private key never exists
    on disk with wider permissions, not even for a moment."""

    def fill(fd: int) -> None:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            while view:
                written = os.write(fd, view)
                view = view[written:]

    _replace_atomically(Path(path), mode, fill)


def write_sparse_atomic(path: Path, size: int, pieces: Iterable[tuple[int, bytes | memoryview]], mode: int = 0o600) -> None:
    """Like write_chunks_atomic for a file of `size` bytes holding `pieces` (offset, bytes)
    and holes elsewhere, which read back as zeros and take no disk space."""

    def fill(fd: int) -> None:
        os.ftruncate(fd, size)
        for position, piece in pieces:
            view = memoryview(piece).cast("B")
            while view:
                written = os.pwrite(fd, view, position)
                view, position = view[written:], position + written

    _replace_atomically(Path(path), mode, fill)


def _replace_atomically(path: Path, mode: int, fill: Callable[[int], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc  # name the file, not its temporary
    try:
        os.fchmod(fd, mode)
        fill(fd)
        os.fsync(fd)
    except BaseException as exc:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # os.write and fsync name no file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
