"""A generated 2-D phantom segmentation task: find the organ and its lesions.

Each image (default 32 x 32 grayscale) is an abdomen-like section: an elliptical body of
soft tissue, a bright round "vertebra" near the back, and one organ with an irregular,
smoothly wobbling outline (an ellipse whose radius carries random low-order harmonics).
Most patients (`lesion_prob`) have one or two round lesions inside the organ, brighter or
darker than it. Size, position, orientation, outline and intensities vary per patient;
smooth tissue texture is added, and then the site's scanner (`nodes.datasets.effects`:
blur, gamma, bias field, gain / offset, Gaussian or Rician noise).

Masks: 0 background (outside the body, soft tissue, vertebra), 1 organ, 2 lesion. Lesions
lie strictly inside the organ: every lesion pixel's four neighbours are organ or lesion.
The image is drawn from the masks (piecewise-constant intensities plus texture), so the
labels are exact before the scanner blurs and corrupts them.

`generate_phantom_site(seed, site, n, ...)` depends only on its arguments: site k comes
from its own random stream [seed, tag, k]; same seed and site give the same scanner as
in `generate_imaging_site`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from swarm.config import setting

from . import Samples
from .effects import Contrast, GeneratedSite, grid, site_effects, smooth_texture

_TAG_PHANTOM = 0x7068  # "ph"
BACKGROUND, ORGAN, LESION = 0, 1, 2
_HARMONICS = (2, 3, 4)
_MAX_LESIONS = 2


class _Phantom(GeneratedSite):
    """generate_phantom_site's own arguments (the scanner's are site_effects')."""

    size: int = setting(ge=16, le=256, example=32)
    lesion_prob: float = setting(ge=0.0, le=1.0, example=0.9)
    lesion_contrast: Contrast


def _rotated(yy, xx, cy, cx, theta):
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    return c * dx + s * dy, -s * dx + c * dy


