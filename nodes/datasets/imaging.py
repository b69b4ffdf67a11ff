"""Generated multi-site imaging classification: head-like images with or without a lesion.

Each image (default 28 x 28 grayscale, like MedMNIST) shows an anatomy-like head section:
a soft-edged elliptical body with a bright rim (skull), smooth tissue texture and a dark
central structure (ventricles); position, size, orientation and tissue brightness vary
per patient. Class 0 is "no lesion". The other classes put a lesion inside the tissue:

* `num_classes = 2`: class 1 is "lesion present", of any of the kinds below (random);
* `num_classes >= 3`: class k shows lesion kind k:
    1. focal bright: a small round hyperintense spot;
    2. elongated dark: an elongated hypointense lesion;
    3. ring: a bright rim around a darker core (ring enhancement);
    4. multifocal: three small bright spots;
    5. diffuse: a large, faint, soft-edged hyperintense area;
    6+. further kinds with shape / contrast / count drawn from the seed.
  Size, contrast, position and orientation vary per patient, so the class is in the
  shape and appearance of the lesion, not in one pixel.

The site's scanner (`nodes.datasets.effects`: blur, gamma, bias field, gain / offset,
Gaussian or Rician noise) is then applied: per-site domain shift.

`generate_imaging_site(seed, site, n, ...)` depends only on its arguments: sites are
generated independently (site k from the random stream [seed, tag, k]) and a node can
build its own site alone. Classes are balanced within a site unless `label_skew` > 0
(then the site's class prior mixes the uniform prior with a random one, as in
"synthetic-multisite").
"""

from __future__ import annotations

import math

import numpy as np
import torch

from swarm.config import setting

from . import Samples, apportion
from .effects import Contrast, GeneratedSite, grid, site_effects, smooth_texture

_TAG_IMAGING = 0x696D  # "im"
_TAG_KINDS = 0x6B64    # "kd"
MAX_CLASSES = 10

# Lesion kinds (normalised units: the image spans [-1, 1], so a 28-px pixel is 0.071):
# radius, elongation, contrast, ring core contrast (rim kinds only), count, edge softness.
_KINDS: tuple[dict[str, float], ...] = (
    dict(radius=0.15, elong=1.0, contrast=0.35, ring=0.0, core=0.0, count=1, edge=0.12),   # focal bright
    dict(radius=0.20, elong=2.2, contrast=-0.30, ring=0.0, core=0.0, count=1, edge=0.12),  # elongated dark
    dict(radius=0.22, elong=1.2, contrast=0.40, ring=1.0, core=-0.12, count=1, edge=0.0),  # ring
    dict(radius=0.09, elong=1.0, contrast=0.35, ring=0.0, core=0.0, count=3, edge=0.15),   # multifocal
    dict(radius=0.38, elong=1.3, contrast=0.15, ring=0.0, core=0.0, count=1, edge=0.35),   # diffuse
)
_MAX_COUNT = 3


class _Imaging(GeneratedSite):
    """generate_imaging_site's own arguments (the scanner's are site_effects')."""

    num_classes: int = setting(ge=2, le=MAX_CLASSES, example=2)
    size: int = setting(ge=16, le=256, example=28)
    lesion_contrast: Contrast
    label_skew: float = setting(ge=0.0, le=1.0, example=0.0)


def _kind(seed: int, k: int) -> dict[str, float]:
    """Lesion kind k (1-based): from the table, or drawn from the seed beyond it."""
    if k <= len(_KINDS):
        return _KINDS[k - 1]
    rng = np.random.default_rng([seed, _TAG_KINDS, k])
    ring = float(rng.uniform() < 0.3)
    return dict(
        radius=float(rng.uniform(0.1, 0.32)), elong=float(rng.uniform(1.0, 2.5)),
        contrast=float(rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.4)), ring=ring,
        core=float(-0.1 * ring), count=int(rng.integers(1, _MAX_COUNT + 1)),
        edge=float(0.0 if ring else rng.uniform(0.1, 0.3)),
    )


def _ellipse_distance(yy, xx, cy, cx, ay, ax, theta):
    """Normalised elliptical radius of every pixel ([n, H, W]) for per-sample ellipses ([n])."""
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = c * dx + s * dy
    v = -s * dx + c * dy
    return np.sqrt((u / ax[:, None, None]) ** 2 + (v / ay[:, None, None]) ** 2)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _anatomy(rng: np.random.Generator, n: int, size: int):
    """Clean head-like images [n, H, W], the soft body mask, and what lesions need: body
    centre, axes and angle, and the pixel grid."""
    yy, xx = grid(size, size)
    cy, cx = rng.normal(0.0, 0.04, n), rng.normal(0.0, 0.04, n)
    ay, ax = rng.uniform(0.72, 0.86, n), rng.uniform(0.58, 0.72, n)
    theta = rng.uniform(-0.3, 0.3, n)
    d = _ellipse_distance(yy, xx, cy, cx, ay, ax, theta)
    body = _sigmoid((1.0 - d) / 0.04)
    skull = np.exp(-0.5 * ((d - 0.95) / 0.045) ** 2)
    tissue = rng.uniform(0.3, 0.4, n)[:, None, None]
    # Smooth texture: a few random low-frequency waves per patient.
    texture = smooth_texture(rng, n, yy, xx, waves=4, amplitude=(0.01, 0.035))
    # Ventricles: a dark central structure.
    vs = rng.uniform(0.8, 1.2, n)
    vent = _sigmoid((1.0 - _ellipse_distance(yy, xx, cy, cx, 0.3 * ay * vs, 0.12 * ax * vs, theta)) / 0.1)
    image = body * (tissue + texture - 0.15 * vent) + 0.3 * skull
    return image, body, (cy, cx, ay, ax, theta), (yy, xx)


