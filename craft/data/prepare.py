"""``craft prepare``: a modality's images -> ``results/data/{modality}.h5`` with splits.

Sources: a hospital manifest (CSV + image folder; PNG/JPEG 8/16-bit, DICOM) or the phantom
generator. Splits are stratified by label and seeded, whole patients at a time where the
manifest names them; rows with an explicit split keep it. Layout: ``{split}/images`` uint8
NHWC (one chunk per image), ``{split}/labels`` int64, ``{split}/paths`` str,
``{split}/patients`` str ("" where the manifest names none), and for phantoms
``{split}/findings`` float (N, F) with the finding names in the ``findings`` attr. The
``labels`` attr lists the label names in config order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from craft.config import CraftConfig, ManifestSource, ModalityConfig
from craft.data.images import ImageOptions, read_image
from craft.data.manifest import (
    ManifestRow,
    assign_splits,
    check_rows,
    first_problem,
    read_manifest,
)
from craft.data.phantoms import PHANTOMS, draw_batch
from craft.errors import CraftError
from craft.progress import log, progress
from craft.store import SPLITS, STR, atomic_h5, image_dataset


def _from_phantoms(
    m: ModalityConfig,
) -> tuple[list[ManifestRow], np.ndarray, np.ndarray, list[str]]:
    src = m.source
    labels = [label for label in m.labels for _ in range(src.n_per_label)]
    images, findings = draw_batch(src.phantom, labels, src.seed, m.resolution)
    names = list(PHANTOMS[src.phantom].findings)
    table = np.array([[f[n] for n in names] for f in findings], dtype=np.float32)
    rows = [
        ManifestRow(
            row=i + 2, path=Path(f"{src.phantom}/{src.seed}/{i:06d}"), label=lab, split=None
        )
        for i, lab in enumerate(labels)
    ]
    return rows, images, table, names


def _options(m: ModalityConfig) -> ImageOptions:
    src: ManifestSource = m.source
    return ImageOptions(
        channels=m.channels,
        resolution=m.resolution,
        resize=src.resize,
        color=src.color,
        alpha=src.alpha,
        intensity=src.intensity,
        dicom_window=src.dicom_window,
    )


def read_images(
    m: ModalityConfig, rows: list[ManifestRow], what: str = "reading images"
) -> tuple[np.ndarray, list[str]]:
    """Decode every row's image: (images, one line per file that would not read, naming its
    CSV line). A bad file does not stop the others, so one pass finds them all."""
    csv, opts = m.source.manifest, _options(m)
    images = np.zeros((len(rows), m.resolution, m.resolution, m.channels), np.uint8)
    problems: list[str] = []
    for i in progress(range(len(rows)), len(rows), what):
        try:
            images[i] = read_image(rows[i].path, opts)
        except CraftError as err:
            problems.append(f"{csv} line {rows[i].row}: {err}")
    return images, problems


def _from_manifest(m: ModalityConfig) -> tuple[list[ManifestRow], np.ndarray]:
    src: ManifestSource = m.source
    rows = read_manifest(src.manifest, src.image_root, m.labels)
    images, problems = read_images(m, rows)
    if problems:
        raise first_problem(problems, "file(s)")
    return rows, images


def check_data(cfg: CraftConfig, modality: str) -> tuple[int, list[str]]:
    """(images that read, problems) of a manifest modality, every image decoded once: what
    prepare would refuse, all of it, one line each (``craft data check``). Writes nothing."""
    m = cfg.modality(modality)
    src: ManifestSource = m.source
    rows, problems = check_rows(
        src.manifest, src.image_root, m.labels, m.splits.fractions, m.splits.seed
    )
    _, bad = read_images(m, rows, f"{modality}: decoding images")
    return len(rows) - len(bad), problems + bad


def prepare(cfg: CraftConfig, modality: str, out: Path) -> Path:
    """Read or draw the modality's images, split them, and write ``out`` atomically."""
    m = cfg.modality(modality)
    findings, finding_names = None, []
    if m.source.kind == "phantom":
        rows, images, findings, finding_names = _from_phantoms(m)
    else:
        rows, images = _from_manifest(m)
    splits = np.array(assign_splits(rows, m.splits.fractions, m.splits.seed))
    label_idx = np.array([m.labels.index(r.label) for r in rows], dtype=np.int64)
    attrs = {"labels": list(m.labels), "modality": modality, "findings": finding_names}
    with atomic_h5(out, "data", cfg.spec("prepare", modality).digest, attrs=attrs) as f:
        for split in SPLITS:
            sel = np.flatnonzero(splits == split)
            g = f.create_group(split)
            image_dataset(g, "images", images[sel])
            g.create_dataset("labels", data=label_idx[sel])
            g.create_dataset("paths", data=[str(rows[i].path) for i in sel], dtype=STR)
            g.create_dataset("patients", data=[rows[i].patient or "" for i in sel], dtype=STR)
            if findings is not None:
                g.create_dataset("findings", data=findings[sel])
    counts = {s: int((splits == s).sum()) for s in SPLITS}
    log(f"wrote {out}: {counts} images, labels {list(m.labels)}")
    named = [r for r in rows if r.patient is not None]
    if named:
        patients = {s: {r.patient for r, x in zip(rows, splits, strict=True) if x == s}
                    for s in SPLITS}  # fmt: skip
        rest = len(rows) - len(named)
        log(
            f"{len({r.patient for r in named})} patients, none in two splits: "
            f"{ {s: len(p - {None}) for s, p in patients.items()} }"
            + (f"; {rest} rows name no patient (each taken as its own)" if rest else "")
        )
    return Path(out)
