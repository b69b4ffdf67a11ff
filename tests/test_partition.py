"""Partitioners and per-site splits: deterministic from the seed, no sample in two sites
or two splits, every sample placed, every site big enough, and the requested skew there."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nodes.datasets import Samples
from nodes.datasets.partition import (
    PartitionConfig,
    SiteSplit,
    assign,
    by_site,
    dirichlet,
    iid,
    label_histograms,
    partition,
    quantity,
    split_site,
)
from nodes.datasets.phantom import generate_phantom_site
from swarm.errors import ConfigError

N, CLASSES = 2000, 5


@pytest.fixture(scope="module")
def pool() -> Samples:
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, N)
    site = np.repeat(np.arange(4), [200, 300, 600, 900])
    return Samples(x=torch.from_numpy(rng.normal(size=(N, 3)).astype(np.float32)),
                   y=torch.from_numpy(y), task="classification", num_classes=CLASSES,
                   site=torch.from_numpy(site))


def check_partition(parts: list[np.ndarray], n: int, min_samples: int = 1) -> None:
    """Disjoint, covering, sorted int64 parts, each at least min_samples."""
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0) and p.size >= min_samples
    everything = np.concatenate(parts)
    assert everything.size == n                           # no sample in two sites ...
    assert np.array_equal(np.sort(everything), np.arange(n))  # ... and every sample placed


def equal(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def skew(samples: Samples, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each site's label histogram and the pool's."""
    hist = label_histograms(samples, parts).astype(float)
    site = hist / hist.sum(1, keepdims=True)
    overall = hist.sum(0) / hist.sum()
    return float(np.mean(0.5 * np.abs(site - overall).sum(1)))


# --------------------------------------------------------------------------------------
# Partitioners
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda s, seed: iid(s, 6, seed=seed, min_samples=50),
    lambda s, seed: dirichlet(s, 6, 0.3, seed=seed, min_samples=50),
    lambda s, seed: quantity(s, 6, 1.5, seed=seed, min_samples=50),
], ids=["iid", "dirichlet", "quantity"])
def test_partitioners_are_deterministic_disjoint_and_covering(pool, make):
    parts = make(pool, 7)
    assert len(parts) == 6
    check_partition(parts, N, min_samples=50)
    assert equal(parts, make(pool, 7))
    assert not equal(parts, make(pool, 8))


def test_iid_sizes_are_equal_and_labels_follow_the_pool(pool):
    parts = iid(pool, 6, seed=1)
    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert skew(pool, parts) < 0.06
    check_partition(iid(10, 3, seed=0), 10)  # a plain sample count works too


def test_dirichlet_small_alpha_skews_labels_far_more_than_large_alpha(pool):
    strong = dirichlet(pool, 8, 0.1, seed=3, min_samples=20)
    weak = dirichlet(pool, 8, 100.0, seed=3, min_samples=20)
    check_partition(strong, N, 20)
    check_partition(weak, N, 20)
    assert skew(pool, strong) > 0.4 and skew(pool, weak) < 0.08
    assert skew(pool, strong) > 5 * skew(pool, weak)
    # With alpha = 0.1 most sites are dominated by one or two classes.
    hist = label_histograms(pool, strong)
    top_two = np.sort(hist, axis=1)[:, -2:].sum(1) / hist.sum(1)
    assert np.median(top_two) > 0.8


def test_dirichlet_still_meets_min_samples_when_draws_cannot(pool):
    """Two classes, tiny alpha, a large minimum: the fallback tops the small sites up and
    keeps them single-class where it can."""
    y = torch.tensor([0] * 20 + [1] * 20)
    two = Samples(x=torch.zeros(40, 2), y=y, task="classification", num_classes=2)
    parts = dirichlet(two, 4, 0.01, seed=0, min_samples=8)
    check_partition(parts, 40, min_samples=8)
    assert equal(parts, dirichlet(two, 4, 0.01, seed=0, min_samples=8))