def _erode(mask: np.ndarray) -> np.ndarray:
    """4-neighbour binary erosion of [n, H, W] masks (outside the image counts as False)."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    return (mask & padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:])


def generate_phantom_site(
    seed: int, site: int, n: int, size: int = 32, *,
    shift: float = 1.0, noise: float = 0.04, noise_kind: str = "rician",
    lesion_prob: float = 0.9, lesion_contrast: float = 1.0, stream: int = 0,
) -> Samples:
    """Site `site`'s `n` phantoms: x float32 [n, 1, size, size] in [0, 1], y int64 masks
    [n, size, size] (0 background, 1 organ, 2 lesion), task "segmentation", 3 classes,
    site = `site` for every sample.

    shift: spread of the scanner parameters between sites (0: identical scanners).
    noise / noise_kind: base noise level and model ("rician" or "gaussian").
    lesion_prob: share of patients with lesions. lesion_contrast: multiplies the lesions'
    contrast against the organ (lower: harder). stream: 0 draws the site's own patients;
    another value draws other patients through the same scanner (a held-out test set)."""
    where = "data"
    args = _Phantom.from_dict({
        "seed": seed, "site": site, "n": n, "size": size, "lesion_prob": lesion_prob,
        "lesion_contrast": lesion_contrast}, where)
    seed, site, n, size = args.seed, args.site, args.n, args.size
    lesion_prob, lesion_contrast = args.lesion_prob, args.lesion_contrast
    scanner = site_effects(seed, site, shift=shift, noise=noise, noise_kind=noise_kind, where=where)
    rng = np.random.default_rng([seed, _TAG_PHANTOM, site] + ([stream] if stream else []))
    yy, xx = grid(size, size)

    # Body: a wide ellipse, slightly shifted and rotated.
    bcy, bcx = rng.normal(0.0, 0.03, n), rng.normal(0.0, 0.03, n)
    bay, bax = rng.uniform(0.62, 0.74, n), rng.uniform(0.82, 0.92, n)
    btheta = rng.uniform(-0.15, 0.15, n)
    u, v = _rotated(yy, xx, bcy, bcx, btheta)
    body_d = np.sqrt((u / bax[:, None, None]) ** 2 + (v / bay[:, None, None]) ** 2)
    body = body_d < 1.0

    # Vertebra: a bright disc near the back (bottom) of the body.
    vcy = bcy + 0.62 * bay * np.cos(btheta)
    vcx = bcx - 0.62 * bay * np.sin(btheta)
    vr = rng.uniform(0.1, 0.14, n)
    vertebra = ((yy[None] - vcy[:, None, None]) ** 2 + (xx[None] - vcx[:, None, None]) ** 2
                < (vr ** 2)[:, None, None])

    # Organ: an ellipse with a wobbling outline, inside the body, clear of the vertebra.
    ocy = bcy + rng.uniform(-0.3, 0.0, n) * bay
    ocx = bcx + rng.uniform(-0.3, 0.3, n) * bax
    oay, oax = rng.uniform(0.28, 0.4, n), rng.uniform(0.34, 0.52, n)
    otheta = rng.uniform(0.0, math.pi, n)
    u, v = _rotated(yy, xx, ocy, ocx, otheta)
    organ_d = np.sqrt((u / oax[:, None, None]) ** 2 + (v / oay[:, None, None]) ** 2)
    angle = np.arctan2(v / oay[:, None, None], u / oax[:, None, None])
    outline = np.ones_like(organ_d)
    for m in _HARMONICS:
        eps = rng.uniform(0.0, 0.08, n)[:, None, None]
        outline = outline + eps * np.cos(m * angle + rng.uniform(0, 2 * math.pi, n)[:, None, None])
    organ = (organ_d < outline) & (body_d < 0.92) & ~vertebra

    # Lesions: round, centred in the inner half of the organ's ellipse (inside its outline,
    # which never comes closer than 0.76 of the ellipse), kept off the organ's edge.
    inner = _erode(organ)
    lesion = np.zeros_like(organ)
    has = rng.uniform(size=n) < lesion_prob
    count = rng.integers(1, _MAX_LESIONS + 1, n)
    for j in range(_MAX_LESIONS):
        rho = np.sqrt(rng.uniform(0.0, 1.0, n)) * 0.5
        phi = rng.uniform(0.0, 2 * math.pi, n)
        lu, lv = rho * oax * np.cos(phi), rho * oay * np.sin(phi)
        c, s = np.cos(otheta), np.sin(otheta)
        lcx = ocx + c * lu - s * lv
        lcy = ocy + s * lu + c * lv
        lr = rng.uniform(0.08, 0.17, n)
        disc = ((yy[None] - lcy[:, None, None]) ** 2 + (xx[None] - lcx[:, None, None]) ** 2
                < (lr ** 2)[:, None, None])
        lesion |= disc & (has & (j < count))[:, None, None]
    lesion &= inner

    mask = np.zeros((n, size, size), dtype=np.int64)
    mask[organ] = ORGAN
    mask[lesion] = LESION

    # Intensities from the masks, per patient, plus smooth texture inside the body.
    soft = rng.uniform(0.25, 0.33, n)[:, None, None]
    organ_level = soft + rng.uniform(0.15, 0.25, n)[:, None, None]
    lesion_delta = (rng.choice([-1.0, 1.0], n) * rng.uniform(0.14, 0.24, n) * lesion_contrast)[:, None, None]
    bone = rng.uniform(0.75, 0.85, n)[:, None, None]
    image = np.where(body, soft, 0.0)
    image = np.where(vertebra & body, bone, image)
    image = np.where(organ, organ_level, image)
    image = np.where(lesion, organ_level + lesion_delta, image)
    image = image + smooth_texture(rng, n, yy, xx, waves=3, amplitude=(0.01, 0.03)) * body

    acquired = scanner.apply(image, rng)
    return Samples(
        x=torch.from_numpy(acquired[:, None].astype(np.float32)),
        y=torch.from_numpy(mask),
        task="segmentation",
        num_classes=3,
        site=torch.full((n,), site, dtype=torch.int64),
    )
