"""Procedural phantom images whose clinical findings are known by construction.

Two modalities are drawn (see ``PHANTOMS``):

* ``phantom-cxr``: a grayscale chest radiograph. Dark background outside the body, soft-tissue
  thorax, two dark lung fields, a bright mediastinum and heart. Findings: cardiomegaly (heart
  wider than half the thorax), a pleural effusion (fluid filling the base of ONE lung, with a
  meniscus that rises laterally and blunts the costophrenic angle) and a nodule (ONE small round
  opacity inside an aerated lung field). Sides follow the radiological convention: the
  patient's right lung is on the image's left, the heart bulges to the image's right.
* ``phantom-derm``: an RGB dermoscopy image. Textured skin with one pigmented lesion. A nevus is
  small, symmetric, regular and one or two similar browns; a melanoma is large, asymmetric,
  lobulated/notched and at least three colours (light brown, dark brown/black, a blue-white
  veil, often red and/or white areas).

Every image varies in pose, size, intensities, contrast and noise, but its finding stays
unambiguous. :func:`draw` returns one image and its true findings; :func:`draw_batch` many,
deterministic in ``(seed, order)``. ``overrides`` lets a caller force findings (for example
both-sided effusion or two nodules), which the oracle tests use to build contradictory images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from craft.errors import CraftError

__all__ = [
    "PhantomSpec",
    "PHANTOMS",
    "MIN_RESOLUTION",
    "MAX_RESOLUTION",
    "draw",
    "draw_batch",
    "get_spec",
]

MIN_RESOLUTION = 24
MAX_RESOLUTION = 512


@dataclass(frozen=True)
class PhantomSpec:
    """What one phantom modality draws."""

    name: str
    labels: tuple[str, ...]
    channels: int
    description: str
    findings: tuple[str, ...]


PHANTOMS: dict[str, PhantomSpec] = {
    "phantom-cxr": PhantomSpec(
        name="phantom-cxr",
        labels=("normal", "cardiomegaly", "effusion", "nodule"),
        channels=1,
        description="chest radiograph",
        findings=(
            "cardiothoracic_ratio",
            "effusion_left",
            "effusion_right",
            "effusion_height_fraction",
            "nodule_count",
            "nodule_diameter_fraction",
        ),
    ),
    "phantom-derm": PhantomSpec(
        name="phantom-derm",
        labels=("nevus", "melanoma"),
        channels=3,
        description="dermoscopy image",
        findings=(
            "asymmetry",
            "border_irregularity",
            "n_colours",
            "blue_white_veil",
            "diameter_fraction",
        ),
    ),
}

# Keys a caller may force through ``overrides``, per modality.
_OVERRIDES = {
    "phantom-cxr": ("cardiothoracic_ratio", "effusion_left", "effusion_right", "nodule_count"),
    "phantom-derm": ("diameter_fraction", "blue_white_veil", "n_colours", "veil_size"),
}


def get_spec(modality: str) -> PhantomSpec:
    """The spec of ``modality``; CraftError naming the allowed ones if unknown."""
    try:
        return PHANTOMS[modality]
    except (KeyError, TypeError):
        allowed = ", ".join(sorted(PHANTOMS))
        raise CraftError(f"unknown phantom modality {modality!r}; allowed: {allowed}") from None


def _check_label(spec: PhantomSpec, label: str) -> None:
    if label not in spec.labels:
        allowed = ", ".join(spec.labels)
        raise CraftError(f"unknown label {label!r} for modality {spec.name}; allowed: {allowed}")


def _check_resolution(resolution: int) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise CraftError(f"resolution must be an integer, got {resolution!r}")
    if not MIN_RESOLUTION <= int(resolution) <= MAX_RESOLUTION:
        raise CraftError(
            f"resolution {resolution} is out of range; use {MIN_RESOLUTION} to {MAX_RESOLUTION}"
        )
    return int(resolution)


def _check_overrides(modality: str, overrides: Mapping[str, float] | None) -> dict[str, float]:
    if not overrides:
        return {}
    allowed = _OVERRIDES[modality]
    out = {}
    for key, value in overrides.items():
        if key not in allowed:
            raise CraftError(
                f"cannot override {key!r} for {modality}; allowed: {', '.join(allowed)}"
            )
        out[key] = float(value)
    return out


# ----------------------------------------------------------------------------- geometry helpers


@lru_cache(maxsize=16)
def _grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1]: x grows to the right, y grows downwards."""
    u = (np.arange(resolution, dtype=np.float64) + 0.5) / resolution * 2.0 - 1.0
    x, y = np.meshgrid(u, u)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _cover(sd: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased coverage (0..1) of a shape from its signed distance (negative inside)."""
    return np.clip(0.5 - sd / px, 0.0, 1.0)


def _ellipse_sd(x, y, cx, cy, a, b):
    """Approximate signed distance to the ellipse (dx/a)^2 + (dy/b)^2 = 1 (first order)."""
    ux = (x - cx) / a
    uy = (y - cy) / b
    q = np.sqrt(ux * ux + uy * uy) + 1e-9
    g = np.sqrt((ux / a) ** 2 + (uy / b) ** 2) + 1e-9  # = q * |grad q|
    return (q - 1.0) * q / g


@lru_cache(maxsize=64)
def _interp_matrix(resolution: int, knots: int) -> np.ndarray:
    """(resolution, knots) linear-interpolation weights from a coarse grid to pixel centres."""
    pos = (np.arange(resolution) + 0.5) / resolution * (knots - 1)
    lo = np.minimum(np.floor(pos).astype(int), knots - 2)
    w = pos - lo
    m = np.zeros((resolution, knots))
    m[np.arange(resolution), lo] = 1.0 - w
    m[np.arange(resolution), lo + 1] = w
    m.setflags(write=False)
    return m


def _smooth_field(rng: np.random.Generator, resolution: int, knots: int = 6) -> np.ndarray:
    """Low-frequency texture, about unit amplitude: coarse noise, bilinearly upsampled."""
    m = _interp_matrix(resolution, knots)
    return m @ rng.standard_normal((knots, knots)) @ m.T


# ----------------------------------------------------------------------------- chest radiograph


def _draw_cxr(label: str, rng: np.random.Generator, res: int, ov: dict[str, float]):
    u = rng.uniform
    gx, gy = _grid(res)
    # Pose: slight rotation, shift and zoom of the whole patient.
    ang = np.deg2rad(u(-4.0, 4.0))
    zoom = u(0.95, 1.04)
    tx, ty = u(-0.05, 0.05), u(-0.05, 0.04)
    ca, sa = np.cos(ang), np.sin(ang)
    x = (ca * (gx - tx) + sa * (gy - ty)) / zoom
    y = (-sa * (gx - tx) + ca * (gy - ty)) / zoom
    px = 2.0 / res / zoom  # one pixel in body units

    # Intensity levels (0..1) before the global contrast/brightness jitter.
    bg = u(0.02, 0.10)
    tissue = u(0.46, 0.58)
    lung = u(0.10, 0.20)
    medi = u(0.66, 0.76)
    heart = u(0.76, 0.90)
    fluid = u(0.50, 0.62)

    # Geometry of the thorax.
    body_a = u(0.90, 0.95)
    lungs = []
    for side in (-1.0, 1.0):  # -1: image left = patient's right
        lcx = side * u(0.35, 0.38)
        la = u(0.29, 0.32)
        lb = u(0.70, 0.76)
        lcy = u(-0.64, -0.60) + lb  # apex at lcy - lb
        ld = u(0.38, 0.44)  # diaphragm level under this lung
        lungs.append((side, lcx, lcy, la, lb, ld))
    thorax_w = (-lungs[0][1] + lungs[0][3]) + (lungs[1][1] + lungs[1][3])

    if label == "cardiomegaly":
        ctr = u(0.56, 0.64)
    else:
        ctr = u(0.36, 0.44)
    ctr = ov.get("cardiothoracic_ratio", ctr)
    hw = ctr * thorax_w / 2.0
    hcx = u(0.03, 0.07)
    dia = 0.5 * (lungs[0][5] + lungs[1][5])
    hcy = dia - u(0.15, 0.21)
    hb = u(0.27, 0.32)
    hb = max(hb, max(lungs[0][5], lungs[1][5]) - hcy + 0.05)  # heart rests on the diaphragm

    eff_right = float(label == "effusion" and rng.random() < 0.5)  # patient's right = image left
    eff_left = float(label == "effusion" and not eff_right)
    eff_right = ov.get("effusion_right", eff_right)
    eff_left = ov.get("effusion_left", eff_left)
    n_nod = int(round(ov.get("nodule_count", 1.0 if label == "nodule" else 0.0)))

    # Compose: background, body, lungs, fluid, mediastinum, heart, nodules.
    img = np.full((res, res), bg)
    body = _cover(_ellipse_sd(x, y, 0.0, 0.12, body_a, 1.12), px)
    img += body * (tissue - bg)
    abdomen = u(0.60, 0.72)
    img += body * _cover(min(lungs[0][5], lungs[1][5]) - y, px) * (abdomen - tissue)
    texture = _smooth_field(rng, res, 7)
    air = np.zeros((res, res))
    eff_fracs = []
    for side, lcx, lcy, la, lb, ld in lungs:
        sd = _ellipse_sd(x, y, lcx, lcy, la, lb)
        lat = side * (x - lcx) / la  # -1 medial edge .. +1 lateral edge
        sd = np.maximum(sd, y - (ld + 0.05 * np.clip(lat, 0.0, 1.0)))  # diaphragm, lower laterally
        has_fluid = eff_right if side < 0 else eff_left
        if has_fluid >= 0.5:
            height = ld - (lcy - lb)
            f_med = u(0.36, 0.48)
            rise = u(0.12, 0.20)
            t = np.clip((lat + 1.0) / 2.0, 0.0, 1.0) ** 1.5
            level = ld - height * (f_med + rise * t)
            sd_air = np.maximum(sd, y - level)  # air is above the fluid surface
            fl = _cover(np.maximum(sd, level - y), px)
            img += fl * (fluid - img)
            eff_fracs.append(f_med)
        else:
            sd_air = sd
        a = _cover(sd_air, px)
        img += a * (lung + 0.025 * texture - img)
        air = np.maximum(air, a)
    medw = u(0.07, 0.10)
    med = _cover(np.maximum(np.abs(x - 0.01) - medw, y - hcy), px) * body
    img += med * (medi - img)
    hsd = _ellipse_sd(x, y, hcx, hcy, hw, hb)
    hc = _cover(hsd, px)
    img += hc * (heart - img)
    air = air * (1.0 - hc) * (1.0 - med)

    nod_d = 0.0
    if n_nod > 0:
        rr_all = np.arange(res)[:, None]
        rn = u(0.095, 0.12) * zoom  # in image units
        rn_px = rn * res / 2.0
        # keep nodules above the heart, where they cannot merge with it at low resolution
        heart_rows = np.flatnonzero((hc > 0.5).any(1))
        above = rr_all < (heart_rows[0] if heart_rows.size else res)
        free = air > 0.5
        centres: list[tuple[float, float]] = []
        margin = rn_px + max(2.4, 0.06 * res)
        rr, cc = np.mgrid[:res, :res]
        first_left = rng.random() < 0.5
        for j in range(n_nod):
            dist = ndimage.distance_transform_edt(free)
            # alternate lungs; deep inside the aerated field (in a narrow lung: among its
            # deepest pixels, so that the nodule stays clear of the lung's edge)
            side = (gx < 0) if (j % 2 == 0) == first_left else (gx >= 0)
            if dist[side].max() <= rn_px + 1.0:
                side = ~side
            ok = np.where(side, dist, 0.0)
            if np.where(above, ok, 0.0).max() >= rn_px + 1.5:
                ok = np.where(above, ok, 0.0)
            cand = np.flatnonzero(ok >= min(margin, 0.85 * ok.max()))
            k = cand[rng.integers(cand.size)]
            cy_, cx_ = k // res + u(-0.25, 0.25), k % res + u(-0.25, 0.25)
            centres.append((cy_, cx_))
            free &= (rr - cy_) ** 2 + (cc - cx_) ** 2 > (rn_px + 0.5) ** 2
        nval = lung + u(0.85, 1.0) * (heart - lung)
        for cy_, cx_ in centres:
            # pixel-centre coordinates -> image units
            ncx = (cx_ + 0.5) / res * 2.0 - 1.0
            ncy = (cy_ + 0.5) / res * 2.0 - 1.0
            r = np.sqrt((gx - ncx) ** 2 + (gy - ncy) ** 2)
            nc = _cover(r - rn, 2.0 / res)
            img += nc * (nval - img)
        nod_d = rn  # diameter 2 rn over an image 2 units wide

    # Global acquisition jitter: contrast, brightness, gamma, noise.
    contrast = u(0.85, 1.15)
    bright = u(-0.05, 0.05)
    img = (img - 0.45) * contrast + 0.45 + bright
    img = np.clip(img, 0.0, 1.0) ** u(0.9, 1.1)
    img += u(0.008, 0.03) * rng.standard_normal(img.shape, dtype=np.float32)
    out = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)[..., None]
    findings = {
        "cardiothoracic_ratio": float(ctr),
        "effusion_left": float(eff_left >= 0.5),
        "effusion_right": float(eff_right >= 0.5),
        "effusion_height_fraction": float(max(eff_fracs) if eff_fracs else 0.0),
        "nodule_count": float(n_nod),
        "nodule_diameter_fraction": float(nod_d),
    }
    return out, findings


# ----------------------------------------------------------------------------- dermoscopy

_SKIN_LIGHT = np.array([236.0, 198.0, 172.0])
_SKIN_DARK = np.array([216.0, 168.0, 138.0])
_LIGHT_BROWN = np.array([178.0, 118.0, 78.0])
_MID_BROWN = np.array([140.0, 88.0, 56.0])
_DARK_BROWN = np.array([82.0, 50.0, 34.0])
_BLACK = np.array([42.0, 32.0, 32.0])
_RED = np.array([196.0, 68.0, 74.0])
_WHITE = np.array([242.0, 236.0, 238.0])
_VEIL = np.array([118.0, 136.0, 174.0])

_N_ANGLES = 64


def _radius_profile(theta: np.ndarray, terms: list[tuple[int, float, float]]) -> np.ndarray:
    r = np.ones_like(theta)
    for k, amp, phase in terms:
        r = r + amp * np.cos(k * theta - phase)
    return r


def shape_asymmetry(r: np.ndarray) -> float:
    """Asymmetry of a closed contour given as radii at equally spaced angles (len K).

    The smallest, over all mirror axes through the centre, mean |r(a+t) - r(a-t)| / mean r:
    0 for a shape with a mirror axis (circle, ellipse), larger for lopsided ones.
    """
    r = np.asarray(r, dtype=np.float64)
    diffs = np.abs(r[..., None, :] - r[..., _reflections(r.shape[-1])]).mean(-1)
    return diffs.min(-1) / np.maximum(r.mean(-1), 1e-9)


@lru_cache(maxsize=8)
def _reflections(k: int) -> np.ndarray:
    """Row j: the index of each angle mirrored about the axis at angle pi*j/k."""
    i = np.arange(k)
    out = (i[:, None] - i[None, :]) % k
    out.setflags(write=False)
    return out


def border_irregularity(r: np.ndarray, kmax: int | None = None) -> float:
    """Lobulation/notching of a closed contour given as radii at K equally spaced angles.

    RMS amplitude of harmonics 3..kmax (default K/4) of 1/r^2, relative to its mean and
    halved (so a small ripple r = 1 + a cos(k t) scores about a/sqrt(2)). 1/r^2 of an ellipse
    about its centre has harmonics 0 and 2 only, so any ellipse, however elongated, scores 0.
    """
    r = np.asarray(r, dtype=np.float64)
    k = r.shape[-1]
    kmax = kmax or k // 4
    c = np.fft.rfft(1.0 / np.maximum(r, 1e-9) ** 2, axis=-1) / k
    hi = 2.0 * np.abs(c[..., 3 : kmax + 1])
    return 0.5 * np.sqrt((hi**2).sum(-1) / 2.0) / np.maximum(np.abs(c[..., 0]), 1e-12)


_PROFILE_ANGLES = np.arange(_N_ANGLES) * 2 * np.pi / _N_ANGLES


def _profile_on_grid(dx, dy, rho, terms):
    """``_radius_profile`` at each pixel's polar angle, without arctan/cos (complex powers)."""
    z = (dx + 1j * dy) / np.maximum(rho, 1e-9)
    r = np.ones_like(rho)
    zk = np.ones_like(z)
    k_done = 0
    for k, amp, phase in sorted(terms):
        while k_done < k:
            zk = zk * z
            k_done += 1
        r = r + amp * (zk * np.exp(-1j * phase)).real
    return r


def _blob(gx, gy, cx, cy, radius, px, rng=None):
    """A soft disc, or with ``rng`` an irregular blob (random low harmonics of its radius)."""
    dx, dy = gx - cx, gy - cy
    rho = np.sqrt(dx * dx + dy * dy)
    if rng is not None:
        terms = [(k, rng.uniform(0.08, 0.2), rng.uniform(0, 2 * np.pi)) for k in (2, 3)]
        radius = radius * _profile_on_grid(dx, dy, rho, terms)
    return _cover(rho - radius, 1.8 * px)


def _draw_derm(label: str, rng: np.random.Generator, res: int, ov: dict[str, float]):
    u = rng.uniform
    gx, gy = _grid(res)
    px = 2.0 / res
    skin = _SKIN_LIGHT + u(0, 1) * (_SKIN_DARK - _SKIN_LIGHT) + rng.normal(0, 3, 3)
    img = np.broadcast_to(skin, (res, res, 3)).copy()
    tex = _smooth_field(rng, res, 8)
    img += u(3.0, 6.0) * tex[..., None] * np.array([1.0, 0.9, 0.8])

    cx, cy = u(-0.07, 0.07), u(-0.07, 0.07)
    melanoma = label == "melanoma"
    phi = u(0, 2 * np.pi)
    if melanoma:
        r0 = u(0.50, 0.62)
        terms = [
            (1, u(0.12, 0.20), u(0, 2 * np.pi)),
            (2, u(0.07, 0.12), u(0, 2 * np.pi)),
            (3, u(0.08, 0.13), u(0, 2 * np.pi)),
        ]
        for k in rng.choice(np.arange(5, 10), size=3, replace=False):
            terms.append((int(k), u(0.035, 0.06), u(0, 2 * np.pi)))
    else:
        r0 = u(0.22, 0.34)
        e = u(0.0, 0.10)  # ellipse-like elongation, mirror-symmetric
        terms = [(2, e, 2 * phi)]
        terms.append((int(rng.integers(4, 7)), u(0.0, 0.012), u(0, 2 * np.pi)))
    prof = _radius_profile(_PROFILE_ANGLES, terms)
    r0 = ov.get("diameter_fraction", r0 * prof.mean()) / prof.mean()
    # Keep the lesion inside the frame with a margin of at least 3 pixels.
    limit = 1.0 - np.hypot(cx, cy) - 3.0 * px
    if r0 * prof.max() > limit:
        r0 = limit / prof.max()

    dx, dy = gx - cx, gy - cy
    rho = np.sqrt(dx * dx + dy * dy)
    rr = r0 * _profile_on_grid(dx, dy, rho, terms)
    lesion = _cover(rho - rr, 1.2 * px)

    veil = ov.get("blue_white_veil", 1.0 if melanoma else 0.0) >= 0.5
    n_colours = 0
    if melanoma:
        col = _LIGHT_BROWN + rng.normal(0, 6, 3)
        field = np.broadcast_to(col, (res, res, 3)).copy()
        field *= 1.0 + 0.04 * tex[..., None]
        n_colours = 1
        # Eccentric dark pigment, then red / white areas, then the blue-white veil.
        dark = _BLACK if rng.random() < 0.5 else _DARK_BROWN
        placed = []

        # Overrides for evaluator training: ``n_colours`` caps the colours painted (light brown,
        # then the veil, then the dark pigment, then red / white), ``veil_size`` sets the veil's
        # radius relative to the lesion's (drawn: 0.30-0.38). Every random draw is made either
        # way, so phantoms drawn without them are unchanged.
        budget = ov.get("n_colours", np.inf) - 1 - veil

        def spot(colour, rel_r, n_try=12, paint=True):
            # a few candidate centres; the first well clear of the spots already placed
            ang = u(0, 2 * np.pi, n_try)
            d = u(0.15, 0.5, n_try) * r0
            cand = np.stack([cx + d * np.cos(ang), cy + d * np.sin(ang)], 1)
            if placed:
                sep = np.linalg.norm(cand[:, None, :] - np.array(placed)[None], axis=-1).min(1)
                clear = np.flatnonzero(sep > 0.55 * r0)
                c = cand[clear[0]] if clear.size else cand[int(np.argmax(sep))]
            else:
                c = cand[0]
            placed.append(c)
            a = _blob(gx, gy, c[0], c[1], rel_r * r0, px, rng)[..., None]
            tint = colour + rng.normal(0, 5, 3)
            if paint:
                field[:] = field + a * (tint - field)
            return paint

        def spend():
            nonlocal budget
            budget -= 1
            return budget >= 0

        n_colours += spot(dark, u(0.32, 0.42), paint=spend())
        extras = [c for c, p in ((_RED, 0.6), (_WHITE, 0.5)) if rng.random() < p]
        for c in extras:
            n_colours += spot(c, u(0.26, 0.33), paint=spend())
        if veil:
            size = u(0.30, 0.38)
            n_colours += spot(_VEIL, ov.get("veil_size", size))
    else:
        t = u(0, 1)
        col = _LIGHT_BROWN + t * (_MID_BROWN - _LIGHT_BROWN) + rng.normal(0, 4, 3)
        field = np.broadcast_to(col, (res, res, 3)).copy()
        n_colours = 1
        if rng.random() < 0.6:  # a slightly darker, similar-brown centre
            w = np.exp(-((rho / (0.55 * r0)) ** 2))[..., None] * u(0.10, 0.22)
            field *= 1.0 - w
            n_colours = 2
        # faint pigment network
        net = np.cos(gx * np.pi * res / 4.0 + phi) * np.cos(gy * np.pi * res / 4.0)
        field *= 1.0 - 0.03 * net[..., None]
        if "n_colours" in ov:
            raise CraftError("n_colours can be overridden for melanoma phantoms only")
        if veil:
            a = _blob(gx, gy, cx, cy, ov.get("veil_size", 0.45) * r0, px)[..., None]
            field = field + a * (_VEIL - field)
            n_colours += 1
    img += lesion[..., None] * (field - img)

    # Acquisition: brightness/contrast/colour balance jitter and sensor noise.
    gain = u(0.92, 1.06) * (1.0 + rng.normal(0, 0.015, 3))
    img = img * gain + u(-8.0, 8.0)
    img += u(1.5, 4.0) * rng.standard_normal(img.shape, dtype=np.float32)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    # asymmetry and border irregularity are those of the drawn contour (colours aside);
    # diameter_fraction is the mean diameter over the image width.
    findings = {
        "asymmetry": float(shape_asymmetry(prof)),
        "border_irregularity": float(border_irregularity(prof)),
        "n_colours": float(n_colours),
        "blue_white_veil": float(veil),
        "diameter_fraction": float(r0 * prof.mean()),
    }
    return out, findings


_DRAWERS = {"phantom-cxr": _draw_cxr, "phantom-derm": _draw_derm}


# ----------------------------------------------------------------------------- public API


def draw(
    modality: str,
    label: str,
    rng: np.random.Generator,
    resolution: int = 32,
    *,
    overrides: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, dict[str, float]]:
    """Draw one phantom image of ``label`` and return it with its true findings.

    Returns a uint8 array of shape (resolution, resolution, channels) and a dict of floats
    (booleans as 0.0/1.0) keyed by ``PHANTOMS[modality].findings``. ``overrides`` forces
    findings regardless of the label, e.g. ``{"effusion_left": 1, "effusion_right": 1}`` or
    ``{"nodule_count": 2}`` for the chest phantom, ``{"blue_white_veil": 1}`` for dermoscopy
    (there also ``n_colours``, a cap on a melanoma's colours that keeps the veil, and
    ``veil_size``, the veil's radius relative to the lesion's). Every random draw is made with
    or without overrides, so what an override does not name stays as drawn.
    """
    spec = get_spec(modality)
    _check_label(spec, label)
    res = _check_resolution(resolution)
    ov = _check_overrides(modality, overrides)
    if not isinstance(rng, np.random.Generator):
        raise CraftError("rng must be a numpy.random.Generator (numpy.random.default_rng(seed))")
    return _DRAWERS[modality](label, rng, res, ov)


def draw_batch(
    modality: str,
    labels: Sequence[str],
    seed: int,
    resolution: int = 32,
    *,
    overrides: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Draw one image per label: (N, H, W, C) uint8 and the N findings dicts.

    Image i depends only on ``(seed, i, labels[i])``, so a batch is reproducible and a longer
    batch with the same seed starts with the same images.
    """
    spec = get_spec(modality)
    labels = list(labels) if not isinstance(labels, str) else [labels]
    for lab in set(labels):
        _check_label(spec, lab)
    res = _check_resolution(resolution)
    ov = _check_overrides(modality, overrides)
    out = np.empty((len(labels), res, res, spec.channels), dtype=np.uint8)
    findings = []
    children = np.random.SeedSequence(int(seed)).spawn(len(labels))
    drawer = _DRAWERS[modality]
    for i, (lab, child) in enumerate(zip(labels, children, strict=True)):
        img, f = drawer(lab, np.random.default_rng(child), res, ov)
        out[i] = img
        findings.append(f)
    return out, findings
