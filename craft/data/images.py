"""Read one image as a hospital stores it (PNG, JPEG, DICOM) into craft's uint8 HxWxC form.

The steps, in order, each governed by one field of :class:`ImageOptions` (which mirrors the
``modalities.<name>.source`` block of the config) so that nothing is converted silently:

1. Decode. Pillow for PNG/JPEG (and other single-frame formats Pillow reads; EXIF orientation
   is applied, as every viewer does). pydicom for DICOM (``.dcm``/``.dicom`` or the ``DICM``
   preamble); YBR data comes out as RGB, PALETTE COLOR through its colour LUT.
2. Map to uint8. 8-bit data is used as stored (DICOM too, when it has no rescale, window or
   VOI table). Grayscale DICOM: Modality LUT (rescale slope
   and intercept), then the VOI window (``dicom_window`` if set, else the file's first
   WindowCenter/WindowWidth, applied with the file's VOILUTFunction, LINEAR by default; else
   the file's VOI LUT table), MONOCHROME1 inverted so that higher = brighter. Everything else
   with more than 8 bits (16-bit PNG, unwindowed DICOM, 16-bit RGB DICOM) follows
   ``intensity``: ``minmax`` stretches the 0.5th..99.5th percentile (falling back to the exact
   min..max when those coincide; a constant image becomes black), ``full`` divides by the
   full range of the stored bits.
3. Alpha. A fully opaque alpha channel is dropped (lossless); any transparency is an error
   unless ``alpha: composite``, which composites onto black.
4. Colour. ``channels: 1`` accepts colour-stored images whose R, G and B are identical (gray
   content, lossless). Any other mismatch follows ``color``: ``convert`` uses ITU-R 601
   luminance (0.299 R + 0.587 G + 0.114 B, Pillow's "L") or repeats gray into R, G, B;
   ``error`` raises.
5. Square and resize, after the uint8 mapping, with Pillow's BILINEAR filter (which widens
   its support when shrinking, so downscaling is antialiased): ``pad`` centres the image on
   a black square, ``crop`` keeps the centred square, ``squash`` resizes directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from craft.errors import CraftError

DICOM_SUFFIXES = {".dcm", ".dicom"}
_OPT = "modalities.<name>.source"  # where the options live in the config, for messages


@dataclass(frozen=True)
class ImageOptions:
    """How raw images become uint8 squares; mirrors the config's ``source`` image fields."""

    channels: int
    resolution: int
    resize: str = "pad"
    color: str = "convert"
    alpha: str = "error"
    intensity: str = "minmax"
    dicom_window: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        allowed = {
            "channels": (1, 3),
            "resize": ("pad", "crop", "squash"),
            "color": ("convert", "error"),
            "alpha": ("error", "composite"),
            "intensity": ("minmax", "full"),
        }
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise ValueError(
                    f"ImageOptions.{name} must be one of {values}, got {getattr(self, name)!r}"
                )
        if self.resolution < 1:
            raise ValueError(f"ImageOptions.resolution must be positive, got {self.resolution}")
        if self.dicom_window is not None and (
            len(self.dicom_window) != 2 or self.dicom_window[1] <= 0
        ):
            raise ValueError(
                f"ImageOptions.dicom_window must be (center, width > 0), got {self.dicom_window}"
            )


def read_image(path: Path, opts: ImageOptions, gray_once: bool = False) -> np.ndarray:
    """Read one image file; uint8 array of shape (resolution, resolution, channels).

    With ``gray_once`` a grayscale image of a ``channels: 3`` modality comes back with one
    channel (resolution, resolution, 1), as craft.store.ImageColumn stores it: squared,
    resized and handed over once, not three times (prepare's decode workers). The colour
    rules (``color: error``) apply all the same."""
    path = Path(path)
    if not path.is_file():
        raise CraftError(f"{path}: image file not found; check the path (and source.image_root)")
    if is_dicom(path):
        pixels, alpha = _read_dicom(path, opts), None
    else:
        pixels, alpha = _read_pillow(path, opts)
    pixels = _apply_alpha(pixels, alpha, opts, path)
    pixels = _match_channels(pixels, opts, path, repeat_gray=not gray_once)
    return _to_square(pixels, opts)


