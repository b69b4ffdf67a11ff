"""The `[data]` table: which data source a site reads, and what it looks like.

Every source gives one site's `SiteData` (train and held-out test split) from the table and
the site index, builds only that site's data, and is deterministic from its seed. The plan's
task (input shape, number of classes) comes from the source without loading anything big.

- `synthetic-multisite`: the generated tabular default (nodes/data.py).
- `synthetic-imaging`: generated multi-site images with scanner effects, classification.
- `phantom`: generated 2-D phantoms with organ and lesion masks, segmentation (Dice).
- `medmnist`: a MedMNIST `.npz` file on this disk, partitioned across sites.
- `breast-cancer`: the Wisconsin table from scikit-learn (optional extra), with site shift.
- `folder` (and, in `nodes.file_sources`, the other sources that read a hospital's own files).

Every source also names a federation-wide held-out test set that no site trains on
(`global_test()`), for experiments that score every method on the same data: a file's
official test split where it has one (MedMNIST `test_*`), fresh class-balanced patients
from every site's scanner for the generated image sources, and otherwise the union of the
sites' own test splits. A deployed node never reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator

from swarm.config import refuse, setting
from swarm.errors import ConfigError

from .data import DataConfig, LabelSkew, PathOrEmpty, Shift, SiteCount, SiteData, SitesTable, ValFraction, below_sites
from .datasets import Samples, concat
from .datasets.imaging import generate_imaging_site
from .datasets.medmnist import load_medmnist
from .datasets.partition import WHERE as PARTITION_TABLE
from .datasets.partition import PartitionConfig, SiteSplit, Skew, partition, split_site
from .datasets.phantom import generate_phantom_site
from .datasets.tabular import load_breast_cancer_table, with_site_shift
from .file_sources import DicomConfig, FileSource, FolderConfig, NiftiConfig


@dataclass(frozen=True)
class TaskShape:
    input_shape: tuple[int, ...]
    num_classes: int
    kind: str  # "classification" or "segmentation"

    def plan_table(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "num_classes": self.num_classes, "kind": self.kind}


class DataSource(Protocol):
    sites: int
    site: int | None

    def task_shape(self) -> TaskShape: ...

    def load_site(self, site: int) -> SiteData: ...

    def global_test(self) -> Samples:
        """The federation-wide held-out test set (see the module docstring)."""
        ...

    def global_test_origin(self) -> str:
        """Where `global_test()` comes from, in words, for reports."""
        ...


def union_of_site_tests(source: DataSource) -> Samples:
    """Every site's own test split, pooled: the held-out set of a source without an
    official one (each sample keeps the preprocessing of the site that holds it)."""
    kind = source.task_shape().kind
    parts = []
    for k in range(source.sites):
        data = source.load_site(k)
        parts.append(Samples(data.test_x, data.test_y, kind, data.num_classes,
                             torch.full((data.test_samples,), k, dtype=torch.int64)))
    return concat(parts)


def _site_data(name: str, train: Samples, test: Samples, val: Samples) -> SiteData:
    return SiteData(name, train.x, train.y, test.x, test.y, math.prod(train.x.shape[1:]), train.num_classes, val.x, val.y)


def _split(samples: Samples, test_samples: int, val_fraction: float, seed: int, site: int) -> SiteData:
    """A generated site's own validation and held-out test splits (stratified for
    classification); `val_fraction` of the training part becomes the validation split."""
    n = len(samples)
    labels = samples.y if samples.task == "classification" else None
    val = val_fraction * (n - test_samples) / n
    split = split_site(np.arange(n), val, test_samples / n, (seed, site), labels=labels, name=f"site {site}")
    return _site_data(f"site-{site}", samples.subset(split.train), samples.subset(split.test), samples.subset(split.val))


_TAG_CLASS_PRIOR = 0x6370  # "cp"


def _site_size(seed: int, site: int, mean: int, quantity_skew: float) -> int:
    """Training-set size of a generated site: log-uniform around `mean` (quantity skew)."""
    rng = np.random.default_rng([seed, 0x717A, site])
    return max(8, int(round(mean * math.exp(rng.uniform(-quantity_skew, quantity_skew)))))


# The generated sources' fields whose default a source may change (the example stays)
SampleCount = Annotated[int, Field(ge=8, le=1_000_000, json_schema_extra={"example": 200})]
TestCount = Annotated[int, Field(ge=1, le=1_000_000, json_schema_extra={"example": 200})]
ImageSize = Annotated[int, Field(ge=16, le=256)]
# A partitioned source's minimum site size
MinSamples = Annotated[int, Field(ge=2, le=1_000_000, json_schema_extra={"example": 10})]

_GLOBAL_TEST_STREAM = 1  # the generators' stream for patients that no site holds


class _GeneratedSource(SitesTable):
    """Fields and splitting shared by the generated image sources: each site's samples come
    from its own random stream, then the site keeps its own validation and test splits."""

    samples_per_site: SampleCount = 200  # mean training images per site (before quantity skew)
    quantity_skew: Skew = 1.0
    test_samples: TestCount = 200
    size: ImageSize = 28
    shift: Shift = 1.0
    noise: float = setting(0.04, ge=0, le=1)
    lesion_contrast: float = setting(1.0, gt=0, le=5)
    val_fraction: ValFraction = 0.1  # of the training part, kept as this site's validation split
    global_test_per_site: int = setting(100, ge=1, le=1_000_000)  # held-out patients per site's scanner that no site trains on

    def _generate(self, site: int, n: int, stream: int = 0) -> Samples:
        raise NotImplementedError

    def load_site(self, site: int) -> SiteData:
        n = _site_size(self.seed, site, self.samples_per_site, self.quantity_skew) + self.test_samples
        return _split(self._generate(site, n), self.test_samples, self.val_fraction, self.seed, site)

    def global_test(self) -> Samples:
        """`global_test_per_site` new patients through every site's scanner, drawn from the
        population (classes balanced), none of them in any site's data."""
        return concat([self._generate(k, self.global_test_per_site, _GLOBAL_TEST_STREAM) for k in range(self.sites)])

    def global_test_origin(self) -> str:
        return f"{self.global_test_per_site} generated held-out patients per site's scanner, classes balanced"