def test_quantity_skew_gives_unequal_sizes_and_iid_labels(pool):
    flat = quantity(pool, 6, 0.0, seed=2)
    assert max(p.size for p in flat) - min(p.size for p in flat) <= 1
    skewed = quantity(pool, 6, 2.0, seed=2, min_samples=30)
    check_partition(skewed, N, 30)
    sizes = sorted(p.size for p in skewed)
    assert sizes[-1] / sizes[0] > 5
    mild = sorted(p.size for p in quantity(pool, 6, 0.5, seed=2))
    assert sizes[-1] / sizes[0] > mild[-1] / mild[0]
    big = [p for p in skewed if p.size >= 200]
    assert skew(pool, big) < 0.08  # labels stay IID within each (large enough) site


def test_by_site_follows_the_acquisition_site(pool):
    parts = by_site(pool, min_samples=200)
    check_partition(parts, N, 200)
    assert [p.size for p in parts] == [200, 300, 600, 900]
    for k, p in enumerate(parts):
        assert torch.all(pool.site[p] == k)
    with pytest.raises(ConfigError, match=r"partition\.min_samples: .*site 0 has 200 samples.*got 201"):
        by_site(pool, min_samples=201)
    no_sites = Samples(x=pool.x, y=pool.y, task="classification", num_classes=CLASSES)
    with pytest.raises(ConfigError, match=r'partition\.method: "by-site" needs .* acquisition site'):
        by_site(no_sites)


def test_impossible_requests_are_config_errors_naming_the_field(pool):
    with pytest.raises(ConfigError, match=r"partition\.min_samples: must be at most 333 \(2000 samples over "
                                          r"6 sites\), got 400 \(example: min_samples = 10\)"):
        iid(pool, 6, min_samples=400)
    with pytest.raises(ConfigError, match=r"partition\.sites: must be at most the number of samples \(10\)"):
        quantity(10, 11, 1.0)
    with pytest.raises(ConfigError, match=r"partition\.alpha: must be a number > 0, got 0"):
        dirichlet(pool, 4, 0.0)
    with pytest.raises(ConfigError, match=r"partition\.skew: must be a number in \[0, 5\], got -1"):
        quantity(pool, 4, -1.0)
    segmentation = generate_phantom_site(0, 0, 6, size=16)
    with pytest.raises(ConfigError, match=r'"dirichlet" needs one class label per sample'):
        dirichlet(segmentation, 2, 0.5)
    check_partition(iid(segmentation, 2, seed=0), 6)  # label-free partitioners work on masks


# --------------------------------------------------------------------------------------
# Per-site splits
# --------------------------------------------------------------------------------------


def test_split_site_respects_fractions_and_is_disjoint(pool):
    indices = by_site(pool)[2]  # 600 samples
    s = split_site(indices, 0.1, 0.2, seed=5)
    assert s.sizes() == (420, 60, 120)
    for part in (s.train, s.val, s.test):
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    assert np.intersect1d(s.train, s.val).size == 0 and np.intersect1d(s.train, s.test).size == 0
    assert np.intersect1d(s.val, s.test).size == 0
    assert np.array_equal(s.indices, indices)
    # Deterministic, independent of the order the indices come in, different per seed.
    again = split_site(indices[::-1].copy(), 0.1, 0.2, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip((s.train, s.val, s.test), (again.train, again.val, again.test)))
    assert not np.array_equal(s.test, split_site(indices, 0.1, 0.2, seed=6).test)
    assert not np.array_equal(s.test, split_site(indices, 0.1, 0.2, seed=(5, 1)).test)


def test_split_site_stratified_keeps_the_class_mix(pool):
    indices = by_site(pool)[3]
    s = split_site(indices, 0.1, 0.2, seed=0, labels=pool.y)
    site_mix = np.bincount(pool.y[indices].numpy(), minlength=CLASSES) / indices.size
    for part in (s.train, s.val, s.test):
        mix = np.bincount(pool.y[part].numpy(), minlength=CLASSES) / part.size
        assert np.abs(mix - site_mix).max() < 1.5 / part.size + 1e-9  # within a sample or so per class


