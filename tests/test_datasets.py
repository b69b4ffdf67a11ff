"""The data sources of nodes.datasets: the MedMNIST loader is strict about its files, the
generators are deterministic, per-site independent and really shifted between sites, the
phantom's masks are anatomically consistent, and the breast-cancer table loads (or says
how to install scikit-learn)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from nodes.datasets import Samples, concat
from nodes.datasets.effects import ScannerEffects, gaussian_blur, site_effects
from nodes.datasets.imaging import generate_imaging_site
from nodes.datasets.medmnist import KEYS, load_medmnist
from nodes.datasets.phantom import BACKGROUND, LESION, ORGAN, generate_phantom_site
from nodes.datasets.tabular import INSTALL_HINT, load_breast_cancer_table, with_site_shift
from swarm.errors import ConfigError


def same(a: Samples, b: Samples) -> bool:
    return (torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.task == b.task
            and a.num_classes == b.num_classes
            and ((a.site is None and b.site is None) or torch.equal(a.site, b.site)))


# --------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------


def test_samples_checks_its_invariants_and_subsets():
    s = Samples(x=torch.zeros(4, 3), y=torch.tensor([0, 1, 1, 0]), task="classification", num_classes=2,
                site=torch.tensor([0, 0, 1, 1]))
    assert len(s) == 4 and s.sample_shape == (3,)
    sub = s.subset(np.array([3, 1]))
    assert sub.y.tolist() == [0, 1] and sub.site.tolist() == [1, 0]
    both = concat([s, sub])
    assert len(both) == 6 and both.site.tolist() == [0, 0, 1, 1, 1, 0]
    with pytest.raises(ValueError, match="float32"):
        Samples(x=torch.zeros(4, 3, dtype=torch.float64), y=s.y, task="classification", num_classes=2)
    with pytest.raises(ValueError, match="labels must lie in"):
        Samples(x=torch.zeros(4, 3), y=torch.tensor([0, 1, 2, 0]), task="classification", num_classes=2)
    with pytest.raises(ValueError, match="segmentation masks"):
        Samples(x=torch.zeros(4, 1, 8, 8), y=torch.zeros(4, 8, 7, dtype=torch.long), task="segmentation",
                num_classes=3)
    with pytest.raises(ValueError, match="Samples.site"):
        Samples(x=torch.zeros(4, 3), y=s.y, task="classification", num_classes=2, site=torch.zeros(3).long())


# --------------------------------------------------------------------------------------
# MedMNIST
# --------------------------------------------------------------------------------------

SPLIT_SIZES = {"train": 12, "val": 4, "test": 6}


def medmnist_arrays(rgb: bool = False, classes: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in SPLIT_SIZES.items():
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        labels = np.arange(n) % classes  # every class present in every split
        arrays[f"{split}_labels"] = rng.permutation(labels).astype(np.uint8).reshape(n, 1)
    return arrays


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("rgb", [False, True], ids=["grayscale", "rgb"])
def test_medmnist_loads_scaled_channels_first(tmp_path, rgb):
    arrays = medmnist_arrays(rgb=rgb)
    data = load_medmnist(write_npz(tmp_path / "sub.npz", arrays))
    assert set(data) == {"train", "val", "test"}
    for split, n in SPLIT_SIZES.items():
        s = data[split]
        channels = 3 if rgb else 1
        assert s.x.shape == (n, channels, 28, 28) and s.x.dtype == torch.float32
        assert s.y.shape == (n,) and s.y.dtype == torch.int64
        assert s.task == "classification" and s.num_classes == 3 and s.site is None
        assert 0.0 <= float(s.x.min()) and float(s.x.max()) <= 1.0
        images = arrays[f"{split}_images"].astype(np.float32) / 255.0
        expected = images[:, None] if not rgb else images.transpose(0, 3, 1, 2)
        np.testing.assert_array_equal(s.x.numpy(), expected)
        np.testing.assert_array_equal(s.y.numpy(), arrays[f"{split}_labels"][:, 0])


def test_medmnist_flat_labels_and_explicit_class_count(tmp_path):
    arrays = medmnist_arrays()
    for split in SPLIT_SIZES:
        arrays[f"{split}_labels"] = arrays[f"{split}_labels"].reshape(-1).astype(np.int64)
    data = load_medmnist(write_npz(tmp_path / "flat.npz", arrays), num_classes=9)
    assert data["train"].num_classes == 9 and data["test"].y.shape == (6,)


def _with(**changes):
    def mutate(arrays):
        for key, value in changes.items():
            if value is None:
                del arrays[key]
            else:
                arrays[key] = value(arrays) if callable(value) else value
        return arrays
    return mutate


BAD_FILES = {
    "missing-key": (_with(val_labels=None), ["missing array(s) val_labels"]),
    "extra-key": (_with(extra=np.zeros(3)), ["unknown array(s) extra"]),
    "float-images": (_with(train_images=lambda a: a["train_images"].astype(np.float32)),
                     ["train_images", "dtype float32", "uint8"]),
    "bad-shape": (_with(test_images=np.zeros((6, 28, 27), np.uint8)), ["test_images", "6 x 28 x 27"]),
    "two-channels": (_with(test_images=np.zeros((6, 28, 28, 2), np.uint8)), ["test_images", "6 x 28 x 28 x 2"]),
    "64-px": (_with(**{f"{s}_images": np.zeros((n, 64, 64), np.uint8) for s, n in SPLIT_SIZES.items()}),
              ["train_images", "64 px", "only the 28 px"]),
    "3-d-subset": (_with(**{f"{s}_images": np.zeros((n, 28, 28, 28), np.uint8) for s, n in SPLIT_SIZES.items()}),
                   ["train_images", "3-D", "only 2-D subsets"]),
    "chestmnist-multilabel": (_with(**{f"{s}_labels": np.zeros((n, 14), np.uint8) for s, n in SPLIT_SIZES.items()}),
                              ["train_labels", "12 x 14", "multi-label", "not supported yet"]),
    "labels-3d": (_with(val_labels=np.zeros((4, 1, 1), np.uint8)), ["val_labels", "4 x 1 x 1", "N x 1"]),
    "float-labels": (_with(val_labels=np.zeros((4, 1), np.float32)), ["val_labels", "dtype float32", "integer"]),
    "negative-label": (_with(test_labels=lambda a: np.array([[0], [1], [-1], [2], [0], [1]], np.int8)),
                       ["test_labels[2] = -1", "negative"]),
    "length-mismatch": (_with(train_labels=lambda a: a["train_labels"][:10]),
                        ["train_labels has 10 rows", "train_images has 12"]),
    "mixed-channels": (_with(val_images=np.zeros((4, 28, 28, 3), np.uint8)),
                       ["val_images", "3 channel", "train_images has 1"]),
    "empty-split": (_with(val_images=np.zeros((0, 28, 28), np.uint8), val_labels=np.zeros((0, 1), np.uint8)),
                    ["val_images holds no images"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_medmnist_bad_files_are_one_line_config_errors(tmp_path, case):
    mutate, expected = BAD_FILES[case]
    path = write_npz(tmp_path / f"{case}.npz", mutate(medmnist_arrays()))
    with pytest.raises(ConfigError) as err:
        load_medmnist(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    for part in expected:
        assert part in message, (part, message)


def test_medmnist_label_outside_the_class_range(tmp_path):
    arrays = medmnist_arrays(classes=3)
    arrays["test_labels"][4, 0] = 7
    path = write_npz(tmp_path / "range.npz", arrays)
    with pytest.raises(ConfigError, match=r"test_labels\[4\] = 7 is outside the class range \[0, 3\)"):
        load_medmnist(path, num_classes=3)
    assert load_medmnist(path)["train"].num_classes == 8  # inferred when not given


def test_medmnist_files_that_are_not_npz_archives(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(ConfigError, match="MedMNIST file not found") as err:
        load_medmnist(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(ConfigError, match="is a directory"):
        load_medmnist(tmp_path)
    text = tmp_path / "notes.npz"
    text.write_text("this is not an archive\n")
    with pytest.raises(ConfigError, match="not a NumPy .npz archive") as err:
        load_medmnist(text)
    assert "\n" not in str(err.value) and str(text) in str(err.value)
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(ConfigError, match="single .npy array"):
        load_medmnist(npy)
    pickled = tmp_path / "objects.npz"
    arrays = medmnist_arrays()
    arrays["val_labels"] = np.array([[0], [1], [2], ["x"]], dtype=object)
    np.savez(pickled, **arrays)
    with pytest.raises(ConfigError, match="val_labels cannot be read"):
        load_medmnist(pickled)
    with pytest.raises(ConfigError, match=r"data\.num_classes: must be an integer >= 2, got 1"):
        load_medmnist(write_npz(tmp_path / "ok.npz", medmnist_arrays()), num_classes=1)


def test_medmnist_keys_are_the_documented_ones():
    assert KEYS == ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")


# --------------------------------------------------------------------------------------
# Scanner effects
# --------------------------------------------------------------------------------------


def test_site_effects_are_drawn_per_site_and_vanish_without_shift():
    a, b = site_effects(0, 0), site_effects(0, 1)
    assert a == site_effects(0, 0) and a != b and a != site_effects(1, 0)
    assert (a.gain, a.gamma, a.blur) != (b.gain, b.gamma, b.blur)
    flat = site_effects(0, 3, shift=0.0, noise=0.0)
    assert flat.gain == 1.0 and flat.gamma == 1.0 and flat.offset == 0.0 and flat.blur == 0.0
    assert all(c == 0.0 for c in flat.bias) and flat.noise_std == 0.0
    images = np.random.default_rng(0).uniform(size=(3, 16, 16))
    np.testing.assert_allclose(flat.apply(images, np.random.default_rng(1)), images)
    with pytest.raises(ConfigError, match=r"data\.noise_kind: must be one of: rician, gaussian"):
        site_effects(0, 0, noise_kind="poisson")


def test_each_scanner_effect_does_what_it_says():
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0.1, 0.9, 16), (16, 1))[None]
    assert np.all(ScannerEffects(gain=1.2).apply(ramp, rng) > ramp)
    darker = ScannerEffects(gamma=1.5).apply(ramp, rng)
    assert np.all(darker < ramp) and np.all(np.diff(darker[0, 0]) > 0)  # contrast curve, monotone
    field = ScannerEffects(bias=(0.3, 0.0, 0.0, 0.0, 0.0)).bias_field(16, 16)
    assert field[:, -1].mean() > 1.2 and field[:, 0].mean() < 0.8        # smooth left-to-right shading
    assert np.abs(np.diff(np.log(field), axis=1)).max() < 0.05
    zero = np.zeros((50, 16, 16))
    rician = ScannerEffects(noise_std=0.05, noise_kind="rician").apply(zero, rng)
    gaussian = ScannerEffects(noise_std=0.05, noise_kind="gaussian").apply(zero + 0.5, rng)
    assert rician.min() >= 0.0 and rician.mean() > 0.05                 # Rician noise floor
    assert abs(gaussian.mean() - 0.5) < 0.005 and 0.045 < gaussian.std() < 0.055
    spot = np.zeros((1, 9, 9))
    spot[0, 4, 4] = 1.0
    blurred = gaussian_blur(spot, 1.0)
    assert abs(blurred.sum() - 1.0) < 1e-9 and blurred[0, 4, 4] < 0.2 and blurred[0, 4, 5] > 0.05


# --------------------------------------------------------------------------------------
# Generated imaging
# --------------------------------------------------------------------------------------


def test_imaging_site_shape_and_determinism():
    s = generate_imaging_site(seed=5, site=2, n=60, num_classes=3)
    assert s.x.shape == (60, 1, 28, 28) and s.x.dtype == torch.float32
    assert s.y.dtype == torch.int64 and s.task == "classification" and s.num_classes == 3
    assert torch.equal(s.site, torch.full((60,), 2, dtype=torch.int64))
    assert 0.0 <= float(s.x.min()) and float(s.x.max()) <= 1.0
    assert torch.bincount(s.y, minlength=3).tolist() == [20, 20, 20]  # balanced by default
    assert same(s, generate_imaging_site(5, 2, 60, 3))
    assert not torch.equal(s.x, generate_imaging_site(6, 2, 60, 3).x)
    skewed = torch.bincount(generate_imaging_site(5, 2, 60, 3, label_skew=1.0).y, minlength=3)
    assert int(skewed.sum()) == 60 and int(skewed.max() - skewed.min()) > 6
    big = generate_imaging_site(5, 0, 30, 8, size=32)
    assert big.x.shape == (30, 1, 32, 32) and int(big.y.max()) < 8


def test_imaging_sites_are_generated_independently():
    alone = generate_imaging_site(1, 3, 40, 2)
    together = [generate_imaging_site(1, k, 40, 2) for k in range(5)]
    assert same(alone, together[3])
    assert not torch.equal(together[0].x[:40], together[1].x[:40])
    # A different size or class count for another site changes nothing at site 3.
    generate_imaging_site(1, 2, 999, 5)
    assert same(alone, generate_imaging_site(1, 3, 40, 2))


def _site_means(make, sites=range(4)):
    means, errors = [], []
    for k in sites:
        per_image = make(k).x.mean(dim=(1, 2, 3)).numpy()
        means.append(per_image.mean())
        errors.append(per_image.std() / np.sqrt(per_image.size))
    return np.array(means), float(np.max(errors))


def test_imaging_site_effects_shift_the_intensity_statistics():
    shifted, se = _site_means(lambda k: generate_imaging_site(0, k, 150, 2, shift=1.0))
    assert np.ptp(shifted) > 20 * se                 # site means far apart, beyond sampling noise
    flat, se0 = _site_means(lambda k: generate_imaging_site(0, k, 150, 2, shift=0.0))
    assert np.ptp(flat) < 5 * se0                    # same scanner everywhere: same statistics
    contrast = [float(generate_imaging_site(0, k, 150, 2).x.std()) for k in range(4)]
    assert max(contrast) / min(contrast) > 1.2       # contrast differs too


def test_imaging_labels_are_learnable():
    """A linear probe on raw pixels does far better than chance on held-out images of the
    same site: the class is in the image."""
    s = generate_imaging_site(3, 0, 700, 3)
    x, y = s.x.flatten(1), s.y
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], 3)
    opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(probe(x[:500]), y[:500]).backward()
        opt.step()
    accuracy = float((probe(x[500:]).argmax(1) == y[500:]).float().mean())
    assert accuracy > 0.5  # chance: 1/3


def test_imaging_bad_parameters_name_the_field():
    with pytest.raises(ConfigError, match=r"data\.num_classes: must be an integer from 2 to 10, got 1"):
        generate_imaging_site(0, 0, 10, 1)
    with pytest.raises(ConfigError, match=r"data\.n: must be an integer >= 1, got 0 \(example: n = 200\)"):
        generate_imaging_site(0, 0, 0)
    with pytest.raises(ConfigError, match=r"data\.shift:"):
        generate_imaging_site(0, 0, 10, shift=-1.0)


# --------------------------------------------------------------------------------------
# Phantom segmentation
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom() -> Samples:
    return generate_phantom_site(seed=2, site=1, n=80)


def test_phantom_shape_determinism_and_independence(phantom):
    assert phantom.x.shape == (80, 1, 32, 32) and phantom.x.dtype == torch.float32
    assert phantom.y.shape == (80, 32, 32) and phantom.y.dtype == torch.int64
    assert phantom.task == "segmentation" and phantom.num_classes == 3
    assert torch.equal(phantom.site, torch.ones(80, dtype=torch.int64))
    assert same(phantom, generate_phantom_site(2, 1, 80))
    generate_phantom_site(2, 0, 50)
    assert same(phantom, generate_phantom_site(2, 1, 80))
    assert not torch.equal(phantom.y, generate_phantom_site(2, 2, 80).y)
    small = generate_phantom_site(2, 1, 5, size=28)
    assert small.x.shape == (5, 1, 28, 28) and small.y.shape == (5, 28, 28)


def test_phantom_masks_hold_all_three_classes_with_lesions_inside_the_organ(phantom):
    masks = phantom.y.numpy()
    assert set(np.unique(masks)) == {BACKGROUND, ORGAN, LESION}
    per_image = [set(np.unique(m)) for m in masks]
    assert all(ORGAN in classes for classes in per_image)
    with_lesion = sum(LESION in classes for classes in per_image)
    assert 0.75 * len(masks) <= with_lesion < len(masks)       # lesion_prob = 0.9
    # Every lesion pixel lies strictly inside the organ: its 4 neighbours are organ or lesion.
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)), constant_values=BACKGROUND)
    lesion = masks == LESION
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        neighbour = padded[:, 1 + dy: 1 + dy + masks.shape[1], 1 + dx: 1 + dx + masks.shape[2]]
        assert np.all(neighbour[lesion] != BACKGROUND)
    none = generate_phantom_site(2, 1, 20, lesion_prob=0.0).y
    assert int((none == LESION).sum()) == 0


def test_phantom_image_follows_its_mask():
    s = generate_phantom_site(4, 0, 40, shift=0.0, noise=0.0)
    x, m = s.x[:, 0].numpy(), s.y.numpy()
    outside = x[(m == BACKGROUND) & (x < 0.05)]
    assert outside.size > 0 and x[m == ORGAN].mean() > 0.4 > outside.mean()
    lesion_vs_organ = [abs(x[i][m[i] == LESION].mean() - x[i][m[i] == ORGAN].mean())
                       for i in range(len(m)) if (m[i] == LESION).any()]
    assert min(lesion_vs_organ) > 0.1          # lesions are visible against their organ


def test_phantom_site_effects_shift_the_intensity_statistics():
    shifted, se = _site_means(lambda k: generate_phantom_site(0, k, 80, shift=1.0))
    flat, se0 = _site_means(lambda k: generate_phantom_site(0, k, 80, shift=0.0))
    assert np.ptp(shifted) > 20 * se and np.ptp(flat) < 5 * se0


# --------------------------------------------------------------------------------------
# The breast-cancer table
# --------------------------------------------------------------------------------------


def test_breast_cancer_table_from_scikit_learn():
    pytest.importorskip(
        "sklearn", reason='scikit-learn is not installed (optional extra: pip install "swarm-hospitals[sklearn]")')
    s = load_breast_cancer_table()
    assert s.x.shape == (569, 30) and s.x.dtype == torch.float32
    assert s.num_classes == 2 and s.site is None
    assert int(s.y.sum()) == 212  # malignant = 1: 212 of 569 patients


def test_breast_cancer_table_labels_malignant_as_positive(monkeypatch):
    """The conversion, with a stand-in for scikit-learn's loader (so it runs without it)."""
    data = np.arange(12, dtype=np.float64).reshape(4, 3)
    fake = types.ModuleType("sklearn.datasets")
    fake.load_breast_cancer = lambda: types.SimpleNamespace(  # type: ignore[attr-defined]
        data=data, target=np.array([0, 1, 1, 0]), target_names=np.array(["malignant", "benign"]))
    package = types.ModuleType("sklearn")
    package.datasets = fake  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sklearn", package)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", fake)
    s = load_breast_cancer_table()
    assert s.y.tolist() == [1, 0, 0, 1] and s.x.dtype == torch.float32
    np.testing.assert_array_equal(s.x.numpy(), data.astype(np.float32))