class ImagingConfig(_GeneratedSource):
    """`source = "synthetic-imaging"`: grayscale images, lesion classes, scanner shift per site."""

    source: Literal["synthetic-imaging"] = "synthetic-imaging"
    classes: int = setting(2, ge=2, le=10)
    label_skew: LabelSkew = 0.5
    alpha: float | None = setting(None, gt=0, le=1000, example=0.5)  # Dirichlet label skew: each site's class prior ~ Dir(alpha)
    one_class_sites: int = setting(0, ge=0, example=1)  # the last sites hold a single class (a screening or referral centre)

    @field_validator("one_class_sites", mode="before")
    @classmethod
    def _fewer_than_sites(cls, value: Any, info: ValidationInfo) -> Any:
        return below_sites(value, info, example=1)

    def task_shape(self) -> TaskShape:
        return TaskShape((1, self.size, self.size), self.classes, "classification")

    def class_prior(self, site: int) -> np.ndarray | None:
        """Site `site`'s class proportions: Dirichlet(alpha) draws (Hsu et al. 2019) when
        `alpha` is set, one class only for the last `one_class_sites` sites (the class its
        draw favours), else None (the generator's `label_skew` mix)."""
        one_class = site >= self.sites - self.one_class_sites
        if self.alpha is None and not one_class:
            return None
        rng = np.random.default_rng([self.seed, _TAG_CLASS_PRIOR, site])
        prior = rng.dirichlet(np.full(self.classes, self.alpha or 1.0))
        return np.eye(self.classes)[int(np.argmax(prior))] if one_class else prior

    def _generate(self, site: int, n: int, stream: int = 0) -> Samples:
        prior = np.full(self.classes, 1.0 / self.classes) if stream else self.class_prior(site)
        return generate_imaging_site(
            self.seed, site, n, self.classes, size=self.size, shift=self.shift, noise=self.noise,
            lesion_contrast=self.lesion_contrast, label_skew=self.label_skew, class_prior=prior, stream=stream,
        )


