"""What every data source that reads a hospital's own files shares: which patient lands in
which split, a record that keeps the test split fixed across runs, the labels CSV, a report
of files that could not be read, and turning pixel arrays into fixed-size tensors.

Splits are per patient, so no patient is in two splits: patients are ordered by a hash of
(seed, patient id), which does not depend on the order files are listed in, and the first
`test_fraction` of them are the test split, the next `val_fraction` the validation split.
A split record (JSON) fixes the test patients the first time a site loads its data; later
loads keep exactly those test patients that are still there and put patients that are new
since then in training or validation, so test figures stay comparable run after run.

Files that cannot be decoded are skipped and reported (how many and the first few names);
mistakes in what the site configured (a label missing from the CSV, a mask whose shape
differs from its image) are ConfigErrors naming the file and the fix.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from swarm.atomic import write_atomic
from swarm.errors import ConfigError

SPLITS = ("train", "val", "test")
SHOWN = 5  # names of skipped files a report lists
INSTALL_HINT = 'pip install "swarm-hospitals[imaging]"'


def require(module: str, what: str, where: str) -> None:
    """ConfigError naming `where` unless the optional package `module` can be imported."""
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"{where}: {what} needs the optional package {module}, which is not installed; "
                          f"install it with {INSTALL_HINT}") from None


@dataclass
class LoadReport:
    """What loading a site's files gave: how many samples, and which files were skipped."""

    loaded: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)

    def skip(self, name: str, why: str) -> None:
        self.skipped.append((name, why))

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.loaded} samples"
        shown = "; ".join(f"{name} ({why})" for name, why in self.skipped[:SHOWN])
        more = f" and {len(self.skipped) - SHOWN} more" if len(self.skipped) > SHOWN else ""
        return f"{self.loaded} samples; skipped {len(self.skipped)} unreadable file(s): {shown}{more}"


# --------------------------------------------------------------------------------------
# Per-patient splits, fixed by a record


