from __future__ import annotations

import os
import stat
import struct
import zlib
from pathlib import Path

import msgpack
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.checkpoint import ALIGN, MAGIC, CheckpointError, checkpoint_digest, load_checkpoint, save_checkpoint
from swarm.tensors import FlatModel, flatten_state, model_digest, rebuild_state

META = {"round": 3, "author": "hospital-a", "metrics": {"loss": 0.25}}


def sample_state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=gen),
        "conv.bias": torch.randn(4, generator=gen).to(torch.bfloat16),
        "bn.num_batches_tracked": torch.tensor(17),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 7, dtype=torch.float16),
        "odd": torch.arange(5, dtype=torch.int8),  # 5 bytes: forces padding
    }


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, FlatModel, bytes]:
    flat = flatten_state(sample_state())
    digest = model_digest(flat)
    path = tmp_path / "model.swck"
    save_checkpoint(path, flat, digest, META)
    return path, flat, digest


def tensor_offsets(path: Path) -> list[int]:
    """Where each tensor's bytes start, parsed independently of swarm.checkpoint."""
    data = path.read_bytes()
    length, crc = struct.unpack(">II", data[8:16])
    assert zlib.crc32(data[16 : 16 + length]) == crc
    specs = msgpack.unpackb(data[16 : 16 + length])["specs"]
    offset, offsets = -(-(16 + length) // ALIGN) * ALIGN, []
    flat = flatten_state(sample_state())
    for spec in flat.specs:
        offsets.append(offset)
        offset = -(-(offset + spec.nbytes) // ALIGN) * ALIGN
    assert [s[0] for s in specs] == [spec.name for spec in flat.specs]
    return offsets


def test_round_trip(saved: tuple[Path, FlatModel, bytes]) -> None:
    path, flat, digest = saved
    loaded, loaded_digest, meta = load_checkpoint(path)
    assert loaded == flat
    assert loaded_digest == digest
    assert meta == META
    state = sample_state()
    rebuilt = rebuild_state(loaded)
    assert set(rebuilt) == set(state)
    for name, tensor in state.items():
        assert rebuilt[name].dtype == tensor.dtype and torch.equal(rebuilt[name], tensor)
    assert checkpoint_digest(path) == digest


def test_layout_is_aligned(saved: tuple[Path, FlatModel, bytes]) -> None:
    path, flat, _ = saved
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    offsets = tensor_offsets(path)
    assert all(offset % ALIGN == 0 for offset in offsets)
    for offset, buffer in zip(offsets, flat.buffers):
        assert data[offset : offset + len(buffer)] == bytes(buffer)
    assert len(data) % ALIGN == 0


def test_loaded_tensors_are_writable_views(saved: tuple[Path, FlatModel, bytes]) -> None:
    loaded, _, _ = load_checkpoint(saved[0])
    assert not loaded.buffers[0].readonly
    rebuild_state(loaded)["odd"].add_(1)  # no warning, no copy needed
    assert loaded.buffers[[s.name for s in loaded.specs].index("odd")].tobytes() == bytes([1, 2, 3, 4, 5])


def test_flipped_tensor_byte_is_detected(saved: tuple[Path, FlatModel, bytes]) -> None:
    path, _, digest = saved
    data = bytearray(path.read_bytes())
    data[tensor_offsets(path)[-1]] ^= 0x01
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(path)
    load_checkpoint(path, verify=False)  # structure is intact
    assert checkpoint_digest(path) != digest


def test_stored_digest_is_not_trusted_by_audit(saved: tuple[Path, FlatModel, bytes], tmp_path: Path) -> None:
    path, flat, digest = saved
    lying = tmp_path / "lying.swck"
    save_checkpoint(lying, flat, bytes(32), META)
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(lying)
    assert checkpoint_digest(lying) == digest


@pytest.mark.parametrize("cut", [1, ALIGN, 5000])
def test_truncated_file_is_detected(saved: tuple[Path, FlatModel, bytes], cut: int) -> None:
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(CheckpointError):
        load_checkpoint(path, verify=False)


def test_trailing_bytes_are_detected(saved: tuple[Path, FlatModel, bytes]) -> None:
    path = saved[0]
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="bytes"):
        load_checkpoint(path, verify=False)


def header_file(path: Path, header: bytes, tail: bytes = b"") -> Path:
    path.write_bytes(MAGIC + struct.pack(">II", len(header), zlib.crc32(header)) + header + tail)
    return path


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"SWCKPT2",
        b"PK\x03\x04" + bytes(60),  # a torch.save zip file
        b"\x80\x04\x95" + bytes(60),  # a pickle
        MAGIC + struct.pack(">II", 1000, 0) + b"\x80",  # header length past the end
        MAGIC[:-1] + struct.pack(">II", 1, zlib.crc32(b"\x80")) + b"\x80",  # truncated prefix
    ],
)
def test_bad_magic_or_prefix(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.swck"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "header",
    [
        b"\xc1",  # never valid msgpack
        msgpack.packb([1, 2]),
        msgpack.packb({"specs": [], "digest": bytes(32)}),
        msgpack.packb({"specs": [], "digest": bytes(31), "meta": {}}),
        msgpack.packb({"specs": [], "digest": bytes(32), "meta": []}),
        msgpack.packb({"specs": [["a", "complex64", [1]]], "digest": bytes(32), "meta": {}}),
        msgpack.packb({"specs": [["a", "uint8", [-1]]], "digest": bytes(32), "meta": {}}),
        msgpack.packb({"specs": [["a", "uint8"]], "digest": bytes(32), "meta": {}}),
        msgpack.packb({"specs": [["b", "uint8", []], ["a", "uint8", []]], "digest": bytes(32), "meta": {}}),
        msgpack.packb({"specs": [], "digest": bytes(32), "meta": {"t": msgpack.ExtType(1, b"x")}}),
    ],
)
def test_bad_header_is_detected(tmp_path: Path, header: bytes) -> None:
    path = header_file(tmp_path / "bad.swck", header)
    with pytest.raises(CheckpointError):
        load_checkpoint(path, verify=False)


