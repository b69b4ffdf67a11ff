"""The [data] sources a site can read, and a federation on image data end to end."""

from __future__ import annotations

import numpy as np
import torch
import pytest

from nodes.audit import verify_sites
from nodes.sources import data_source, load_every_site, load_own_site
from scenarios.config import ScenarioConfig
from swarm.errors import ConfigError
from swarm.transport import InMemoryNetwork
from tests.conftest import SMALL_SCENARIO, join, start_nodes


def write_npz(path, n=60, classes=3, rgb=False):
    rng = np.random.default_rng(0)
    shape = (28, 28, 3) if rgb else (28, 28)
    arrays = {}
    for split, count in (("train", n), ("val", n // 3), ("test", n // 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, classes, (count, 1)).astype(np.int64)
    np.savez(path, **arrays)
    return path


def test_each_source_gives_its_task_shape_and_own_site_only():
    imaging = data_source({"source": "synthetic-imaging", "sites": 3, "classes": 3, "size": 20})
    assert imaging.task_shape().plan_table() == {"input_shape": [1, 20, 20], "num_classes": 3, "kind": "classification"}
    site = load_own_site({"source": "synthetic-imaging", "sites": 3, "site": 1, "samples_per_site": 40, "test_samples": 30})
    assert site.train_x.shape[1:] == (1, 28, 28) and site.test_samples == 30 and site.input_shape == (1, 28, 28)
    again = load_every_site({"source": "synthetic-imaging", "sites": 3, "samples_per_site": 40, "test_samples": 30})[1]
    assert (again.train_x == site.train_x).all()  # a site's data depends only on (seed, site)
    phantom = data_source({"source": "phantom", "sites": 2})
    assert phantom.task_shape().kind == "segmentation" and phantom.task_shape().num_classes == 3
    tabular = data_source({"sites": 4})
    assert tabular.task_shape().input_shape == (32,)


def _fingerprints(images):
    return [tuple(x.flatten()[:64].tolist()) for x in images]


def test_medmnist_keeps_its_official_test_split_and_partitions_the_rest(tmp_path):
    path = write_npz(tmp_path / "tiny.npz", rgb=True)
    table = {"source": "medmnist", "path": str(path), "sites": 3, "partition": "iid", "min_samples": 5}
    source = data_source(table)
    assert source.task_shape().input_shape == (3, 28, 28)
    sites = load_every_site(table)
    held_by_sites = _fingerprints(x for s in sites for x in (*s.train_x, *s.val_x, *s.test_x))
    assert len(held_by_sites) == len(set(held_by_sites)) == 60 + 20  # train + val, each image at one site
    with np.load(path) as arrays:
        official = _fingerprints(torch.from_numpy(arrays["test_images"]).permute(0, 3, 1, 2).float() / 255.0)
        official_labels = arrays["test_labels"].reshape(-1)
    held_out = source.global_test()
    assert _fingerprints(held_out.x) == official and held_out.y.tolist() == official_labels.tolist()
    assert not set(official) & set(held_by_sites)  # no site trains or tests on the official test split
    assert "official test split of tiny.npz" in source.global_test_origin()


def test_bad_data_tables_name_the_field(tmp_path):
    for table, field in (
        ({"source": "mnist"}, "data.source"),
        ({"source": "medmnist", "sites": 2, "path": str(tmp_path / "none.npz")}, "data.path"),
        ({"source": "synthetic-imaging", "sites": 2, "classes": 40}, "data.classes"),
        ({"source": "phantom", "sites": 2, "bogus": 1}, "data.bogus"),
    ):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            data_source(table)


def test_a_model_that_does_not_fit_the_data_is_refused_at_load(tmp_path):
    text = SMALL_SCENARIO.format(name="t", nodes=2, rounds=1, topology="ring").replace("seed = 3\nsamples_per_site = 80", 'source = "phantom"')
    path = tmp_path / "bad.toml"
    path.write_text(text)  # an mlp's class scores cannot be compared with masks
    with pytest.raises(ConfigError, match="model.name: mlp outputs .* segmentation task.*unet"):
        ScenarioConfig.load(path)


def test_a_segmentation_federation_trains_and_logs_dice(tmp_path):
    text = SMALL_SCENARIO.format(name="seg", nodes=2, rounds=2, topology="ring")
    text = text.replace('[model]\nname = "mlp"', '[model]\nname = "unet"\ndepth = 1\nbase = 4\nnorm = "group"')
    text = text.replace("seed = 3\nsamples_per_site = 80", 'source = "phantom"\nsamples_per_site = 16\ntest_samples = 8\nsize = 16')
    path = tmp_path / "seg.toml"
    path.write_text(text)
    from scenarios.federation import create_federation

    federation = create_federation(ScenarioConfig.load(path), tmp_path / "run")
    nodes, threads, stop = start_nodes(federation, InMemoryNetwork())
    join(threads, stop)
    for node in nodes.values():
        assert node.store.head.seq == 2 and 0.0 <= node.store.head.body.metrics["dice"] <= 1.0
        node.store.close()
    assert verify_sites(federation.sites.values()).ok


def test_breast_cancer_sites_get_their_own_shift_split_and_scaling():
    pytest.importorskip("sklearn", reason='optional extra: pip install "swarm-hospitals[sklearn]"')
    sites = load_every_site({"source": "breast-cancer", "sites": 3, "shift": 1.0})
    assert sum(s.train_samples + len(s.val_y) + s.test_samples for s in sites) == 569
    for site in sites:
        total = site.train_samples + len(site.val_y) + site.test_samples
        assert site.input_shape == (30,) and abs(site.test_samples / total - 0.2) < 0.02 and abs(len(site.val_y) / total - 0.1) < 0.02
        assert torch.allclose(site.train_x.mean(0), torch.zeros(30), atol=1e-4)  # z-scored with its own statistics


def test_each_site_keeps_its_own_validation_split():
    for table in (
        {"source": "synthetic-imaging", "sites": 2, "site": 0, "samples_per_site": 60, "test_samples": 30, "val_fraction": 0.2},
        {"source": "phantom", "sites": 2, "site": 1, "samples_per_site": 40, "test_samples": 10, "size": 16, "val_fraction": 0.2},
    ):
        site = load_own_site(table)
        total = site.train_samples + len(site.val_y)
        assert abs(len(site.val_y) - 0.2 * total) <= 1 and site.test_samples == table["test_samples"]
        parts = [tuple(x.flatten().tolist()) for x in (*site.train_x, *site.val_x, *site.test_x)]
        assert len(parts) == len(set(parts)), "a sample is in two splits"


@pytest.mark.slow
def test_compare_scores_every_segmentation_metric_of_the_swarm(tmp_path):
    import math

    from scenarios.compare import run_compare

    text = SMALL_SCENARIO.format(name="segc", nodes=2, rounds=1, topology="ring")
    text = text.replace('[model]\nname = "mlp"', '[model]\nname = "unet"\ndepth = 1\nbase = 4\nnorm = "group"')
    text = text.replace("seed = 3\nsamples_per_site = 80", 'source = "phantom"\nsamples_per_site = 16\ntest_samples = 8\nsize = 16')
    path = tmp_path / "segc.toml"
    path.write_text(text + '\n[compare]\nmethods = ["swarm"]\n')
    results = run_compare(ScenarioConfig.load(path), 1, tmp_path / "out", lambda line: None)
    for method in ("swarm", "swarm-consensus", "majority"):
        for scope in ("global", "sites_mean"):
            scores = results["methods"][method][scope]
            assert set(scores) == {"dice", "pixel_accuracy"} and not any(math.isnan(v["mean"]) for v in scores.values())


def test_generated_images_take_dirichlet_label_skew_one_class_sites_and_a_balanced_held_out_set():
    table = {"source": "synthetic-imaging", "sites": 4, "alpha": 0.3, "one_class_sites": 1, "samples_per_site": 60,
             "test_samples": 20, "global_test_per_site": 30, "classes": 3}
    source = data_source(table)
    sites = load_every_site(table)
    last = sites[-1]
    assert len(set(last.train_y.tolist())) == 1 and set(last.test_y.tolist()) == set(last.train_y.tolist())
    for k, site in enumerate(sites[:-1]):  # the others follow their own Dirichlet draw
        counts = np.bincount(site.train_y.numpy(), minlength=3) + np.bincount(site.test_y.numpy(), minlength=3) \
            + np.bincount(site.val_y.numpy(), minlength=3)
        assert np.abs(counts / counts.sum() - source.class_prior(k)).max() < 0.05
    held_out = source.global_test()
    assert len(held_out) == 4 * 30 and np.bincount(held_out.y.numpy()).tolist() == [40, 40, 40]
    assert held_out.site.tolist() == [k for k in range(4) for _ in range(30)]
    seen = set(_fingerprints(x for s in sites for x in (*s.train_x, *s.val_x, *s.test_x)))
    assert not seen & set(_fingerprints(held_out.x))  # new patients, not any site's
    again = data_source(table).global_test()
    assert torch.equal(again.x, held_out.x)  # deterministic from the seed


def test_without_an_official_test_split_the_held_out_set_is_the_union_of_the_sites_tests():
    table = {"sites": 3, "samples_per_site": 40, "test_samples": 25}
    source = data_source(table)
    held_out = source.global_test()
    sites = load_every_site(table)
    assert torch.equal(held_out.x, torch.cat([s.test_x for s in sites]))
    assert torch.equal(held_out.y, torch.cat([s.test_y for s in sites]))
    assert "union" in source.global_test_origin()
