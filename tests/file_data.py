"""Small image data sets on disk in the formats hospitals keep, for the tests of the sources
that read a site's own files. The pictures come from the generated imaging and phantom tasks,
so a model can learn from them."""

from __future__ import annotations

import csv
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