def test_breast_cancer_table_without_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)          # import sklearn -> ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ConfigError) as err:
        load_breast_cancer_table()
    assert INSTALL_HINT in str(err.value) and "scikit-learn" in str(err.value)
    assert INSTALL_HINT == 'pip install "swarm-hospitals[sklearn]"'


def test_with_site_shift_gives_each_site_its_own_measurement():
    rng = np.random.default_rng(0)
    table = Samples(x=torch.from_numpy(rng.normal(size=(300, 5)).astype(np.float32)),
                    y=torch.from_numpy(rng.integers(0, 2, 300)), task="classification", num_classes=2)
    parts = [np.arange(0, 100), np.arange(100, 200), np.arange(200, 300)]
    shifted = with_site_shift(table, parts, seed=1, shift=1.0)
    assert shifted.site.tolist() == [0] * 100 + [1] * 100 + [2] * 100
    assert torch.equal(shifted.y, table.y)
    means = np.stack([shifted.x[p].mean(0).numpy() for p in parts])
    assert np.abs(means[0] - means[1]).max() > 0.3          # pooled std is 1: clearly shifted
    assert same(shifted, with_site_shift(table, parts, seed=1, shift=1.0))
    unchanged = with_site_shift(table, parts, seed=1, shift=0.0)
    torch.testing.assert_close(unchanged.x, table.x)
    with pytest.raises(ValueError, match="in no part"):
        with_site_shift(table, parts[:2], seed=1)
