"""The embedded data set and the [data] table: deterministic, per-site independent,
non-IID in the ways the quickstart relies on, and strict about its settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nodes.data import (
    DATA_SOURCES,
    DataConfig,
    SiteData,
    load_all_sites,
    load_site,
    site_class_prior,
)
from swarm.errors import ConfigError


def same(a: SiteData, b: SiteData) -> bool:
    return (
        a.name == b.name
        and torch.equal(a.train_x, b.train_x)
        and torch.equal(a.train_y, b.train_y)
        and torch.equal(a.test_x, b.test_x)
        and torch.equal(a.test_y, b.test_y)
    )


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.numpy()}


def class_share(y: torch.Tensor, classes: int) -> np.ndarray:
    return torch.bincount(y, minlength=classes).numpy() / len(y)


@pytest.fixture(scope="module")
def sites() -> list[SiteData]:
    return load_all_sites(DataConfig(seed=3))


def test_shapes_and_types(sites):
    config = DataConfig(seed=3)
    assert len(sites) == config.sites
    for k, s in enumerate(sites):
        assert s.name == f"site-{k}"
        assert s.train_x.dtype == torch.float32 and s.test_x.dtype == torch.float32
        assert s.train_y.dtype == torch.int64 and s.test_y.dtype == torch.int64
        assert s.train_x.shape == (s.train_samples, config.features)
        assert s.test_x.shape == (config.test_samples, config.features)
        assert s.num_features == config.features and s.num_classes == config.classes
        assert int(s.train_y.min()) >= 0 and int(s.train_y.max()) < config.classes
        assert s.train_samples >= config.min_samples
        assert torch.isfinite(s.train_x).all() and torch.isfinite(s.test_x).all()


def test_same_seed_same_data():
    config = DataConfig(seed=11)
    assert same(load_site(config, 2), load_site(DataConfig(seed=11), 2))


def test_different_seeds_differ():
    a, b = load_site(DataConfig(seed=1), 0), load_site(DataConfig(seed=2), 0)
    assert not torch.equal(a.train_x[:5], b.train_x[:5])


def test_site_built_alone_equals_site_from_whole_federation(sites):
    for k in (0, 4):
        assert same(load_site(DataConfig(seed=3), k), sites[k])
    # The node's own index in the table selects the same site.
    assert same(load_site(DataConfig(seed=3, site=4)), sites[4])


def test_building_order_does_not_matter():
    # No shared random stream: a site comes out the same whether it is built first, or
    # after every other site.
    config = DataConfig(seed=5)
    first = load_site(config, 5)
    load_all_sites(config)
    assert same(load_site(config, 5), first)


def test_no_patient_in_two_splits_or_two_sites():
    # Without the scanner transform and the standardisation every site shows the features
    # on the same scale, so a shared random stream would show up as shared rows.
    config = DataConfig(seed=7, shift=0.0, standardize=False)
    all_rows: set[bytes] = set()
    total = 0
    for s in load_all_sites(config):
        train, test = rows(s.train_x), rows(s.test_x)
        assert len(train) == s.train_samples and len(test) == s.test_samples
        assert not train & test
        all_rows |= train | test
        total += s.train_samples + s.test_samples
    assert len(all_rows) == total


def test_label_skew(sites):
    config = DataConfig(seed=3)
    shares = np.array([class_share(s.train_y, config.classes) for s in sites])
    # Sites disagree on the class mix ...
    assert (shares.max(axis=0) - shares.min(axis=0)).max() > 0.15
    for k, s in enumerate(sites):
        prior = site_class_prior(config, k)
        # ... each follows its own prior, in the training and in the test split alike.
        assert np.abs(class_share(s.train_y, config.classes) - prior).max() < 1.5 / s.train_samples + 1e-9
        assert np.abs(class_share(s.test_y, config.classes) - prior).max() < 1.5 / s.test_samples + 1e-9
    uniform = load_all_sites(DataConfig(seed=3, label_skew=0.0))
    for s in uniform:
        assert np.abs(class_share(s.train_y, config.classes) - 1 / 3).max() <= 1 / s.train_samples


def test_quantity_skew(sites):
    sizes = [s.train_samples for s in sites]
    assert max(sizes) >= 5 * min(sizes)
    assert len(set(sizes)) == len(sizes)
    flat = [s.train_samples for s in load_all_sites(DataConfig(seed=3, quantity_skew=0.0))]
    assert flat == [DataConfig().samples_per_site] * len(flat)


def test_domain_shift_is_per_site():
    # Raw (unstandardised) features of large, equally sized, class-balanced sites: only the
    # scanner can move their means and spreads apart.
    base = dict(seed=3, sites=3, standardize=False, samples_per_site=2000, quantity_skew=0.0,
                label_skew=0.0, test_samples=10)

    def spread(config: DataConfig) -> tuple[float, float]:
        xs = [s.train_x for s in load_all_sites(config)]
        means = torch.stack([x.mean(dim=0) for x in xs])
        stds = torch.stack([x.std(dim=0) for x in xs])
        return (float((means.max(0).values - means.min(0).values).max()),
                float((stds.max(0).values / stds.min(0).values).max()))

    mean_gap, std_ratio = spread(DataConfig(**base))
    assert mean_gap > 1.0 and std_ratio > 1.5
    mean_gap, std_ratio = spread(DataConfig(**base, shift=0.0))
    assert mean_gap < 0.2 and std_ratio < 1.1


def test_standardised_with_own_statistics(sites):
    for s in sites:
        assert s.train_x.mean(dim=0).abs().max() < 0.5
        assert ((s.train_x.std(dim=0) - 1).abs() < 0.5).all()


def test_registry_has_default_source():
    assert DataConfig().source in DATA_SOURCES


def test_from_dict_defaults_and_values():
    config = DataConfig.from_dict({"sites": 4, "site": 3, "seed": 9, "label_skew": 0, "shift": 2})
    assert (config.sites, config.site, config.seed) == (4, 3, 9)
    assert isinstance(config.label_skew, float) and config.label_skew == 0.0
    assert config.shift == 2.0
    assert DataConfig.from_dict({}) == DataConfig()
    assert DataConfig.from_dict({}).site is None


@pytest.mark.parametrize(
    ("table", "field", "bad"),
    [
        ({"sites": "x"}, "data.sites", "'x'"),
        ({"sites": 1}, "data.sites", "1"),
        ({"sites": True}, "data.sites", "True"),
        ({"sites": 3, "site": 3}, "data.site", "3"),
        ({"site": -1}, "data.site", "-1"),
        ({"seed": 1.5}, "data.seed", "1.5"),
        ({"label_skew": 1.5}, "data.label_skew", "1.5"),
        ({"label_noise": 1.0}, "data.label_noise", "1.0"),
        ({"quantity_skew": "big"}, "data.quantity_skew", "'big'"),
        ({"samples_per_site": 0}, "data.samples_per_site", "0"),
        ({"samples_per_site": 10, "min_samples": 20}, "data.min_samples", "20"),
        ({"test_samples": 0}, "data.test_samples", "0"),
        ({"standardize": "yes"}, "data.standardize", "'yes'"),
        ({"source": "mnist"}, "data.source", "'mnist'"),
        ({"nonlinearity": 0}, "data.nonlinearity", "0"),
    ],
)
def test_bad_values_name_field_value_and_example(table, field, bad):
    with pytest.raises(ConfigError) as info:
        DataConfig.from_dict(table)
    message = str(info.value)
    assert message.startswith(field + ":")
    assert bad in message
    assert "example:" in message


def test_sites_message_matches_the_documented_form():
    with pytest.raises(ConfigError, match=r"^data\.sites: must be an integer >= 2, got 'x' \(example: sites = 6\)$"):
        DataConfig.from_dict({"sites": "x"})


def test_unknown_key_and_prefix():
    with pytest.raises(ConfigError, match=r"^plan\.data\.colour: unknown key"):
        DataConfig.from_dict({"colour": "blue"}, "plan.data")
    with pytest.raises(ConfigError, match=r"^plan\.data\.sites:"):
        DataConfig.from_dict({"sites": 0}, "plan.data")
    with pytest.raises(ConfigError, match=r"^data: must be a table"):
        DataConfig.from_dict(["sites", 6])


def test_direct_construction_is_checked_too():
    with pytest.raises(ConfigError, match=r"^data\.sites:"):
        DataConfig(sites=1)


def test_load_site_rejects_bad_index():
    with pytest.raises(ConfigError, match=r"^data\.site:"):
        load_site(DataConfig(), 6)
    with pytest.raises(ConfigError, match=r"^data\.site: missing"):
        load_site(DataConfig())
