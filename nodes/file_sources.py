"""Data sources that read a hospital's own files: `[data] source = "folder"`, `"dicom"` and
`"nifti"` (optional extra `imaging`: pillow, pydicom, nibabel).

Every one of them turns the files into fixed-size tensors (`size` x `size`, `channels`),
splits them per patient (`nodes.datasets.files`), and fixes the test split in a record the
first time the site loads its data (`split_record`; a node keeps it at
SITE/data-split.json). `root` is the directory to read; in a scenario, "{site}" in it is
replaced by the site's index, so each simulated hospital reads its own folder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import field_validator, model_validator

from swarm.config import invalid_value, refuse, setting
from swarm.errors import ConfigError

from .data import PathOrEmpty, SiteData, SitesTable, ValFraction
from .datasets import Samples
from .datasets.files import (LoadReport, class_indices, image_tensor, mask_tensor, read_labels_csv,
                             read_split_record, require, split_digest, split_patients, write_split_record)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
Intensity = Literal["full_scale", "per_image"]


@dataclass(frozen=True)
class Sample:
    """One sample found on disk, before its pixels are read."""

    name: str  # what reports and the split record call it (a path relative to root)
    patient: str
    label: int | None = None  # classification
    mask: Path | None = None  # segmentation


def _installed(module: str, what: str) -> None:
    """For a validator: refuse `source` unless the optional package `module` is installed."""
    try:
        require(module, what, "")
    except ConfigError as exc:
        raise refuse("source", str(exc).removeprefix(": ")) from None


class FileSource(SitesTable):
    """Fields and loading shared by the sources that read a site's own files."""

    KIND: ClassVar[str] = "classification"
    root: PathOrEmpty = setting("", requirement="the directory holding this site's files", example="/data/chest-xray")
    sites: int = setting(1, ge=1, le=10_000)
    size: int = setting(64, ge=8, le=1024)
    channels: int = setting(1, ge=1, le=3)
    classes: tuple[str, ...] = ()  # class names in order (classification) or mask classes (segmentation)
    test_fraction: float = setting(0.2, ge=0, le=0.9)
    val_fraction: ValFraction = 0.1
    # JSON file that fixes the test split (a node uses SITE/data-split.json)
    split_record: PathOrEmpty = setting("", requirement="the path of a JSON file", example="data-split.json")
    workers: int = setting(0, ge=0, le=64, example=4)  # threads decoding files at start-up (0: one at a time, in the node's thread)

    @field_validator("classes", mode="before")
    @classmethod
    def _distinct_names(cls, value: Any) -> Any:
        if (not isinstance(value, (list, tuple)) or not all(isinstance(c, str) and c for c in value)
                or len(set(value)) != len(value)):
            raise invalid_value("", "a list of distinct class names", value, ["normal", "pneumonia"])
        return tuple(value)

    def directory(self, site: int) -> Path:
        if not self.root:
            raise ConfigError('data.root: missing; set the directory holding this site\'s files (example: root = "/data/chest-xray")')
        path = Path(self.root.replace("{site}", str(site))).expanduser()
        if not path.is_dir():
            raise ConfigError(f"data.root: {path} is not a directory; point root at the folder holding this site's files")
        return path

    # Each source lists its samples and reads one sample's pixels.
    def list_samples(self, root: Path) -> tuple[list[Sample], list[str]]:
        """(samples, class names); ConfigError for what the site must fix."""
        raise NotImplementedError

    def read(self, root: Path, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        """(image [C, size, size], label [] or mask [size, size]); any exception skips the file."""
        raise NotImplementedError

    def expand(self, root: Path, sample: Sample) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The training samples one file gives: one, or a volume's slices."""
        return [self.read(root, sample)]

    def num_classes(self) -> int:
        root = self.directory(self.site or 0)
        return len(self.classes) if self.classes else len(self.list_samples(root)[1])

    def sample_shape(self) -> tuple[int, ...]:
        """One image's shape: (channels, size, size)."""
        return (self.channels, self.size, self.size)

    def task_shape(self) -> Any:
        from .sources import TaskShape

        return TaskShape(self.sample_shape(), self.num_classes(), self.KIND)

    def load_site(self, site: int) -> SiteData:
        root = self.directory(site)
        samples, names = self.list_samples(root)
        report = LoadReport()
        kept: list[tuple[Sample, torch.Tensor, torch.Tensor]] = []
        for sample, pairs in self._decoded(root, samples):
            if isinstance(pairs, ConfigError):
                raise pairs
            if isinstance(pairs, Exception):  # a file that does not decode is skipped, not fatal
                detail = " ".join(str(pairs).replace(str(root / sample.name), "").split()).strip(" :'")
                report.skip(sample.name, type(pairs).__name__ + (f": {detail[:60]}" if detail else ""))
                continue
            kept += [(sample, image, target) for image, target in pairs]
        report.loaded = len(kept)
        if report.skipped:
            log.warning("data: %s: %s", root, report.summary())
        if not kept:
            raise ConfigError(f"data.root: no readable {self.source} files in {root}" + (f" ({report.summary()})" if report.skipped else ""))
        record = Path(self.split_record) if self.split_record else None
        fixed = read_split_record(record)
        assignment = split_patients([s.patient for s, _, _ in kept], self.val_fraction, self.test_fraction, self.seed, fixed)
        test_files = sorted({s.name for s, _, _ in kept if assignment[s.patient] == "test"})
        if record is not None and fixed is None:
            write_split_record(record, assignment, test_files)
        elif record is not None and fixed is not None and set(fixed) - set(assignment):
            log.warning("data: %d test patient(s) of %s are gone from %s; the test split is smaller than when it was fixed",
                        len(set(fixed) - set(assignment)), record, root)
        log.info("data: %s: %s; test split %s (%d files)", root, report.summary(), split_digest(test_files)[:12], len(test_files))
        parts = {}
        for part in ("train", "val", "test"):
            rows = [(image, target) for s, image, target in kept if assignment[s.patient] == part]
            x = torch.stack([r[0] for r in rows]) if rows else torch.zeros((0, *self.sample_shape()))
            shape = (0,) if self.KIND == "classification" else (0, *self.sample_shape()[1:])
            y = torch.stack([r[1] for r in rows]) if rows else torch.zeros(shape, dtype=torch.int64)
            parts[part] = Samples(x, y, self.KIND, max(2, len(names)))
        train, val, test = parts["train"], parts["val"], parts["test"]
        return SiteData(f"site-{site}", train.x, train.y, test.x, test.y, int(np.prod(train.x.shape[1:])), train.num_classes, val.x, val.y)

    def _decoded(self, root: Path, samples: list[Sample]) -> Iterator[tuple[Sample, Any]]:
        """(sample, its pairs or the exception reading it), in order; `workers` threads decode
        in parallel (pillow, pydicom's pixel handlers and nibabel's gzip release the GIL)."""
        def attempt(sample: Sample) -> Any:
            try:
                return self.expand(root, sample)
            except Exception as exc:
                return exc

        if self.workers <= 1:
            yield from ((sample, attempt(sample)) for sample in samples)
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            yield from zip(samples, pool.map(attempt, samples))

    def global_test(self) -> Samples:
        from .sources import union_of_site_tests

        return union_of_site_tests(self)

    def global_test_origin(self) -> str:
        return "the union of the sites' own test splits (their files have no shared test set)"


# --------------------------------------------------------------------------------------
# source = "folder"


def _pixels(path: Path) -> tuple[np.ndarray, float | None]:
    """An image file's pixels and its full scale (255 for 8 bit, 65535 for 16 bit)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("P", "PA", "LA", "CMYK", "YCbCr", "HSV"):
            image = image.convert("RGB")
        array = np.array(image)
    if array.dtype == np.uint8:
        return array, 255.0
    if array.dtype == np.bool_:
        return array.astype(np.uint8), 1.0
    if array.dtype in (np.uint16, np.int32) and array.max(initial=0) <= 65535 and array.min(initial=0) >= 0:
        return array, 65535.0
    return array, None


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


class FolderConfig(FileSource):
    """`source = "folder"`: PNG, JPEG or TIFF images (8 or 16 bit, grey or RGB). Labels from
    `labels = "labels.csv"` (columns file,label and optionally patient; file relative to
    root), or one sub-folder per class; for segmentation, `masks = "masks/"` holds a mask
    for every image, at the image's path under root or under its file name (pixel value =
    class index, `classes` names them)."""

    source: Literal["folder"] = "folder"
    labels: PathOrEmpty = setting("", requirement="a path relative to root", example="labels.csv")
    masks: PathOrEmpty = setting("", requirement="a path relative to root", example="masks/")
    intensity: Intensity = "full_scale"  # or "per_image": each image scaled by its own range

    @property
    def KIND(self) -> str:  # type: ignore[override]
        return "segmentation" if self.masks else "classification"

    @model_validator(mode="after")
    def _one_task(self) -> FolderConfig:
        if self.masks and self.labels:
            raise refuse("masks", "a folder source is either classification (labels) or segmentation (masks); remove one")
        if self.masks and len(self.classes) < 2:
            raise refuse("classes", 'name the mask classes in order of their pixel values (example: classes = ["background", "lesion"])')
        _installed("PIL", "reading image files")
        return self

    def _images(self, root: Path) -> list[Path]:
        skip = (root / self.masks).resolve() if self.masks else None
        return sorted(p for p in root.rglob("*") if _is_image(p) and (skip is None or skip not in p.resolve().parents))

    def list_samples(self, root: Path) -> tuple[list[Sample], list[str]]:
        images = self._images(root)
        if not images:
            raise ConfigError(f"data.root: no PNG, JPEG or TIFF images under {root}; point root at the image folder")
        names = [p.relative_to(root).as_posix() for p in images]
        if self.masks:
            return self._with_masks(root, images, names), list(self.classes)
        if self.labels:
            table = read_labels_csv(root / self.labels, "file", "data")
            missing = [n for n in names if n not in table]
            if missing:
                raise ConfigError(f"data.labels: {len(missing)} image(s) have no label in {root / self.labels}, e.g. "
                                  f"{', '.join(missing[:5])}; add a line file,label for each or remove the images")
            absent = [n for n in table if n not in set(names)]
            if absent:
                raise ConfigError(f"data.labels: {root / self.labels} names {len(absent)} file(s) not found under {root}, e.g. "
                                  f"{', '.join(absent[:5])}; fix the paths (relative to root) or remove the lines")
            index, classes = class_indices((label for label, _ in table.values()), self.classes, "data")
            return [Sample(n, table[n][1] or n, index[table[n][0]]) for n in names], classes
        folders = [Path(n).parts[0] if len(Path(n).parts) > 1 else "" for n in names]
        if "" in folders:
            raise ConfigError(f"data.labels: images lie directly in {root}; give labels = \"labels.csv\" or put each class in its own sub-folder")
        index, classes = class_indices(folders, self.classes, "data")
        return [Sample(n, n, index[f]) for n, f in zip(names, folders)], classes

    def _with_masks(self, root: Path, images: list[Path], names: list[str]) -> list[Sample]:
        folder = root / self.masks
        if not folder.is_dir():
            raise ConfigError(f"data.masks: {folder} is not a directory; point masks at the folder of masks (relative to root)")
        samples, missing = [], []
        for path, name in zip(images, names):
            # masks/<the image's path under root>, or masks/<its file name>, any image suffix
            candidates = [folder / base.with_suffix(s) for base in (Path(name), Path(Path(name).name))
                          for s in (Path(name).suffix, *IMAGE_SUFFIXES)]
            mask = next((c for c in candidates if c.is_file()), None)
            if mask is None:
                missing.append(name)
            else:
                samples.append(Sample(name, name, mask=mask))
        if missing:
            raise ConfigError(f"data.masks: {len(missing)} image(s) have no mask in {folder}, e.g. {', '.join(missing[:5])}; "
                              "add a mask with the same file name for each")
        return samples

    def read(self, root: Path, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, scale = _pixels(root / sample.name)
        image = image_tensor(pixels, self.size, self.channels, None if self.intensity == "per_image" else scale)
        if sample.mask is None:
            return image, torch.tensor(sample.label, dtype=torch.int64)
        values, _ = _pixels(sample.mask)
        if values.shape[:2] != pixels.shape[:2]:
            raise ConfigError(f"data.masks: {sample.mask} is {values.shape[1]} x {values.shape[0]} but its image "
                              f"{sample.name} is {pixels.shape[1]} x {pixels.shape[0]}; masks must match their images")
        mask = mask_tensor(values, self.size)
        if int(mask.max()) >= len(self.classes):
            raise ConfigError(f"data.masks: {sample.mask} has pixel value {int(mask.max())} but classes names only "
                              f"{len(self.classes)} ({', '.join(self.classes)}); add the class or fix the mask")
        return image, mask


# --------------------------------------------------------------------------------------
# source = "dicom"

DicomKey = Literal["file", "SOPInstanceUID", "PatientID", "SeriesInstanceUID"]
DicomUnit = Literal["file", "series"]


Window = str | tuple[float, float]


def _window(value: Any) -> Window:
    """A field validator's check of `window`: "auto", "none" or [center, width]."""
    if value in ("auto", "none"):
        return value
    if (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
            and value[1] > 0):
        return (float(value[0]), float(value[1]))
    raise invalid_value("", '"auto" (the file\'s own window), "none" (each image\'s range) or [center, width]', value, [40, 400])


