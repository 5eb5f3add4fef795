"""The phantom oracle: measure clinical findings back from any image, with no learned model.

Works on phantoms and on what a diffusion model draws from them. Generated images are
imperfect (dimmer hearts, blurred edges, shifted intensities), so every threshold adapts to
the image: intensities are normalised by the image's own percentiles, structures are split by
Otsu thresholds computed per image, and sizes are measured relative to the anatomy found
(cardiothoracic ratio, lung height relative to thorax width, lesion diameter relative to the
frame). Edges are located with sub-pixel interpolation so that 32x32 images measure well.

A criterion is a yes/no finding. ``label_criteria`` says, for every label, the value each
criterion must take; an image is predicted as a label only when it is valid and meets ALL of
that label's criteria, so extra findings (both lungs with effusion, several nodules, a nodule
next to an enlarged heart) leave it unlabelled (``""``), as do noise and blank images.

Chest (``phantom-cxr``) criteria: ``lungs_visible``, ``cardiomegaly`` (cardiothoracic ratio >
0.5), ``effusion`` (fluid in at least one lung base), ``bilateral_effusion`` (in both),
``nodule`` (at least one), ``multiple_nodules`` (two or more).
Dermoscopy (``phantom-derm``) criteria: ``lesion_visible``, ``asymmetric``,
``irregular_border``, ``multicolour`` (>= 3 colours), ``blue_white_veil``, ``large_diameter``.

How the chest is read: lungs are the largest dark (below Otsu) region not touching the frame
in each image half; they must be tall, side by side and evenly dark (noise split by a
threshold is not). The cardiothoracic ratio is the widest gap between the lungs' medial edges
in the lower lung over the widest span of their lateral edges, so a dim heart measures the same
as a bright one. A lung whose aerated height is short for the thorax, or against the other
lung, has an effusion. A nodule is a bright island with air of the same lung close by on all
four sides. Dermoscopy: the skin colour is the frame's median; the lesion is what differs from
it (Otsu on the colour difference); its outline is ray-cast from the centre with sub-pixel
crossings; asymmetry mirrors shape and colours about the best axis; colours are classified
by the direction of their difference from the skin (white, blue-grey, red, dark and light
brown).

``criterion_pass_rate`` is the share of the requested label's criteria met (absence items
included), and 0 for an image that is not valid for the modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from craft.data.phantoms import MIN_RESOLUTION, border_irregularity, get_spec, shape_asymmetry
from craft.errors import CraftError

__all__ = [
    "OracleResult",
    "measure",
    "label_criteria",
    "label_agreement",
    "criterion_pass_rate",
    "pass_rate_from_criteria",
    "check_requested",
    "CXR_THRESHOLDS",
    "DERM_THRESHOLDS",
]


@dataclass
class OracleResult:
    """What the oracle measured on N images.

    criteria: per criterion name, a bool array (N,): the finding is present / criterion holds.
    predicted: (N,) label strings, ``""`` where the image matches no label.
    valid: bool (N,): the image looks like this modality at all.
    measurements: per name, a float array (N,) of the raw measurements behind the criteria
        (NaN where the image is not valid), e.g. ``cardiothoracic_ratio`` or ``asymmetry``.
    """

    criteria: dict[str, np.ndarray]
    predicted: np.ndarray
    valid: np.ndarray
    measurements: dict[str, np.ndarray] = field(default_factory=dict)


# Decision thresholds. Ranges measured on 300 clean 32x32 phantoms per label are given; the
# blur / contrast / brightness degradations of the tests move them by a few hundredths.
CXR_THRESHOLDS = {
    # normal and nodule 0.36-0.49, cardiomegaly 0.55-0.67
    "cardiothoracic_ratio": 0.5,
    # aerated lung height over the other lung's: effusion 0.47-0.65, others 0.90-1.0
    "effusion_height_vs_other": 0.8,
    # aerated lung height over thorax width: effusion 0.39-0.52, others 0.72-0.82
    "effusion_height_vs_thorax": 0.6,
    # Otsu class separation of the image: phantoms 3.4-6.3, uniform noise about 3.3
    "min_cnr": 3.0,
    # (threshold - lung mean) / lung std: phantoms 2.8-23, noise 0.8-2.4
    "min_lung_uniformity": 2.5,
}
DERM_THRESHOLDS = {
    # mirror mismatch of shape + colours: nevus 0.02-0.10, melanoma 0.19-0.65
    "asymmetry": 0.12,
    # harmonics >= 3 of the outline: nevus 0.003-0.016, melanoma 0.06-0.38
    "border_irregularity": 0.03,
    # colour classes covering >= 5% of the lesion core: nevus 1-2, melanoma 3-5
    "n_colours": 3,
    # blue-grey share of the lesion core: nevus 0, melanoma 0.08-0.23
    "veil_fraction": 0.05,
    # mean diameter over image width: nevus 0.23-0.36, melanoma 0.49-0.63
    "diameter_fraction": 0.42,
    # Otsu separation of the colour-difference map: phantoms 2.8-11.7
    "min_cnr": 2.0,
}

_CRITERIA = {
    "phantom-cxr": (
        "lungs_visible",
        "cardiomegaly",
        "effusion",
        "bilateral_effusion",
        "nodule",
        "multiple_nodules",
    ),
    "phantom-derm": (
        "lesion_visible",
        "asymmetric",
        "irregular_border",
        "multicolour",
        "blue_white_veil",
        "large_diameter",
    ),
}


def label_criteria(modality: str) -> dict[str, dict[str, bool]]:
    """For each label of ``modality``, the value every criterion must take."""
    spec = get_spec(modality)
    names = _CRITERIA[modality]
    out: dict[str, dict[str, bool]] = {}
    if modality == "phantom-cxr":
        for lab in spec.labels:
            out[lab] = {n: False for n in names}
            out[lab]["lungs_visible"] = True
            if lab != "normal":
                out[lab][lab] = True
    else:
        out["nevus"] = {n: n == "lesion_visible" for n in names}
        out["melanoma"] = {n: True for n in names}
    return out


# ----------------------------------------------------------------------------- shared helpers


def _otsu(values: np.ndarray, bins: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``values`` (N, P) in [0, 1]: Otsu threshold and the contrast-to-noise ratio
    of the two classes it splits (difference of class means over their pooled spread)."""
    n = values.shape[0]
    idx = np.minimum((values * bins).astype(np.int64), bins - 1)
    idx += np.arange(n)[:, None] * bins
    hist = np.bincount(idx.ravel(), minlength=n * bins).reshape(n, bins).astype(np.float64)
    centres = (np.arange(bins) + 0.5) / bins
    w0 = np.cumsum(hist, 1)
    s0 = np.cumsum(hist * centres, 1)
    q0 = np.cumsum(hist * centres**2, 1)
    w1 = w0[:, -1:] - w0
    s1 = s0[:, -1:] - s0
    q1 = q0[:, -1:] - q0
    with np.errstate(divide="ignore", invalid="ignore"):
        m0 = s0 / w0
        m1 = s1 / w1
        between = np.nan_to_num(w0 * w1 * (m0 - m1) ** 2, nan=-1.0)[:, :-1]
        k = np.argmax(between, 1)
        r = np.arange(n)
        v0 = np.maximum(q0[r, k] / w0[r, k] - m0[r, k] ** 2, 0.0)
        v1 = np.maximum(q1[r, k] / w1[r, k] - m1[r, k] ** 2, 0.0)
        cnr = (m1[r, k] - m0[r, k]) / np.sqrt(0.5 * (v0 + v1) + 1e-6)
    cnr = np.nan_to_num(cnr, nan=0.0)
    return (k + 1.0) / bins, cnr


