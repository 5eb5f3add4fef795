"""The HDF5 layer every stage reads and writes through.

Contract (docs/design.md, "Contracts"):
- every file carries attrs ``craft_kind``, ``craft_schema``, ``craft_version``, ``config_digest``
  (of the config slice that made it), ``created`` and ``command`` (the producing command line);
- images are uint8 NHWC, one chunk per image;
- writers write to a temporary name and rename, so a killed job leaves no half file;
- long writers append in chunks to ``<name>.partial`` and resume from what is there;
- readers refuse a file whose kind, schema or config digest is not what they expect.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from craft.errors import CraftError
from craft.version import code_version

SCHEMA_VERSION = 1

#: Datasets each kind of file must hold (``{split}`` expands over the data file's splits).
REQUIRED: dict[str, tuple[str, ...]] = {
    "data": ("{split}/images", "{split}/labels", "{split}/paths"),
    "samples": ("images", "labels", "prompts", "seeds"),
}
SPLITS = ("train", "val", "test")
STR = h5py.string_dtype()


def current_command() -> str:
    """The command line of this process, for provenance."""
    return " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])


def _stamp(
    f: h5py.File, kind: str, config_digest: str, command: str | None, attrs: Mapping
) -> None:
    f.attrs["craft_kind"] = kind
    f.attrs["craft_schema"] = SCHEMA_VERSION
    f.attrs["craft_version"] = code_version()
    f.attrs["config_digest"] = config_digest
    f.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    f.attrs["command"] = command if command is not None else current_command()
    for key, value in attrs.items():
        f.attrs[key] = json.dumps(value) if isinstance(value, list | dict) else value


class ImageColumn:
    """A data file split's images, written one image at a time with their own channels.

    A modality whose generator takes RGB (``channels`` 3) may be grayscale (radiographs):
    its images are kept once, with one channel, and repeated to three when read
    (:func:`expand_channels`): a third of the disk and of the reads. The column starts with
    one channel and widens to three, once, at the first image whose R, G and B differ (the
    images already written get their gray copied into G and B, chunk by chunk). Memory is
    one image, whatever the split's size; one HDF5 chunk per image.
    """

    def __init__(self, group: h5py.Group, name: str, n: int, resolution: int, channels: int):
        self.channels = channels
        self.resolution, self.n = resolution, n
        shape = (n, resolution, resolution)
        self.ds = group.create_dataset(
            name,
            shape=(*shape, 1),
            maxshape=(*shape, channels),
            dtype=np.uint8,
            chunks=(1, resolution, resolution, 1) if n else None,
        )
        self.stored = 1  # channels on disk: self.ds.shape[-1], kept (h5py's shape is a call)
        self.end = 0  # rows below this may have been written

    def write(self, i: int, image: np.ndarray) -> None:
        """Put one (H, W, channels) uint8 image at row ``i``; (H, W, 1) is a gray image of
        any modality (repeated to RGB only where the column holds colour already).

        Each channel is one chunk of the uncompressed dataset, written as it is
        (``write_direct_chunk``): a tenth of h5py's selection machinery per image, which was
        most of prepare's own time beside its decode workers."""
        r = self.resolution
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[:2] != (r, r):
            raise ValueError(f"image must be uint8 ({r}, {r}, C), got {image.dtype} {image.shape}")
        if not 0 <= i < self.n:
            raise IndexError(f"row {i} outside the column's {self.n} rows")
        if self.stored == 1 and self.channels == 3 and not _is_gray(image):
            self._widen(self.end)
        if self.stored == 1:
            image = image[..., :1]
        elif image.shape[-1] == 1:
            image = np.repeat(image, 3, axis=-1)
        for c in range(self.stored):
            self.ds.id.write_direct_chunk((i, 0, 0, c), np.ascontiguousarray(image[..., c]))
        self.end = max(self.end, i + 1)

    def _widen(self, written: int, chunk: int = 64) -> None:
        self.ds.resize(3, axis=3)
        self.stored = 3
        for a in range(0, written, chunk):
            gray = self.ds[a : a + chunk, ..., :1]
            self.ds[a : a + chunk] = np.repeat(gray, 3, axis=3)


