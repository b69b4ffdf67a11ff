from __future__ import annotations

from blake3 import blake3
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from swarm.tensors import (
    DIGEST_CHUNK_BYTES,
    DTYPES,
    FlatModel,
    TensorSpec,
    flatten_state,
    model_digest,
    rebuild_state,
    validate_spec,
)


def random_tensor(dtype: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Arbitrary bit patterns (NaNs included) for every dtype; bools stay 0/1."""
    gen = torch.Generator().manual_seed(seed)
    torch_dtype = DTYPES[dtype]
    if torch_dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    numel = 1
    for dim in shape:
        numel *= dim
    raw = torch.randint(0, 256, (numel * torch_dtype.itemsize,), dtype=torch.uint8, generator=gen)
    return raw.view(torch_dtype).reshape(shape)


def raw_bytes(tensor: torch.Tensor) -> bytes:
    """Bitwise content, so NaN payloads compare equal."""
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == sorted(b)
    for name in b:
        assert a[name].dtype == b[name].dtype
        assert a[name].shape == b[name].shape
        assert raw_bytes(a[name]) == raw_bytes(b[name])


def reference_digest(state: dict[str, torch.Tensor]) -> bytes:
    """docs/ARCHITECTURE.md's digest, written out independently of swarm.tensors."""
    h = blake3(b"swarm-model-digest-v1\n")
    for name in sorted(state):
        data = raw_bytes(state[name])
        dtype = str(state[name].dtype).removeprefix("torch.")
        shape = ",".join(str(d) for d in state[name].shape)
        h.update(f"{name}\0{dtype}\0{shape}\0{len(data)}\0".encode())
        for start in range(0, len(data), 4 * 1024 * 1024):
            h.update(blake3(data[start : start + 4 * 1024 * 1024]).digest())
    return h.digest()


names = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=12)
shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)
specs = st.tuples(st.sampled_from(sorted(DTYPES)), shapes)
states = st.dictionaries(names, specs, max_size=6).map(
    lambda d: {name: random_tensor(dtype, shape, seed=i) for i, (name, (dtype, shape)) in enumerate(d.items())}
)


@settings(max_examples=60, deadline=None)
@given(states)
def test_flatten_rebuild_round_trip(state: dict[str, torch.Tensor]) -> None:
    flat = flatten_state(state)
    assert [spec.name for spec in flat.specs] == sorted(state)
    assert flat.total_bytes == sum(t.numel() * t.element_size() for t in state.values())
    assert_same_state(rebuild_state(flat), state)
    assert model_digest(flat) == reference_digest(state)


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (2, 3)])
def test_every_dtype_and_shape(dtype: str, shape: tuple[int, ...]) -> None:
    state = {"t": random_tensor(dtype, shape)}
    flat = flatten_state(state)
    assert flat.specs == (TensorSpec("t", dtype, shape),)
    assert flat.buffers[0].nbytes == flat.specs[0].nbytes
    assert_same_state(rebuild_state(flat), state)
    assert_same_state(rebuild_state(flat, copy=True), state)


def test_flatten_is_zero_copy_for_contiguous_and_copies_otherwise() -> None:
    weight = torch.zeros(4, 3)
    transposed = torch.zeros(3, 4).t()
    flat = flatten_state({"w": weight, "t": transposed})
    snapshot = flatten_state({"w": weight}, copy=True)
    weight[0, 0] = 1.0
    transposed[0, 0] = 1.0
    rebuilt = rebuild_state(flat)
    assert rebuilt["w"][0, 0] == 1.0  # aliases the live tensor
    assert rebuilt["t"][0, 0] == 0.0  # non-contiguous input was copied
    assert rebuild_state(snapshot)["w"][0, 0] == 0.0


def test_flat_model_keeps_tensors_alive() -> None:
    flat = flatten_state({"a": torch.arange(1000, dtype=torch.int64)})
    torch.randn(10_000)  # reuse freed memory, if the tensor had been freed
    assert rebuild_state(flat)["a"].tolist() == list(range(1000))


def test_flatten_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="dtype"):
        flatten_state({"c": torch.zeros(2, dtype=torch.complex64)})
    with pytest.raises(ValueError, match="CPU"):
        flatten_state({"m": torch.zeros(2, device="meta")})
    with pytest.raises(ValueError, match="dense"):
        flatten_state({"s": torch.zeros(2, 2).to_sparse()})
    with pytest.raises(ValueError, match="NUL"):
        flatten_state({"a\0b": torch.zeros(1)})
    with pytest.raises(ValueError):
        flatten_state({"": torch.zeros(1)})


def test_flatten_detaches_parameters() -> None:
    param = torch.nn.Parameter(torch.ones(3))
    assert_same_state(rebuild_state(flatten_state({"p": param})), {"p": torch.ones(3)})