def read_images(opts: ImageOptions, paths: Sequence[Path | str]) -> list[np.ndarray | CraftError]:
    """Each path's image read by :func:`read_image` with ``gray_once`` (a grayscale image with
    one channel, as craft.store.ImageColumn stores it), or the error that says why it would
    not read: one task of prepare's decode workers, which import this module and no more."""
    out: list[np.ndarray | CraftError] = []
    for path in paths:
        try:
            out.append(read_image(Path(path), opts, gray_once=True))
        except CraftError as err:
            out.append(err)
    return out


# ----------------------------------------------------------------------------- decoding


def is_dicom(path: Path) -> bool:
    """Whether ``path`` is read as DICOM: a .dcm/.dicom name, or the ``DICM`` preamble."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError as err:
        raise CraftError(
            f"{path}: cannot read the file ({err.strerror}); check its permissions"
        ) from None
    return head[128:132] == b"DICM"


#: The first bytes of the picture formats a file named .dcm may really be.
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF",
          b"MM\x00*": "TIFF", b"BM": "BMP", b"GIF8": "GIF"}  # fmt: skip


def _refuse_picture(path: Path) -> None:
    """A file named .dcm that DICOM cannot read may be a picture exported under that name
    (its DICOM tags lost): say so. Read only when DICOM fails, off the usual path."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        return  # the caller's own error says the file cannot be read
    kind = next((k for magic, k in _MAGIC.items() if head.startswith(magic)), None)
    if kind is not None:
        raise CraftError(
            f"{path}: a {kind} image named {path.suffix}, not a DICOM file; rename it to "
            f".{kind.lower()} (or export the DICOM itself) and fix its row"
        )