def test_mode_and_atomic_write(saved: tuple[Path, FlatModel, bytes], tmp_path: Path) -> None:
    path, flat, digest = saved
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    shared = tmp_path / "shared.swck"
    save_checkpoint(shared, flat, digest, {}, mode=0o644)
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o644
    save_checkpoint(path, flat, digest, {"round": 4})  # overwrite in place
    assert load_checkpoint(path)[2] == {"round": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.swck", "shared.swck"]


def test_failed_write_leaves_old_file_and_no_temp(saved: tuple[Path, FlatModel, bytes], tmp_path: Path) -> None:
    path, flat, digest = saved
    before = path.read_bytes()

    class Exploding:  # a buffer that fails halfway through the write
        def __len__(self) -> int:
            return 8

        def __buffer__(self, flags: int) -> memoryview:
            raise OSError("disk full")

    broken = FlatModel.__new__(FlatModel)
    object.__setattr__(broken, "specs", flat.specs)
    object.__setattr__(broken, "buffers", (*flat.buffers[:-1], Exploding()))
    with pytest.raises((OSError, TypeError)):
        save_checkpoint(path, broken, digest, META)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.swck"]


def test_save_refuses_bad_arguments(tmp_path: Path) -> None:
    flat = flatten_state(sample_state())
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "x", flat, b"short", {})
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "x", flat, model_digest(flat), [])  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_empty_model_round_trips(tmp_path: Path) -> None:
    flat = FlatModel((), ())
    save_checkpoint(tmp_path / "e", flat, model_digest(flat), {})
    assert load_checkpoint(tmp_path / "e") == (flat, model_digest(flat), {})


def test_version_1_files_are_not_read(saved: tuple[Path, FlatModel, bytes]) -> None:
    # Version 1 had no header checksum, so a damaged `meta` went unnoticed.
    path = saved[0]
    data = path.read_bytes()
    length = struct.unpack(">I", data[8:12])[0]
    path.write_bytes(b"SWCKPT1\n" + data[8:12] + data[16 : 16 + length])
    with pytest.raises(CheckpointError, match="magic"):
        load_checkpoint(path, verify=False)


def test_damaged_meta_is_detected(saved: tuple[Path, FlatModel, bytes]) -> None:
    path = saved[0]
    data = path.read_bytes()
    at = data.index(b"hospital-a")
    path.write_bytes(data[:at] + b"hospital-b" + data[at + 10 :])
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path, verify=False)


def test_non_zero_padding_is_detected(saved: tuple[Path, FlatModel, bytes]) -> None:
    path, flat, _ = saved
    data = bytearray(path.read_bytes())
    odd = [s.name for s in flat.specs].index("odd")
    data[tensor_offsets(path)[odd] + 5] = 1  # the byte after the 5-byte tensor is padding
    path.write_bytes(bytes(data))
    for verify in (True, False):
        with pytest.raises(CheckpointError, match="padding") as err:
            load_checkpoint(path, verify=verify)
        assert err.value.reason == "bad_checkpoint"
    with pytest.raises(CheckpointError, match="padding"):
        checkpoint_digest(path)


def test_digest_mismatch_has_its_own_reason(saved: tuple[Path, FlatModel, bytes]) -> None:
    path = saved[0]
    data = bytearray(path.read_bytes())
    data[tensor_offsets(path)[0]] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert err.value.reason == "digest_mismatch"


def small_checkpoint(path: Path) -> bytes:
    flat = flatten_state({"b": torch.tensor([1.5, -2.0]), "a": torch.arange(3, dtype=torch.int8)})
    save_checkpoint(path, flat, model_digest(flat), {"seq": 2, "round": 7})
    return path.read_bytes()


def test_flipping_any_single_byte_is_detected(tmp_path: Path) -> None:
    """Exhaustive: every byte of a small checkpoint (magic, length, crc, header and its meta,
    padding, tensors), flipped low bit and high bit, makes a verified load fail."""
    path = tmp_path / "small.swck"
    good = small_checkpoint(path)
    assert load_checkpoint(path)[2] == {"seq": 2, "round": 7}
    assert any(b == 0 for b in good[-ALIGN:])  # the file does have padding to flip
    for position in range(len(good)):
        for xor in (0x01, 0x80, 0xFF):
            data = bytearray(good)
            data[position] ^= xor
            path.write_bytes(bytes(data))
            with pytest.raises(CheckpointError):
                load_checkpoint(path, verify=True)
                pytest.fail(f"byte {position} ^ {xor:#x} was not detected")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_flipping_any_byte_any_way_is_detected(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "small.swck"
    good = small_checkpoint(path)
    position = data.draw(st.integers(0, len(good) - 1))
    xor = data.draw(st.integers(1, 255))
    damaged = bytearray(good)
    damaged[position] ^= xor
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError):
        load_checkpoint(path, verify=True)