def test_rebuild_from_bytes_and_read_only_views_without_warning() -> None:
    values = torch.arange(6, dtype=torch.float32)
    data = raw_bytes(values)
    spec = TensorSpec("x", "float32", (2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for buffer in (data, memoryview(data), memoryview(bytearray(data)).toreadonly()):
            rebuilt = rebuild_state(FlatModel((spec,), (buffer,)))["x"]
            assert torch.equal(rebuilt, values.reshape(2, 3))
    copied = rebuild_state(FlatModel((spec,), (data,)), copy=True)["x"]
    copied += 1  # safe: a private copy
    assert data == raw_bytes(values)


def test_rebuild_shares_writable_buffers() -> None:
    data = bytearray(8)
    rebuilt = rebuild_state(FlatModel((TensorSpec("x", "int32", (2,)),), (data,)))["x"]
    data[0] = 7
    assert rebuilt[0] == 7


def test_flat_model_checks_buffer_sizes_and_order() -> None:
    spec = TensorSpec("x", "float32", (2,))
    with pytest.raises(ValueError, match="bytes"):
        FlatModel((spec,), (b"\0" * 7,))
    with pytest.raises(ValueError, match="sorted"):
        FlatModel((TensorSpec("b", "uint8", ()), TensorSpec("a", "uint8", ())), (b"x", b"y"))
    with pytest.raises(ValueError, match="sorted"):
        FlatModel((TensorSpec("a", "uint8", ()), TensorSpec("a", "uint8", ())), (b"x", b"y"))
    with pytest.raises(ValueError, match="buffers"):
        FlatModel((spec,), ())


def test_flat_model_accepts_typed_buffers() -> None:
    values = torch.arange(4, dtype=torch.int16)
    flat = FlatModel((TensorSpec("x", "int16", (4,)),), (values.numpy(),))
    assert flat.buffers[0].format == "B" and flat.buffers[0].nbytes == 8
    assert torch.equal(rebuild_state(flat)["x"], values)


def test_digest_changes_with_any_byte_name_dtype_or_shape() -> None:
    base = {"a": random_tensor("float32", (2, 3)), "b": random_tensor("int64", (4,), seed=1)}
    digest = model_digest(flatten_state(base))
    flipped = {k: v.clone() for k, v in base.items()}
    flipped["b"].view(torch.uint8)[5] ^= 1
    variants = [
        flipped,
        {"a": base["a"], "c": base["b"]},  # renamed
        {"a": base["a"].view(torch.int32), "b": base["b"]},  # same bytes, other dtype
        {"a": base["a"].reshape(3, 2), "b": base["b"]},  # same bytes, other shape
        {"a": base["a"].reshape(6), "b": base["b"]},
        {"a": base["a"]},  # tensor dropped
    ]
    digests = {model_digest(flatten_state(v)) for v in variants}
    assert digest not in digests
    assert len(digests) == len(variants)


def test_digest_does_not_let_bytes_move_between_tensors() -> None:
    data = random_tensor("uint8", (8,))
    split_a = {"a": data[:3], "b": data[3:]}
    split_b = {"a": data[:4], "b": data[4:]}
    assert model_digest(flatten_state(split_a)) != model_digest(flatten_state(split_b))


def test_digest_is_the_documented_construction_across_chunks() -> None:
    # A tensor one byte longer than a chunk, an empty one and a scalar.
    state = {
        "big": random_tensor("uint8", (DIGEST_CHUNK_BYTES + 1,)),
        "empty": torch.zeros(0, 2),
        "scalar": torch.tensor(1.5, dtype=torch.float64),
    }
    assert model_digest(flatten_state(state)) == reference_digest(state)


def test_digest_serial_and_parallel_agree() -> None:
    state = {"a": random_tensor("uint8", (9 * 1024 * 1024,)), "b": random_tensor("float32", (3, 5), seed=2)}
    flat = flatten_state(state)
    serial = model_digest(flat, parallel=False)
    assert model_digest(flat, parallel=True) == serial
    assert model_digest(flat) == serial  # automatic choice: parallel at this size
    assert serial == reference_digest(state)


@pytest.mark.parametrize(
    "name, dtype, shape",
    [
        ("", "float32", [1]),
        ("x" * 257, "float32", [1]),
        (3, "float32", [1]),
        ("a\0", "float32", [1]),
        ("\ud800", "float32", [1]),
        ("x", "complex64", [1]),
        ("x", 5, [1]),
        ("x", "float32", [-1]),
        ("x", "float32", [2**63]),
        ("x", "float32", [True]),
        ("x", "float32", [1.0]),
        ("x", "float32", [1] * 9),
        ("x", "float32", "12"),
        ("x", "float32", None),
    ],
)
def test_validate_spec_refuses(name: object, dtype: object, shape: object) -> None:
    with pytest.raises(ValueError):
        validate_spec(name, dtype, shape)


def test_validate_spec_accepts_limits() -> None:
    spec = validate_spec("x" * 256, "bfloat16", [0] * 8)
    assert spec == TensorSpec("x" * 256, "bfloat16", (0,) * 8) and spec.nbytes == 0
    assert validate_spec("y", "int16", (2, 3)).nbytes == 12