def _read_pillow(path: Path, opts: ImageOptions) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode with Pillow; (uint8 HxW or HxWx3, uint8 alpha HxW or None)."""
    try:
        with Image.open(path) as im:
            n_frames = getattr(im, "n_frames", 1)
            if n_frames > 1:
                raise CraftError(
                    f"{path}: has {n_frames} frames; craft reads single 2D images, so save the "
                    "frame you want as its own file"
                )
            rawmode = im.tile[0].args if im.tile else None
            fmt = im.format
            im.load()
            im = ImageOps.exif_transpose(im)
    except CraftError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise CraftError(
            f"{path}: not a readable image ({_one_line(err)}); replace the file or remove its row"
        ) from None

    if (
        fmt == "PNG"
        and isinstance(rawmode, str)
        and rawmode.endswith(";16B")
        and not im.mode.startswith("I")
    ):
        # Pillow keeps only the high byte of 16-bit colour / gray+alpha PNGs: that is "full".
        if opts.intensity != "full":
            raise CraftError(
                f"{path}: 16-bit colour PNG, which can only be read to 8 bits by its full range; "
                f"set {_OPT}.intensity: full or save the image with 8 bits per channel"
            )

    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.uint8) * np.uint8(255), None
    if mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
        mode = im.mode
    if mode == "YCbCr":
        im, mode = im.convert("RGB"), "RGB"
    if mode in ("L", "RGB"):
        return np.asarray(im), None
    if mode in ("LA", "RGBA"):
        arr = np.asarray(im)
        color = arr[..., 0] if mode == "LA" else arr[..., :3]
        return np.ascontiguousarray(color), np.ascontiguousarray(arr[..., -1])
    if mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.uint16)
        return _to_uint8(arr, opts.intensity, (0, 65535)), None
    if mode in ("I", "F"):
        arr = np.asarray(im)
        full = (0, 65535) if mode == "I" and arr.min() >= 0 and arr.max() <= 65535 else None
        if opts.intensity == "full" and full is None:
            raise CraftError(
                f"{path}: {'32-bit integer' if mode == 'I' else 'floating-point'} image has no "
                f"defined full range; set {_OPT}.intensity: minmax or save it as 8/16-bit"
            )
        return _to_uint8(arr, opts.intensity, full), None
    raise CraftError(
        f"{path}: image mode {mode} is not supported (supported: grayscale, RGB, RGBA, palette, "
        "8/16-bit); convert the file to an RGB or grayscale PNG"
    )


def _read_dicom(path: Path, opts: ImageOptions) -> np.ndarray:
    """Decode a DICOM to uint8 HxW (grayscale, display-ready) or HxWx3 (colour)."""
    import pydicom
    from pydicom.pixels import apply_color_lut

    try:
        ds = pydicom.dcmread(path, force=path.suffix.lower() in DICOM_SUFFIXES)
    except Exception as err:  # pydicom raises many types on malformed input
        _refuse_picture(path)
        raise CraftError(
            f"{path}: not a readable DICOM file ({_one_line(err)}); replace the file or "
            "remove its row"
        ) from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        _refuse_picture(path)
        raise CraftError(f"{path}: DICOM file has no pixel data (not an image); remove its row")
    try:
        n_frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        n_frames = 1
    if n_frames > 1:
        raise CraftError(
            f"{path}: multi-frame DICOM with {n_frames} frames; craft reads single 2D images "
            "(multi-frame files only with 1 frame), so export the frame you want as its own file"
        )
    try:
        arr = ds.pixel_array
        pi = str(ds.PhotometricInterpretation).strip()
    except Exception as err:  # missing decoder plugins, truncated data, missing tags
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", "unknown transfer syntax")
        if "missing" in str(err) and "plugin" in str(err):
            raise CraftError(
                f"{path}: no decoder installed for its DICOM pixel data ({name}); install one "
                "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or gdcm) or convert "
                "the file to an uncompressed DICOM"
            ) from None
        raise CraftError(
            f"{path}: cannot decode DICOM pixel data ({name}): {_one_line(err)}; the file looks "
            "damaged, replace it or remove its row"
        ) from None
    if arr.ndim == 3 and n_frames == 1 and int(ds.get("SamplesPerPixel", 1)) == 1:
        arr = arr[0]  # a 1-frame volume decoded as (1, rows, cols)

    if pi == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _scale(rgb, 0, 2**bits - 1) if rgb.dtype != np.uint8 else rgb
    if arr.ndim == 3:  # RGB; pydicom has already converted YBR to RGB
        if arr.dtype == np.uint8:
            return arr
        bits = int(ds.get("BitsStored", 8 * arr.dtype.itemsize))
        return _to_uint8(arr, opts.intensity, (0, 2**bits - 1))
    if pi not in ("MONOCHROME1", "MONOCHROME2"):
        raise CraftError(
            f"{path}: DICOM photometric interpretation {pi} is not supported; convert it"
        )

    def gray(stored: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
        return _dicom_gray(ds, stored, opts, path, counts)

    out = _by_levels(arr, gray)
    return out if out is not None else gray(arr)


def _dicom_gray(
    ds, arr: np.ndarray, opts: ImageOptions, path: Path, counts: np.ndarray | None = None
) -> np.ndarray:
    """A grayscale DICOM's stored values ``arr`` to display-ready uint8: Modality LUT, then
    the window, the VOI table or the stretch, then MONOCHROME1's inversion. With ``counts``,
    ``arr`` holds the image's levels, each held by that many pixels (:func:`_by_levels`)."""
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(arr, ds)
    window = opts.dicom_window or _file_window(ds)
    if window is not None:
        center, width = window
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        if width <= 0 or (function == "LINEAR" and width < 1):
            raise CraftError(
                f"{path}: DICOM window width {width:g} is invalid; set {_OPT}.dicom_window: "
                "[center, width] to override it"
            )
        unit = _voi_window(values, center, width, function)
    elif "VOILUTSequence" in ds:
        unit = _voi_table(values, ds)
    elif values.dtype == np.uint8 and int(ds.get("BitsStored", 8)) == 8:
        unit = arr.astype(np.float32) / 255.0  # plain 8-bit, no rescale: used as stored
    else:
        unit = _to_unit(
            values,
            opts.intensity,
            _stored_range(ds, arr, apply_modality_lut),
            None if counts is not None else _rank_source(ds, arr, values),
            counts,
        )
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        unit = 1.0 - unit
    return _quantize(unit)


