"""MedMNIST `.npz` files from the user's disk (nothing is downloaded).

A MedMNIST 2-D file holds six arrays: `train_images`, `train_labels`, `val_images`,
`val_labels`, `test_images`, `test_labels`; images are uint8, N x 28 x 28 (grayscale) or
N x 28 x 28 x 3 (RGB); labels are integers, N x 1. `load_medmnist(path)` returns one
`Samples` per split ("train", "val", "test"): x float32 [N, C, 28, 28] scaled to [0, 1],
channels first; y int64 [N].

The file is checked strictly, and every problem is a one-line ConfigError naming the file,
the array and what is wrong. Not supported (yet): multi-label subsets (ChestMNIST, labels
N x 14), 3-D subsets (N x 28 x 28 x 28) and the larger MedMNIST+ sizes (64, 128, 224 px).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from swarm.config import Table, setting
from swarm.errors import ConfigError

from . import Samples

SPLITS: tuple[str, ...] = ("train", "val", "test")
KEYS: tuple[str, ...] = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))
SIZE = 28


class _Classes(Table):
    num_classes: int | None = setting(None, ge=2, example=2)  # None: inferred from the labels


def load_medmnist(path: str | Path, num_classes: int | None = None) -> dict[str, Samples]:
    """Load a MedMNIST 2-D `.npz` file: {"train": Samples, "val": Samples, "test": Samples}.

    num_classes: the subset's number of classes (every label must lie in [0, num_classes));
    None infers it as the largest label in the file plus one (at least 2)."""
    path = Path(path)
    num_classes = _Classes.from_dict({"num_classes": num_classes}, "data").num_classes
    arrays = _read(path)
    where = str(path)

    channels = None
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        images = _images(where, f"{split}_images", arrays[f"{split}_images"])
        labels = _labels(where, f"{split}_labels", arrays[f"{split}_labels"])
        if labels.shape[0] != images.shape[0]:
            raise ConfigError(
                f"{where}: {split}_labels has {labels.shape[0]} rows but {split}_images has "
                f"{images.shape[0]} images; every image needs exactly one label")
        c = 1 if images.ndim == 3 else 3
        if channels is None:
            channels = c
        elif c != channels:
            raise ConfigError(
                f"{where}: {split}_images has {c} channel(s) but train_images has {channels}; "
                "all splits must be grayscale (N x 28 x 28) or all RGB (N x 28 x 28 x 3)")
        parts[split] = (images, labels)

    largest = max(int(labels.max()) for _, labels in parts.values())
    if num_classes is None:
        num_classes = max(2, largest + 1)
    for split, (_, labels) in parts.items():
        bad = labels >= num_classes
        if bad.any():
            row = int(np.argmax(bad))
            raise ConfigError(
                f"{where}: {split}_labels[{row}] = {int(labels[row])} is outside the class range "
                f"[0, {num_classes}) (num_classes = {num_classes}); check the file or num_classes")

    out: dict[str, Samples] = {}
    for split, (images, labels) in parts.items():
        x = torch.from_numpy(images.astype(np.float32) / 255.0)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
        out[split] = Samples(x=x, y=torch.from_numpy(labels.astype(np.int64)),
                             task="classification", num_classes=num_classes, site=None)
    return out


def _read(path: Path) -> dict[str, np.ndarray]:
    """The six arrays of the file, or a ConfigError naming the problem."""
    if not path.exists():
        raise ConfigError(f"{path}: MedMNIST file not found; check the path (example: data/pathmnist.npz)")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; pass the MedMNIST .npz file itself")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({_short(exc)}); check its permissions") from None
    if magic.startswith(b"\x93NUMPY"):
        raise ConfigError(f"{path}: holds a single .npy array, not a .npz archive with "
                          f"{', '.join(KEYS)}")
    if not magic.startswith(b"PK"):
        raise ConfigError(f"{path}: not a NumPy .npz archive (not a zip file); "
                          "pass a MedMNIST file such as pathmnist.npz")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path}: not a NumPy .npz archive ({_short(exc)}); "
                          "pass a MedMNIST file such as pathmnist.npz") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # pragma: no cover - ruled out above
        raise ConfigError(f"{path}: not a NumPy .npz archive; pass a MedMNIST file such as pathmnist.npz")
    with loaded:
        present = list(loaded.files)
        missing = [k for k in KEYS if k not in present]
        extra = [k for k in present if k not in KEYS]
        if missing:
            raise ConfigError(f"{path}: missing array(s) {', '.join(missing)}; a MedMNIST file holds "
                              f"{', '.join(KEYS)}")
        if extra:
            raise ConfigError(f"{path}: unknown array(s) {', '.join(extra)}; a MedMNIST file holds only "
                              f"{', '.join(KEYS)}")
        arrays = {}
        for key in KEYS:
            try:
                arrays[key] = loaded[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise ConfigError(f"{path}: {key} cannot be read ({_short(exc)}); "
                                  "the file is damaged or holds Python objects") from None
    return arrays


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _shape(a: np.ndarray) -> str:
    return " x ".join(str(d) for d in a.shape) if a.ndim else "a scalar"


def _images(where: str, key: str, a: np.ndarray) -> np.ndarray:
    expected = "uint8 images N x 28 x 28 (grayscale) or N x 28 x 28 x 3 (RGB)"
    if a.dtype != np.uint8:
        raise ConfigError(f"{where}: {key} has dtype {a.dtype}, expected {expected}")
    if a.ndim == 4 and a.shape[1:] == (SIZE, SIZE, SIZE):
        raise ConfigError(f"{where}: {key} is {_shape(a)}, a 3-D MedMNIST subset; only 2-D subsets "
                          f"are supported ({expected})")
    if a.ndim in (3, 4) and a.shape[1] == a.shape[2] and a.shape[1] != SIZE and (a.ndim == 3 or a.shape[3] == 3):
        raise ConfigError(f"{where}: {key} is {_shape(a)}, {a.shape[1]} px images; only the 28 px "
                          f"MedMNIST files are supported ({expected})")
    if not (a.ndim == 3 and a.shape[1:] == (SIZE, SIZE)) and not (a.ndim == 4 and a.shape[1:] == (SIZE, SIZE, 3)):
        raise ConfigError(f"{where}: {key} has shape {_shape(a)}, expected {expected}")
    if a.shape[0] == 0:
        raise ConfigError(f"{where}: {key} holds no images; every split needs at least one")
    return a


def _labels(where: str, key: str, a: np.ndarray) -> np.ndarray:
    if a.ndim == 2 and a.shape[1] > 1:
        raise ConfigError(f"{where}: {key} is {_shape(a)}, multi-label (one column per finding, as in "
                          "ChestMNIST); multi-label subsets are not supported yet, use a single-label subset")
    if not (a.ndim == 1 or (a.ndim == 2 and a.shape[1] == 1)):
        raise ConfigError(f"{where}: {key} has shape {_shape(a)}, expected integer labels N x 1 (or N)")
    if a.dtype.kind not in "iu":
        raise ConfigError(f"{where}: {key} has dtype {a.dtype}, expected integer class labels N x 1")
    labels = a.reshape(-1)
    if labels.size and int(labels.min()) < 0:
        row = int(np.argmin(labels))
        raise ConfigError(f"{where}: {key}[{row}] = {int(labels[row])} is negative; class labels "
                          "lie in [0, num_classes)")
    return labels