def _quantile_sorted(sorted_values: np.ndarray, q: float) -> float:
    """Linear-interpolated quantile (0..1) of an already sorted 1-D array."""
    pos = q * (sorted_values.size - 1)
    lo = int(pos)
    hi = min(lo + 1, sorted_values.size - 1)
    return float(sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo]))


_CROSS = ndimage.generate_binary_structure(2, 1)
_SQUARE = ndimage.generate_binary_structure(2, 2)


def _row_edges(mask: np.ndarray, img: np.ndarray, thr: float):
    """Per row of a component mask (pixels below ``thr``): presence, sub-pixel left and right
    edge positions (pixel-centre coordinates) where ``img`` crosses ``thr``."""
    h, w = mask.shape
    present = mask.any(1)
    rows = np.arange(h)
    lmin = np.argmax(mask, 1)
    rmax = w - 1 - np.argmax(mask[:, ::-1], 1)
    v_l = img[rows, lmin]
    v_lo = img[rows, np.maximum(lmin - 1, 0)]
    v_r = img[rows, rmax]
    v_ro = img[rows, np.minimum(rmax + 1, w - 1)]
    with np.errstate(divide="ignore", invalid="ignore"):
        fl = np.clip((thr - v_l) / (v_lo - v_l), 0.0, 1.0)
        fr = np.clip((thr - v_r) / (v_ro - v_r), 0.0, 1.0)
    fl = np.where(np.isfinite(fl), fl, 0.5)
    fr = np.where(np.isfinite(fr), fr, 0.5)
    return present, lmin - fl, rmax + fr