def _rank_source(ds, arr: np.ndarray, values: np.ndarray) -> np.ndarray | None:
    """``arr`` where the Modality LUT maps it to ``values`` element by element and in the
    same order (none, or a rescale with a positive slope), so that its histogram ranks
    ``values`` (:func:`stretch_ends`); else None."""
    if arr.dtype.kind not in "iu" or ds.get("ModalityLUTSequence"):
        return None
    if values is arr:
        return arr
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
    except (TypeError, ValueError):
        return None
    return arr if slope > 0 else None


def _file_window(ds) -> tuple[float, float] | None:
    """The file's first (WindowCenter, WindowWidth), or None."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    from pydicom.multival import MultiValue

    def first(value):
        return value[0] if isinstance(value, (MultiValue, list, tuple)) else value

    try:
        return float(first(ds.WindowCenter)), float(first(ds.WindowWidth))
    except (TypeError, ValueError, IndexError):
        return None


def _voi_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 window, scaled to [0, 1]."""
    x = x.astype(np.float64, copy=False)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    return np.clip((x - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)  # LINEAR


def _voi_table(values: np.ndarray, ds) -> np.ndarray:
    """The first VOI LUT table of the file, scaled to [0, 1].

    Written out here because pydicom 3.0's apply_voi wraps inputs beyond an 8-bit table's
    range around instead of clipping them to its last entry (PS3.3 C.11.2.1.1).
    """
    item = ds.VOILUTSequence[0]
    n_entries, first, bits = (int(v) for v in item.LUTDescriptor)
    n_entries = n_entries or 65536
    data = item.LUTData
    if isinstance(data, bytes):  # VR OW: 16-bit words in the file's byte order
        little = (getattr(ds, "original_encoding", None) or (None, True))[1] is not False
        table = np.frombuffer(data, dtype="<u2" if little else ">u2")[:n_entries]
    else:
        table = np.atleast_1d(np.asarray(data))
    index = np.clip(np.rint(values).astype(np.int64) - first, 0, len(table) - 1)
    return table.astype(np.float64)[index] / (2**bits - 1)


def _stored_range(ds, arr: np.ndarray, modality_lut) -> tuple[float, float]:
    """Full range of the stored bits, passed through the Modality LUT."""
    bits = int(ds.get("BitsStored", 8 * arr.dtype.itemsize))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        raw = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    else:
        raw = np.array([0, 2**bits - 1], dtype=np.int64)
    try:
        ends = np.asarray(modality_lut(raw, ds), dtype=np.float64)
    except Exception:
        ends = raw.astype(np.float64)
    return float(ends.min()), float(ends.max())


# ----------------------------------------------------------------------------- intensity


#: The stretch of ``intensity: minmax``, in percent.
STRETCH = (0.5, 99.5)


def _to_unit(
    values: np.ndarray,
    intensity: str,
    full: tuple[float, float] | None,
    raw: np.ndarray | None = None,
    counts: np.ndarray | None = None,
) -> np.ndarray:
    """Map >8-bit values to [0, 1] by percentile stretch ("minmax") or full range ("full").
    ``raw``, where given, is the integer array that ``values`` maps element by element and
    increasingly (itself, or a DICOM rescale with a positive slope): the percentiles are
    then found from its histogram (:func:`stretch_ends`). With ``counts`` the values are an
    image's levels, each held by that many pixels (:func:`_by_levels`)."""
    if intensity == "full" and full is not None:
        lo, hi = full
    else:
        if counts is not None:
            lo, hi = stretch_ends_counts(values, counts)
            held = values[counts > 0]
        else:
            lo, hi = stretch_ends(values, raw)
            held = values
        if hi <= lo:
            lo, hi = float(held.min()), float(held.max())
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    out = (values.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def _to_uint8(values: np.ndarray, intensity: str, full: tuple[float, float] | None) -> np.ndarray:
    def per_level(levels: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return _quantize(_to_unit(levels, intensity, full, counts=counts))

    out = _by_levels(values, per_level)
    if out is not None:
        return out
    raw = values if values.dtype.kind in "iu" else None
    return _quantize(_to_unit(values, intensity, full, raw))


#: Widest range of stored integers that :func:`stretch_ends` counts (16-bit images and more).
_HISTOGRAM_SPAN = 1 << 20


def stretch_ends(values: np.ndarray, raw: np.ndarray | None = None) -> tuple[float, float]:
    """``np.percentile(values, STRETCH)``, bit for bit.

    A partition of a 1024x1024 image's values (what np.percentile does) is most of a 16-bit
    image's decode time. Where ``values`` is an increasing element-wise map of an integer
    array ``raw`` of a modest range, the two order statistics each percentile interpolates
    are found from ``raw``'s histogram instead (a tenth of the time), read from ``values`` at
    a pixel that holds them, and interpolated as numpy does (its 'linear' method: index
    (n - 1) q, weight from the index's fraction, ``numpy.lib._function_base_impl._lerp``).
    tests/data/test_images.py holds the two equal over random images, so a numpy that
    changed its formula fails there, not silently here."""
    flat = values.ravel()
    n = flat.size
    if raw is None or raw.size != n or raw.dtype.kind not in "iu" or n < 2:
        return tuple(float(v) for v in np.percentile(values, list(STRETCH)))
    ints = raw.ravel()
    base, top = int(ints.min()), int(ints.max())
    if top - base >= _HISTOGRAM_SPAN:
        return tuple(float(v) for v in np.percentile(values, list(STRETCH)))
    shifted = ints
    if base != 0 or ints.dtype.kind != "u":
        shifted = ints.astype(np.int64)
        shifted -= base
    below = np.cumsum(np.bincount(shifted, minlength=top - base + 1))  # rows <= each value

    def order_statistic(rank: int):
        level = base + np.searchsorted(below, rank, side="right")
        return flat[int(np.argmax(ints == level))]  # the value at a pixel of that level

    return _percentile_ends(order_statistic, n)


def stretch_ends_counts(values: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """``np.percentile(np.repeat(values, counts), STRETCH)``, bit for bit, without repeating:
    ``values`` of each level of an image and ``counts`` the pixels at each (:func:`_by_levels`).
    The values need not increase with the level (a DICOM rescale of negative slope, a
    Modality LUT): they are ranked by sorting."""
    held = counts > 0
    ranked, weight = values[held], counts[held]
    order = np.argsort(ranked, kind="stable")
    ranked = ranked[order]
    below = np.cumsum(weight[order])  # pixels at or below each ranked value

    def order_statistic(rank: int):
        return ranked[int(np.searchsorted(below, rank, side="right"))]

    return _percentile_ends(order_statistic, int(below[-1]))


def _percentile_ends(order_statistic, n: int) -> tuple[float, float]:
    """The STRETCH percentiles of n values given the value at each 0-based rank, interpolated
    as numpy's 'linear' method does (index (n - 1) q, weight from its fraction,
    ``numpy.lib._function_base_impl._lerp``)."""
    q = np.true_divide(np.asarray(STRETCH, dtype=np.float64), 100)
    virtual = (n - 1) * q
    previous = np.floor(virtual)
    gamma = virtual - previous
    ends = []
    for v, p, t in zip(virtual, previous, gamma, strict=True):
        ranks = (n - 1, n - 1) if v >= n - 1 else (0, 0) if v < 0 else (int(p), int(p) + 1)
        a, b = (np.asarray([order_statistic(r)]) for r in ranks)
        diff = b - a
        out = a + diff * t
        if t >= 0.5:
            out = b - diff * (1 - t)
        ends.append(float(out[0]))
    return ends[0], ends[1]


#: Pixels below which an image is mapped pixel by pixel, not level by level (_by_levels).
_LEVELS_MIN_PIXELS = 4096


def _by_levels(arr: np.ndarray, per_level) -> np.ndarray | None:
    """An element-wise map of an integer image computed once per level instead of once per
    pixel: ``per_level(levels, counts)`` gives the output of each level from the image's
    minimum to its maximum (``counts``: the pixels at each, for what depends on the whole
    image: the percentile stretch), gathered at the pixels. Every step of a 16-bit image's
    way to uint8 (Modality LUT, window, VOI table, stretch, MONOCHROME1, rounding) maps each
    pixel by its stored value alone, so this gives the same bytes; a 1024x1024 CT slice holds
    a few thousand levels for its million pixels. None where ``arr`` is not integer, small,
    or its range is wider than its pixels."""
    if arr.dtype.kind not in "iu" or arr.size < _LEVELS_MIN_PIXELS:
        return None
    base, top = int(arr.min()), int(arr.max())
    span = top - base + 1
    if span > min(_HISTOGRAM_SPAN, arr.size):
        return None
    idx = arr.astype(np.intp)
    idx -= base
    counts = np.bincount(idx.ravel(), minlength=span)
    levels = np.arange(base, top + 1).astype(arr.dtype)
    return per_level(levels, counts)[idx]


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return _to_uint8(values, "full", (lo, hi))


def _quantize(unit: np.ndarray) -> np.ndarray:
    return np.rint(unit * 255.0).astype(np.uint8)


# ------------------------------------------------------------------- alpha, colour, geometry


def _apply_alpha(
    pixels: np.ndarray, alpha: np.ndarray | None, opts: ImageOptions, path: Path
) -> np.ndarray:
    if alpha is None or bool((alpha == 255).all()):
        return pixels
    if opts.alpha == "error":
        raise CraftError(
            f"{path}: image has transparency (alpha channel); set {_OPT}.alpha: composite to "
            "composite it onto black, or save the image without alpha"
        )
    a = alpha.astype(np.uint16)
    if pixels.ndim == 3:
        a = a[..., None]
    return ((pixels.astype(np.uint16) * a + 127) // 255).astype(np.uint8)


def _match_channels(
    pixels: np.ndarray, opts: ImageOptions, path: Path, repeat_gray: bool = True
) -> np.ndarray:
    is_color = pixels.ndim == 3
    if opts.channels == 1 and is_color:
        if bool(
            (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
        ):
            return np.ascontiguousarray(pixels[..., 0])  # gray stored as RGB: lossless
        if opts.color == "error":
            raise CraftError(
                f"{path}: colour image but the modality has channels: 1; set {_OPT}.color: convert "
                "to convert it to grayscale by luminance, or fix the image"
            )
        return np.asarray(Image.fromarray(pixels, "RGB").convert("L"))
    if opts.channels == 3 and not is_color:
        if opts.color == "error":
            raise CraftError(
                f"{path}: grayscale image but the modality has channels: 3; set {_OPT}.color: "
                "convert to repeat the gray value in R, G and B, or fix the image"
            )
        return np.repeat(pixels[..., None], 3, axis=2) if repeat_gray else pixels
    return pixels


def _to_square(pixels: np.ndarray, opts: ImageOptions) -> np.ndarray:
    im = Image.fromarray(np.ascontiguousarray(pixels), "RGB" if pixels.ndim == 3 else "L")
    w, h = im.size
    if opts.resize == "pad" and w != h:
        side = max(w, h)
        canvas = Image.new(im.mode, (side, side), 0)
        canvas.paste(im, ((side - w) // 2, (side - h) // 2))
        im = canvas
    elif opts.resize == "crop" and w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    r = opts.resolution
    if im.size != (r, r):
        im = im.resize((r, r), Image.Resampling.BILINEAR)
    out = np.asarray(im)
    if out.ndim == 2:
        out = out[..., None]
    return np.ascontiguousarray(out)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:200]