class PhantomConfig(_GeneratedSource):
    """`source = "phantom"`: organ (1) and lesion (2) masks on a 2-D phantom, scanner shift."""

    source: Literal["phantom"] = "phantom"
    sites: SiteCount = 4
    samples_per_site: SampleCount = 120
    quantity_skew: Skew = 0.5
    test_samples: TestCount = 60
    size: ImageSize = 32

    def task_shape(self) -> TaskShape:
        return TaskShape((1, self.size, self.size), 3, "segmentation")

    def _generate(self, site: int, n: int, stream: int = 0) -> Samples:
        return generate_phantom_site(self.seed, site, n, self.size, shift=self.shift, noise=self.noise,
                                     lesion_contrast=self.lesion_contrast, stream=stream)


def _site_splits(config: _PartitionedSource, pooled: Samples) -> list[SiteSplit]:
    """Every site's train / val / test indices into `pooled`, from a partitioned source's settings."""
    settings = PartitionConfig.from_dict({  # the partitioner's fields are this [data] table's
        "method": config.partition, "sites": config.sites, "alpha": config.alpha, "skew": config.skew, "seed": config.seed,
        "min_samples": config.min_samples, "val_fraction": config.val_fraction, "test_fraction": config.test_fraction,
    }, "data")
    try:
        return partition(pooled, settings)
    except ConfigError as exc:  # and so are the fields that the data cannot satisfy
        raise ConfigError(str(exc).replace(f"{PARTITION_TABLE}.", "data.", 1)) from None


class _PartitionedSource(SitesTable):
    """Fields shared by sources whose pooled samples a partitioner splits across sites."""

    # "iid", "dirichlet" (label skew, `alpha`), "quantity" (`skew`)
    partition: Literal["iid", "dirichlet", "quantity"] = setting("iid", example="dirichlet")
    alpha: float = setting(0.5, gt=0)
    skew: Skew = 1.0
    test_fraction: float = setting(0.2, gt=0, lt=1)
    val_fraction: ValFraction = 0.1
    min_samples: MinSamples = 10


class MedMNISTConfig(_PartitionedSource):
    """`source = "medmnist"`: a MedMNIST .npz file. Its official test split is the
    federation-wide held-out set, which no site trains on; its train and val splits are
    pooled and partitioned across sites with `partition` ("iid", "dirichlet" with `alpha`,
    "quantity" with `skew`), and each site keeps its own local test split
    (`test_fraction`) and validation split from its part."""

    source: Literal["medmnist"] = "medmnist"
    path: PathOrEmpty = ""
    sites: SiteCount = 4

    @field_validator("path", mode="before")
    @classmethod
    def _a_file(cls, path: Any) -> Any:
        if not isinstance(path, str) or (path and not Path(path).is_file()):
            raise refuse("", f"{path!r} is not a file; point it at a MedMNIST .npz on this disk, "
                         "e.g. with --data-path (nothing is downloaded)")
        return path

    def _splits(self) -> dict[str, Samples]:
        if not self.path:
            raise ConfigError('data.path: missing; set the MedMNIST .npz file (example: path = "/data/medmnist/pneumoniamnist.npz", '
                              "or --data-path)")
        return load_medmnist(self.path)

    def _training_pool(self) -> Samples:
        splits = self._splits()
        return concat([splits["train"], splits["val"]])

    def task_shape(self) -> TaskShape:
        train = self._splits()["train"]
        return TaskShape(tuple(train.x.shape[1:]), train.num_classes, "classification")

    def load_site(self, site: int) -> SiteData:
        pooled = self._training_pool()
        split = _site_splits(self, pooled)[site]
        return _site_data(f"site-{site}", pooled.subset(split.train), pooled.subset(split.test), pooled.subset(split.val))

    def global_test(self) -> Samples:
        return self._splits()["test"]

    def global_test_origin(self) -> str:
        return f"the official test split of {Path(self.path).name}"