def _check_images(modality: str, images: np.ndarray) -> np.ndarray:
    get_spec(modality)
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise CraftError(f"oracle images must be uint8, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise CraftError(
            f"oracle images must be NHWC with 1 or 3 channels, got shape {images.shape}"
        )
    if images.shape[1] != images.shape[2] or images.shape[1] < MIN_RESOLUTION:
        raise CraftError(
            f"oracle images must be square and at least {MIN_RESOLUTION} pixels, "
            f"got {images.shape[1]}x{images.shape[2]}"
        )
    return images


# ----------------------------------------------------------------------------- chest radiograph


def _enclosed(mask: np.ndarray, reach: int) -> np.ndarray:
    """Pixels with a ``mask`` pixel within ``reach`` to the left, right, above and below."""
    h, w = mask.shape
    out = np.ones_like(mask)
    for m in (mask, mask.T):
        cols = np.arange(m.shape[1])[None, :]
        left = np.maximum.accumulate(np.where(m, cols, -(10**6)), axis=1)
        right = np.minimum.accumulate(np.where(m, cols, 10**6)[:, ::-1], axis=1)[:, ::-1]
        ok = (cols - left <= reach) & (right - cols <= reach)
        out &= ok if m is mask else ok.T
    return out


def _lung_pair(air: np.ndarray) -> list[np.ndarray] | None:
    """The largest dark region not touching the frame in each image half, or None."""
    res = air.shape[0]
    lab, n = ndimage.label(air)
    if n < 2:
        return None
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    area = np.bincount(lab.ravel(), minlength=n + 1).astype(np.float64)
    xs = np.bincount(lab.ravel(), weights=np.tile(np.arange(res), res), minlength=n + 1)
    cx = xs / np.maximum(area, 1)
    area[border] = 0
    area[0] = 0
    min_area = 0.02 * res * res
    left = np.where((cx < res / 2) & (area >= min_area), area, 0)
    right = np.where((cx >= res / 2) & (area >= min_area), area, 0)
    if left.max() <= 0 or right.max() <= 0:
        return None
    return [lab == int(np.argmax(left)), lab == int(np.argmax(right))]  # image left, right