def _is_gray(image: np.ndarray) -> bool:
    """Whether an (H, W, C) image has the same value in every channel."""
    return image.shape[-1] == 1 or bool(
        (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    )


def expand_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Images (..., H, W, C) as ``channels`` channels: a gray image kept once (C = 1) is
    repeated to RGB for a generator that takes three (:class:`ImageColumn`)."""
    if images.shape[-1] == channels:
        return images
    if images.shape[-1] == 1:
        return np.repeat(images, channels, axis=-1)
    raise ValueError(f"images have {images.shape[-1]} channels, cannot give {channels}")


def data_channels(f: h5py.File, split: str) -> int:
    """The channels a data file's images are read with (the modality's ``channels``);
    files written before images were kept with their own channels store exactly those."""
    if "channels" in f.attrs:
        return int(f.attrs["channels"])
    return int(f[split]["images"].shape[-1])


def image_dataset(group: h5py.Group, name: str, images: np.ndarray) -> h5py.Dataset:
    """Write uint8 NHWC images with one chunk per image."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 NHWC, got {images.dtype} {images.shape}")
    chunks = (1, *images.shape[1:]) if len(images) else None
    return group.create_dataset(name, data=images, chunks=chunks)


@contextmanager
def atomic_h5(
    path: Path,
    kind: str,
    config_digest: str,
    command: str | None = None,
    attrs: Mapping = {},
    libver: str | None = None,
) -> Iterator[h5py.File]:
    """Open ``path`` for writing through a temporary file that is renamed on success only
    (``libver``: the oldest HDF5 file format it may use, h5py's option)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w", libver=libver) as f:
            yield f
            _stamp(f, kind, config_digest, command, attrs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class AppendWriter:
    """Resumable, chunked writer of a fixed number of rows (e.g. generated images).

    Rows go to ``<path>.partial``; ``done`` says how many are safely written. A rerun with the
    same config digest resumes after them; with another digest, or if the partial file is
    unreadable (killed mid-write), it starts over. ``finish()`` renames to ``path``.
    """

    def __init__(
        self,
        path: Path,
        kind: str,
        config_digest: str,
        fields: Mapping[str, tuple[tuple[int, ...], Any]],
        total: int,
        command: str | None = None,
        attrs: Mapping = {},
    ):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.total = total
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self._open_existing(config_digest, total)
        if self.file is None:
            self.file = h5py.File(self.partial, "w")
            for name, (shape, dtype) in fields.items():
                chunks = (1, *shape) if shape else (min(total, 1024),)
                self.file.create_dataset(name, shape=(total, *shape), dtype=dtype, chunks=chunks)
            _stamp(self.file, kind, config_digest, command, attrs)
            self.file.attrs["rows_done"] = 0
            self.file.flush()
        self.done = int(self.file.attrs["rows_done"])

    def _open_existing(self, config_digest: str, total: int) -> h5py.File | None:
        if not self.partial.exists():
            return None
        try:
            f = h5py.File(self.partial, "a")
            same = f.attrs.get("config_digest") == config_digest and all(
                d.shape[0] == total for d in f.values()
            )
            if same:
                return f
            f.close()
            why = "it was made with another config"
        except (OSError, KeyError):
            why = "it is unreadable (killed mid-write)"
        print(f"craft: starting {self.path.name} over: {why}", file=sys.stderr)
        self.partial.unlink()
        return None

    def append(self, rows: Mapping[str, np.ndarray]) -> None:
        n = len(next(iter(rows.values())))
        if self.done + n > self.total:
            raise ValueError(f"{self.path}: {self.done}+{n} rows exceed the total {self.total}")
        for name, values in rows.items():
            self.file[name][self.done : self.done + n] = values
        self.done += n
        self.file.attrs["rows_done"] = self.done
        self.file.flush()

    def finish(self) -> None:
        if self.done != self.total:
            raise ValueError(f"{self.path}: only {self.done} of {self.total} rows written")
        self.file.attrs["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        self.file.close()
        os.replace(self.partial, self.path)

    def close(self) -> None:
        """Close without finishing (the partial file stays for a later resume)."""
        if self.file.id.valid:
            self.file.close()


def open_h5(path: Path, kind: str, config_digest: str | None = None) -> h5py.File:
    """Open a craft HDF5 file for reading, refusing one of the wrong kind, schema or config."""
    path = Path(path)
    if not path.is_file():
        raise CraftError(f"{path} does not exist: run the stage that makes it first")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise CraftError(
            f"{path} is not a readable HDF5 file ({err}); delete it and rerun"
        ) from None
    found = f.attrs.get("craft_kind")
    schema = f.attrs.get("craft_schema")
    problem = None
    if found is None or schema is None:
        problem = "has no craft attributes (not written by craft)"
    elif found != kind:
        problem = f"is a '{found}' file, expected '{kind}'"
    elif int(schema) != SCHEMA_VERSION:
        problem = f"has schema {schema}, this craft reads {SCHEMA_VERSION}; rerun the stage"
    elif config_digest is not None and f.attrs.get("config_digest") != config_digest:
        problem = (
            f"was made with another config (digest {f.attrs.get('config_digest')}, "
            f"expected {config_digest}); rerun the stage that makes it"
        )
    else:
        splits = [s for s in SPLITS if s in f] if kind == "data" else [""]
        for pattern in REQUIRED.get(kind, ()):
            for split in splits:
                name = pattern.format(split=split)
                if name not in f:
                    problem = f"lacks dataset '{name}'"
    if problem:
        f.close()
        raise CraftError(f"{path} {problem}")
    return f


def json_attr(f: h5py.File, key: str) -> Any:
    return json.loads(f.attrs[key])


# ----------------------------------------------------------------------------- typed views


class SplitImages:
    """A data file split's images (N, H, W, C) uint8, read from disk when indexed.

    It indexes like the array it stands for (an int, a slice, an index array in any order with
    repeats, a boolean mask), and each index reads only those images, with their channels
    expanded (:func:`expand_channels`): a stage that takes a batch at a time holds a batch,
    whatever the split's size (CheXpert's training split is ~120 GB at 512 px RGB). Each
    process opens its own handle on first use (DataLoader workers included), and a pickled
    view carries no handle. ``np.asarray(view)`` reads the whole split: for splits small by
    construction only. ``max_rows_per_read``, when set (tests), refuses any larger read.
    """

    max_rows_per_read: int | None = None

    def __init__(self, path: Path, split: str, rows: np.ndarray | None = None):
        self.path, self.split = Path(path), split
        with h5py.File(self.path, "r") as f:
            ds = f[split]["images"]
            self._channels = data_channels(f, split)
            self._n_stored = ds.shape[0]
            self._hw = ds.shape[1:3]
        self._rows = rows  # a subset of the split's rows (subset()), or all of them
        self._file: h5py.File | None = None
        self._pid = -1

    # array-like surface
    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self._hw, self._channels)

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __len__(self) -> int:
        return self._n_stored if self._rows is None else len(self._rows)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):  # images[idx, ...]: the rows, then the rest
            return self[key[0]][(slice(None), *key[1:])]
        if isinstance(key, int | np.integer):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"image {key} out of range for {len(self)} images")
            return self._read(np.array([i]))[0]
        if isinstance(key, slice):
            return self._read(np.arange(len(self))[key])
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64)
        return self._read(np.where(idx < 0, idx + len(self), idx))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self[:]
        return images if dtype is None else images.astype(dtype)

    def __iter__(self) -> Iterator[np.ndarray]:
        for chunk in self.chunks(64):
            yield from chunk

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """The images in order, ``size`` at a time."""
        for i in range(0, len(self), size):
            yield self[i : i + size]

    def subset(self, rows: np.ndarray) -> SplitImages:
        """A view of some of these images (row indices into this view), read when indexed."""
        rows = np.asarray(rows, dtype=np.int64)
        return SplitImages(self.path, self.split, rows if self._rows is None else self._rows[rows])

    # reading
    def _read(self, idx: np.ndarray) -> np.ndarray:
        limit = SplitImages.max_rows_per_read
        if limit is not None and len(idx) > limit:
            raise RuntimeError(f"{len(idx)} images read at once from {self.path} ({limit} allowed)")
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"image index out of range for {len(self)} images")
        stored = idx if self._rows is None else self._rows[idx]
        ds = self._dataset()
        if not len(stored):
            images = np.zeros((0, *ds.shape[1:]), np.uint8)
        elif len(stored) > 1 and np.all(np.diff(stored) == 1):  # one contiguous block
            images = ds[int(stored[0]) : int(stored[-1]) + 1]
        else:  # each run of consecutive rows as a slice (h5py's list indexing of a chunked
            # 4-d dataset took 1 s for 8 images of 512 px, slices 4 ms), then put in order
            unique, back = np.unique(stored, return_inverse=True)
            starts = np.flatnonzero(np.diff(unique, prepend=-2) != 1)
            ends = np.append(starts[1:], len(unique))
            pairs = zip(starts.tolist(), ends.tolist(), strict=True)
            runs = [ds[int(unique[a]) : int(unique[b - 1]) + 1] for a, b in pairs]
            images = np.concatenate(runs)[back.ravel()]
        return expand_channels(images, self._channels)

    def _dataset(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file[self.split]["images"]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": -1}

    def __del__(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None and self._pid == os.getpid():
            try:
                f.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


class StackedImages:
    """Several image arrays or views (N_i, H, W, C) as one, read part by part when indexed:
    real training rows of a :class:`SplitImages` followed by generated images, say."""

    def __init__(self, parts: list):
        self.parts = [p for p in parts if len(p)] or parts[:1]
        self._starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self._starts[-1]), *self.parts[0].shape[1:])

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, int | np.integer):
            return self[np.array([key])][0]
        idx = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        idx = np.where(idx < 0, idx + len(self), idx)
        part = np.searchsorted(self._starts, idx, side="right") - 1
        out = np.empty((len(idx), *self.shape[1:]), np.uint8)
        for p in np.unique(part).tolist():
            sel = part == p
            out[sel] = self.parts[p][idx[sel] - self._starts[p]]
        return out


@dataclass
class Split:
    """One split of a prepared data file; its images are read from disk when indexed."""

    images: SplitImages  # (N, H, W, C) uint8, array-like
    labels: np.ndarray  # (N,) int64 index into label_names
    label_names: list[str]
    paths: list[str]
    patients: list[str] = field(default_factory=list)  # "" where unknown

    def __len__(self) -> int:
        return len(self.labels)


def _strings(ds) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in ds[()]]


def _patients(group) -> list[str]:
    """A split group's patients ("" where unknown, and for files written without them)."""
    if "patients" in group:
        return _strings(group["patients"])
    return [""] * group["labels"].shape[0]


