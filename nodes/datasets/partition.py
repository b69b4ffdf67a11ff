"""Splitting a pooled data set across simulated hospitals, the way real federations look.

Partitioners map a pooled `Samples` to one index array per site (int64, sorted):

* `iid(samples, n_sites)`: a uniformly random split into near-equal parts;
* `dirichlet(samples, n_sites, alpha)`: label skew. Each class is spread over the sites
  with proportions drawn from Dirichlet(alpha, ..., alpha) (Hsu et al. 2019; the
  NIID-Bench variant, where a site that already holds its 1/n_sites share takes nothing
  of the classes dealt after that). The cap acts only between classes, so with few
  classes it cannot keep sizes comparable: label skew comes with quantity skew (with
  PneumoniaMNIST's two classes, five sites and alpha 0.5, sites held 29 to 2207 of the
  5232 train + val images over seeds 0-2). Small alpha (0.1): most sites see one or two
  classes; large alpha (100): every site sees about the pooled class mix;
* `quantity(samples, n_sites, skew)`: quantity skew. Site sizes are proportional to
  log-normal weights exp(skew * N(0, 1)) on top of `min_samples` each; labels stay IID.
  skew = 0: equal sizes; with six sites the largest is typically about 3x the smallest at
  skew = 0.5, about 10x at skew = 1 and 20-50x or more at skew = 2;
* `by_site(samples)`: real domain shift. One part per acquisition site (`Samples.site`),
  in increasing site order.

Every partitioner is deterministic from its seed, puts every sample in exactly one site
and gives every site at least `min_samples` samples (a ConfigError says when that is
impossible). `split_site(indices, val_fraction, test_fraction, seed)` then splits one
site's indices into its own train / validation / test parts (stratified by class when
labels are given), so each hospital keeps a held-out test set from its own population.

`PartitionConfig` holds these settings (a partitioned data source's `[data]` table reads
them) and `partition(samples, config)` does both steps for every site.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator
from torch import Tensor

from swarm.config import Table, invalid, invalid_value, setting
from swarm.errors import ConfigError

from . import Samples, apportion

_TAG_IID = 0x6969       # "ii"
_TAG_DIRICHLET = 0x6469  # "di"
_TAG_QUANTITY = 0x7179   # "qy"
_TAG_SPLIT = 0x7370      # "sp"
_DIRICHLET_ATTEMPTS = 100
WHERE = "partition"
Method = Literal["iid", "dirichlet", "quantity", "by-site"]

Indices = Sequence[int] | np.ndarray | Tensor

# Settings shared by the partitioners' own argument checks and the [partition] table (Seed also
# by the generators and with_site_shift).
Seed = Annotated[int, Field(ge=0, le=2**63 - 1, json_schema_extra={"example": 0})]
Alpha = Annotated[float, Field(gt=0.0, json_schema_extra={"example": 0.5})]
Skew = Annotated[float, Field(ge=0.0, le=5.0, json_schema_extra={"example": 1.0})]
ValFraction = Annotated[float, Field(ge=0.0, lt=1.0, json_schema_extra={"example": 0.1})]
TestFraction = Annotated[float, Field(ge=0.0, lt=1.0, json_schema_extra={"example": 0.2})]


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    """For a validator: the held-out parts must leave something to train on."""
    if val_fraction + test_fraction >= 1.0:
        raise invalid_value("test_fraction", f"< 1 - val_fraction ({1.0 - val_fraction:g})",
                            test_fraction, 0.2 if val_fraction < 0.8 else 0.0)


class _Common(Table):
    """Every partitioner's arguments (checked before the data)."""

    sites: int = setting(ge=1, example=4)
    seed: Seed
    min_samples: int = setting(ge=1, example=1)


class _Alpha(Table):
    alpha: Alpha


class _Skew(Table):
    skew: Skew


class _BySite(Table):
    min_samples: int = setting(ge=1, le=2**62, example=1)


class _Split(Table):
    """split_site's arguments."""

    val_fraction: ValFraction
    test_fraction: TestFraction
    min_train: int = setting(ge=1, le=2**62, example=1)

    @model_validator(mode="after")
    def _fractions(self) -> _Split:
        _check_fractions(self.val_fraction, self.test_fraction)
        return self


class _Count(Table):
    samples: int = setting(ge=1, example=100)


