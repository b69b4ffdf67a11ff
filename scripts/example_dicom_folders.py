"""Write example DICOM folders, one per hospital, to try "Bring your own data" (README)
without patient data: 16-bit CT-like series (Hounsfield units through RescaleSlope and
Intercept, a window in each file), lesion or normal, two series per patient, and a
labels.csv keyed by file name. The pictures come from the generated imaging task (each
hospital's scanner differs), so a model can learn from them.

    python scripts/example_dicom_folders.py --out /tmp/dicom --sites 3 --series 200
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's tests/ package

from tests.file_data import dicom_classification  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write hospital-0/, hospital-1/, ... into")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--series", type=int, default=200, help="series (one image each) per hospital")
    parser.add_argument("--size", type=int, default=64, help="pixels per side")
    args = parser.parse_args()
    for site in range(args.sites):
        root = dicom_classification(args.out / f"hospital-{site}", n=args.series, site=site, size=args.size)
        print(f"{root}: {args.series} DICOM series, labels in {root / 'labels.csv'}")


if __name__ == "__main__":
    main()
