"""Medical data sets and how to split them across simulated hospitals.

Every source returns `Samples`, one small common type for images, tables and masks:

* `nodes.datasets.medmnist.load_medmnist(path)`: a user's MedMNIST `.npz` file
  (2-D subsets at 28 px, grayscale or RGB), one `Samples` per split;
* `nodes.datasets.imaging.generate_imaging_site(seed, site, n, ...)`: generated multi-site
  lesion classification images with scanner-like site effects;
* `nodes.datasets.phantom.generate_phantom_site(seed, site, n, ...)`: a generated 2-D
  phantom segmentation task (background 0, organ 1, lesion 2) with the same site effects;
* `nodes.datasets.tabular.load_breast_cancer_table()`: the Wisconsin breast-cancer table
  bundled in scikit-learn (optional extra);
* `nodes.datasets.partition`: IID, Dirichlet label skew, quantity skew and by-site
  partitions of a pooled `Samples`, and each site's own train / validation / test split.

Nothing here downloads anything, and every generator and partitioner is deterministic
from its seed. Generated sites are independent: site k depends only on (seed, k, its
parameters), so a node can build its own site alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

Task = Literal["classification", "segmentation"]
TASKS: tuple[str, ...] = ("classification", "segmentation")


@dataclass(frozen=True)
class Samples:
    """A set of labelled samples.

    x: float32, [n, C, H, W] images or [n, F] table rows.
    y: int64, [n] class labels (classification) or [n, H, W] masks (segmentation).
    task: "classification" or "segmentation".
    num_classes: number of classes (mask values for segmentation), labels lie in
        [0, num_classes).
    site: int64 [n], the acquisition site of each sample where the source has one, else None.
    """

    x: Tensor
    y: Tensor
    task: Task
    num_classes: int
    site: Tensor | None = None

    def __post_init__(self) -> None:
        # Invariants of the type (programming errors, not user input): ValueError.
        x, y, n = self.x, self.y, None
        if not isinstance(x, Tensor) or x.dtype != torch.float32 or x.ndim not in (2, 4, 5):
            raise ValueError(f"Samples.x: must be a float32 tensor [n, F], [n, C, H, W] or [n, C, D, H, W], got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        n = x.shape[0]
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape[:1] != (n,):
            raise ValueError(f"Samples.y: must be an int64 tensor with {n} rows, got "
                             f"{getattr(y, 'dtype', type(y).__name__)} {tuple(getattr(y, 'shape', ()))}")
        if self.task not in TASKS:
            raise ValueError(f"Samples.task: must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "classification" and y.ndim != 1:
            raise ValueError(f"Samples.y: classification labels must be [n], got {tuple(y.shape)}")
        if self.task == "segmentation" and (x.ndim < 4 or y.ndim != x.ndim - 1 or tuple(y.shape[1:]) != tuple(x.shape[2:])):
            raise ValueError(f"Samples.y: segmentation masks must be [n, H, W] ([n, D, H, W] for volumes) matching images "
                             f"{tuple(x.shape)}, got {tuple(y.shape)}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"Samples.num_classes: must be an integer >= 2, got {self.num_classes!r}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"Samples.y: labels must lie in [0, {self.num_classes}), got "
                             f"[{int(y.min())}, {int(y.max())}]")
        if self.site is not None and (not isinstance(self.site, Tensor) or self.site.dtype != torch.int64
                                      or tuple(self.site.shape) != (n,)):
            raise ValueError(f"Samples.site: must be None or an int64 tensor [{n}], got "
                             f"{getattr(self.site, 'dtype', type(self.site).__name__)} "
                             f"{tuple(getattr(self.site, 'shape', ()))}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one input: (F,) for tables, (C, H, W) for images."""
        return tuple(self.x.shape[1:])

    @property
    def labels(self) -> Tensor:
        """One class label per sample (classification only)."""
        if self.task != "classification":
            raise ValueError("Samples.labels: a segmentation task has masks, not one label per sample")
        return self.y

    def subset(self, indices: Sequence[int] | np.ndarray | Tensor) -> Samples:
        """The samples at `indices`, in that order."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return Samples(
            x=self.x[index], y=self.y[index], task=self.task, num_classes=self.num_classes,
            site=None if self.site is None else self.site[index],
        )


def concat(parts: Sequence[Samples]) -> Samples:
    """Pool several `Samples` of the same task (e.g. generated sites) into one.

    `site` is kept only when every part has one."""
    if not parts:
        raise ValueError("concat: needs at least one Samples")
    first = parts[0]
    for p in parts[1:]:
        if p.task != first.task or p.num_classes != first.num_classes or p.sample_shape != first.sample_shape:
            raise ValueError(
                f"concat: parts differ ({p.task}, {p.num_classes} classes, {p.sample_shape} vs "
                f"{first.task}, {first.num_classes} classes, {first.sample_shape})")
    sites = None
    if all(p.site is not None for p in parts):
        sites = torch.cat([p.site for p in parts])  # type: ignore[misc]
    return Samples(
        x=torch.cat([p.x for p in parts]), y=torch.cat([p.y for p in parts]),
        task=first.task, num_classes=first.num_classes, site=sites,
    )


__all__ = ["Samples", "TASKS", "Task", "concat"]


def apportion(prior: np.ndarray, total: int) -> np.ndarray:
    """Split `total` into integer counts proportional to `prior` (largest remainder)."""
    exact = prior * total
    counts = np.floor(exact).astype(np.int64)
    remainder = total - int(counts.sum())
    if remainder > 0:
        counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
    return counts
