"""Scanner-like site effects for generated images (shared by imaging.py and phantom.py).

Two hospitals imaging the same anatomy get different pictures: their scanners differ in
resolution, coil sensitivity, calibration, post-processing and noise. `ScannerEffects`
models one site's scanner, applied in acquisition order to clean intensities in [0, 1]:

1. blur: Gaussian point-spread function (resolution), sigma in pixels;
2. gamma: contrast curve, x -> x ** gamma;
3. bias field: a smooth multiplicative field (coil sensitivity / shading), a random
   low-order polynomial over the field of view, exp-mapped so it stays positive;
4. gain and offset: intensity scaling and calibration offset;
5. noise: Gaussian (additive) or Rician (the magnitude of a complex signal with Gaussian
   noise on both channels, as in MR magnitude images: noise floor above zero in the
   background, signal-dependent bias);
6. clipping to [0, 1] (saturation of the stored 8-bit-like range).

`site_effects(seed, site, shift, noise)` draws site `site`'s scanner from its own random
stream ([seed, tag, site]) so that every site's scanner depends only on the seed and the
site index; the same seed and site give the same scanner in every generated task. With
shift = 0 every site gets the identity scanner plus the same base noise level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from swarm.config import Table, setting

from .partition import Seed

_TAG_SCANNER = 0x7363  # "sc"
NoiseKind = Literal["rician", "gaussian"]

# Arguments shared by the generators (imaging, phantom) and site_effects.
Site = Annotated[int, Field(ge=0, le=2**62, json_schema_extra={"example": 0})]
Contrast = Annotated[float, Field(gt=0.0, le=5.0, json_schema_extra={"example": 1.0})]


class GeneratedSite(Table):
    """The arguments every generated site is drawn from (generators add their own)."""

    seed: Seed
    site: Site
    n: int = setting(ge=1, example=200)


class _Scanner(Table):
    """site_effects' arguments."""

    seed: Seed
    site: Site
    shift: float = setting(ge=0.0, le=5.0, example=1.0)
    noise: float = setting(ge=0.0, le=0.5, example=0.04)
    noise_kind: NoiseKind = setting(example="rician")


@dataclass(frozen=True)
class ScannerEffects:
    """One site's scanner (see the module docstring for the order they are applied in)."""

    gain: float = 1.0
    offset: float = 0.0
    gamma: float = 1.0
    bias: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)  # coefficients of x, y, x^2, y^2, xy
    noise_std: float = 0.0
    noise_kind: str = "rician"
    blur: float = 0.0

    def bias_field(self, height: int, width: int) -> np.ndarray:
        """The multiplicative field [height, width] (1 everywhere for zero coefficients)."""
        yy, xx = grid(height, width)
        basis = np.stack([xx, yy, xx**2 - 1.0 / 3.0, yy**2 - 1.0 / 3.0, xx * yy])
        return np.exp(np.tensordot(np.asarray(self.bias, dtype=np.float64), basis, axes=1))

    def apply(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Acquire clean images [n, H, W] (or [n, C, H, W]) with values in [0, 1]; the noise
        comes from `rng`. Returns float64 images in [0, 1] of the same shape."""
        out = np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0)
        if self.blur > 0:
            out = gaussian_blur(out, self.blur)
        if self.gamma != 1.0:
            out = np.clip(out, 0.0, 1.0) ** self.gamma
        out = out * self.bias_field(out.shape[-2], out.shape[-1])
        out = self.gain * out + self.offset
        if self.noise_std > 0:
            if self.noise_kind == "rician":
                real = out + self.noise_std * rng.standard_normal(out.shape)
                imag = self.noise_std * rng.standard_normal(out.shape)
                out = np.sqrt(real**2 + imag**2)
            else:
                out = out + self.noise_std * rng.standard_normal(out.shape)
        return np.clip(out, 0.0, 1.0)


def site_effects(seed: int, site: int, shift: float = 1.0, noise: float = 0.04,
                 noise_kind: str = "rician", where: str = "data") -> ScannerEffects:
    """Site `site`'s scanner: parameters drawn from [seed, tag, site], their spread scaled by
    `shift` (0: identical scanners everywhere), base noise level `noise`."""
    args = _Scanner.from_dict(
        {"seed": seed, "site": site, "shift": shift, "noise": noise, "noise_kind": noise_kind}, where)
    seed, site, shift, noise, noise_kind = args.seed, args.site, args.shift, args.noise, args.noise_kind
    rng = np.random.default_rng([seed, _TAG_SCANNER, site])
    z = rng.standard_normal(5)
    bias = rng.standard_normal(5)
    # Scale the field so that its log stays within +-0.3 * shift over the field of view
    # (typically a 10-20% shading).
    bias = bias / max(float(np.abs(bias).sum()), 1e-12) * 0.2 * shift * (0.5 + rng.uniform())
    return ScannerEffects(
        gain=float(math.exp(0.15 * shift * float(np.clip(z[0], -2.0, 2.0)))),
        offset=float(0.03 * shift * np.clip(z[1], -2.0, 2.0)),
        gamma=float(math.exp(0.25 * shift * float(np.clip(z[2], -2.0, 2.0)))),
        bias=tuple(float(b) for b in bias),
        noise_std=float(noise * math.exp(0.4 * shift * float(np.clip(z[3], -2.0, 2.0)))),
        noise_kind=noise_kind,
        blur=float(0.6 * shift * abs(float(np.clip(z[4], -2.0, 2.0)))),  # up to 1.2 px at shift 1
    )


def grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) spanning [-1, 1] in each direction, each [H, W]."""
    ys = (np.arange(height) + 0.5) / height * 2.0 - 1.0
    xs = (np.arange(width) + 0.5) / width * 2.0 - 1.0
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return yy, xx


def smooth_texture(rng: np.random.Generator, n: int, yy: np.ndarray, xx: np.ndarray, waves: int,
                   amplitude: tuple[float, float]) -> np.ndarray:
    """Per-image smooth tissue texture [n, H, W]: a sum of `waves` random low-frequency plane
    waves with amplitudes drawn from `amplitude` (shared by the generators; not a scanner
    effect)."""
    fy, fx = rng.normal(0.0, 2.5, (n, waves)), rng.normal(0.0, 2.5, (n, waves))
    phase, amp = rng.uniform(0, 2 * math.pi, (n, waves)), rng.uniform(*amplitude, (n, waves))
    out = np.zeros((n,) + yy.shape)
    for w in range(waves):  # one wave at a time: no [n, waves, H, W] temporary
        out += amp[:, w, None, None] * np.cos(
            math.pi * (fy[:, w, None, None] * yy[None] + fx[:, w, None, None] * xx[None])
            + phase[:, w, None, None])
    return out


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes (reflecting edges)."""
    radius = max(1, int(math.ceil(3.0 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = taps / taps.sum()
    out = images
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        size = out.shape[axis]
        acc = np.zeros_like(out)
        for i, t in enumerate(taps):
            acc += t * np.take(padded, np.arange(i, i + size), axis=axis)
        out = acc
    return out
