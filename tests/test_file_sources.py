"""Sources that read a hospital's own files: folders of PNG/JPEG/TIFF images with a labels CSV,
class sub-folders or masks. Splits per patient, a test split fixed by a record, bad files
reported, mistakes in the configuration refused with the file and the fix."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from nodes.sources import data_source, load_own_site
from swarm.errors import ConfigError
from tests.file_data import dicom_classification, nifti_segmentation, png_classification, png_segmentation, run_three_hospitals

pytest.importorskip("PIL", reason='optional extra: pip install "swarm-hospitals[imaging]"')


def folder(root, **extra):
    return {"source": "folder", "root": str(root), "size": 32, **extra}


def fingerprints(x):
    return {tuple(v.flatten()[:40].tolist()) for v in x}


def test_a_labelled_folder_loads_and_splits_per_patient(tmp_path):
    root = png_classification(tmp_path / "site", n=40, images_per_patient=2)
    source = data_source(folder(root, labels="labels.csv"))
    assert source.task_shape().plan_table() == {"input_shape": [1, 32, 32], "num_classes": 2, "kind": "classification"}
    site = source.load_site(0)
    assert site.train_samples + len(site.val_y) + site.test_samples == 40
    assert site.train_x.dtype == torch.float32 and 0.0 <= float(site.train_x.min()) and float(site.train_x.max()) <= 1.0
    # both images of a patient are always in the same split
    rows = [line.split(",") for line in (root / "labels.csv").read_text().splitlines()[1:]]
    from PIL import Image
    by_patient: dict[str, set] = {}
    for file, _, patient in rows:
        pixels = torch.from_numpy(np.array(Image.open(root / file), dtype=np.float32) / 255.0)[None]
        by_patient.setdefault(patient, set()).add(tuple(pixels.flatten()[:40].tolist()))
    splits = [fingerprints(site.train_x), fingerprints(site.val_x), fingerprints(site.test_x)]
    for images in by_patient.values():
        assert sum(bool(images & part) for part in splits) == 1
    assert site.test_samples == 2 * 4  # 20 patients, 20 % of them, two images each


def test_the_test_split_is_fixed_by_its_record_when_files_are_added(tmp_path):
    root = png_classification(tmp_path / "site", n=30, images_per_patient=1)
    site_dir = tmp_path / "node"
    site_dir.mkdir()
    first = load_own_site(folder(root, labels="labels.csv"), site_dir=site_dir)
    record = json.loads((site_dir / "data-split.json").read_text())
    assert len(record["test_files"]) == first.test_samples == 6 and len(record["test_files_sha256"]) == 64
    png_classification(tmp_path / "more", n=30, site=1, images_per_patient=1)  # 30 new patients arrive
    lines = (tmp_path / "more" / "labels.csv").read_text().splitlines()[1:]
    for line in lines:
        file, label, patient = line.split(",")
        (root / "images" / f"new-{file.split('/')[-1]}").write_bytes((tmp_path / "more" / file).read_bytes())
        with open(root / "labels.csv", "a") as handle:
            handle.write(f"images/new-{file.split('/')[-1]},{label},new-{patient}\n")
    again = load_own_site(folder(root, labels="labels.csv"), site_dir=site_dir)
    assert fingerprints(again.test_x) == fingerprints(first.test_x)  # the same test patients, no new one
    assert again.train_samples + len(again.val_y) == first.train_samples + len(first.val_y) + 30
    without_record = data_source(folder(root, labels="labels.csv")).load_site(0)
    assert without_record.test_samples == 12  # a fresh split would have drawn a new test set


def test_class_folders_16_bit_and_rgb_images(tmp_path):
    grey16 = png_classification(tmp_path / "g16", n=20, bits=16, layout="folders", suffix=".tif")
    site = data_source(folder(grey16)).load_site(0)
    assert site.num_classes == 2 and float(site.train_x.max()) > 0.5  # 16-bit scaled by 65535, not clipped at 255
    rgb = png_classification(tmp_path / "rgb", n=20, rgb=True, layout="folders")
    as_grey = data_source(folder(rgb)).load_site(0)
    as_rgb = data_source(folder(rgb, channels=3)).load_site(0)
    assert as_grey.train_x.shape[1] == 1 and as_rgb.train_x.shape[1] == 3
    assert torch.allclose(as_rgb.train_x.mean(1, keepdim=True), as_grey.train_x, atol=1e-6)
    named = data_source(folder(rgb, classes=["normal", "lesion"])).load_site(0)  # the plan's order, not sorted
    assert torch.equal(named.train_y, 1 - as_grey.train_y)


def test_a_segmentation_folder_pairs_images_with_masks(tmp_path):
    root = png_segmentation(tmp_path / "seg", n=20)
    source = data_source(folder(root, masks="masks", classes=["background", "organ", "lesion"]))
    assert source.task_shape().kind == "segmentation" and source.task_shape().num_classes == 3
    site = source.load_site(0)
    assert site.train_y.shape[1:] == (32, 32) and set(site.train_y.unique().tolist()) <= {0, 1, 2}
    assert 2 in site.train_y.unique().tolist()


def test_mistakes_in_the_files_are_refused_with_the_file_and_the_fix(tmp_path):
    root = png_classification(tmp_path / "site", n=10)
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(lines[:-1]) + "\n")  # the last image lost its label
    with pytest.raises(ConfigError, match=r"data\.labels: 1 image\(s\) have no label .*img0009\.png"):
        data_source(folder(root, labels="labels.csv")).load_site(0)
    (root / "labels.csv").write_text("\n".join(lines + ["images/gone.png,normal,p9"]) + "\n")
    with pytest.raises(ConfigError, match=r"names 1 file\(s\) not found .*gone\.png"):
        data_source(folder(root, labels="labels.csv")).load_site(0)
    with pytest.raises(ConfigError, match=r"data\.root: .* is not a directory"):
        data_source(folder(tmp_path / "nowhere", labels="labels.csv")).load_site(0)
    with pytest.raises(ConfigError, match=r"data\.classes: name the mask classes"):
        data_source(folder(root, masks="masks"))
    seg = png_segmentation(tmp_path / "seg", n=6)
    from PIL import Image
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(seg / "masks" / "case002.png")
    with pytest.raises(ConfigError, match=r"data\.masks: .*case002\.png is 16 x 16 but its image .* is 32 x 32"):
        data_source(folder(seg, masks="masks", classes=["background", "organ", "lesion"])).load_site(0)


def test_a_file_that_does_not_decode_is_skipped_and_reported(tmp_path, caplog):
    root = png_classification(tmp_path / "site", n=20, layout="folders")
    broken = sorted((root / "normal").glob("*.png"))[0]
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")  # 20 images, one of them damaged ...
    (root / "lesion" / "zzz.jpg").write_bytes(b"not a jpeg")  # ... and one more file that is no image
    with caplog.at_level(logging.WARNING, logger="nodes.file_sources"):
        site = data_source(folder(root)).load_site(0)
    assert site.train_samples + len(site.val_y) + site.test_samples == 19
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped 2 unreadable file(s)" in warning and broken.name in warning and "zzz.jpg" in warning




CNN = 'name = "cnn"\nchannels = [4, 8]\nhidden = [16]\nnorm = "group"'


@pytest.mark.slow
def test_three_hospitals_train_on_their_own_png_folders(tmp_path):
    for site in range(3):
        png_classification(tmp_path / f"hospital-{site}", n=30, site=site, layout="folders")
    summary = run_three_hospitals(tmp_path, f'source = "folder"\nroot = "{tmp_path}/hospital-{{site}}"\nsize = 32', CNN)
    assert summary["held_out"]["samples"] > 0


# --- DICOM ---------------------------------------------------------------------------------

def dicom(root, **extra):
    return {"source": "dicom", "root": str(root), "size": 32, "classes": ["normal", "lesion"], **extra}


def test_dicom_files_are_rescaled_windowed_and_labelled(tmp_path):
    pytest.importorskip("pydicom", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    from nodes.datasets.imaging import generate_imaging_site

    root = dicom_classification(tmp_path / "ct", n=20, monochrome1_every=3)
    site = data_source(dicom(root, val_fraction=0.0, test_fraction=0.0)).load_site(0)
    original = generate_imaging_site(7, 0, 20, 2, size=32)
    # stored + intercept -1024 = HU; the file's window 40 +- 200 maps HU back onto the picture
    # (MONOCHROME1 files are stored inverted and read back the right way round)
    assert site.train_samples == 20
    assert torch.allclose(site.train_x[:, 0], original.x[:, 0], atol=2 / 400)
    assert torch.equal(site.train_y, original.y)
    by_uid = data_source(dicom(dicom_classification(tmp_path / "uid", n=10, key="SOPInstanceUID"), key="SOPInstanceUID",
                               val_fraction=0.0, test_fraction=0.0)).load_site(0)
    assert torch.equal(by_uid.train_y, generate_imaging_site(7, 0, 10, 2, size=32).y)


def test_dicom_series_give_one_image_each_and_patients_stay_together(tmp_path):
    pytest.importorskip("pydicom", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    root = dicom_classification(tmp_path / "ct", n=16, key="SeriesInstanceUID", slices_per_series=3)
    site = data_source(dicom(root, key="SeriesInstanceUID", unit="series")).load_site(0)
    assert site.train_samples + len(site.val_y) + site.test_samples == 16
    assert float(site.train_x.amax(dim=(1, 2, 3)).min()) > 0.3  # the middle slice, not an empty one
    assert site.test_samples % 2 == 0  # patients hold two series each and are never split


def test_dicom_that_cannot_be_decoded_is_skipped_and_reported(tmp_path, caplog):
    pytest.importorskip("pydicom", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    root = dicom_classification(tmp_path / "ct", n=12)
    compressed = root / "series000" / "slice00.dcm"
    ds = pydicom.dcmread(compressed)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a real codestream"])
    ds.save_as(compressed, enforce_file_format=True)
    (root / "notes.txt").write_text("not DICOM")
    with caplog.at_level(logging.WARNING, logger="nodes.file_sources"):
        site = data_source(dicom(root)).load_site(0)
    assert site.train_samples + len(site.val_y) + site.test_samples == 11
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "notes.txt" in warnings and "series000/slice00.dcm" in warnings and "skipped 1 unreadable" in warnings


def test_dicom_without_a_label_is_refused(tmp_path):
    pytest.importorskip("pydicom", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    root = dicom_classification(tmp_path / "ct", n=6, key="PatientID")
    lines = (root / "labels.csv").read_text().splitlines()
    (root / "labels.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ConfigError, match=r"data\.labels: 2 DICOM image\(s\) have no label .*keyed by PatientID.*PatientID P0-\d{3}"):
        data_source(dicom(root, key="PatientID")).load_site(0)
    with pytest.raises(ConfigError, match=r"data\.window"):
        data_source(dicom(root, window=[40]))


@pytest.mark.slow
def test_three_hospitals_train_on_their_own_dicom_folders(tmp_path):
    pytest.importorskip("pydicom", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    for site in range(3):
        dicom_classification(tmp_path / f"hospital-{site}", n=20, site=site)
    run_three_hospitals(tmp_path, f'source = "dicom"\nroot = "{tmp_path}/hospital-{{site}}"\nsize = 32\nclasses = ["normal", "lesion"]', CNN)


# --- NIfTI ---------------------------------------------------------------------------------

def nifti(root, **extra):
    return {"source": "nifti", "root": str(root), "size": 24, "classes": ["background", "organ", "lesion"], **extra}


def test_nifti_volumes_become_slices_with_their_masks_and_stay_in_one_split(tmp_path):
    pytest.importorskip("nibabel", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    from nodes.datasets.phantom import generate_phantom_site

    root = nifti_segmentation(tmp_path / "ct", volumes=5, depth=6, size=24)
    source = data_source(nifti(root, window=[40, 400]))
    assert source.task_shape().plan_table() == {"input_shape": [1, 24, 24], "num_classes": 3, "kind": "segmentation"}
    whole = data_source(nifti(root, window=[40, 400], test_fraction=0.0, val_fraction=0.0)).load_site(0)
    first = generate_phantom_site(7, 0, 6, 24)
    assert whole.train_samples == 5 * 6
    assert torch.allclose(whole.train_x[:6, 0], first.x[:, 0], atol=1 / 400)  # case00's slices, in order
    assert torch.equal(whole.train_y[:6], first.y)
    site = source.load_site(0)
    assert site.test_samples % 6 == 0 and len(site.val_y) % 6 == 0 and site.test_samples > 0  # whole volumes
    labelled = data_source(nifti(root, keep="labelled", test_fraction=0.0, val_fraction=0.0)).load_site(0)
    assert labelled.train_samples == int((whole.train_y.flatten(1) > 0).any(1).sum())


def test_whole_nifti_volumes_are_resampled_for_3d_networks(tmp_path):
    pytest.importorskip("nibabel", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    from nodes.datasets.phantom import generate_phantom_site

    root = nifti_segmentation(tmp_path / "ct", volumes=5, depth=6, size=24)
    source = data_source(nifti(root, window=[40, 400], slices="volume", depth=6, size=24, test_fraction=0.0, val_fraction=0.0))
    assert source.task_shape().plan_table() == {"input_shape": [1, 6, 24, 24], "num_classes": 3, "kind": "segmentation"}
    site = source.load_site(0)
    assert tuple(site.train_x.shape) == (5, 1, 6, 24, 24) and tuple(site.train_y.shape) == (5, 6, 24, 24)
    first = generate_phantom_site(7, 0, 6, 24)  # case00 at its own size: the axial slices, in order
    assert torch.allclose(site.train_x[0, 0], first.x[:, 0], atol=1 / 400) and torch.equal(site.train_y[0], first.y)
    resampled = data_source(nifti(root, slices="volume", depth=12, size=16, test_fraction=0.0, val_fraction=0.0)).load_site(0)
    assert tuple(resampled.train_x.shape) == (5, 1, 12, 16, 16) and set(resampled.train_y.unique().tolist()) <= {0, 1, 2}
    assert resampled.train_y.dtype == torch.int64 and (resampled.train_y > 0).any()


def test_a_3d_unet_trains_on_whole_volumes(tmp_path):
    """MONAI's 3-D U-Net on [n, 1, D, H, W] volumes: the plan accepts the shape, the loss and
    Dice work per voxel, and training lowers the loss."""
    pytest.importorskip("nibabel", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    pytest.importorskip("monai", reason='optional extra: pip install "swarm-hospitals[monai]"')
    from nodes.learner import Learner
    from nodes.plan import check_plan_sections

    root = nifti_segmentation(tmp_path / "ct", volumes=6, depth=8, size=16)
    data = nifti(root, window=[40, 400], slices="volume", depth=8, size=16)
    model = {"name": "monai.UNet", "channels": [4, 8], "strides": [2], "num_res_units": 0}
    training = {"epochs": 3, "optimizer": "adam", "lr": 0.01, "batch_size": 2}
    task = check_plan_sections({"name": "braintorrent"}, model, training,
                               {"input_shape": [1, 8, 16, 16], "num_classes": 3, "kind": "segmentation"})
    learner = Learner.for_site(task, data, "h0")
    first = learner.run_round(1, [])
    for round_no in range(2, 5):
        last = learner.run_round(round_no, [])
    assert last.metrics["train_loss"] < first.metrics["train_loss"]
    assert 0.0 <= last.metrics["dice"] <= 1.0
    with pytest.raises(ConfigError, match=r"model\.name: cnn needs image input .*volume input .*monai\.UNet"):
        check_plan_sections({"name": "braintorrent"}, {"name": "cnn"}, training,
                            {"input_shape": [1, 8, 16, 16], "num_classes": 3, "kind": "segmentation"})


def test_nifti_mistakes_are_refused(tmp_path):
    pytest.importorskip("nibabel", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    import nibabel

    root = nifti_segmentation(tmp_path / "ct", volumes=3, depth=4, size=16, gz=False)
    with pytest.raises(ConfigError, match=r"data\.slices: must be one of: axial, coronal, sagittal, volume .*got 'none'"):
        data_source(nifti(root, slices="none"))
    nibabel.save(nibabel.Nifti1Image(np.zeros((16, 16, 5), dtype=np.uint8), np.eye(4)), root / "masks" / "case01.nii")
    with pytest.raises(ConfigError, match=r"data\.masks: .*case01\.nii is \(16, 16, 5\) but its volume .* is \(16, 16, 4\)"):
        data_source(nifti(root)).load_site(0)
    (root / "masks" / "case01.nii").unlink()
    with pytest.raises(ConfigError, match=r"data\.masks: 1 volume\(s\) have no mask .*case01\.nii"):
        data_source(nifti(root)).load_site(0)


@pytest.mark.slow
def test_three_hospitals_train_on_their_own_nifti_volumes(tmp_path):
    pytest.importorskip("nibabel", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    for site in range(3):
        nifti_segmentation(tmp_path / f"hospital-{site}", volumes=4, site=site, depth=6, size=24)
    data = (f'source = "nifti"\nroot = "{tmp_path}/hospital-{{site}}"\nsize = 24\nwindow = [40, 400]\n'
            'classes = ["background", "organ", "lesion"]')
    summary = run_three_hospitals(tmp_path, data, 'name = "unet"\ndepth = 1\nbase = 4\nnorm = "group"')
    assert summary["primary_metric"] == "dice" and 0.0 <= summary["held_out"]["swarm"]["dice"] <= 1.0


@pytest.mark.slow
def test_three_hospitals_train_a_3d_unet_on_whole_nifti_volumes(tmp_path):
    pytest.importorskip("nibabel", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    pytest.importorskip("monai", reason='optional extra: pip install "swarm-hospitals[monai]"')
    for site in range(3):
        nifti_segmentation(tmp_path / f"hospital-{site}", volumes=6, site=site, depth=8, size=16)
    data = (f'source = "nifti"\nroot = "{tmp_path}/hospital-{{site}}"\nslices = "volume"\ndepth = 8\nsize = 16\n'
            'window = [40, 400]\nclasses = ["background", "organ", "lesion"]')
    summary = run_three_hospitals(tmp_path, data, 'name = "monai.UNet"\nchannels = [4, 8]\nstrides = [2]\nnum_res_units = 0')
    assert summary["primary_metric"] == "dice" and 0.0 <= summary["held_out"]["swarm"]["dice"] <= 1.0


def test_init_points_a_site_at_its_own_files(tmp_path, monkeypatch):
    pytest.importorskip("pydicom", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    from click.testing import CliRunner

    from nodes.cli import main as node_cli
    from nodes.site import SiteDir

    dicom_classification(tmp_path / "ct", n=8)
    monkeypatch.chdir(tmp_path)
    args = ["init", "--site", str(tmp_path / "site"), "--name", "hospital-a", "--endpoint", "tcp://127.0.0.1:7000"]
    result = CliRunner().invoke(node_cli, args + ["--data", "source=dicom", "--data", "root=ct", "--data", "size=32"])
    assert result.exit_code == 0, result.output
    assert "input [1, 32, 32], 2 classes, classification" in result.output
    data = SiteDir(tmp_path / "site").load_config().data
    assert data == {"source": "dicom", "root": str(tmp_path / "ct"), "size": 32}  # root made absolute
    for bad, field in ((["--data", "source=dicom", "--data", "root=nowhere"], "data.root"),
                       (["--data", "root=ct"], "--data: name the source"),
                       (["--data", "source=dicom", "--data", "root=ct", "--data", "unit=slab"], "data.unit")):
        result = CliRunner().invoke(node_cli, ["init", "--site", str(tmp_path / "other"), "--name", "b",
                                               "--endpoint", "tcp://127.0.0.1:7001", *bad])
        assert result.exit_code == 2 and field in result.output and not (tmp_path / "other").exists()


def test_decoding_in_worker_threads_gives_the_same_site(tmp_path):
    pytest.importorskip("pydicom", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    root = dicom_classification(tmp_path / "site", n=24)
    one = data_source(dicom(root, labels="labels.csv", split_record=str(tmp_path / "a.json"))).load_site(0)
    four = data_source(dicom(root, labels="labels.csv", workers=4, split_record=str(tmp_path / "b.json"))).load_site(0)
    for a, b in ((one.train_x, four.train_x), (one.train_y, four.train_y), (one.test_x, four.test_x), (one.test_y, four.test_y)):
        assert torch.equal(a, b)
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()
    with pytest.raises(ConfigError, match="data.workers"):
        data_source(dicom(root, labels="labels.csv", workers=-1))


@pytest.mark.slow
def test_the_readmes_bring_your_own_data_walkthrough_runs(tmp_path):
    """scripts/byod_walkthrough.sh: the README's commands, three hospitals on DICOM folders,
    real node processes over CurveZMQ, then an ONNX export that the audit finds in the log."""
    pytest.importorskip("pydicom", reason='optional extra: pip install "swarm-hospitals[imaging]"')
    pytest.importorskip("onnxscript", reason='optional extra: pip install "swarm-hospitals[export]"')
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    bin_dir = Path(sys.executable).parent
    env = os.environ | {"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", str(repo / "scripts" / "byod_walkthrough.sh"), str(tmp_path)], cwd=repo,
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("\nfinished at version 10") == 3  # each node's last line (tail shows two)
    assert "= hospital-0#10 as logged" in result.stdout and "result: OK" in result.stdout
    card = json.loads((tmp_path / "model.onnx.card.json").read_text())
    assert card["model"]["classes"] == ["normal", "lesion"] and set(card["provenance"]["sites"]) == {"hospital-0", "hospital-1", "hospital-2"}