def _measure_cxr_one(vs: np.ndarray, thr: float, cnr: float) -> dict[str, float]:
    """Measurements of one normalised, lightly smoothed grayscale image with its Otsu split."""
    res = vs.shape[0]
    out = {"valid": 0.0, "cnr": cnr}
    if cnr < CXR_THRESHOLDS["min_cnr"]:
        out["reject"] = "low_contrast"
        return out
    air = vs < thr
    lungs = _lung_pair(air)
    if lungs is None:
        # A thin (blurred) chest wall can let a lung touch the dark outside: cut one-pixel
        # bridges by an erosion, then give the lungs their rim back.
        pair = _lung_pair(ndimage.binary_erosion(air, _CROSS))
        if pair is not None:
            lungs = [ndimage.binary_dilation(m, _CROSS) & air for m in pair]
    if lungs is None:
        out["reject"] = "no_lung_pair"
        return out

    # Nodules: bright islands inside an aerated lung: non-air pixels that have air of the
    # same lung close by on all four sides. Unlike hole filling this still finds a nodule
    # that blur has joined to the lung's edge by a narrow bridge; the heart, mediastinum,
    # chest wall, diaphragm and fluid all lack air on at least one side.
    min_px = max(2, int(round(2.0 * (res / 32.0) ** 2)))
    reach = max(4, int(round(5.0 * res / 32.0)))
    count = 0
    islands = np.zeros_like(air)
    for k, m in enumerate(lungs):
        isl = _enclosed(m, reach) & ~air
        islands |= isl
        if isl.any():
            hl, hn = ndimage.label(isl, _SQUARE)
            sizes = np.bincount(hl.ravel())[1:]
            count += int((sizes >= min_px).sum())
            lungs[k] = m | isl  # the lung field's outline includes its nodules
    out["nodule_count"] = float(count)

    edges = [_row_edges(m, vs, thr) for m in lungs]
    cols = [_row_edges(m.T, vs.T, thr) for m in lungs]  # per column: top / bottom
    heights, tops, bottoms, widths = [], [], [], []
    for (cp, ctop, cbot), (rp, rl, rr) in zip(cols, edges, strict=True):
        top = ctop[cp].min()
        bot = cbot[cp].max()
        tops.append(top)
        bottoms.append(bot)
        heights.append(bot - top)
        widths.append((rr - rl)[rp].max())
    # Shape sanity: two tall-ish fields side by side.
    overlap = min(bottoms) - max(tops)
    if overlap < 0.5 * min(heights) or min(heights) < 0.15 * res:
        out["reject"] = "lungs_not_side_by_side"
        return out
    if min(h / w for h, w in zip(heights, widths, strict=True)) < 0.6:
        out["reject"] = "lungs_not_tall"
        return out

    # Lung fields are evenly dark: noise split by a threshold is not.
    unif = []
    halo = ndimage.binary_dilation(islands, _CROSS, iterations=2) if islands.any() else islands
    for m in lungs:
        core = ndimage.binary_erosion(m, _CROSS) & air & ~halo  # nodules excluded
        vals = vs[core] if core.sum() >= 4 else vs[m & air]
        unif.append((thr - vals.mean()) / (vals.std() + 1e-6))
    out["lung_uniformity"] = float(min(unif))
    if min(unif) < CXR_THRESHOLDS["min_lung_uniformity"]:
        out["reject"] = "lungs_not_uniform"
        return out

    (pl, l_out, l_med), (pr, r_med, r_out) = edges
    both = pl & pr
    if both.sum() < 3:
        out["reject"] = "no_shared_rows"
        return out
    thorax = (r_out - l_out)[both].max()
    # Heart: the widest gap between the lungs' medial edges, over rows in the lower half of
    # the lung span where both lungs still show a strip of air, leaving out each lung's
    # lowest rows (a costophrenic recess or a fluid meniscus keeps only lateral air there,
    # which would widen the gap). Where fluid hides every such row the heart border cannot
    # be seen: the ratio is NaN and cardiomegaly is not called.
    top = min(tops)
    bot = max(bottoms)
    rows = np.arange(res)
    heart_rows = (
        both
        & (rows >= top + 0.45 * (bot - top))
        & (rows <= bottoms[0] - 0.12 * heights[0])
        & (rows <= bottoms[1] - 0.12 * heights[1])
        & (l_med - l_out >= 0.12 * widths[0])
        & (r_out - r_med >= 0.12 * widths[1])
    )
    if heart_rows.any():
        gap = (r_med - l_med)[heart_rows].max()
        out["cardiothoracic_ratio"] = float(gap / max(thorax, 1e-6))
    else:
        out["cardiothoracic_ratio"] = float("nan")
    out["thorax_width_fraction"] = float(thorax / res)

    # Effusion: a lung whose aerated height is short for the thorax or against the other lung.
    h_l, h_r = heights
    eff = []
    for h, other in ((h_l, h_r), (h_r, h_l)):
        rel_other = h / max(other, 1e-6)
        rel_thorax = h / max(thorax, 1e-6)
        eff.append(
            rel_other < CXR_THRESHOLDS["effusion_height_vs_other"]
            or rel_thorax < CXR_THRESHOLDS["effusion_height_vs_thorax"]
        )
    out["lung_height_ratio"] = float(min(h_l, h_r) / max(h_l, h_r, 1e-6))
    out["lung_height_vs_thorax"] = float(min(h_l, h_r) / max(thorax, 1e-6))
    # patient's right lung is on the image's left
    out["effusion_right"] = float(eff[0])
    out["effusion_left"] = float(eff[1])

    out["valid"] = 1.0
    return out


