"""A site's local data: the `[data]` config table, the data-source registry and the
embedded default data set, "synthetic-multisite".

"synthetic-multisite" is a generated, radiomics-like tabular task standing in for
hospitals that each hold a small, differently acquired cohort of the same disease
(defaults: 6 sites, 32 features, 3 classes):

* a shared, nonlinear ground truth: every patient has a few latent factors (the biology);
  the label is a random smooth nonlinear function (a sum of sinusoids) of those factors,
  and the features are correlated, partly nonlinear read-outs of them (like radiomics
  features, many of which measure the same thing), so no single feature decides the class
  and a linear model is far from enough;
* per-site domain shift: each hospital's "scanner" adds its own amount of noise and then
  scales and offsets every feature differently. The site standardises its features with
  class-balanced statistics of its own training split (harmonisation a hospital can do
  alone), which undoes the affine part but not the noise;
* label skew: each site's class prior mixes the uniform prior with a random one
  (`label_skew`), exactly, in both its training and its test split;
* quantity skew: training-set sizes are spread log-uniformly around `samples_per_site`
  (the largest site holds about exp(2 * quantity_skew) times more patients than the
  smallest, never fewer than `min_samples`);
* label noise: a fraction of labels is replaced with a random class.

One hospital's own data is not enough: accuracy keeps rising with the number of patients
far past what any single site holds, which is what makes the federation worth joining.

Determinism and isolation: the ground truth depends only on the seed and the task shape;
site k's data depends only on (seed, k, config) and comes from its own random stream, so a
node builds only its own site, and building one site alone gives exactly the same tensors
as building all of them. Each site's test split (`test_samples` patients, the same number
everywhere so that every site's accuracy is measured equally well) is held out from the
same cohort: same scanner, same class prior. No patient is in two sites or in two splits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import Tensor

from swarm.config import Table, invalid_value, setting
from swarm.errors import ConfigError

from .datasets import apportion
from .datasets.partition import Seed

# --------------------------------------------------------------------------------------
# Site data and config
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteData:
    """One hospital's data: features are float32 [n, num_features], labels int64 [n]."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_features: int
    num_classes: int
    val_x: Tensor | None = None  # the site's own validation split, where the source makes one
    val_y: Tensor | None = None

    @property
    def train_samples(self) -> int:
        return int(self.train_y.shape[0])

    @property
    def test_samples(self) -> int:
        return int(self.test_y.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape: (features,) for tables, (channels, height, width) for images."""
        return tuple(self.train_x.shape[1:])


def below_sites(value: Any, info: ValidationInfo, example: int = 0) -> Any:
    """A `mode="before"` field validator's check of an index into the sites: an integer from
    0 to sites - 1 (`sites` is declared earlier; where it is wrong itself, that is reported)."""
    sites = info.data.get("sites")
    if value is None or sites is None:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < sites:
        raise invalid_value("", f"an integer from 0 to {sites - 1}", value, example)
    return value


SiteCount = Annotated[int, Field(ge=2, le=10_000, json_schema_extra={"example": 6})]  # a generated or partitioned source's sites
Shift = Annotated[float, Field(ge=0, le=10, json_schema_extra={"example": 1.0})]  # per-site scanner shift
LabelSkew = Annotated[float, Field(ge=0, le=1, json_schema_extra={"example": 0.5})]
Skew = Annotated[float, Field(ge=0, le=5)]  # spread of (log) site sizes
ValFraction = Annotated[float, Field(ge=0, le=0.5)]  # of the training part, kept as the site's validation split
PathOrEmpty = Annotated[str, Field(min_length=0)]  # a file or folder; "" (the default) while not set


class SitesTable(Table):
    """What every `[data]` source has: the number of sites, this node's site and the seed."""

    TABLE: ClassVar[str] = "data"

    sites: SiteCount = 6
    site: int | None = setting(None, example=0)  # this node's site index; absent for whole-federation use
    seed: Seed = 0

    @field_validator("site", mode="before")
    @classmethod
    def _site_below_sites(cls, value: Any, info: ValidationInfo) -> Any:
        return below_sites(value, info)


class DataConfig(SitesTable):
    """The `[data]` table. The defaults are the quickstart federation's data set."""

    sites: int = setting(6, ge=2, example=6)
    source: Literal["synthetic-multisite"] = "synthetic-multisite"  # the keys of DATA_SOURCES
    features: int = setting(32, ge=2)
    classes: int = setting(3, ge=2)
    latent: int = setting(8, ge=1)             # latent factors behind the features and the label
    nonlinearity: float = setting(1.0, gt=0, le=10)  # frequency of the label function (near 0: almost linear)
    samples_per_site: int = setting(120, ge=1)  # mean training patients per site (before quantity skew)
    min_samples: int = setting(20, ge=1)       # no site trains on fewer patients than this
    test_samples: int = setting(500, ge=1)     # held-out test patients per site (the same for every site)
    quantity_skew: Skew = 1.5                  # site sizes span a factor exp(2q) (1.5: about 20x)
    label_skew: LabelSkew = 0.5                # 0: every site has the uniform class prior; 1: fully random
    shift: Shift = 1.0                         # strength of the per-site scanner shift
    label_noise: float = setting(0.05, ge=0, lt=1)  # fraction of labels replaced by a random class
    standardize: bool = True                   # each site z-scores features with its own train statistics

    @model_validator(mode="after")
    def _min_samples_fit(self) -> DataConfig:
        if self.min_samples > self.samples_per_site:
            raise invalid_value("min_samples", f"<= samples_per_site ({self.samples_per_site})", self.min_samples,
                                min(20, self.samples_per_site))
        return self


# --------------------------------------------------------------------------------------
# synthetic-multisite
# --------------------------------------------------------------------------------------

# Stream tags: each random stream is seeded with [seed, tag, ...] so they never overlap.
_TAG_TRUTH = 0x7472  # "tr"
_TAG_SIZES = 0x737A  # "sz"
_TAG_SITE = 0x7374   # "st"
_TEACHER_WIDTH = 32
_CALIBRATION_SAMPLES = 20_000


@dataclass(frozen=True)
class _Truth:
    """The shared ground truth: latent factors -> clean features, latent factors -> label."""

    mix: np.ndarray        # [latent, features]   linear read-out
    bend: np.ndarray       # [latent, features]   nonlinear read-out (through tanh)
    wave_w: np.ndarray     # [latent, width]      teacher: random Fourier features of the latent
    wave_b: np.ndarray     # [width]
    out_w: np.ndarray      # [width, classes]
    out_b: np.ndarray      # [classes]            calibrated so classes are balanced overall

    def features(self, z: np.ndarray) -> np.ndarray:
        return z @ self.mix + 0.5 * np.tanh(z @ self.bend)

    def logits(self, z: np.ndarray) -> np.ndarray:
        return np.sin(z @ self.wave_w + self.wave_b) @ self.out_w + self.out_b


@lru_cache(maxsize=16)
def _truth(seed: int, latent: int, features: int, classes: int, nonlinearity: float) -> _Truth:
    rng = np.random.default_rng([seed, _TAG_TRUTH, latent, features, classes])
    mix = rng.normal(size=(latent, features)) / math.sqrt(latent)
    bend = rng.normal(size=(latent, features)) * (1.5 / math.sqrt(latent))
    # A smooth but clearly nonlinear label function: a random sum of sinusoids of the latent
    # factors, at a frequency where a linear model gets ~60% and an MLP keeps improving up
    # to a few thousand patients, far more than one hospital here holds.
    wave_w = rng.normal(size=(latent, _TEACHER_WIDTH)) * (nonlinearity / math.sqrt(latent))
    wave_b = rng.uniform(0.0, 2.0 * math.pi, size=_TEACHER_WIDTH)
    out_w = rng.normal(size=(_TEACHER_WIDTH, classes))
    z = rng.normal(size=(_CALIBRATION_SAMPLES, latent))
    hidden = np.sin(z @ wave_w + wave_b)
    out_w = out_w * (3.0 / max(float((hidden @ out_w).std()), 1e-12))
    base = hidden @ out_w
    # Calibrate the output bias so that, over the whole population, classes are balanced.
    out_b = np.zeros(classes)
    for _ in range(200):
        counts = np.bincount(np.argmax(base + out_b, axis=1), minlength=classes)
        freq = (counts + 1.0) / (counts.sum() + classes)
        if np.max(np.abs(freq - 1.0 / classes)) < 0.005:
            break
        out_b = out_b - 0.5 * np.log(freq * classes)
    return _Truth(mix, bend, wave_w, wave_b, out_w, out_b)


def _site_sizes(config: DataConfig) -> list[int]:
    """Training patients per site: log-uniformly spread, shuffled by the seed."""
    n = config.sites
    spread = np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)
    order = np.random.default_rng([config.seed, _TAG_SIZES, n]).permutation(n)
    weights = np.exp(config.quantity_skew * spread[order])
    weights = weights / weights.mean()
    return [max(config.min_samples, int(round(config.samples_per_site * w))) for w in weights]