class BreastCancerConfig(_PartitionedSource):
    """`source = "breast-cancer"`: the Wisconsin table bundled with scikit-learn (optional
    extra), split across sites by a partitioner, each site with its own measurement shift
    (`shift`), its own 80/20 train/test split (`test_fraction`), and features z-scored with
    its own training statistics, as the survey's ROI-feature logistic-regression study."""

    source: Literal["breast-cancer"] = "breast-cancer"
    sites: SiteCount = 3
    shift: Shift = 1.0
    min_samples: MinSamples = 20

    def task_shape(self) -> TaskShape:
        return TaskShape((30,), 2, "classification")

    def load_site(self, site: int) -> SiteData:
        table = load_breast_cancer_table()
        splits = _site_splits(self, table)
        shifted = with_site_shift(table, [split.indices for split in splits], self.seed, self.shift)
        split = splits[site]
        train, test, val = (shifted.subset(part) for part in (split.train, split.test, split.val))
        mean, std = train.x.mean(0), train.x.std(0).clamp_min(1e-6)  # the site's own statistics
        scaled = [replace(part, x=(part.x - mean) / std) for part in (train, test, val)]
        return _site_data(f"site-{site}", *scaled)

    def global_test(self) -> Samples:
        return union_of_site_tests(self)

    def global_test_origin(self) -> str:
        return "the union of the sites' own test splits (the table has no official one)"


class _TabularSource:
    """Adapts the tabular default (nodes.data.DataConfig) to the DataSource shape."""

    def __init__(self, config: DataConfig) -> None:
        self.config = config
        self.sites = config.sites
        self.site = config.site

    def task_shape(self) -> TaskShape:
        return TaskShape((self.config.features,), self.config.classes, "classification")

    def load_site(self, site: int) -> SiteData:
        from .data import load_site

        return load_site(self.config, site)

    def global_test(self) -> Samples:
        return union_of_site_tests(self)

    def global_test_origin(self) -> str:
        return "the union of the sites' own test splits (generated with each site's class prior)"


SOURCES: dict[str, type] = {
    "synthetic-imaging": ImagingConfig,
    "phantom": PhantomConfig,
    "medmnist": MedMNISTConfig,
    "breast-cancer": BreastCancerConfig,
    "folder": FolderConfig,
    "dicom": DicomConfig,
    "nifti": NiftiConfig,
}
TABULAR = "synthetic-multisite"


def data_source(table: Mapping[str, Any], where: str = "data") -> DataSource:
    """The source a [data] table names; ConfigError for unknown names or bad settings."""
    name = table.get("source", TABULAR)
    if name == TABULAR:
        return _TabularSource(DataConfig.from_dict(table, where))
    if name not in SOURCES:
        known = ", ".join(sorted([TABULAR, *SOURCES]))
        raise ConfigError(f"{where}.source: unknown data source {name!r}; choose one of: {known}")
    return SOURCES[name].from_dict(table, where)


def load_own_site(table: Mapping[str, Any], where: str = "data", site_dir: Path | None = None) -> SiteData:
    """This site's data. A source that reads the site's own files fixes its test split in
    SITE/data-split.json (unless [data] split_record names another file)."""
    source = data_source(table, where)
    if isinstance(source, FileSource):
        if site_dir is not None and not source.split_record:
            source = source.replace(split_record=str(Path(site_dir) / "data-split.json"))
        return source.load_site(source.site or 0)
    if source.site is None:
        raise ConfigError(f"{where}.site: missing; set the index of this site's data in site.toml [data] (example: site = 0)")
    return source.load_site(source.site)


def load_every_site(table: Mapping[str, Any], where: str = "data") -> list[SiteData]:
    source = data_source(table, where)
    return [source.load_site(i) for i in range(source.sites)]