def read_patients(path: Path, split: str) -> list[str]:
    """The patient of each image of one split, without reading its images."""
    with open_h5(path, "data") as f:
        return _patients(f[split])


def read_split(path: Path, split: str, config_digest: str | None = None) -> Split:
    """One split (train/val/test) of ``results/data/{modality}.h5``: its labels, paths and
    patients, and its images as a view that reads them when indexed (:class:`SplitImages`)."""
    with open_h5(path, "data", config_digest) as f:
        if split not in f:
            raise CraftError(
                f"{path} has no split '{split}' (has: {[s for s in SPLITS if s in f]})"
            )
        g = f[split]
        return Split(
            images=SplitImages(path, split),
            labels=g["labels"][()].astype(np.int64),
            label_names=json_attr(f, "labels"),
            paths=_strings(g["paths"]),
            patients=_patients(g),
        )


@dataclass
class Samples:
    """Generated images with what they were asked for."""

    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64 index into label_names
    label_names: list[str]
    prompts: list[str]
    seeds: np.ndarray  # (N,) int64 per-image noise seed
    attrs: dict[str, Any]

    def __len__(self) -> int:
        return len(self.labels)


def read_samples(path: Path, config_digest: str | None = None) -> Samples:
    """Load ``samples.h5`` written by ``craft generate``."""
    with open_h5(path, "samples", config_digest) as f:
        return Samples(
            images=f["images"][()],
            labels=f["labels"][()].astype(np.int64),
            label_names=json_attr(f, "labels"),
            prompts=[p.decode() if isinstance(p, bytes) else p for p in f["prompts"][()]],
            seeds=f["seeds"][()].astype(np.int64),
            attrs={k: v for k, v in f.attrs.items()},
        )