def test_split_site_small_sites_and_bad_fractions():
    tiny = split_site([3, 9, 4, 7], 0.05, 0.05, seed=0)
    assert tiny.sizes() == (2, 1, 1)  # a positive fraction keeps at least one sample
    none = split_site(np.arange(10), 0.0, 0.3, seed=0)
    assert none.sizes() == (7, 0, 3)
    with pytest.raises(ConfigError, match=r"partition\.test_fraction: site 2 with 5 samples cannot keep 2 for test"):
        split_site(np.arange(5), 0.5, 0.4, seed=0, name="site 2")
    with pytest.raises(ConfigError, match=r"partition\.test_fraction: must be < 1 - val_fraction \(0\.5\), got 0\.6"):
        split_site(np.arange(50), 0.5, 0.6, seed=0)
    with pytest.raises(ConfigError, match=r"partition\.val_fraction: must be a number in \[0, 1\), got 1"):
        split_site(np.arange(50), 1.0, 0.0, seed=0)
    with pytest.raises(ConfigError, match=r"partition\.seed: must be a non-negative integer"):
        split_site(np.arange(50), 0.1, 0.1, seed=-3)
    with pytest.raises(ValueError, match="distinct"):
        split_site([1, 1, 2], 0.1, 0.1, seed=0)


# --------------------------------------------------------------------------------------
# The [partition] table
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", [
    {"method": "iid", "sites": 5},
    {"method": "dirichlet", "sites": 5, "alpha": 0.2},
    {"method": "quantity", "sites": 5, "skew": 1.5},
    {"method": "by-site"},
    {"method": "by-site", "sites": 4, "stratify": False},
], ids=lambda t: t["method"])
def test_partition_gives_every_site_disjoint_splits(pool, table):
    config = PartitionConfig.from_dict({**table, "seed": 4, "min_samples": 40})
    splits = partition(pool, config)
    assert all(isinstance(s, SiteSplit) for s in splits)
    assert len(splits) == config.sites if config.sites else len(splits) == 4
    everything = np.concatenate([np.concatenate([s.train, s.val, s.test]) for s in splits])
    assert everything.size == N and np.array_equal(np.sort(everything), np.arange(N))
    for s in splits:
        n = s.indices.size
        assert n >= 40
        assert s.test.size == int(np.floor(0.2 * n + 0.5)) and s.val.size == int(np.floor(0.1 * n + 0.5))
    again = partition(pool, config)
    assert all(np.array_equal(a.test, b.test) and np.array_equal(a.train, b.train) for a, b in zip(splits, again))
    assert equal([s.indices for s in splits], assign(pool, config))


def test_partition_table_errors_name_the_field(pool):
    cases = [
        ({"method": "random"}, r'partition\.method: must be one of: iid, dirichlet, quantity, by-site, got '
                               r"'random' \(example: method = \"dirichlet\"\)"),
        ({"sites": 1}, r"partition\.sites: must be an integer >= 2, got 1"),
        ({"alpha": -1}, r"partition\.alpha: must be a number > 0, got -1"),
        ({"test_fraction": 0.5, "val_fraction": 0.5}, r"partition\.test_fraction: must be < 1 - val_fraction"),
        ({"min_samples": 0}, r"partition\.min_samples: must be an integer >= 1, got 0"),
        ({"stratify": "yes"}, r"partition\.stratify: must be true or false"),
        ({"colour": 1}, r"partition\.colour: unknown key"),
    ]
    for table, message in cases:
        with pytest.raises(ConfigError, match=message):
            PartitionConfig.from_dict(table)
    with pytest.raises(ConfigError, match=r'partition\.sites: missing; method = "iid" needs the number of sites'):
        partition(pool, PartitionConfig.from_dict({"method": "iid"}))
    with pytest.raises(ConfigError, match=r"partition\.sites: must be 4 \(the data's number of acquisition sites\)"):
        partition(pool, PartitionConfig.from_dict({"method": "by-site", "sites": 3}))