@dataclass(frozen=True)
class SiteSplit:
    """One site's own train / validation / test indices into the pooled samples (int64)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    @property
    def indices(self) -> np.ndarray:
        """All of the site's indices, sorted."""
        return np.sort(np.concatenate([self.train, self.val, self.test]))

    def sizes(self) -> tuple[int, int, int]:
        return len(self.train), len(self.val), len(self.test)


# --------------------------------------------------------------------------------------
# Partitioners
# --------------------------------------------------------------------------------------


def iid(samples: Samples | int, n_sites: int, *, seed: int = 0, min_samples: int = 1) -> list[np.ndarray]:
    """A uniformly random split of the samples into `n_sites` parts whose sizes differ by at
    most one. `samples` may be a sample count."""
    n = _count_of(samples)
    n_sites, seed, min_samples = _common(n, n_sites, seed, min_samples)
    rng = np.random.default_rng([seed, _TAG_IID, n, n_sites])
    return _sorted(np.array_split(rng.permutation(n), n_sites))


def dirichlet(samples: Samples, n_sites: int, alpha: float, *, seed: int = 0,
              min_samples: int = 1) -> list[np.ndarray]:
    """Label skew: each class's samples go to the sites in Dirichlet(alpha) proportions."""
    labels = _labels(samples, "dirichlet")
    n = labels.shape[0]
    n_sites, seed, min_samples = _common(n, n_sites, seed, min_samples)
    alpha = _Alpha.from_dict({"alpha": alpha}, WHERE).alpha
    rng = np.random.default_rng([seed, _TAG_DIRICHLET, n, n_sites])
    classes = np.unique(labels)
    share = n / n_sites
    parts: list[list[np.ndarray]] = []
    for _ in range(_DIRICHLET_ATTEMPTS):
        parts = [[] for _ in range(n_sites)]
        sizes = np.zeros(n_sites, dtype=np.int64)
        for c in classes:
            members = rng.permutation(np.flatnonzero(labels == c))
            p = rng.dirichlet(np.full(n_sites, alpha))
            p = np.where(sizes < share, p, 0.0)
            p = p / p.sum() if p.sum() > 0 else np.full(n_sites, 1.0 / n_sites)
            cuts = (np.cumsum(p)[:-1] * members.size).astype(np.int64)
            for k, chunk in enumerate(np.split(members, cuts)):
                parts[k].append(chunk)
                sizes[k] += chunk.size
        if sizes.min() >= min_samples:
            break
    else:
        # Rare (tiny alpha, few classes, large min_samples): top up the smallest sites from
        # the largest one, taking the donor's majority class so the skew survives.
        _top_up(parts, labels, min_samples)
    return _sorted([np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for p in parts])


def quantity(samples: Samples | int, n_sites: int, skew: float, *, seed: int = 0,
             min_samples: int = 1) -> list[np.ndarray]:
    """Quantity skew: site sizes are `min_samples` plus a share of the rest proportional to
    log-normal weights exp(skew * N(0, 1)); samples are assigned at random (labels IID)."""
    n = _count_of(samples)
    n_sites, seed, min_samples = _common(n, n_sites, seed, min_samples)
    skew = _Skew.from_dict({"skew": skew}, WHERE).skew
    rng = np.random.default_rng([seed, _TAG_QUANTITY, n, n_sites])
    weights = np.exp(skew * rng.standard_normal(n_sites))
    sizes = min_samples + apportion(weights / weights.sum(), n - n_sites * min_samples)
    return _sorted(np.split(rng.permutation(n), np.cumsum(sizes)[:-1]))


def by_site(samples: Samples, *, min_samples: int = 1) -> list[np.ndarray]:
    """Domain shift as acquired: one part per acquisition site in `samples.site`, in
    increasing site order."""
    if not isinstance(samples, Samples):
        raise TypeError("by_site: needs Samples")
    if samples.site is None:
        raise ConfigError(
            f'{WHERE}.method: "by-site" needs samples that record their acquisition site, and this '
            'data set has none; use "iid", "dirichlet" or "quantity" (example: method = "dirichlet")')
    min_samples = _BySite.from_dict({"min_samples": min_samples}, WHERE).min_samples
    site = samples.site.numpy()
    parts = [np.flatnonzero(site == s) for s in np.unique(site)]
    for s, part in zip(np.unique(site), parts):
        if part.size < min_samples:
            raise invalid(WHERE, "min_samples", f"<= the smallest site's size (site {int(s)} has "
                           f"{part.size} samples)", min_samples, max(1, min(p.size for p in parts)))
    return _sorted(parts)


