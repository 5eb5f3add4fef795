"""read_image on real files: Pillow-made PNG/JPEG, nilearn's MNI152 slice, pydicom's DICOMs."""

from __future__ import annotations

import importlib.util
import struct
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file, get_testdata_files

from craft.data.images import ImageOptions, read_image
from craft.errors import CraftError


def opts(channels=1, resolution=16, **kw) -> ImageOptions:
    return ImageOptions(channels=channels, resolution=resolution, **kw)


def save(arr: np.ndarray, path: Path, mode: str | None = None, **kw) -> Path:
    Image.fromarray(arr, mode).save(path, **kw) if mode else Image.fromarray(arr).save(path, **kw)
    return path


def write_png16(path: Path, arr: np.ndarray, color_type: int) -> Path:
    """A 16-bit-per-sample PNG written by hand (Pillow cannot write 16-bit colour)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def percentile_stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(values, [0.5, 99.5])
    return np.rint(np.clip((values.astype(np.float64) - lo) / (hi - lo), 0, 1) * 255).astype(
        np.uint8
    )


def dicom(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, written out independently, in [0, 1]."""
    lower, upper = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    y = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.where(x <= lower, 0.0, np.where(x > upper, 1.0, y))


# ----------------------------------------------------------------------------- options


def test_options_reject_unknown_values():
    with pytest.raises(ValueError, match="resize"):
        opts(resize="stretch")
    with pytest.raises(ValueError, match="channels"):
        opts(channels=2)
    with pytest.raises(ValueError, match="dicom_window"):
        opts(dicom_window=(40, 0))


# ----------------------------------------------------------------------------- 8-bit PNG / JPEG


def test_gray_png_read_exactly(tmp_path):
    arr = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    out = read_image(save(arr, tmp_path / "g.png"), opts(resolution=16))
    assert out.shape == (16, 16, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], arr)


def test_pad_crop_squash_geometry(tmp_path):
    arr = np.zeros((20, 40), np.uint8)
    arr[:, 20:] = 255  # left half black, right half white
    path = save(arr, tmp_path / "wide.png")
    pad = read_image(path, opts(resolution=40, resize="pad"))[..., 0]
    assert (pad[:10] == 0).all() and (pad[30:] == 0).all()  # black bars top and bottom
    np.testing.assert_array_equal(pad[10:30], arr)
    crop = read_image(path, opts(resolution=20, resize="crop"))[..., 0]
    np.testing.assert_array_equal(crop, arr[:, 10:30])
    squash = read_image(path, opts(resolution=20, resize="squash"))[..., 0]
    assert squash.shape == (20, 20)
    assert (squash[:, :8] == 0).all() and (squash[:, 12:] == 255).all()  # halves kept, no bars


def test_downscale_is_antialiased(tmp_path):
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    out = read_image(save(checker, tmp_path / "c.png"), opts(resolution=16))
    assert np.abs(out.astype(int) - 128).max() <= 2  # averaged, not sampled to 0/255


def test_jpeg_gray_and_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray = save(rng.integers(0, 256, (32, 32), dtype=np.uint8), tmp_path / "g.jpg", quality=95)
    out = read_image(gray, opts(resolution=32))
    np.testing.assert_array_equal(out[..., 0], np.asarray(Image.open(gray)))
    rgb = save(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), tmp_path / "c.jpeg")
    out = read_image(rgb, opts(channels=3, resolution=8))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8


def test_rgb_to_gray_uses_luminance_or_errors(tmp_path):
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[..., 0] = 200  # pure red
    path = save(arr, tmp_path / "red.png")
    out = read_image(path, opts(resolution=8, color="convert"))
    assert out.shape == (8, 8, 1) and (out == round(200 * 0.299)).all()
    with pytest.raises(CraftError, match=r"red\.png.*color: convert"):
        read_image(path, opts(resolution=8, color="error"))


def test_gray_stored_as_rgb_is_not_a_colour_mismatch(tmp_path):
    arr = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8)[..., None], 3, axis=2)
    out = read_image(save(arr, tmp_path / "grayrgb.png"), opts(resolution=8, color="error"))
    np.testing.assert_array_equal(out[..., 0], arr[..., 0])