def _add_lesions(rng, image, mask, body, grids, kinds, table, lesion_contrast):
    """Add a lesion of kind `kinds[i]` (0: none; `table[k]`: its parameters) to image i, in
    place."""
    n = image.shape[0]
    cy, cx, ay, ax, theta = body
    yy, xx = grids
    params = {key: np.zeros(n) for key in ("radius", "elong", "contrast", "ring", "core", "count", "edge")}
    for k in np.unique(kinds):
        if k == 0:
            continue
        sel = kinds == k
        for key, value in table[int(k)].items():
            params[key][sel] = value
    has = kinds > 0
    count = params["count"].astype(np.int64)
    contrast = params["contrast"] * rng.uniform(0.7, 1.3, n) * lesion_contrast
    core = params["core"] * rng.uniform(0.7, 1.3, n) * lesion_contrast
    for j in range(_MAX_COUNT):
        active = has & (j < count)
        # Centre inside the tissue, away from the skull.
        rho = np.sqrt(rng.uniform(0.0, 1.0, n)) * 0.55
        phi = rng.uniform(0.0, 2 * math.pi, n)
        ly = cy + rho * ay * np.sin(phi)
        lx = cx + rho * ax * np.cos(phi)
        radius = np.where(has, params["radius"], 1.0) * np.exp(0.2 * rng.standard_normal(n))
        elong = np.maximum(params["elong"], 1e-3)
        orient = rng.uniform(0.0, math.pi, n)
        d = _ellipse_distance(yy, xx, ly, lx, radius * np.sqrt(elong), radius / np.sqrt(elong), orient)
        edge = np.maximum(params["edge"], 0.05)[:, None, None]
        disc = _sigmoid((1.0 - d) / edge)
        rim = np.exp(-0.5 * ((d - 1.0) / 0.3) ** 2)
        inner = _sigmoid((0.7 - d) / 0.08)
        ring = params["ring"][:, None, None] > 0
        shape = np.where(ring, contrast[:, None, None] * rim + core[:, None, None] * inner,
                         contrast[:, None, None] * disc)
        image += np.where(active[:, None, None], shape * mask, 0.0)


def generate_imaging_site(
    seed: int, site: int, n: int, num_classes: int = 2, *,
    size: int = 28, shift: float = 1.0, noise: float = 0.04, noise_kind: str = "rician",
    lesion_contrast: float = 1.0, label_skew: float = 0.0,
    class_prior: np.ndarray | None = None, stream: int = 0,
) -> Samples:
    """Site `site`'s `n` images: x float32 [n, 1, size, size] in [0, 1], y int64 [n] in
    [0, num_classes), site = `site` for every sample.

    shift: spread of the scanner parameters between sites (0: identical scanners).
    noise / noise_kind: base noise level and model ("rician" or "gaussian").
    lesion_contrast: multiplies every lesion's contrast (lower: harder task).
    label_skew: 0 gives balanced classes; 1 a fully random site class prior.
    class_prior: the site's class proportions (they sum to 1; a zero keeps a class out of
    the site), instead of the `label_skew` mix.
    stream: 0 draws the site's own patients; another value draws other patients through
    the same scanner (a held-out test set of that site's population)."""
    where = "data"
    args = _Imaging.from_dict({
        "seed": seed, "site": site, "n": n, "num_classes": num_classes, "size": size,
        "lesion_contrast": lesion_contrast, "label_skew": label_skew}, where)
    seed, site, n, num_classes, size = args.seed, args.site, args.n, args.num_classes, args.size
    lesion_contrast, label_skew = args.lesion_contrast, args.label_skew
    scanner = site_effects(seed, site, shift=shift, noise=noise, noise_kind=noise_kind, where=where)

    rng = np.random.default_rng([seed, _TAG_IMAGING, site] + ([stream] if stream else []))
    prior = np.full(num_classes, 1.0 / num_classes)
    preference = rng.dirichlet(np.ones(num_classes))
    prior = (1.0 - label_skew) * prior + label_skew * preference
    if class_prior is not None:
        prior = np.asarray(class_prior, dtype=np.float64)
        if prior.shape != (num_classes,) or (prior < 0).any() or not math.isclose(prior.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"class_prior: must be {num_classes} non-negative proportions summing to 1, got {prior}")
    labels = rng.permutation(np.repeat(np.arange(num_classes), apportion(prior, n)))

    table = {k: _kind(seed, k) for k in range(1, max(num_classes, len(_KINDS) + 1))}
    if num_classes == 2:
        kinds = np.where(labels == 1, rng.integers(1, len(_KINDS) + 1, n), 0)
    else:
        kinds = labels.copy()

    image, mask, body, grids = _anatomy(rng, n, size)
    _add_lesions(rng, image, mask, body, grids, kinds, table, lesion_contrast)
    acquired = scanner.apply(image, rng)
    return Samples(
        x=torch.from_numpy(acquired[:, None].astype(np.float32)),
        y=torch.from_numpy(labels.astype(np.int64)),
        task="classification",
        num_classes=num_classes,
        site=torch.full((n,), site, dtype=torch.int64),
    )