# --------------------------------------------------------------------------------------
# A site's own train / validation / test split
# --------------------------------------------------------------------------------------


def split_site(indices: Indices, val_fraction: float, test_fraction: float,
               seed: int | Sequence[int], *, labels: Tensor | np.ndarray | None = None,
               min_train: int = 1, name: str = "a site") -> SiteSplit:
    """Split one site's `indices` into train / val / test, deterministic from `seed` (an int
    or a sequence of ints, e.g. (seed, site)).

    The test and validation parts hold round(fraction * n) samples each, and at least one
    when their fraction is > 0. With `labels` (the pooled class labels, indexed by the same
    indices) the split is stratified: every part keeps the site's class mix as closely as
    whole samples allow. The result depends on the set of indices, not their order.
    `name` names the site in error messages."""
    idx = _index_array(indices)
    args = _Split.from_dict(
        {"val_fraction": val_fraction, "test_fraction": test_fraction, "min_train": min_train}, WHERE)
    val_fraction, test_fraction, min_train = args.val_fraction, args.test_fraction, args.min_train
    rng = np.random.default_rng([*_seed_words(seed), _TAG_SPLIT])
    n = idx.size
    n_test, n_val = _fraction_count(test_fraction, n), _fraction_count(val_fraction, n)
    if n - n_test - n_val < min_train:
        raise ConfigError(
            f"{WHERE}.test_fraction: {name} with {n} samples cannot keep {n_test} for test "
            f"(test_fraction = {test_fraction:g}) and {n_val} for validation (val_fraction = "
            f"{val_fraction:g}) and still train on {min_train}; lower the fractions or raise "
            "min_samples (example: test_fraction = 0.2)")
    order = idx[rng.permutation(n)]
    if labels is not None:
        lab = np.asarray(labels.numpy() if isinstance(labels, Tensor) else labels)
        if lab.ndim != 1:
            raise ValueError("split_site: labels must be one class label per pooled sample")
        order = order[np.argsort(lab[order], kind="stable")]  # grouped by class, random within
    test_pos = _systematic(n, n_test, rng)
    test = order[test_pos]
    rest = np.delete(order, test_pos)
    val_pos = _systematic(rest.size, n_val, rng)
    val = rest[val_pos]
    train = np.delete(rest, val_pos)
    return SiteSplit(train=np.sort(train), val=np.sort(val), test=np.sort(test))


# --------------------------------------------------------------------------------------
# The [partition] table
# --------------------------------------------------------------------------------------


class PartitionConfig(Table):
    """The `[partition]` table: how the pooled data is split across sites, and each site's
    own validation / test split."""

    TABLE: ClassVar[str] = "partition"

    method: Method = setting("iid", example="dirichlet")
    sites: int | None = setting(None, ge=2, example=4)  # required except for "by-site" (there: absent or the data's count)
    alpha: Alpha = 0.5              # dirichlet: label skew (small: strong)
    skew: Skew = 1.0                # quantity: spread of log site sizes
    seed: Seed = 0
    min_samples: int = setting(10, ge=1)  # every site gets at least this many samples
    val_fraction: ValFraction = 0.1
    test_fraction: TestFraction = 0.2
    stratify: bool = True           # per-site splits keep the site's class mix

    @model_validator(mode="after")
    def _fractions(self) -> PartitionConfig:
        _check_fractions(self.val_fraction, self.test_fraction)
        return self


def assign(samples: Samples, config: PartitionConfig) -> list[np.ndarray]:
    """Step one: the pooled samples' indices for each site, by `config.method`."""
    m = config.min_samples
    if config.method == "by-site":
        parts = by_site(samples, min_samples=m)
        if config.sites is not None and config.sites != len(parts):
            raise invalid(WHERE, "sites", f"{len(parts)} (the data's number of acquisition sites) or "
                           "left out", config.sites, len(parts))
        return parts
    if config.sites is None:
        raise ConfigError(f'{WHERE}.sites: missing; method = "{config.method}" needs the number of '
                          "sites (example: sites = 4)")
    if config.method == "iid":
        return iid(samples, config.sites, seed=config.seed, min_samples=m)
    if config.method == "dirichlet":
        return dirichlet(samples, config.sites, config.alpha, seed=config.seed, min_samples=m)
    return quantity(samples, config.sites, config.skew, seed=config.seed, min_samples=m)