def test_gray_to_rgb_repeats_or_errors(tmp_path):
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8)
    path = save(arr, tmp_path / "g.png")
    out = read_image(path, opts(channels=3, resolution=8))
    assert out.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], arr)
    with pytest.raises(CraftError, match=r"g\.png.*channels: 3.*color"):
        read_image(path, opts(channels=3, resolution=8, color="error"))
    # prepare's workers keep gray once (resized and handed over once), the same pixels
    once = read_image(path, opts(channels=3, resolution=4), gray_once=True)
    assert once.shape == (4, 4, 1)
    np.testing.assert_array_equal(
        once[..., 0], read_image(path, opts(channels=3, resolution=4))[..., 2]
    )
    with pytest.raises(CraftError, match=r"g\.png.*channels: 3.*color"):
        read_image(path, opts(channels=3, resolution=8, color="error"), gray_once=True)


def test_rgba_alpha_error_composite_and_opaque(tmp_path):
    arr = np.full((8, 8, 4), 200, np.uint8)
    arr[..., 3] = 255
    opaque = save(arr, tmp_path / "opaque.png")
    assert (read_image(opaque, opts(channels=3, resolution=8)) == 200).all()
    arr[:4, :, 3] = 128
    translucent = save(arr, tmp_path / "alpha.png")
    with pytest.raises(CraftError, match=r"alpha\.png.*alpha: composite"):
        read_image(translucent, opts(channels=3, resolution=8))
    out = read_image(translucent, opts(channels=3, resolution=8, alpha="composite"))
    assert (out[:4] == round(200 * 128 / 255)).all() and (out[4:] == 200).all()


def test_palette_png(tmp_path):
    index = np.indices((8, 8)).sum(0).astype(np.uint8) % 3
    im = Image.fromarray(index, "P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (253 * 3))
    path = tmp_path / "pal.png"
    im.save(path)
    out = read_image(path, opts(channels=3, resolution=8))
    np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))
    im.save(tmp_path / "pal_t.png", transparency=0)  # index 0 transparent
    with pytest.raises(CraftError, match="alpha"):
        read_image(tmp_path / "pal_t.png", opts(channels=3, resolution=8))
    out = read_image(tmp_path / "pal_t.png", opts(channels=3, resolution=8, alpha="composite"))
    assert (out[index == 0] == 0).all() and (out[index == 1] == [0, 255, 0]).all()


# ----------------------------------------------------------------------------- 16-bit


