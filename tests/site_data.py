"""A hospital's data set in miniature, as a site hands it over: a manifest CSV with patient
IDs over real DICOM files (pydicom's CT and MR test slices, re-saved per image with their
pixels varied) and PNGs, several images per patient."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

LABELS = ["normal", "lesion"]


def _disk(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx = rng.uniform(0.3, 0.7, 2) * np.array(shape)
    return (yy - cy) ** 2 + (xx - cx) ** 2 < (0.12 * shape[0]) ** 2


def write_site(root: Path, n_patients: int = 12, seed: int = 0) -> tuple[Path, Path]:
    """``root/images/...`` and ``root/manifest.csv`` (path,label,patient_id); returns both.

    Each patient has 2-4 images of one label: CT and MR DICOM slices and 8-bit PNGs; a lesion
    is a bright disk. Patients alternate labels.
    """
    rng = np.random.default_rng(seed)
    images = root / "images"
    templates = [pydicom.dcmread(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm")]
    rows = []
    for p in range(n_patients):
        label = LABELS[p % 2]
        folder = images / f"patient-{p:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(int(rng.integers(2, 5))):
            kind = ("ct", "mr", "png")[(p + i) % 3]
            if kind == "png":
                x = rng.normal(90, 20, (48, 40)).clip(0, 255)
                if label == "lesion":
                    x[_disk(x.shape, rng)] = 230
                name = f"{i}.png"
                Image.fromarray(x.astype(np.uint8)).save(folder / name)
            else:
                ds = templates[kind == "mr"].copy()
                x = ds.pixel_array.astype(np.float64)
                x = x * rng.uniform(0.9, 1.1) + rng.normal(0, 5, x.shape)
                if label == "lesion":
                    x[_disk(x.shape, rng)] = np.percentile(x, 99)
                info = np.iinfo(ds.pixel_array.dtype)
                ds.PixelData = x.clip(info.min, info.max).astype(ds.pixel_array.dtype).tobytes()
                ds.PatientID = f"P{p:03d}"
                name = f"{i}-{kind}.dcm"
                ds.save_as(folder / name)
            rows.append((f"patient-{p:03d}/{name}", label, f"P{p:03d}"))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id"])
        w.writerows(rows)
    return manifest, images