def site_class_prior(config: DataConfig, site: int) -> np.ndarray:
    """The class prior of `site` (for reports and tests)."""
    return _site_params(config, site)[0]


def _site_params(config: DataConfig, site: int):
    rng = np.random.default_rng([config.seed, _TAG_SITE, site])
    c, f = config.classes, config.features
    preference = rng.dirichlet(np.ones(c))
    prior = (1.0 - config.label_skew) / c + config.label_skew * preference
    scale = np.exp(config.shift * 0.3 * rng.normal(size=f))
    offset = config.shift * 0.5 * rng.normal(size=f)
    noise = 0.2 + config.shift * 0.2 * rng.uniform(0.0, 1.0)
    return prior, scale, offset, noise, rng


def _synthetic_multisite(config: DataConfig, site: int) -> SiteData:
    truth = _truth(config.seed, config.latent, config.features, config.classes, config.nonlinearity)
    prior, scale, offset, noise, rng = _site_params(config, site)
    n_train = _site_sizes(config)[site]
    n_test = config.test_samples
    total = n_train + n_test
    want_train = apportion(prior, n_train)
    want_test = apportion(prior, n_test)
    want = want_train + want_test

    # Draw patients from the population until every class quota is filled (rejection by
    # class), so the site's class prior is exact and patients are independent draws.
    c = config.classes
    picked: list[list[np.ndarray]] = [[] for _ in range(c)]
    have = np.zeros(c, dtype=np.int64)
    batch = max(256, 2 * total)
    while np.any(have < want):
        z = rng.normal(size=(batch, config.latent))
        labels = np.argmax(truth.logits(z), axis=1)
        flip = rng.random(batch) < config.label_noise
        labels = np.where(flip, rng.integers(0, c, size=batch), labels)
        for k in range(c):
            need = int(want[k] - have[k])
            if need > 0:
                rows = z[labels == k][:need]
                picked[k].append(rows)
                have[k] += rows.shape[0]

    train_z, train_y, test_z, test_y = [], [], [], []
    for k in range(c):
        rows = np.concatenate(picked[k], axis=0) if picked[k] else np.zeros((0, config.latent))
        train_z.append(rows[: want_train[k]])
        test_z.append(rows[want_train[k]: want[k]])
        train_y.append(np.full(want_train[k], k))
        test_y.append(np.full(want_test[k], k))
    train_z, train_y = np.concatenate(train_z), np.concatenate(train_y)
    test_z, test_y = np.concatenate(test_z), np.concatenate(test_y)
    train_perm = rng.permutation(n_train)
    test_perm = rng.permutation(n_test)
    train_z, train_y = train_z[train_perm], train_y[train_perm]
    test_z, test_y = test_z[test_perm], test_y[test_perm]

    def observe(z: np.ndarray) -> np.ndarray:
        clean = truth.features(z)
        return (clean + noise * rng.normal(size=clean.shape)) * scale + offset

    train_x = observe(train_z)
    test_x = observe(test_z)
    if config.standardize:
        # Class-balanced statistics (each class weighs the same), so that a site's class mix
        # does not move its features: only the scanner's affine part is undone.
        counts = np.bincount(train_y, minlength=c).astype(np.float64)
        weights = np.where(counts[train_y] > 0, 1.0 / np.maximum(counts[train_y], 1.0), 0.0)
        weights = weights / weights.sum()
        mean = weights @ train_x
        std = np.sqrt(weights @ (train_x - mean) ** 2)
        std = np.where(std > 1e-8, std, 1.0)
        train_x = (train_x - mean) / std
        test_x = (test_x - mean) / std

    return SiteData(
        name=f"site-{site}",
        train_x=torch.from_numpy(train_x.astype(np.float32)),
        train_y=torch.from_numpy(train_y.astype(np.int64)),
        test_x=torch.from_numpy(test_x.astype(np.float32)),
        test_y=torch.from_numpy(test_y.astype(np.int64)),
        num_features=config.features,
        num_classes=config.classes,
    )


DataSource = Callable[[DataConfig, int], SiteData]

DATA_SOURCES: dict[str, DataSource] = {
    "synthetic-multisite": _synthetic_multisite,
}


def load_site(config: DataConfig, site: int | None = None) -> SiteData:
    """Build site `site` (default: `config.site`) of the federation described by `config`,
    and only that site."""
    if site is None:
        site = config.site
        if site is None:
            raise ConfigError("data.site: missing; this node needs its site index (example: site = 0)")
    site = config.replace(site=site).site  # checked against config.sites as [data] site is
    return DATA_SOURCES[config.source](config, site)


def load_all_sites(config: DataConfig) -> list[SiteData]:
    """Every site of the federation, in index order (for simulations and baselines)."""
    return [load_site(config, k) for k in range(config.sites)]