def _normalise_gray(images: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale scaled to [0, 1] by each image's 1st and 99th percentile, lightly smoothed;
    and each image's percentile span (0..255) to spot blank ones."""
    g = images.astype(np.float32).mean(-1)
    lo = np.percentile(g, 1, axis=(1, 2), keepdims=True)
    hi = np.percentile(g, 99, axis=(1, 2), keepdims=True)
    span = hi - lo
    v = np.clip((g - lo) / np.maximum(span, 1.0), 0.0, 1.0)
    vs = ndimage.gaussian_filter(v, sigma=(0, sigma, sigma), mode="nearest")
    return vs, span[:, 0, 0]


def _measure_cxr(images: np.ndarray) -> tuple[dict, dict]:
    n, res = images.shape[0], images.shape[1]
    vs, span = _normalise_gray(images, 0.5 * res / 32.0)
    keys = (
        "cardiothoracic_ratio",
        "effusion_left",
        "effusion_right",
        "nodule_count",
        "lung_height_ratio",
        "lung_height_vs_thorax",
        "thorax_width_fraction",
        "lung_uniformity",
        "cnr",
    )
    meas = {k: np.full(n, np.nan) for k in keys}
    valid = np.zeros(n, dtype=bool)
    thr, cnr = _otsu(vs.reshape(n, -1))
    for i in range(n):
        if span[i] < 20:  # blank / nearly constant
            continue
        m = _measure_cxr_one(vs[i], float(thr[i]), float(cnr[i]))
        for k in keys:
            if k in m:
                meas[k][i] = m[k]
        valid[i] = m["valid"] > 0
    for k in keys:
        if k != "cnr":
            meas[k][~valid] = np.nan
    with np.errstate(invalid="ignore"):
        el = valid & (meas["effusion_left"] > 0.5)
        er = valid & (meas["effusion_right"] > 0.5)
        crit = {
            "lungs_visible": valid.copy(),
            "cardiomegaly": valid
            & (meas["cardiothoracic_ratio"] > CXR_THRESHOLDS["cardiothoracic_ratio"]),
            "effusion": el | er,
            "bilateral_effusion": el & er,
            "nodule": valid & (meas["nodule_count"] >= 1),
            "multiple_nodules": valid & (meas["nodule_count"] >= 2),
        }
    return crit, meas


# ----------------------------------------------------------------------------- dermoscopy

_N_RAYS = 64
_N_AXES = 12


def _bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sample ``img`` (H, W) or (H, W, C) at float coordinates; zero outside the image."""
    h, w = img.shape[:2]
    pad = np.zeros((h + 2, w + 2) + img.shape[2:], dtype=np.float32)
    pad[1:-1, 1:-1] = img
    flat = pad.reshape((h + 2) * (w + 2), -1)
    y = np.clip(y + 1.0, 0.0, h + 0.999)
    x = np.clip(x + 1.0, 0.0, w + 0.999)
    y0 = np.minimum(y.astype(np.int64), h)
    x0 = np.minimum(x.astype(np.int64), w)
    wy = (y - y0).astype(np.float32)[..., None]
    wx = (x - x0).astype(np.float32)[..., None]
    i = (y0 * (w + 2) + x0).ravel()
    shape = y.shape + (flat.shape[1],)
    v00 = np.take(flat, i, axis=0).reshape(shape)
    v01 = np.take(flat, i + 1, axis=0).reshape(shape)
    v10 = np.take(flat, i + w + 2, axis=0).reshape(shape)
    v11 = np.take(flat, i + w + 3, axis=0).reshape(shape)
    out = (v00 + (v01 - v00) * wx) * (1 - wy) + (v10 + (v11 - v10) * wx) * wy
    return out if img.ndim == 3 else out[..., 0]


def _measure_derm(images: np.ndarray) -> tuple[dict, dict]:
    n, res = images.shape[0], images.shape[1]
    rgb = images.astype(np.float32)
    if rgb.shape[-1] == 1:
        rgb = np.repeat(rgb, 3, -1)
    keys = (
        "asymmetry",
        "shape_asymmetry",
        "border_irregularity",
        "n_colours",
        "veil_fraction",
        "diameter_fraction",
        "cnr",
    )
    meas = {k: np.full(n, np.nan) for k in keys}
    valid = np.zeros(n, dtype=bool)
    t = DERM_THRESHOLDS
    ring = max(1, res // 16)
    border = np.zeros((res, res), dtype=bool)
    border[:ring] = border[-ring:] = True
    border[:, :ring] = border[:, -ring:] = True
    angles = np.arange(_N_RAYS) * 2 * np.pi / _N_RAYS
    step = 0.5
    radii = np.arange(0.0, 0.75 * res, step)
    ray_s, ray_c = np.sin(angles)[:, None] * radii, np.cos(angles)[:, None] * radii
    ax = np.arange(_N_AXES) * np.pi / _N_AXES
    ux, uy = np.cos(ax)[:, None], np.sin(ax)[:, None]
    sigma = 0.5 * res / 32.0
    min_px = max(3, int(round(3.0 * (res / 32.0) ** 2)))

    # Skin colour from the frame's border; every pixel as its colour difference from it.
    skin = np.median(rgb[:, border], axis=1)  # (N, 3)
    d = rgb - skin[:, None, None, :]
    d = ndimage.gaussian_filter(d, (0, sigma, sigma, 0), mode="nearest")
    mag = np.sqrt((d * d).sum(-1))
    top = np.percentile(mag, 99, axis=(1, 2))
    magn = np.clip(mag / np.maximum(top, 1e-6)[:, None, None], 0.0, 1.0)
    thrs, cnrs = _otsu(magn.reshape(n, -1))
    meas["cnr"][:] = cnrs
    for i in range(n):
        if top[i] < 20 or not skin[i, 0] > skin[i, 2] or cnrs[i] < t["min_cnr"]:
            continue
        mi = magn[i]
        thr = float(thrs[i])
        # Otsu splits off the darkest pigment when the lesion has several colours; lower the
        # threshold to halfway between the skin and the faintest lesion colours.
        bvals = mi[border]
        bvals = np.sort(bvals)
        skin_level = _quantile_sorted(bvals, 0.5)
        faint = _quantile_sorted(np.sort(mi[mi > thr]), 0.1)
        thr = min(thr, 0.5 * (skin_level + faint))
        # the skin at the frame must be quiet compared with the lesion
        if _quantile_sorted(bvals, 0.9) > 0.5 * thr + 0.5 * skin_level:
            continue
        lab, k = ndimage.label(mi > thr)
        if k == 0:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        j = int(np.argmax(sizes))
        lesion = ndimage.binary_fill_holes(lab == j, _CROSS)
        if (lesion & border).any() or not 0.01 * res * res <= sizes[j] <= 0.6 * res * res:
            continue
        # a second sizeable blob means this is not one lesion on skin
        if k > 1 and np.partition(sizes, -2)[-2] > 0.25 * sizes[j]:
            continue
        yy, xx = np.nonzero(lesion)
        cy, cx = yy.mean(), xx.mean()

        # Radius profile: cast rays from the centre, last sub-pixel crossing of the threshold.
        vals = _bilinear(mi * ndimage.binary_dilation(lesion, _CROSS), cy + ray_s, cx + ray_c)
        vin = vals > thr
        if not vin.any(1).all():  # not star-shaped around its centre
            continue
        last = vin.shape[1] - 1 - np.argmax(vin[:, ::-1], axis=1)
        rows = np.arange(_N_RAYS)
        va = vals[rows, last]
        vb = vals[rows, np.minimum(last + 1, vin.shape[1] - 1)]
        with np.errstate(divide="ignore", invalid="ignore"):
            frac = np.clip((va - thr) / (va - vb), 0.0, 1.0)
        frac = np.where(np.isfinite(frac), frac, 0.5)
        r = (last + frac) * step
        meas["shape_asymmetry"][i] = shape_asymmetry(r)
        meas["border_irregularity"][i] = border_irregularity(r, kmax=min(16, res // 3))
        meas["diameter_fraction"][i] = 2.0 * r.mean() / res

        # ABCD asymmetry: mirror the lesion (shape and colours together) about the best axis
        # through its centre; whatever still differs is asymmetry.
        di = d[i] * lesion[..., None]
        dy_, dx_ = yy - cy, xx - cx
        dot = dx_[None, :] * ux + dy_[None, :] * uy
        mir = _bilinear(di, cy + 2 * dot * uy - dy_[None, :], cx + 2 * dot * ux - dx_[None, :])
        own = di[yy, xx]
        scale = np.sqrt((own * own).sum(-1)).mean() + 1e-6
        mismatch = np.sqrt(((mir - own[None]) ** 2).sum(-1)).mean(-1) / scale
        meas["asymmetry"][i] = mismatch.min()

        # Colours of the lesion core (partial-volume rim removed), by direction of the colour
        # change from the skin: white (lighter), blue-grey, red, dark and light brown.
        core = ndimage.binary_erosion(lesion, _CROSS, iterations=max(1, res // 32))
        if core.sum() < min_px:
            core = lesion
        dc = rgb[i][core] - skin[i]
        m = np.sqrt((dc * dc).sum(-1)) + 1e-6
        white = dc.sum(-1) / (np.sqrt(3.0) * m) > 0.3
        blue = ~white & ((dc[:, 2] - dc[:, 0]) / m > 0.55)
        red = ~white & ~blue & ((dc[:, 0] - dc[:, 1]) / m > 0.4)
        brown = ~(white | blue | red)
        if brown.any():
            dark = brown & (m >= 0.65 * _quantile_sorted(np.sort(m[brown]), 0.98))
        else:
            dark = brown
        light = brown & ~dark
        total = float(core.sum())
        counts = np.array([c.sum() for c in (white, blue, red, dark, light)])
        meas["n_colours"][i] = float(((counts >= min_px) & (counts >= 0.05 * total)).sum())
        meas["veil_fraction"][i] = counts[1] / total
        valid[i] = True
    for k in keys:
        if k != "cnr":
            meas[k][~valid] = np.nan
    with np.errstate(invalid="ignore"):
        crit = {
            "lesion_visible": valid.copy(),
            "asymmetric": valid & (meas["asymmetry"] > t["asymmetry"]),
            "irregular_border": valid & (meas["border_irregularity"] > t["border_irregularity"]),
            "multicolour": valid & (meas["n_colours"] >= t["n_colours"]),
            "blue_white_veil": valid & (meas["veil_fraction"] >= t["veil_fraction"]),
            "large_diameter": valid & (meas["diameter_fraction"] > t["diameter_fraction"]),
        }
    return crit, meas


# ----------------------------------------------------------------------------- public API

_MEASURE = {"phantom-cxr": _measure_cxr, "phantom-derm": _measure_derm}


def _predict(modality: str, crit: dict[str, np.ndarray], valid: np.ndarray) -> np.ndarray:
    n = valid.shape[0]
    width = max(len(lab) for lab in get_spec(modality).labels)
    predicted = np.full(n, "", dtype=f"<U{width}")
    for lab, expected in label_criteria(modality).items():
        ok = valid.copy()
        for name, want in expected.items():
            ok &= crit[name] == want
        predicted[ok & (predicted == "")] = lab
    return predicted


def measure(modality: str, images: np.ndarray) -> OracleResult:
    """Measure every criterion of ``modality`` on uint8 NHWC ``images`` (N, H, H, C)."""
    images = _check_images(modality, images)
    names = _CRITERIA[modality]
    if images.shape[0] == 0:
        empty = np.zeros(0, dtype=bool)
        return OracleResult(
            criteria={c: empty.copy() for c in names},
            predicted=np.zeros(0, dtype="<U1"),
            valid=empty,
        )
    crit, meas = _MEASURE[modality](images)
    valid = crit[names[0]].copy()
    return OracleResult(
        criteria=crit, predicted=_predict(modality, crit, valid), valid=valid, measurements=meas
    )


def check_requested(modality: str, requested_labels: Sequence[str] | str, n: int) -> np.ndarray:
    """One requested label per image (a single string applies to all of them); a one-line
    error for a count that is not ``n`` or a label the modality does not have."""
    spec = get_spec(modality)
    if isinstance(requested_labels, str):
        requested_labels = [requested_labels] * n
    req = np.asarray(list(requested_labels), dtype=object)
    if req.shape != (n,):
        raise CraftError(f"got {req.size} requested labels for {n} images; give one per image")
    bad = sorted({str(x) for x in req.tolist()} - set(spec.labels))
    if bad:
        raise CraftError(
            f"unknown label {bad[0]!r} for modality {modality}; allowed: {', '.join(spec.labels)}"
        )
    return req.astype(str)


def label_agreement(
    modality: str, images: np.ndarray, requested_labels: Sequence[str]
) -> np.ndarray:
    """1.0 where the oracle's predicted label equals the requested one, else 0.0."""
    images = _check_images(modality, images)
    req = check_requested(modality, requested_labels, images.shape[0])
    res = measure(modality, images)
    return (res.predicted == req).astype(np.float64)


def criterion_pass_rate(
    modality: str, images: np.ndarray, requested_labels: Sequence[str]
) -> np.ndarray:
    """Share (0..1) of the requested label's criteria that each image meets; 0 where the image
    is not valid for the modality at all (noise, blank)."""
    images = _check_images(modality, images)
    req = check_requested(modality, requested_labels, images.shape[0])
    res = measure(modality, images)
    return pass_rate_from_criteria(modality, res, req)


def pass_rate_from_criteria(
    modality: str, result: OracleResult, requested_labels: Sequence[str]
) -> np.ndarray:
    """``criterion_pass_rate`` from an existing ``OracleResult`` (no re-measuring)."""
    n = result.valid.shape[0]
    req = check_requested(modality, requested_labels, n)
    expected = label_criteria(modality)
    rate = np.zeros(n)
    for lab, exp in expected.items():
        sel = req == lab
        if not sel.any():
            continue
        hits = sum((result.criteria[c][sel] == want).astype(np.float64) for c, want in exp.items())
        rate[sel] = hits / len(exp)
    rate[~result.valid] = 0.0
    return rate