def partition(samples: Samples, config: PartitionConfig) -> list[SiteSplit]:
    """Both steps: every site's own train / val / test indices into `samples`."""
    labels = samples.y if config.stratify and samples.task == "classification" else None
    return [
        split_site(part, config.val_fraction, config.test_fraction, (config.seed, k), labels=labels,
                   name=f"site {k}")
        for k, part in enumerate(assign(samples, config))
    ]


def label_histograms(samples: Samples, parts: Sequence[Indices]) -> np.ndarray:
    """Class counts per part: int64 [len(parts), num_classes] (classification only)."""
    labels = _labels(samples, "label_histograms")
    return np.stack([np.bincount(labels[_index_array(p)], minlength=samples.num_classes)
                     for p in parts]).astype(np.int64)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _count_of(samples: Samples | int) -> int:
    if isinstance(samples, Samples):
        return len(samples)
    return _Count.from_dict({"samples": samples}, WHERE).samples


def _labels(samples: Samples, what: str) -> np.ndarray:
    if not isinstance(samples, Samples):
        raise TypeError(f"{what}: needs Samples")
    if samples.task != "classification":
        raise ConfigError(f'{WHERE}.method: "{what}" needs one class label per sample, and this is a '
                          f'{samples.task} task; use "iid", "quantity" or "by-site" '
                          '(example: method = "iid")')
    return samples.y.numpy()


def _common(n: int, n_sites: int, seed: int, min_samples: int) -> tuple[int, int, int]:
    args = _Common.from_dict({"sites": n_sites, "seed": seed, "min_samples": min_samples}, WHERE)
    n_sites, seed, min_samples = args.sites, args.seed, args.min_samples
    if n_sites * min_samples > n:
        if n < n_sites:
            raise invalid(WHERE, "sites", f"at most the number of samples ({n})", n_sites, max(1, min(4, n)))
        raise invalid(WHERE, "min_samples", f"at most {n // n_sites} ({n} samples over {n_sites} sites)",
                       min_samples, max(1, min(10, n // n_sites)))
    return n_sites, seed, min_samples


def _index_array(indices: Indices) -> np.ndarray:
    idx = np.asarray(indices.numpy() if isinstance(indices, Tensor) else indices)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise ValueError(f"indices must be a 1-D integer array, got {idx.dtype} {idx.shape}")
    idx = np.sort(idx.astype(np.int64))
    if idx[0] < 0 or np.any(idx[1:] == idx[:-1]):
        raise ValueError("indices must be distinct and non-negative")
    return idx


def _seed_words(seed: int | Sequence[int]) -> list[int]:
    words = [seed] if isinstance(seed, (int, np.integer)) else list(seed)
    for w in words:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 0:
            raise invalid(WHERE, "seed", "a non-negative integer (or a sequence of them)", seed, 0)
    return [int(w) for w in words]


def _fraction_count(fraction: float, n: int) -> int:
    if fraction <= 0 or n == 0:
        return 0
    return max(1, int(math.floor(fraction * n + 0.5)))


def _systematic(m: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct positions spread evenly over range(m), with a random start."""
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    return np.floor((np.arange(k) + rng.uniform()) * (m / k)).astype(np.int64)


def _top_up(parts: list[list[np.ndarray]], labels: np.ndarray, min_samples: int) -> None:
    flat = [np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for p in parts]
    while True:
        sizes = np.array([f.size for f in flat])
        small = int(np.argmin(sizes))
        if sizes[small] >= min_samples:
            break
        donor = int(np.argmax(sizes))
        take = min(min_samples - sizes[small], sizes[donor] - min_samples)
        values, counts = np.unique(labels[flat[donor]], return_counts=True)
        majority = values[np.argmax(counts)]
        # Donor samples of its majority class first, then the rest (stable order).
        order = np.argsort(labels[flat[donor]] != majority, kind="stable")
        moved = flat[donor][order[:take]]
        flat[small] = np.concatenate([flat[small], moved])
        flat[donor] = np.setdiff1d(flat[donor], moved, assume_unique=True)
    for k, f in enumerate(flat):
        parts[k] = [f]


def _sorted(parts: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
