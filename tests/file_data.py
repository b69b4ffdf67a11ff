"""Small image data sets on disk in the formats hospitals keep, for the tests of the sources
that read a site's own files. The pictures come from the generated imaging and phantom tasks,
so a model can learn from them."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from nodes.datasets.imaging import generate_imaging_site
from nodes.datasets.phantom import generate_phantom_site


def png_classification(root: Path, n: int = 40, site: int = 0, *, bits: int = 8, rgb: bool = False,
                       layout: str = "csv", suffix: str = ".png", images_per_patient: int = 2) -> Path:
    """`n` lesion/no-lesion images under `root`: with labels.csv (file,label,patient) or one
    sub-folder per class ("normal", "lesion"). Returns root."""
    from PIL import Image

    samples = generate_imaging_site(7, site, n, 2, size=32)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, label) in enumerate(zip(samples.x[:, 0].numpy(), samples.y.tolist())):
        name = ["normal", "lesion"][label]
        folder = root / name if layout == "folders" else root / "images"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i:04d}{suffix}"
        if bits == 16:
            Image.fromarray((image * 65535).astype(np.uint16)).save(path)
        elif rgb:
            Image.fromarray(np.repeat((image * 255).astype(np.uint8)[:, :, None], 3, axis=2)).save(path)
        else:
            Image.fromarray((image * 255).astype(np.uint8)).save(path)
        rows.append((path.relative_to(root).as_posix(), name, f"patient-{site}-{i // images_per_patient}"))
    if layout == "csv":
        with open(root / "labels.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "label", "patient"])
            writer.writerows(rows)
    return root


def png_segmentation(root: Path, n: int = 24, site: int = 0, size: int = 32) -> Path:
    """`n` phantom images under root/images and their masks (0 background, 1 organ,
    2 lesion) under root/masks, same file names."""
    from PIL import Image

    samples = generate_phantom_site(7, site, n, size)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i, (image, mask) in enumerate(zip(samples.x[:, 0].numpy(), samples.y.numpy())):
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"case{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"case{i:03d}.png")
    return root


def dicom_classification(root: Path, n: int = 30, site: int = 0, *, key: str = "file", slices_per_series: int = 1,
                         monochrome1_every: int = 0, size: int = 32) -> Path:
    """`n` series of `slices_per_series` 16-bit CT-like DICOM files (Hounsfield units through
    RescaleSlope/Intercept, a window in the file), one patient per two series, and
    root/labels.csv keyed by `key` ("file", "SOPInstanceUID", "PatientID" or
    "SeriesInstanceUID")."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    samples = generate_imaging_site(7, site, n, 2, size=size)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (image, label) in enumerate(zip(samples.x[:, 0].numpy(), samples.y.tolist())):
        patient, series = f"P{site}-{i // 2:03d}", generate_uid()
        for s in range(slices_per_series):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.PatientID, ds.SeriesInstanceUID, ds.StudyInstanceUID = patient, series, generate_uid()
            ds.Modality, ds.InstanceNumber = "CT", s + 1
            ds.Rows = ds.Columns = size
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.SamplesPerPixel = 1
            inverted = monochrome1_every and i % monochrome1_every == 0
            ds.PhotometricInterpretation = "MONOCHROME1" if inverted else "MONOCHROME2"
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            ds.WindowCenter, ds.WindowWidth = 40, 400
            shown = 1 - image if inverted else image  # MONOCHROME1 is displayed inverted: store the negative
            hu = -160 + shown * 400 if s == slices_per_series // 2 else np.zeros_like(image) - 1000  # the middle slice carries it
            ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
            path = root / f"series{i:03d}" / f"slice{s:02d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            if s == slices_per_series // 2 or key != "file":
                value = {"file": path.relative_to(root).as_posix(), "SOPInstanceUID": ds.SOPInstanceUID,
                         "PatientID": patient, "SeriesInstanceUID": series}[key]
                rows.append((value, ["normal", "lesion"][label]))
    if key == "PatientID":  # a patient's two series get the first one's label
        rows = list({value: (value, label) for value, label in reversed(rows)}.values())
    with open(root / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([key, "label"])
        writer.writerows(rows)
    return root


def nifti_segmentation(root: Path, volumes: int = 6, site: int = 0, depth: int = 6, size: int = 24, gz: bool = True) -> Path:
    """`volumes` phantom volumes (`depth` slices of `size` x `size`, intensities as in CT
    after a -160..240 window) under root/images and their masks under root/masks."""
    import nibabel

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if gz else ".nii"
    for v in range(volumes):
        samples = generate_phantom_site(7, site * 100 + v, depth, size)
        image = np.moveaxis(samples.x[:, 0].numpy(), 0, -1)  # [H, W, D]: slices along the last (axial) axis
        mask = np.moveaxis(samples.y.numpy(), 0, -1).astype(np.uint8)
        hu = (-160 + image * 400).astype(np.int16)
        nibabel.save(nibabel.Nifti1Image(hu, np.eye(4)), root / "images" / f"case{v:02d}{suffix}")
        nibabel.save(nibabel.Nifti1Image(mask, np.eye(4)), root / "masks" / f"case{v:02d}{suffix}")
    return root


def run_three_hospitals(tmp_path: Path, data: str, model: str, rounds: int = 3, python_path: Path | None = None) -> dict:
    """A real federation of three `swarm-node run` processes (`swarm-scenario run`), each
    reading its own folder; `python_path` holds a hospital's own model builders. Returns
    summary.json after checking every node finished and fixed its own test split."""
    scenario = tmp_path / "files.toml"
    scenario.write_text(f"""
[scenario]
name = "own-files"
nodes = 3
timeout = 300

[plan]
rounds = {rounds}

[protocol]
name = "braintorrent"
round_interval = 0.05
wait_for_new = 2.0

[model]
{model}

[data]
{data}
""")
    out = tmp_path / "run"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    if python_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(python_path), *sys.path])
    result = subprocess.run([sys.executable, "-m", "scenarios", "run", str(scenario), "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and all(n["rounds_completed"] == rounds for n in summary["nodes"])
    for name in ("hospital-a", "hospital-b", "hospital-c"):  # each node fixed its own test split
        assert json.loads((out / "sites" / name / "data-split.json").read_text())["test_files"]
    return summary