def mni_slice() -> np.ndarray:
    """Middle axial slice of nilearn's bundled MNI152 T1 template as uint16 (no nilearn import)."""
    nib = pytest.importorskip("nibabel")
    spec = importlib.util.find_spec("nilearn")
    if spec is None:
        pytest.skip("nilearn not installed")
    files = sorted(
        Path(spec.submodule_search_locations[0]).glob("datasets/data/mni_icbm152_t1*.nii.gz")
    )
    if not files:
        pytest.skip("nilearn's MNI152 template is not shipped in this version")
    volume = np.asarray(nib.load(files[0]).dataobj, dtype=np.float64)
    assert volume.ndim == 3
    section = np.rot90(volume[:, :, volume.shape[2] // 2])
    return np.rint(section / section.max() * 60000).astype(np.uint16)


def test_mni152_slice_16bit_png(tmp_path):
    arr = mni_slice()
    path = save(arr, tmp_path / "mni.png")
    assert Image.open(path).mode.startswith("I;16")
    h, w = arr.shape
    side = max(h, w)
    out = read_image(path, opts(resolution=side))[..., 0]
    top, left = (side - h) // 2, (side - w) // 2
    np.testing.assert_allclose(out[top : top + h, left : left + w], percentile_stretch(arr), atol=1)
    full = read_image(path, opts(resolution=side, intensity="full"))[..., 0]
    expected = np.rint(arr / 65535 * 255).astype(np.uint8)
    np.testing.assert_allclose(full[top : top + h, left : left + w], expected, atol=1)
    assert full.max() < 240 and out.max() == 255  # full range keeps the headroom; minmax stretches


def test_16bit_gray_intensity_modes_differ(tmp_path):
    arr = np.linspace(1000, 3000, 16 * 16).reshape(16, 16).astype(np.uint16)
    path = save(arr, tmp_path / "g16.png")
    stretched = read_image(path, opts())[..., 0]
    full = read_image(path, opts(intensity="full"))[..., 0]
    assert stretched.min() == 0 and stretched.max() == 255
    assert full.min() == round(1000 / 65535 * 255) and full.max() == round(3000 / 65535 * 255)


def test_16bit_colour_png_needs_full_intensity(tmp_path):
    arr = np.random.default_rng(1).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    path = write_png16(tmp_path / "rgb16.png", arr, color_type=2)
    with pytest.raises(CraftError, match=r"rgb16\.png.*intensity: full"):
        read_image(path, opts(channels=3, resolution=8))
    out = read_image(path, opts(channels=3, resolution=8, intensity="full"))
    np.testing.assert_array_equal(out, (arr >> 8).astype(np.uint8))


# ----------------------------------------------------------------------------- unreadable files


def test_missing_file(tmp_path):
    with pytest.raises(CraftError, match=r"nope\.png.*not found"):
        read_image(tmp_path / "nope.png", opts())


def test_truncated_png(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    full = save(arr, tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(full[: len(full) // 2])
    with pytest.raises(CraftError, match=r"cut\.png.*not a readable image"):
        read_image(tmp_path / "cut.png", opts())


@pytest.mark.parametrize("name", ["noise.png", "noise.jpg", "noise.bin"])
def test_random_bytes(tmp_path, name):
    (tmp_path / name).write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CraftError, match=name.replace(".", r"\.")):
        read_image(tmp_path / name, opts())


def test_random_bytes_dicom(tmp_path):
    (tmp_path / "noise.dcm").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CraftError, match=r"noise\.dcm"):
        read_image(tmp_path / "noise.dcm", opts())


def test_multiframe_gif(tmp_path):
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(CraftError, match=r"anim\.gif.*2 frames"):
        read_image(tmp_path / "anim.gif", opts())


# ----------------------------------------------------------- DICOM (pydicom's own test files)


def test_ct_rescale_and_window_applied():
    path = dicom("CT_small.dcm")
    ds = pydicom.dcmread(path)
    assert ds.RescaleIntercept == -1024 and "WindowCenter" not in ds
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = read_image(path, opts(resolution=ds.Rows, dicom_window=(40.0, 400.0)))
    assert out.shape == (128, 128, 1) and out.dtype == np.uint8
    expected = np.rint(linear_window(hu, 40.0, 400.0) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    # without a window in the file or the options: the intensity option, on Hounsfield units
    np.testing.assert_allclose(
        read_image(path, opts(resolution=128))[..., 0], percentile_stretch(hu), atol=1
    )


def test_mr_uses_the_files_window_unless_overridden():
    path = dicom("MR_small.dcm")
    ds = pydicom.dcmread(path)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    x = ds.pixel_array.astype(np.float64)
    out = read_image(path, opts(resolution=ds.Rows))[..., 0]
    np.testing.assert_array_equal(
        out, np.rint(linear_window(x, center, width) * 255).astype(np.uint8)
    )
    override = read_image(path, opts(resolution=ds.Rows, dicom_window=(1000.0, 500.0)))[..., 0]
    np.testing.assert_array_equal(
        override, np.rint(linear_window(x, 1000.0, 500.0) * 255).astype(np.uint8)
    )
    assert not np.array_equal(out, override)


def monochrome1_file() -> Path:
    # get_testdata_files("*") would also try to download the online-only files; stay local
    for path in map(Path, get_testdata_files("dicomdirtests/**/*")):
        if path.is_file() and path.suffix == "":
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            if ds.get("PhotometricInterpretation") == "MONOCHROME1" and "WindowCenter" in ds:
                return path
    pytest.skip("no MONOCHROME1 file among pydicom's test files")


def test_monochrome1_inverted(tmp_path):
    path = monochrome1_file()  # a CR image under dicomdirtests/, no .dcm suffix: found by DICM
    ds = pydicom.dcmread(path)
    values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    window = linear_window(values, float(ds.WindowCenter), float(ds.WindowWidth))
    out = read_image(path, opts(resolution=ds.Rows))[..., 0]
    np.testing.assert_array_equal(out, np.rint((1 - window) * 255).astype(np.uint8))
    ds.PhotometricInterpretation = "MONOCHROME2"  # the same pixels, declared the other way
    ds.save_as(tmp_path / "mono2.dcm")
    as_mono2 = read_image(tmp_path / "mono2.dcm", opts(resolution=ds.Rows))[..., 0]
    np.testing.assert_array_equal(as_mono2.astype(int), 255 - out.astype(int))


def test_voi_lut_sequence_when_no_window(tmp_path):
    ds = pydicom.dcmread(dicom("CT_small.dcm"))
    lut = (np.arange(256)[::-1]).astype(np.uint16)  # an inverting table over HU 0..255
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", lut.tolist())  # LUTData
    ds.VOILUTSequence = pydicom.Sequence([item])
    ds.save_as(tmp_path / "voi.dcm")
    hu = ds.pixel_array.astype(np.int64) - 1024
    expected = lut[np.clip(hu, 0, 255)]
    out = read_image(tmp_path / "voi.dcm", opts(resolution=128))[..., 0]
    np.testing.assert_array_equal(out, expected.astype(np.uint8))


def test_invalid_file_window_names_the_option(tmp_path):
    ds = pydicom.dcmread(dicom("MR_small.dcm"))
    ds.WindowWidth = 0
    ds.save_as(tmp_path / "w0.dcm")
    with pytest.raises(CraftError, match=r"w0\.dcm.*dicom_window"):
        read_image(tmp_path / "w0.dcm", opts())
    assert read_image(tmp_path / "w0.dcm", opts(dicom_window=(600, 1600))).shape == (16, 16, 1)


def test_rgb_dicom():
    path = dicom("SC_rgb_small_odd.dcm")  # 3x3 RGB, NumberOfFrames 1
    ds = pydicom.dcmread(path)
    out = read_image(path, opts(channels=3, resolution=3))
    np.testing.assert_array_equal(out, ds.pixel_array)
    with pytest.raises(CraftError, match="color"):
        read_image(path, opts(channels=1, resolution=3, color="error"))
    big = read_image(
        dicom("examples_rgb_color.dcm"), opts(channels=3, resolution=32, resize="squash")
    )
    expected = Image.fromarray(pydicom.dcmread(dicom("examples_rgb_color.dcm")).pixel_array).resize(
        (32, 32), Image.Resampling.BILINEAR
    )
    np.testing.assert_array_equal(big, np.asarray(expected))


def test_ybr_jpeg_dicom_comes_out_rgb():
    out = read_image(dicom("SC_rgb_dcmtk_+eb+cy+n1.dcm"), opts(channels=3, resolution=100))
    assert out[0, 0, 0] > 240 and out[0, 0, 1] < 15 and out[0, 0, 2] < 15  # top band is red


def test_16bit_rgb_dicom_follows_intensity():
    path = dicom("SC_rgb_rle_16bit.dcm")
    arr = pydicom.dcmread(path).pixel_array
    out = read_image(path, opts(channels=3, resolution=100, intensity="full"))
    np.testing.assert_array_equal(out, np.rint(arr / 65535 * 255).astype(np.uint8))


def test_palette_dicom():
    out = read_image(dicom("examples_palette.dcm"), opts(channels=3, resolution=32))
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8 and out.max() > 0


def test_multiframe_dicom_is_an_error():
    with pytest.raises(CraftError, match=r"rtdose\.dcm.*15 frames"):
        read_image(dicom("rtdose.dcm"), opts())


def test_truncated_dicom():
    with pytest.raises(CraftError, match=r"MR_truncated\.dcm.*damaged"):
        read_image(dicom("MR_truncated.dcm"), opts())


def test_dicom_without_pixels():
    with pytest.raises(CraftError, match=r"rtplan\.dcm.*no pixel data"):
        read_image(dicom("rtplan.dcm"), opts())


def test_dicom_without_decoder():
    path = dicom("JPEGLSNearLossless_08.dcm")
    try:
        _ = pydicom.dcmread(path).pixel_array
    except Exception:
        pass
    else:
        pytest.skip("a JPEG-LS decoder is installed")
    with pytest.raises(CraftError, match=r"JPEGLSNearLossless_08\.dcm.*decoder"):
        read_image(path, opts())


@pytest.mark.parametrize("seed", range(6))
def test_the_stretch_from_a_histogram_is_numpys_percentile_bit_for_bit(seed):
    """stretch_ends ranks 16-bit images by their histogram; it must give np.percentile's
    numbers exactly, or prepare's pixels would move by a grey level."""
    from craft.data.images import STRETCH, stretch_ends

    rng = np.random.default_rng(seed)
    for n in (2, 3, 7, 200, 201, 1000, 4097, 65 * 65):
        for raw in (
            rng.integers(0, 4096, n).astype(np.uint16),
            rng.integers(-2000, 3000, n).astype(np.int16),
            np.full(n, 7, dtype=np.uint16),  # constant
            rng.choice(np.array([0, 65535], dtype=np.uint16), n),  # two far values
        ):
            want = np.percentile(raw, list(STRETCH))
            assert stretch_ends(raw, raw) == (want[0], want[1]), (n, raw.dtype)
            # a DICOM rescale with a positive slope, as pydicom computes it
            values = raw.astype(np.float64) * 1.7 + -1024.3
            want = np.percentile(values, list(STRETCH))
            assert stretch_ends(values, raw) == (want[0], want[1]), (n, raw.dtype, "rescaled")


def _dicom_variants(tmp_path: Path) -> dict[str, Path]:
    """CT_small (128x128, int16 stored, rescaled to HU) in the ways a 16-bit grayscale DICOM
    reaches uint8: its own window, the stretch of a positive and of a negative rescale,
    MONOCHROME1, a VOI table, a Modality LUT table."""
    out = {}

    def variant(name, edit):
        ds = pydicom.dcmread(dicom("CT_small.dcm"))
        edit(ds)
        out[name] = tmp_path / f"{name}.dcm"
        ds.save_as(out[name])

    def no_window(ds):
        for key in ("WindowCenter", "WindowWidth"):
            if key in ds:
                delattr(ds, key)

    def negative(ds):
        no_window(ds)
        ds.RescaleSlope = -1.5

    def mono1(ds):
        no_window(ds)
        ds.PhotometricInterpretation = "MONOCHROME1"

    def voi(ds):
        no_window(ds)
        item = pydicom.Dataset()
        item.LUTDescriptor = [256, 0, 8]
        item.add_new(0x00283006, "US", (np.arange(256)[::-1]).tolist())
        ds.VOILUTSequence = pydicom.Sequence([item])

    def modality_lut(ds):
        no_window(ds)
        for key in ("RescaleSlope", "RescaleIntercept"):
            delattr(ds, key)
        item = pydicom.Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        table = (np.sin(np.arange(4096) / 300.0) * 20000 + 30000).astype(np.uint16)
        item.add_new(0x00283006, "US", table.tolist())
        item.ModalityLUTType = "HU"
        ds.ModalityLUTSequence = pydicom.Sequence([item])

    variant("window", lambda ds: None)
    variant("stretch", no_window)
    variant("negative-slope", negative)
    variant("monochrome1", mono1)
    variant("voi-table", voi)
    variant("modality-lut", modality_lut)
    return out


def test_16bit_images_mapped_level_by_level_give_the_same_bytes(tmp_path, monkeypatch):
    """A 16-bit image goes to uint8 through a table of its levels (_by_levels) where it has
    enough pixels; every DICOM way and a 16-bit PNG give the bytes of the pixel-by-pixel way."""
    import craft.data.images as images

    files = _dicom_variants(tmp_path)
    rng = np.random.default_rng(3)
    field = np.add.outer(np.arange(96), np.arange(96)) * 40 + rng.integers(0, 900, (96, 96))
    files["png16"] = write_png16(tmp_path / "p16.png", field.astype(np.uint16), 0)
    cases = [(name, path, o) for name, path in files.items() for o in (opts(resolution=64),)]
    cases.append(("stretch, full", files["stretch"], opts(resolution=64, intensity="full")))
    cases.append(("png16, full", files["png16"], opts(resolution=64, intensity="full")))
    levels = {name: read_image(path, o) for name, path, o in cases}
    monkeypatch.setattr(images, "_LEVELS_MIN_PIXELS", 10**9)  # pixel by pixel
    for name, path, o in cases:
        pixels = read_image(path, o)
        np.testing.assert_array_equal(levels[name], pixels, err_msg=name)
        assert len(np.unique(pixels)) > 5, name  # a picture, not a flat field


def test_the_stretch_from_counts_is_numpys_percentile_bit_for_bit():
    """stretch_ends_counts(levels' values, pixels per level) against np.percentile of the
    image's values, for increasing, decreasing and scrambled maps of the levels."""
    from craft.data.images import STRETCH, stretch_ends_counts

    rng = np.random.default_rng(11)
    for n_levels in (1, 2, 7, 500, 4000):
        counts = rng.integers(0, 50, n_levels)
        counts[rng.integers(0, n_levels)] += 1  # at least one pixel
        for values in (
            np.arange(n_levels) * 1.25 - 1024.0,
            np.arange(n_levels)[::-1] * -0.5 + 3.0,
            rng.normal(0, 100, n_levels).astype(np.float32),
        ):
            want = np.percentile(np.repeat(values, counts), list(STRETCH))
            assert stretch_ends_counts(values, counts) == (want[0], want[1]), n_levels
