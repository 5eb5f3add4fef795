"""``craft prepare``: a modality's images -> ``results/data/{modality}.h5`` with splits.

Sources: a hospital manifest (CSV + image folder; PNG/JPEG 8/16-bit, DICOM) or the phantom
generator. Splits are stratified by label and seeded, whole patients at a time where the
manifest names them; rows with an explicit split keep it. Layout: ``{split}/images`` uint8
NHWC (one chunk per image), ``{split}/labels`` int64, ``{split}/paths`` str,
``{split}/patients`` str ("" where the manifest names none), and for phantoms
``{split}/findings`` float (N, F) with the finding names in the ``findings`` attr. The
``labels`` attr lists the label names in config order; the ``channels`` attr the channels
the images are read with (a grayscale modality of an RGB generator keeps one channel on disk,
craft.store.ImageColumn).

A manifest is streamed: the images are decoded by ``threads`` worker processes, a few at a
time each, and written as they come, so memory holds a few images per worker, never the data
set (a CheXpert-size set is 176 GB at 512 px RGB).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np

from craft.config import CraftConfig, ManifestSource, ModalityConfig
from craft.data.images import ImageOptions, read_images
from craft.data.manifest import (
    SPLITS,
    ManifestRow,
    ManifestRows,
    ManifestSpec,
    assign_splits,
    cached_splits,
    check_rows,
    first_problem,
    manifest_records,
    manifest_splits,
    read_manifest,
    scan_manifest,
)
from craft.data.phantoms import PHANTOMS, draw_batch
from craft.errors import CraftError
from craft.progress import log, progress
from craft.store import STR, ImageColumn, atomic_h5

#: Images one worker decodes per task: enough to amortise the hand-over, few enough that
#: memory stays a few images per worker (at 512 px RGB, 16 images are 12.6 MB).
IMAGES_PER_TASK = 16
#: Paths and patients written to the data file at a time (a few hundred kB of strings).
STRINGS_PER_WRITE = 4096


def _from_phantoms(
    m: ModalityConfig,
) -> tuple[ManifestRows, np.ndarray, np.ndarray, list[str]]:
    src = m.source
    labels = [label for label in m.labels for _ in range(src.n_per_label)]
    images, findings = draw_batch(src.phantom, labels, src.seed, m.resolution)
    names = list(PHANTOMS[src.phantom].findings)
    table = np.array([[f[n] for n in names] for f in findings], dtype=np.float32)
    rows = ManifestRows(m.labels)
    for i, lab in enumerate(labels):
        rows.append(ManifestRow(i + 2, f"{src.phantom}/{src.seed}/{i:06d}", lab, None))
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


def decode_stream(
    paths: Iterable[Path | str], n: int, opts: ImageOptions, threads: int = 1
) -> Iterator[np.ndarray | CraftError]:
    """Each of the ``n`` paths' decoded image (or its error), in order, decoded by
    ``threads`` worker processes (in this process for 1). The paths are taken as they are
    needed and at most two tasks per worker are in flight, so memory stays bounded whatever
    the number of paths."""
    todo_paths = iter(paths)
    tasks = (list(islice(todo_paths, IMAGES_PER_TASK)) for _ in range(0, n, IMAGES_PER_TASK))
    if threads <= 1 or n <= IMAGES_PER_TASK:
        for task in tasks:
            yield from read_images(opts, task)
        return
    # forkserver: a worker does not inherit this process's rows (a fork would, and its
    # garbage collector would then copy them page by page: memory per worker growing with N).
    # Its task, craft.data.images.read_images, is all a worker imports: numpy and Pillow,
    # a fifth of a second, not the config's pydantic models (a second per worker).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["craft.data.images"])  # imported once, before the forks
    with ProcessPoolExecutor(max_workers=threads, mp_context=context) as pool:
        pending: deque[Future] = deque()
        todo = iter(tasks)
        for task in todo:
            pending.append(pool.submit(read_images, opts, task))
            if len(pending) >= 2 * threads:
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(read_images, opts, nxt))
            yield from done


class _SplitStrings:
    """A split's ``paths`` and ``patients`` string datasets, appended in row order and written
    a chunk at a time (a whole split's strings as one list is 20 MB at CheXpert's size)."""

    def __init__(self, group, n: int):
        self.ds = [
            group.create_dataset(name, shape=(n,), dtype=STR) for name in ("paths", "patients")
        ]
        self.chunk, self.done = STRINGS_PER_WRITE, 0
        self.todo: tuple[list[str], list[str]] = ([], [])

    def append(self, path: str, patient: str) -> None:
        self.todo[0].append(path)
        self.todo[1].append(patient)
        if len(self.todo[0]) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        k = len(self.todo[0])
        for ds, values in zip(self.ds, self.todo, strict=True):
            if k:
                ds[self.done : self.done + k] = values
            values.clear()
        self.done += k


def job_cpus() -> int:
    """The CPUs this job may use: those it is bound to (a SLURM job's allocation), and at most
    the threads Snakemake gave the job (it exports them as OMP_NUM_THREADS to the job's shell:
    the rule passes no option, so that its command, which Snakemake reruns a job for, stays
    as it was)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    given = os.environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        n = min(n or 1, int(given))
    return max(n or 1, 1)


def check_data(cfg: CraftConfig, modality: str, threads: int = 1) -> tuple[int, list[str]]:
    """(images that read, problems) of a manifest modality, every image decoded once: what
    prepare would refuse, all of it, one line each (``craft data check``). Writes nothing but
    the split cache."""
    m = cfg.modality(modality)
    src: ManifestSource = m.source
    rows, problems = check_rows(ManifestSpec.of(cfg, modality))
    bad = []
    images = decode_stream(rows.files(), len(rows), _options(m), threads)
    shown = progress(images, len(rows), f"{modality}: decoding images")
    for i, image in enumerate(shown):
        if isinstance(image, CraftError):
            bad.append(f"{src.manifest} line {rows[i].row}: {image}")
    return len(rows) - len(bad), problems + bad


def _split_codes(dealt: Sequence[str]) -> np.ndarray:
    """Each row's split (a name) as an index into SPLITS: int8, a byte a row."""
    return np.fromiter((SPLITS.index(x) for x in dealt), dtype=np.int8, count=len(dealt))


def _manifest_rows(cfg: CraftConfig, modality: str) -> tuple[ManifestRows, np.ndarray]:
    """A manifest's rows without their files (:func:`scan_manifest`, every row checked, 7 bytes
    a row) and each row's split (int8 index into SPLITS), from the split cache the plan
    filled; where it has not (prepare run alone), dealt from the full rows, which are
    dropped before the images are read."""
    m = cfg.modality(modality)
    spec = ManifestSpec.of(cfg, modality)
    rows, problems = scan_manifest(spec.csv, spec.image_root, m.labels, keep_files=False)
    if problems:
        raise first_problem(problems, "problem(s)")
    splits = cached_splits(spec, len(rows))
    if splits is None:
        full = read_manifest(spec.csv, spec.image_root, m.labels)
        splits = _split_codes(manifest_splits(spec, full))
        del full
    return rows, splits


def prepare(cfg: CraftConfig, modality: str, out: Path, threads: int = 1) -> Path:
    """Read or draw the modality's images, split them, and write ``out`` atomically.

    A manifest's images are decoded by ``threads`` processes and written as they come; a file
    that does not read does not stop the others, and prepare then fails naming the first
    (``craft data check`` lists all) and leaves no file. Memory does not follow the number of
    rows beyond a few bytes a row: the rows are checked and dealt first and kept without their
    files, which are read from the manifest again as the images are decoded, and once more
    for the paths and patients the file lists.
    """
    m = cfg.modality(modality)
    findings, finding_names = None, []
    if m.source.kind == "phantom":
        rows, phantom_images, findings, finding_names = _from_phantoms(m)
        splits = _split_codes(assign_splits(rows, m.splits.fractions, m.splits.seed))

        def records() -> Iterator[tuple[str, str]]:
            return ((f, "") for f in rows.files())

        def read(paths: Iterator[str]) -> Iterator:
            return (image for _, image in zip(paths, phantom_images, strict=True))

        where = f"phantom {m.source.phantom}"
    else:
        src: ManifestSource = m.source
        rows, splits = _manifest_rows(cfg, modality)

        def records() -> Iterator[tuple[str, str]]:
            return manifest_records(src.manifest, src.image_root, rows.lines())

        def read(paths: Iterator[str]) -> Iterator:
            return decode_stream(paths, len(rows), _options(m), threads)

        where = str(src.manifest)
    n, lines = len(rows), rows.lines()
    label_idx = rows.label_codes(m.labels)
    attrs = {
        "labels": list(m.labels),
        "modality": modality,
        "findings": finding_names,
        "channels": m.channels,
    }
    # HDF5 1.10's file format: its index of a dataset's chunks (one per image) is a fixed
    # array, which holds a third of the memory of the older B-tree at CheXpert's size
    with atomic_h5(
        out, "data", cfg.spec("prepare", modality).digest, attrs=attrs, libver="v110"
    ) as f:
        columns, groups = [], []
        for k, split in enumerate(SPLITS):
            sel = np.flatnonzero(splits == k)
            g = f.create_group(split)
            groups.append(g)
            columns.append(ImageColumn(g, "images", len(sel), m.resolution, m.channels))
            g.create_dataset("labels", data=label_idx[sel])
            if findings is not None:
                g.create_dataset("findings", data=findings[sel])
        filled = [0] * len(SPLITS)  # rows of each split written so far
        problems = []
        images = read(file for file, _ in records())
        for i, image in enumerate(progress(images, n, f"{modality}: reading images")):
            k = int(splits[i])
            at, filled[k] = filled[k], filled[k] + 1
            if isinstance(image, CraftError):
                problems.append(f"{where} line {lines[i]}: {image}")
            elif not problems:
                columns[k].write(at, image)
        if problems:
            raise first_problem(problems, "file(s)")
        stored = {s: c.ds.shape[-1] for s, c in zip(SPLITS, columns, strict=True)}
        # the rows' paths and patients, a second reading of the manifest once the decode
        # workers are gone (HDF5's memory for a split's strings grows with their number);
        # each row's patient kept as a hash, for the count of patients per split below
        patient_key, named = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        strings = [_SplitStrings(g, c.n) for g, c in zip(groups, columns, strict=True)]
        for i, (file, patient) in enumerate(records()):
            strings[splits[i]].append(file, patient)
            if patient:
                patient_key[i], named[i] = hash(patient), True
        for column in strings:
            column.flush()
    counts = {s: int((splits == k).sum()) for k, s in enumerate(SPLITS)}
    log(f"wrote {out}: {counts} images, labels {list(m.labels)}, channels on disk {stored}")
    if named.any():
        per_split = {
            s: len(np.unique(patient_key[named & (splits == k)])) for k, s in enumerate(SPLITS)
        }
        rest = int((~named).sum())
        log(
            f"{len(np.unique(patient_key[named]))} patients, none in two splits: {per_split}"
            + (f"; {rest} rows name no patient (each taken as its own)" if rest else "")
        )
    return Path(out)
