"""A real table bundled in a package: the Wisconsin diagnostic breast-cancer data.

569 patients, 30 features computed from digitised images of fine-needle aspirates (mean,
standard error and worst value of ten nucleus measurements), two classes. It ships
inside scikit-learn (`sklearn.datasets.load_breast_cancer` reads a file bundled with the
package; nothing is downloaded), an optional extra:

    pip install "swarm-hospitals[sklearn]"

Labels: 1 = malignant (the positive class, so that sensitivity is the share of cancers
found), 0 = benign. scikit-learn's own target is the other way round (0 = malignant).
Features are returned raw (their scales differ by orders of magnitude): standardise them
with statistics of each site's own training split.

The table has no acquisition site. `with_site_shift` simulates one after partitioning:
each site's features are measured by its own "digitiser" (per-feature gain, offset and
noise), a domain shift of the kind the Guan et al. survey studies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from swarm.config import Table, setting
from swarm.errors import ConfigError

from . import Samples
from .partition import Seed

_TAG_TABLE = 0x7462  # "tb"
INSTALL_HINT = 'pip install "swarm-hospitals[sklearn]"'


class _SiteShift(Table):
    """with_site_shift's arguments (settings of the partition that made the sites)."""

    seed: Seed
    shift: float = setting(ge=0.0, le=10.0, example=1.0)


def load_breast_cancer_table() -> Samples:
    """The Wisconsin breast-cancer table: x float32 [569, 30], y int64 [569] (1 = malignant).

    ConfigError when scikit-learn is not installed."""
    try:
        from sklearn.datasets import load_breast_cancer
    except ImportError:
        raise ConfigError(
            "breast-cancer table: needs scikit-learn, which is not installed; "
            f"install the optional extra: {INSTALL_HINT}") from None
    bunch = load_breast_cancer()
    x = np.asarray(bunch.data, dtype=np.float32)
    target = np.asarray(bunch.target, dtype=np.int64)
    names = [str(n) for n in getattr(bunch, "target_names", ["malignant", "benign"])]
    malignant = names.index("malignant") if "malignant" in names else 0
    y = (target == malignant).astype(np.int64)
    return Samples(x=torch.from_numpy(np.ascontiguousarray(x)), y=torch.from_numpy(y),
                   task="classification", num_classes=2, site=None)


def with_site_shift(samples: Samples, parts: Sequence[Sequence[int] | np.ndarray], seed: int,
                    shift: float = 1.0) -> Samples:
    """A copy of `samples` in which part k (a list of sample indices, e.g. from a
    partitioner) is site k: `site` is set, and each site's features go through its own
    measurement: x -> x * gain + offset * scale + noise * scale, per feature, where scale
    is the feature's pooled standard deviation; gains, offsets and the noise level are
    drawn from [seed, tag, k] and grow with `shift` (0: no change). Every sample must be
    in exactly one part."""
    if samples.x.ndim != 2:
        raise ValueError("with_site_shift: needs a table ([n, F] features)")
    args = _SiteShift.from_dict({"seed": seed, "shift": shift}, "partition")
    seed, shift = args.seed, args.shift
    n = len(samples)
    site = np.full(n, -1, dtype=np.int64)
    for k, part in enumerate(parts):
        idx = np.asarray(part, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"with_site_shift: part {k} holds indices outside [0, {n})")
        if (site[idx] != -1).any() or np.unique(idx).size != idx.size:
            raise ValueError(f"with_site_shift: part {k} repeats samples of an earlier part")
        site[idx] = k
    if (site == -1).any():
        raise ValueError(f"with_site_shift: {int((site == -1).sum())} samples are in no part")

    x = samples.x.numpy().astype(np.float64)
    scale = x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    out = x.copy()
    f = x.shape[1]
    for k in range(len(parts)):
        rows = site == k
        rng = np.random.default_rng([seed, _TAG_TABLE, k])
        gain = np.exp(0.2 * shift * rng.standard_normal(f))
        offset = 0.3 * shift * rng.standard_normal(f)
        noise = 0.2 * shift * rng.uniform()
        out[rows] = (x[rows] * gain + offset * scale
                     + noise * scale * rng.standard_normal((int(rows.sum()), f)))
    return Samples(x=torch.from_numpy(out.astype(np.float32)), y=samples.y.clone(), task=samples.task,
                   num_classes=samples.num_classes, site=torch.from_numpy(site))