def _rank(seed: int, patient: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{patient}".encode()).digest()


def _count(fraction: float, n: int) -> int:
    return 0 if fraction <= 0 or n == 0 else max(1, int(math.floor(fraction * n + 0.5)))


def split_patients(patients: Iterable[str], val_fraction: float, test_fraction: float, seed: int,
                   fixed_test: Sequence[str] | None = None, where: str = "data") -> dict[str, str]:
    """patient -> "train", "val" or "test". With `fixed_test` (from a split record) the test
    patients are those of the record still present; every other patient is ordered by hash
    and the first `val_fraction` of them validate. ConfigError when no patient is left to
    train on."""
    unique = sorted(set(patients))
    order = sorted(unique, key=lambda p: _rank(seed, p))
    if fixed_test is None:
        test = set(order[:_count(test_fraction, len(order))])
    else:
        test = set(fixed_test) & set(unique)
    rest = [p for p in order if p not in test]
    val = set(rest[:_count(val_fraction, len(unique))]) if len(rest) > 1 else set()
    assignment = {p: "test" if p in test else "val" if p in val else "train" for p in unique}
    if not any(v == "train" for v in assignment.values()):
        raise ConfigError(f"{where}.test_fraction: {len(unique)} patient(s) leave none to train on after the test "
                          f"({len(test)}) and validation ({len(val)}) splits; add data or lower test_fraction and val_fraction")
    return assignment


def split_digest(test_files: Iterable[str]) -> str:
    """SHA-256 of the sorted test file list: equal digests, equal test splits."""
    return hashlib.sha256("\n".join(sorted(test_files)).encode()).hexdigest()


def read_split_record(path: Path | None) -> list[str] | None:
    """The test patients a split record fixed, or None when there is no record yet."""
    if path is None or not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        patients = record["test_patients"]
        if not isinstance(patients, list) or not all(isinstance(p, str) for p in patients):
            raise ValueError("test_patients must be a list of strings")
        return patients
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable split record ({exc}); restore it or delete it to fix a new test split") from None


def write_split_record(path: Path, assignment: Mapping[str, str], test_files: Sequence[str]) -> None:
    record = {
        "test_patients": sorted(p for p, part in assignment.items() if part == "test"),
        "test_files": sorted(test_files),
        "test_files_sha256": split_digest(test_files),
    }
    write_atomic(path, (json.dumps(record, indent=1) + "\n").encode())


# --------------------------------------------------------------------------------------
# Labels


def read_labels_csv(path: Path, key: str, where: str) -> dict[str, tuple[str, str | None]]:
    """{key value: (label, patient or None)} from a CSV with a header holding `key` and
    `label` (and optionally `patient`)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise ConfigError(f"{where}.labels: {path} not found; point it at a CSV with columns {key},label") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"{where}.labels: {path} cannot be read ({exc}); it must be a UTF-8 CSV with columns {key},label") from None
    if not rows or key not in rows[0] or "label" not in rows[0]:
        raise ConfigError(f"{where}.labels: {path} needs a header with columns {key} and label (and optionally patient)")
    labels: dict[str, tuple[str, str | None]] = {}
    for line, row in enumerate(rows, start=2):
        name, label = (row.get(key) or "").strip(), (row.get("label") or "").strip()
        if not name or not label:
            raise ConfigError(f"{where}.labels: {path} line {line} has an empty {key} or label; fill it in or remove the line")
        if name in labels and labels[name][0] != label:
            raise ConfigError(f"{where}.labels: {path} gives {name} two labels ({labels[name][0]}, {label}); keep one")
        labels[name] = (label, (row.get("patient") or "").strip() or None)
    return labels


def class_indices(labels: Iterable[str], classes: Sequence[str] | None, where: str) -> tuple[dict[str, int], list[str]]:
    """label -> index, in the order of `classes` (the plan's class names) or sorted."""
    found = sorted(set(labels))
    names = list(classes) if classes else found
    unknown = [label for label in found if label not in names]
    if unknown:
        raise ConfigError(f"{where}.classes: labels {unknown[:SHOWN]} are not among the classes {names}; add them or fix the labels")
    if len(names) < 2:
        raise ConfigError(f"{where}: only one class ({names}) in the data; a classifier needs two, or list them in classes = [...]")
    return {name: i for i, name in enumerate(names)}, names


# --------------------------------------------------------------------------------------
# Pixels


def image_tensor(pixels: np.ndarray, size: int, channels: int, full_scale: float | None) -> Tensor:
    """float32 [channels, size, size] in [0, 1] from a 2-D (H, W) or (H, W, C) array: scaled
    by `full_scale` (e.g. 255 or 65535), or per image from its own range when None;
    resized bilinearly; grey <-> RGB by repeating or averaging the channels."""
    array = np.asarray(pixels, dtype=np.float64)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"expected a 2-D image, got an array of shape {array.shape}")
    if full_scale is None:
        low, high = float(array.min()), float(array.max())
        array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    else:
        array = array / full_scale
    image = torch.from_numpy(np.clip(array, 0.0, 1.0)).permute(2, 0, 1).float()
    if image.shape[0] == 4:  # RGBA: drop alpha
        image = image[:3]
    if image.shape[0] != channels:
        image = image.mean(0, keepdim=True).repeat(channels, 1, 1) if channels in (1, 3) else image
    if tuple(image.shape[1:]) != (size, size):
        image = torch.nn.functional.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return image.contiguous()


def mask_tensor(values: np.ndarray, size: int) -> Tensor:
    """int64 [size, size] class map, resized by nearest neighbour."""
    mask = torch.from_numpy(np.asarray(values).astype(np.int64))
    if mask.ndim == 3 and mask.shape[2] in (1, 3, 4):
        mask = mask[:, :, 0]
    if tuple(mask.shape) != (size, size):
        mask = torch.nn.functional.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
    return mask