def _dicom_header(path: Path) -> Any:
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)


def _windowed(ds: Any, window: str | tuple[float, float]) -> np.ndarray:
    """The image in [0, 1]: stored values, rescale slope and intercept, then the window
    (centre and width from the file with "auto", given, or the image's own range)."""
    pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:  # a multi-frame file: its middle frame
        pixels = pixels[pixels.shape[0] // 2]
    pixels = pixels * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if window == "auto" and "WindowCenter" in ds and "WindowWidth" in ds:
        from pydicom.multival import MultiValue

        def first(value: Any) -> float:  # a file may list several windows: take the first
            return float(value[0]) if isinstance(value, MultiValue) else float(value)

        window = (first(ds.WindowCenter), first(ds.WindowWidth))
    if isinstance(window, tuple):
        centre, width = window
        low, high = centre - width / 2, centre + width / 2
    else:
        low, high = float(pixels.min()), float(pixels.max())
    scaled = np.clip((pixels - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(pixels)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":  # bright means low
        scaled = 1.0 - scaled
    return scaled


class DicomConfig(FileSource):
    """`source = "dicom"`: a directory of DICOM files (any depth), one image per file or per
    series (`unit = "series"`: its middle slice by InstanceNumber), labels from a CSV keyed by
    `key` (file path relative to root, SOPInstanceUID, PatientID or SeriesInstanceUID).
    Rescale slope and intercept are applied, then the window (`window = "auto"`: the file's
    own centre and width; `[center, width]`; `"none"`: each image's range). Patients come
    from PatientID. Files that are not DICOM, or whose pixels cannot be decoded (compressed
    without a decoder installed), are skipped and reported."""

    source: Literal["dicom"] = "dicom"
    labels: str = setting("labels.csv", requirement="a CSV (relative to root) with columns <key>,label")
    key: DicomKey = setting("file", example="SOPInstanceUID")
    unit: DicomUnit = "file"
    window: Window = "auto"

    @field_validator("window", mode="before")
    @classmethod
    def _check_window(cls, value: Any) -> Window:
        return _window(value)

    @model_validator(mode="after")
    def _readable(self) -> DicomConfig:
        _installed("pydicom", "reading DICOM files")
        return self

    def list_samples(self, root: Path) -> tuple[list[Sample], list[str]]:
        table_path = (root / self.labels).resolve()
        headers, unreadable = [], []
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.resolve() != table_path and not p.name.startswith(".")):
            try:
                headers.append((path, _dicom_header(path)))
            except Exception:  # not DICOM: reported, not fatal
                unreadable.append(path.relative_to(root).as_posix())
        if unreadable:
            log.warning("data: %s: %d file(s) are not DICOM and were skipped, e.g. %s", root, len(unreadable), ", ".join(unreadable[:5]))
        if not headers:
            raise ConfigError(f"data.root: no DICOM files under {root}; point root at the DICOM folder")
        if self.unit == "series":
            headers = self._middle_slices(headers)
        table = read_labels_csv(root / self.labels, self.key, "data")
        keyed = [(path, ds, path.relative_to(root).as_posix() if self.key == "file" else str(getattr(ds, self.key, "") or ""))
                 for path, ds in headers]
        missing = [path.relative_to(root).as_posix() + (f" ({self.key} {k})" if self.key != "file" else "")
                   for path, ds, k in keyed if k not in table]
        if missing:
            raise ConfigError(f"data.labels: {len(missing)} DICOM image(s) have no label in {root / self.labels} (keyed by "
                              f"{self.key}), e.g. {', '.join(missing[:5])}; add a line {self.key},label for each or remove the files")
        index, classes = class_indices((table[k][0] for _, _, k in keyed), self.classes, "data")
        samples = [Sample(path.relative_to(root).as_posix(), table[k][1] or str(getattr(ds, "PatientID", "") or path.name),
                          index[table[k][0]]) for path, ds, k in keyed]
        return samples, classes

    @staticmethod
    def _middle_slices(headers: list[tuple[Path, Any]]) -> list[tuple[Path, Any]]:
        series: dict[str, list[tuple[Path, Any]]] = {}
        for path, ds in headers:
            series.setdefault(str(getattr(ds, "SeriesInstanceUID", path.parent)), []).append((path, ds))
        chosen = []
        for members in series.values():
            members.sort(key=lambda m: (int(getattr(m[1], "InstanceNumber", 0) or 0), m[0].name))
            chosen.append(members[len(members) // 2])
        return sorted(chosen, key=lambda m: m[0])

    def read(self, root: Path, sample: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        import pydicom

        ds = pydicom.dcmread(root / sample.name)
        image = image_tensor(_windowed(ds, self.window), self.size, self.channels, 1.0)
        return image, torch.tensor(sample.label, dtype=torch.int64)


# --------------------------------------------------------------------------------------
# source = "nifti"

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}  # in the closest canonical (RAS) orientation
VOLUME = "volume"  # slices = "volume": the whole volume is one sample
Slices = Literal["axial", "coronal", "sagittal", "volume"]  # SLICE_AXES or VOLUME
Keep = Literal["all", "labelled"]


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES) and not path.name.startswith(".")


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def _volume(path: Path) -> np.ndarray:
    import nibabel

    image = nibabel.as_closest_canonical(nibabel.load(str(path)))
    data = np.asarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"a 3-D volume is needed, this one is {data.ndim}-D {data.shape}")
    return data


class NiftiConfig(FileSource):
    """`source = "nifti"`: volumes `.nii` / `.nii.gz` under `root` with a mask of the same
    name under `masks` (voxel value = class index, `classes` names them), used as 2-D
    slices along `slices` ("axial", "coronal" or "sagittal", after reorienting to the
    closest canonical orientation) and resized to `size` x `size`, or whole (`slices =
    "volume"`) resampled to `depth` x `size` x `size` (axial slices first; trilinear, masks
    by nearest neighbour) for 3-D networks. Intensities are scaled
    by each volume's range (`window = "none"`) or a `[center, width]` window (CT). Every
    slice of a volume stays in the same split (a volume is a patient). `keep = "labelled"`
    keeps only the slices whose mask holds a foreground class."""

    KIND: ClassVar[str] = "segmentation"
    source: Literal["nifti"] = "nifti"
    masks: str = setting("masks", requirement="the folder of masks, relative to root")
    slices: Slices = setting("axial", requirement="one of: axial, coronal, sagittal, volume (whole volumes, for 3-D networks)")
    keep: Keep = setting("all", example="labelled")
    window: Window = "none"
    depth: int = setting(32, ge=4, le=512)  # slices per volume after resampling, for slices = "volume"

    @field_validator("window", mode="before")
    @classmethod
    def _check_window(cls, value: Any) -> Window:
        window = _window(value)
        return "none" if window == "auto" else window  # NIfTI files carry no display window

    @model_validator(mode="after")
    def _readable(self) -> NiftiConfig:
        _installed("nibabel", "reading NIfTI files")
        return self

    def sample_shape(self) -> tuple[int, ...]:
        if self.slices == VOLUME:
            return (self.channels, self.depth, self.size, self.size)
        return (self.channels, self.size, self.size)

    def num_classes(self) -> int:
        if len(self.classes) < 2:
            raise ConfigError('data.classes: name the mask classes in order of their voxel values '
                              '(example: classes = ["background", "liver", "tumour"])')
        return len(self.classes)

    def list_samples(self, root: Path) -> tuple[list[Sample], list[str]]:
        self.num_classes()
        folder = (root / self.masks)
        if not folder.is_dir():
            raise ConfigError(f"data.masks: {folder} is not a directory; point masks at the folder of masks (relative to root)")
        skip = folder.resolve()
        volumes = sorted(p for p in root.rglob("*") if _is_nifti(p) and skip not in p.resolve().parents)
        if not volumes:
            raise ConfigError(f"data.root: no .nii or .nii.gz volumes under {root}; point root at the NIfTI folder")
        masks = {_stem(m): m for m in folder.rglob("*") if _is_nifti(m)}
        missing = [v.relative_to(root).as_posix() for v in volumes if _stem(v) not in masks]
        if missing:
            raise ConfigError(f"data.masks: {len(missing)} volume(s) have no mask in {folder}, e.g. {', '.join(missing[:5])}; "
                              "add a mask with the same file name for each")
        return [Sample(v.relative_to(root).as_posix(), _stem(v), mask=masks[_stem(v)]) for v in volumes], list(self.classes)

    def expand(self, root: Path, sample: Sample) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every kept slice of one volume: (image [C, size, size], mask [size, size])."""
        volume = _volume(root / sample.name).astype(np.float64)
        labels = _volume(sample.mask)
        if labels.shape != volume.shape:
            raise ConfigError(f"data.masks: {sample.mask} is {labels.shape} but its volume {sample.name} is {volume.shape} "
                              "(after reorienting both); masks must match their volumes")
        if int(labels.max(initial=0)) >= len(self.classes):
            raise ConfigError(f"data.masks: {sample.mask} has voxel value {int(labels.max())} but classes names only "
                              f"{len(self.classes)} ({', '.join(self.classes)}); add the class or fix the mask")
        if isinstance(self.window, tuple):
            centre, width = self.window
            low, high = centre - width / 2, centre + width / 2
        else:
            low, high = float(volume.min()), float(volume.max())
        scaled = np.clip((volume - low) / (high - low), 0.0, 1.0) if high > low else np.zeros_like(volume)
        if self.slices == VOLUME:
            return [self._whole(scaled, labels)]
        axis = SLICE_AXES[self.slices]
        out = []
        for index in range(volume.shape[axis]):
            mask = np.take(labels, index, axis=axis)
            if self.keep == "labelled" and not (mask > 0).any():
                continue
            out.append((image_tensor(np.take(scaled, index, axis=axis), self.size, self.channels, 1.0),
                        mask_tensor(np.rint(mask), self.size)))
        return out

    def _whole(self, scaled: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(image [C, depth, size, size], mask [depth, size, size]): axial slices first, each
        slice laid out as the axial 2-D slices are."""
        shape = (self.depth, self.size, self.size)
        image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(scaled, 2, 0), dtype=np.float32))[None, None]
        image = torch.nn.functional.interpolate(image, size=shape, mode="trilinear", align_corners=False)[0]
        mask = torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.rint(labels), 2, 0), dtype=np.float32))[None, None]
        mask = torch.nn.functional.interpolate(mask, size=shape, mode="nearest")[0, 0].long()
        return image.expand(self.channels, *shape).contiguous(), mask
