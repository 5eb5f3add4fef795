"""The manifest: a CSV naming each image of a modality with its label, and optionally its
patient and split.

Format: a header with ``path`` and ``label`` and optionally ``split`` and ``patient`` (or
``patient_id``); other columns are ignored; names are matched ignoring case and surrounding
spaces. ``path`` is absolute or relative to the image root; ``split`` is ``train``, ``val``,
``test`` or empty (assigned by :func:`assign_splits`). ``patient`` names whom the image is of:
all images of one patient go to one split, so no patient is both trained on and tested on.
Blank lines are skipped; values are stripped of surrounding spaces. Every problem is one
:class:`CraftError` line naming the CSV file and its line number.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np

from craft.atomic import atomic_write_lines, atomic_write_text
from craft.errors import CraftError

SPLITS = ("train", "val", "test")
#: Header names of the patient column (the first that is present).
PATIENT_COLUMNS = ("patient", "patient_id")
#: At most this many folds of patients are dealt to the splits (fractions to 1/20).
MAX_FOLDS = 20
_LABELS_KEY = "modalities.<name>.labels"


class ManifestRow:
    """One image of the manifest; ``row`` is its line in the CSV (the header is line 1).

    Its file is kept as a string, ``file``; ``path`` makes a Path of it when asked (making
    224k Paths is a second of every manifest scan)."""

    __slots__ = ("row", "file", "label", "split", "patient")

    def __init__(
        self, row: int, path: Path | str, label: str, split: str | None, patient: str | None = None
    ):
        self.row, self.file, self.label = row, str(path), label
        self.split, self.patient = split, patient

    @property
    def path(self) -> Path:
        return Path(self.file)

    def _key(self) -> tuple:
        return (self.row, self.file, self.label, self.split, self.patient)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ManifestRow) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (
            f"ManifestRow(row={self.row}, path={self.file!r}, label={self.label!r}, "
            f"split={self.split!r}, patient={self.patient!r})"
        )


class _Strings:
    """Strings kept as one UTF-8 byte string and their ends: no object per string, so that a
    scan that makes and drops a record a row does not leave memory pinned by the few strings
    it keeps (224k small strings among the scan's garbage hold most of the heap)."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.ends = array("q")

    def append(self, text: str) -> None:
        self.blob += text.encode("utf-8", "surrogateescape")
        self.ends.append(len(self.blob))

    def __len__(self) -> int:
        return len(self.ends)

    def raw(self, i: int) -> bytes:
        return bytes(self.blob[self.ends[i - 1] if i > 0 else 0 : self.ends[i]])

    def __getitem__(self, i: int) -> str:
        return self.raw(i).decode("utf-8", "surrogateescape")

    def codes(self) -> tuple[np.ndarray, list[bytes]]:
        """(code of each string, the distinct strings in code order): equal strings share a
        code; numpy works on the bytes, a fixed-width copy of a few MB."""
        n = len(self)
        if n == 0:
            return np.zeros(0, dtype=np.int64), []
        ends = np.frombuffer(self.ends, dtype=np.int64)
        starts = np.concatenate(([0], ends[:-1]))
        width = max(int((ends - starts).max()), 1)
        data = np.frombuffer(bytes(self.blob) + bytes(width), dtype=np.uint8)
        fixed = np.zeros((n, width), dtype=np.uint8)
        for a in range(0, n, 1 << 14):  # index arrays of 16k rows at a time, not of n
            at = starts[a : a + (1 << 14), None] + np.arange(width)[None, :]
            inside = at < ends[a : a + (1 << 14), None]
            fixed[a : a + (1 << 14)] = np.where(inside, data[np.minimum(at, len(data) - 1)], 0)
        # a string's own trailing NUL bytes would be lost in "S" form: none are in a CSV field
        names, codes = np.unique(fixed.view(f"S{width}")[:, 0], return_inverse=True)
        return codes.astype(np.int64), [bytes(x) for x in names]


class ManifestRows(Sequence):
    """A manifest's good rows, a :class:`ManifestRow` each when indexed or iterated, kept as
    columns: the files and the patients each in one byte string, the line numbers, label and
    split codes in arrays. About 100 bytes a row, where a list of ManifestRow objects with
    their strings is about 1 kB (230 MB for CheXpert's 224k rows, in prepare and at every
    plan that deals the splits)."""

    def __init__(self, labels: Sequence[str] = (), keep_files: bool = True):
        self._label_names: list[str] = list(labels)
        self._label_code = {name: i for i, name in enumerate(self._label_names)}
        self._lines = array("i")
        self._labels = array("h")
        self._splits = array("b")  # index into SPLITS, -1 for none
        # Without files (prepare's scan, :func:`scan_manifest`): the lines, labels and splits
        # alone, 7 bytes a row; prepare reads each row's file and patient again as it decodes.
        self._files = _Strings() if keep_files else None
        self._patients = _Strings() if keep_files else None  # "" for none
        self._patient_codes: tuple[np.ndarray, list[bytes]] | None = None

    @property
    def keeps_files(self) -> bool:
        return self._files is not None

    def append(self, row: ManifestRow) -> None:
        code = self._label_code.get(row.label)
        if code is None:
            code = self._label_code[row.label] = len(self._label_names)
            self._label_names.append(row.label)
        self._lines.append(row.row)
        self._labels.append(code)
        self._splits.append(SPLITS.index(row.split) if row.split else -1)
        if self._files is not None:
            self._files.append(row.file)
            self._patients.append(row.patient or "")
        self._patient_codes = None

    def _need_files(self) -> None:
        if self._files is None:
            raise TypeError("these manifest rows were read without their files (keep_files=False)")

    def lines(self) -> np.ndarray:
        """Each row's line in the CSV (int32)."""
        return np.frombuffer(self._lines, dtype=np.int32) if len(self) else np.zeros(0, np.int32)

    def split_codes(self) -> np.ndarray:
        """Each row's explicit split as an index into SPLITS, -1 where the row names none."""
        return np.frombuffer(self._splits, dtype=np.int8) if len(self) else np.zeros(0, np.int8)

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        self._need_files()
        if i < 0:
            i += len(self)
        split = self._splits[i]
        return ManifestRow(
            self._lines[i],
            self._files[i],
            self._label_names[self._labels[i]],
            SPLITS[split] if split >= 0 else None,
            self._patients[i] or None,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def file(self, i: int) -> str:
        """Row ``i``'s file, an absolute path."""
        self._need_files()
        return self._files[int(i)]

    def files(self) -> Iterator[str]:
        self._need_files()
        return (self._files[i] for i in range(len(self)))

    def label_codes(self, labels: Sequence[str]) -> np.ndarray:
        """Each row's label as its index in ``labels`` (int64)."""
        where = np.array([list(labels).index(name) for name in self._label_names] or [0])
        return where[np.frombuffer(self._labels, dtype=np.int16)] if len(self) else where[:0]

    def patients(self) -> np.ndarray:
        """Each row's patient code (int64; -1 for a row that names none): rows of one patient
        share one, :meth:`patient_name` gives its name."""
        self._need_files()
        if self._patient_codes is None:
            self._patient_codes = self._patients.codes()
        codes, names = self._patient_codes
        none = names.index(b"") if b"" in names else -1  # "" sorts first
        out = codes.copy()
        if none >= 0:
            out[codes == none] = -1
        return out

    def patient_name(self, code: int) -> str | None:
        if code < 0:
            return None
        self._need_files()
        if self._patient_codes is None:
            self._patient_codes = self._patients.codes()
        return self._patient_codes[1][code].decode("utf-8", "surrogateescape")


def read_manifest(csv_path: Path, image_root: Path, labels: Sequence[str]) -> ManifestRows:
    """Read and check a manifest CSV; every configured label must have at least one image.

    The first problem is raised as one line, with how many more there are (``craft data
    check`` lists them all).
    """
    rows, problems = scan_manifest(csv_path, image_root, labels)
    if problems:
        raise first_problem(problems, "problem(s)")
    return rows


def first_problem(problems: Sequence[str], what: str) -> CraftError:
    """The first of ``problems`` as one error line that counts the rest (``what`` they are)."""
    more = len(problems) - 1
    tail = f" (and {more} more {what}; `craft data check` lists them all)" if more else ""
    return CraftError(problems[0] + tail)


@dataclass(frozen=True)
class ManifestSpec:
    """A modality's manifest as its config names it, with how its patients are dealt: all that
    a check of it, its split cache's key and its dealing read (``cache_dir``: where the dealt
    splits are kept, Layout.split_cache; None keeps nothing)."""

    csv: Path
    image_root: Path
    labels: tuple[str, ...]
    fractions: dict[str, float]
    seed: int
    cache_dir: Path | None = None

    @classmethod
    def of(cls, cfg, modality: str) -> ManifestSpec:
        """The spec of ``cfg``'s manifest modality, its splits kept under ``cfg.results``."""
        from craft.paths import Layout

        m = cfg.modalities[modality]
        return cls(
            Path(m.source.manifest),
            Path(m.source.image_root),
            tuple(m.labels),
            dict(m.splits.fractions),
            m.splits.seed,
            Layout(cfg.results).split_cache(modality),
        )


def check_rows(spec: ManifestSpec) -> tuple[ManifestRows, list[str]]:
    """Every problem of a manifest short of decoding its images: its rows
    (:func:`scan_manifest`), then, when they are sound, whether every label reaches every
    split (:func:`manifest_splits`, cached in ``spec.cache_dir``). A problem of the file
    itself is raised."""
    rows, problems = scan_manifest(spec.csv, spec.image_root, spec.labels)
    if not problems:
        try:
            manifest_splits(spec, rows)
        except CraftError as err:
            problems.append(f"{spec.csv}: {err}")
    return rows, problems


def manifest_problems(spec: ManifestSpec) -> list[str]:
    """:func:`check_rows`' problems, in a fraction of its time for a manifest whose content
    was found sound before (the plan checks every manifest at every ``snakemake -n``).

    The rows of a sound manifest depend only on what the split cache's key covers, so its
    files are kept beside the cached splits, one absolute path a line; a plan then only
    checks that each is still there: one ``access`` call a row, no CSV parsing, no stat
    object (0.4 s for 224k rows, against 0.7-1.0 s with an ``os.stat`` a row). A file gone
    sends the manifest through :func:`check_rows`, which names every problem. What this
    check does not see, a file replaced by a folder or made a second name of another file
    since the first plan, prepare finds: it scans every row again (:func:`check_rows`).
    """
    if spec.cache_dir is not None:
        key = split_cache_key(spec)
        try:
            kept = json.loads((Path(spec.cache_dir) / f"{key}.json").read_text())
            paths = (Path(spec.cache_dir) / f"{key}.paths").read_text().split("\n")
        except (OSError, ValueError):
            kept = paths = None
        if paths is not None and _all_there(paths):
            if "error" in kept:
                return [f"{spec.csv}: {kept['error']}"]
            if len(kept.get("splits", "")) == len(paths):
                return []
    return check_rows(spec)[1]


def _all_there(paths: Sequence[str]) -> bool:
    """Whether every path still names something (``access(F_OK)``: a system call and no
    stat object per path, about half of ``os.stat``'s time)."""
    return all(map(os.access, paths, repeat(os.F_OK)))


#: Part of the split cache's key: a change to how splits are dealt must not reuse old ones.
SPLIT_RULES = "craft-splits-1"
_SPLIT_CODE = {"train": "t", "val": "v", "test": "e"}


def split_cache_key(spec: ManifestSpec) -> str:
    """sha256 of everything the splits of a sound manifest depend on: the CSV's bytes, the
    image root its paths start from, the labels, the fractions and the seed."""
    h = hashlib.sha256()
    with Path(spec.csv).open("rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    what = [
        SPLIT_RULES,
        os.path.abspath(spec.image_root),
        list(spec.labels),
        spec.fractions,
        spec.seed,
    ]
    h.update(json.dumps(what, sort_keys=True).encode())
    return h.hexdigest()


def cached_splits(spec: ManifestSpec, n: int) -> np.ndarray | None:
    """Each of a sound manifest's ``n`` rows' split as an index into SPLITS (int8), from the
    split cache (:func:`manifest_splits`), or None where the cache does not hold them. A
    kept error is raised."""
    if spec.cache_dir is None:
        return None
    return _kept_splits(Path(spec.cache_dir) / f"{split_cache_key(spec)}.json", n)


def _kept_splits(path: Path, n: int) -> np.ndarray | None:
    """The ``n`` split codes kept in the cache file ``path`` (int8 indices into SPLITS), or
    None where it is not there or not what it should be; a kept error is raised."""
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict):
        return None
    if "error" in kept:
        raise CraftError(str(kept["error"]))
    codes = kept.get("splits")
    if not isinstance(codes, str) or len(codes) != n:
        return None
    table = np.full(256, -1, dtype=np.int8)
    for i, s in enumerate(SPLITS):
        table[ord(_SPLIT_CODE[s])] = i
    out = table[np.frombuffer(codes.encode("ascii", "replace"), dtype=np.uint8)]
    return None if (out < 0).any() else out


def manifest_splits(spec: ManifestSpec, rows: Sequence[ManifestRow]) -> list[str]:
    """:func:`assign_splits` of a sound manifest's rows, dealt once per manifest content.

    With ``spec.cache_dir`` the outcome (the splits, or the one-line error) is kept in
    ``cache_dir/<key>.json`` (:func:`split_cache_key`), so that the plan, which checks every
    manifest each time, and prepare deal a CheXpert-size manifest's patients once, not at
    every ``snakemake -n``. A cache file that cannot be read or written is only skipped.
    """
    if spec.cache_dir is None:
        return assign_splits(rows, spec.fractions, spec.seed)
    path = Path(spec.cache_dir) / f"{split_cache_key(spec)}.json"
    codes = _kept_splits(path, len(rows))  # None: not there, or not what it should be
    if codes is not None and path.with_suffix(".paths").is_file():
        return [SPLITS[c] for c in codes]
    try:
        splits = assign_splits(rows, spec.fractions, spec.seed)
        kept = {"splits": "".join(_SPLIT_CODE[s] for s in splits)}
    except CraftError as err:
        splits, kept = None, {"error": str(err)}
    try:
        # the rows are sound (only their splits may not be): their files, for
        # manifest_problems
        files = rows.files() if isinstance(rows, ManifestRows) else (r.file for r in rows)
        atomic_write_lines(path.with_suffix(".paths"), files)
        atomic_write_text(path, json.dumps(kept))
    except OSError:
        pass  # a read-only results folder: the next plan deals again
    if splits is None:
        raise CraftError(kept["error"])
    return splits


def scan_manifest(
    csv_path: Path, image_root: Path, labels: Sequence[str], keep_files: bool = True
) -> tuple[ManifestRows, list[str]]:
    """The manifest's good rows and every problem of it, one line each, in one pass.

    No image is read: a row's file must exist and lie under the image root (or be absolute).
    A problem of the file itself (missing, unreadable, no header) is raised at once. The CSV
    is read a record at a time and the rows kept as columns (:class:`ManifestRows`), so
    memory is about 100 bytes a row; without ``keep_files`` 7 bytes a row (the same checks,
    the rows without their files and patients: :func:`manifest_records` reads them again).
    """
    csv_path = Path(csv_path)
    image_root = Path(image_root)
    allowed = list(labels)
    rows = ManifestRows(allowed, keep_files=keep_files)
    problems: list[tuple[int, str]] = []
    # (device, inode) of each good row, for the duplicates: found at the end, from arrays
    devices, inodes = array("Q"), array("Q")
    root = os.path.abspath(image_root)
    root_hint = "" if image_root.is_dir() else f"; the image root {image_root} does not exist"
    with _open_table(csv_path) as (header_line, header, names, records):
        col = {c: names.index(c) for c in ("path", "label", "split") if c in names}
        patient_cols = [c for c in PATIENT_COLUMNS if c in names]
        if len(patient_cols) > 1:
            raise CraftError(
                f"{csv_path}: the header (line {header_line}) has both "
                f"{' and '.join(patient_cols)}; keep one patient column"
            )
        if patient_cols:
            col["patient"] = names.index(patient_cols[0])
        for line, rec in records:
            try:
                row, st = _row(line, rec, header, col, allowed, root)
            except CraftError as err:
                problems.append((line, f"{csv_path} line {line}: {err}"))
            except _Missing as err:
                problems.append(
                    (line, f"{csv_path} line {line}: image file {err}{root_hint}; fix the path "
                     "or modalities.<name>.source.image_root")
                )  # fmt: skip
            else:
                rows.append(row)
                devices.append(st.st_dev)
                inodes.append(st.st_ino)
    if not keep_files and _duplicates(devices, inodes):
        # the messages name both rows' files: read them (a manifest that fails anyway)
        return scan_manifest(csv_path, image_root, labels, keep_files=True)
    rows = _without_duplicates(rows, devices, inodes, root, csv_path, problems)
    del devices, inodes
    problems = [text for _, text in sorted(problems, key=lambda p: p[0])]
    if not len(rows) and not problems:
        raise CraftError(f"{csv_path}: has a header but no rows; list one image per line")
    counts = np.bincount(rows.label_codes(allowed), minlength=len(allowed))
    empty = [lab for lab, n in zip(allowed, counts, strict=True) if n == 0]
    if empty and not problems:
        problems.append(
            f"{csv_path}: configured label(s) {', '.join(repr(e) for e in empty)} have no images; "
            f"add images for them or remove them from {_LABELS_KEY}"
        )
    return rows, problems


def _duplicates(devices, inodes) -> dict[int, int]:
    """{row index: the index of the earlier row of the same file} for each row whose file
    (the same device and inode) an earlier row lists."""
    dev = np.frombuffer(devices, dtype=np.uint64)
    ino = np.frombuffer(inodes, dtype=np.uint64)
    if len(dev) < 2:
        return {}
    order = np.lexsort((ino, dev))  # stable: rows of one file stay in line order
    same = (dev[order][1:] == dev[order][:-1]) & (ino[order][1:] == ino[order][:-1])
    if not same.any():
        return {}
    first = order.copy()
    for k in np.flatnonzero(same):  # a run of equal keys points back to its first row
        first[k + 1] = first[k]
    return {int(order[k + 1]): int(first[k + 1]) for k in np.flatnonzero(same)}


def _without_duplicates(rows, devices, inodes, root: str, csv_path, problems) -> ManifestRows:
    """``rows`` less the later rows of any file listed twice (by another relative path, a
    symlink or a hard link: the same device and inode), each a problem naming the line that
    listed it first."""
    later = _duplicates(devices, inodes)
    if not later:
        return rows
    kept = ManifestRows(rows._label_names)
    for i, row in enumerate(rows):
        if i not in later:
            kept.append(row)
            continue
        given = os.path.relpath(row.file, root) if row.file.startswith(root + os.sep) else row.file
        problems.append(
            (row.row, f"{csv_path} line {row.row}: duplicate path {given!r}, already listed on "
             f"line {rows[later[i]].row}; remove one of the two rows")
        )  # fmt: skip
    return kept


class _Missing(Exception):
    """A row's image file is not there (or is a folder); the message says which."""


def _row(line, rec, header, col, allowed, root: str) -> tuple[ManifestRow, os.stat_result]:
    """One record as a row and its file's stat, or a CraftError saying what is wrong with it
    (without the line).

    One ``os.stat`` per row: it says that the file exists and is a file, and its (device,
    inode) names the file whatever path leads to it, so a file listed twice (by another
    relative path, a symlink or a hard link) is found without resolving every path
    (``realpath`` costs a system call per path component). Raises :class:`_Missing` when the
    file is not there.
    """
    if len(rec) != len(header):
        raise CraftError(
            f"has {len(rec)} fields but the header has {len(header)}; quote values that "
            "contain commas"
        )
    raw_path, label = rec[col["path"]].strip(), rec[col["label"]].strip()
    if not raw_path:
        raise CraftError("empty path; give the image file or remove the row")
    if label not in allowed:
        what = "empty label" if not label else f"label {label!r} is not a configured label"
        raise CraftError(
            f"{what} (allowed: {', '.join(allowed)}); add it to config {_LABELS_KEY} or fix the row"
        )
    split = rec[col["split"]].strip().lower() if "split" in col else ""
    if split and split not in SPLITS:
        raise CraftError(
            f"split {rec[col['split']].strip()!r} is not one of train, val, test (or empty to "
            "assign it); fix the row"
        )
    path = _resolve(raw_path, root)
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise _Missing(f"not found: {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _Missing(f"is a folder, not an image file: {path}")
    patient = rec[col["patient"]].strip() if "patient" in col else ""
    return ManifestRow(line, path, label, split or None, patient or None), st


def _resolve(raw_path: str, root: str) -> str:
    """A row's file: its stripped path, absolute or under ``root``; a CraftError where a
    relative path leads out of the root."""
    given = os.path.expanduser(raw_path)
    path = os.path.normpath(os.path.join(root, given))  # an absolute ``given`` wins
    if not os.path.isabs(given) and not (path == root or path.startswith(root + os.sep)):
        raise CraftError(
            f"path {raw_path!r} leads out of the image root {root}; give a path inside "
            "it, or an absolute path"
        )
    return path


def manifest_records(
    csv_path: Path, image_root: Path, lines: Sequence[int]
) -> Iterator[tuple[str, str]]:
    """(file, patient or "") of each row of a manifest that :func:`scan_manifest` kept,
    read again a record at a time: the rows at ``lines`` (its rows' lines, in order), so that
    prepare holds no string a row. The CSV must not change in between: a kept row that is
    not where the scan found it is a CraftError."""
    csv_path = Path(csv_path)
    root = os.path.abspath(image_root)
    k, n = 0, len(lines)
    with _open_table(csv_path) as (_, header, names, records):
        at_path = names.index("path")
        at_patient = next((names.index(c) for c in PATIENT_COLUMNS if c in names), None)
        for line, rec in records:
            if k == n:
                break
            if line < lines[k]:
                continue  # a row the scan did not keep
            if line > lines[k] or len(rec) != len(header):
                break
            patient = rec[at_patient].strip() if at_patient is not None else ""
            yield _resolve(rec[at_path].strip(), root), patient
            k += 1
    if k != n:
        raise CraftError(
            f"{csv_path}: changed while craft read it (row {k + 1} of {n} is not where it was); "
            "leave the manifest as it is while prepare runs, and run it again"
        )


@contextmanager
def _open_table(csv_path: Path):
    """(header line, header, lower-cased names, records) of a manifest with path and label;
    the records (line, fields) are read one at a time while the block runs."""
    if not csv_path.is_file():
        raise CraftError(f"{csv_path}: manifest not found; check modalities.<name>.source.manifest")
    try:
        f = csv_path.open(newline="", encoding="utf-8-sig")
    except PermissionError as err:
        raise CraftError(
            f"{csv_path}: cannot read the manifest ({err.strerror}); check its permissions"
        ) from None
    with f:
        records = _records(csv.reader(f), csv_path)
        first = next(records, None)
        if first is None:
            raise CraftError(
                f"{csv_path}: empty file; the first line must be a header with path,label[,split]"
            )
        header_line, header = first
        names = [h.strip().lower() for h in header]
        missing = [c for c in ("path", "label") if c not in names]
        if missing:
            raise CraftError(
                f"{csv_path}: missing column(s) {', '.join(missing)} in the header "
                f"(line {header_line}), which has {', '.join(repr(h) for h in header)}; "
                "the header must name path,label[,split]"
            )
        yield header_line, header, names, records


def manifest_labels(csv_path: Path) -> dict[str, int]:
    """The labels of a manifest with their image counts, in order of first appearance."""
    counts: dict[str, int] = {}
    with _open_table(Path(csv_path)) as (_, header, names, records):
        at = names.index("label")
        for _, rec in records:
            label = rec[at].strip() if len(rec) == len(header) else ""
            if label:
                counts[label] = counts.get(label, 0) + 1
    return counts


def _records(reader, csv_path: Path):
    """(line number, fields) of each non-blank CSV record; the line is where the record ends.
    A file that is not UTF-8 or not CSV is a CraftError wherever it goes wrong."""
    try:
        for rec in reader:
            if rec and any(field.strip() for field in rec):
                yield reader.line_num, rec
    except UnicodeDecodeError:
        raise CraftError(f"{csv_path}: not UTF-8 text; save the manifest as a UTF-8 CSV") from None
    except csv.Error as err:
        raise CraftError(f"{csv_path}: not a valid CSV ({err}); fix the file") from None


def assign_splits(rows: Sequence[ManifestRow], fractions: dict[str, float], seed: int) -> list[str]:
    """Split of each row: explicit splits are kept, the rest split stratified by label.

    Without patients, for each label the rows without a split are divided by ``fractions``
    (largest remainder), with at least one row in every split of nonzero fraction that the
    label's explicit rows do not already cover. With patients (any row naming one), whole
    patients are dealt instead (:func:`_assign_patients`). Which rows go where depends only on
    ``seed``, the labels, patients and paths, not on the manifest's row order.
    """
    frac = _check_fractions(fractions)
    if any(r.patient is not None for r in rows):
        return _assign_patients(rows, frac, seed)
    result: list[str | None] = [r.split for r in rows]
    by_label: dict[str, list[int]] = defaultdict(list)
    explicit: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for i, r in enumerate(rows):
        if r.split is None:
            by_label[r.label].append(i)
        else:
            explicit[r.label][r.split] += 1

    for label in sorted(by_label):
        todo = sorted(by_label[label], key=lambda i: rows[i].file)
        have = explicit[label]
        required = [s for s in SPLITS if frac[s] > 0 and have[s] == 0]
        if len(todo) < len(required):
            given = ", ".join(f"{s} {have[s]}" for s in SPLITS)
            raise CraftError(
                f"label {label!r} has {len(todo)} image(s) without an explicit split (explicit: "
                f"{given}), but needs at least {len(required)} to put one in each of "
                f"{', '.join(required)}; add images, set their split in the manifest, or set "
                "that split's fraction to 0 in modalities.<name>.splits"
            )
        counts = _allocate(len(todo), frac, required)
        rng = np.random.default_rng([seed, _label_key(label)])
        order = rng.permutation(len(todo))
        start = 0
        for s in SPLITS:
            for j in order[start : start + counts[s]]:
                result[todo[j]] = s
            start += counts[s]
    for label, have in explicit.items():  # labels whose rows all name their split
        empty = [s for s in SPLITS if frac[s] > 0 and have[s] == 0]
        if label not in by_label and empty:
            given = ", ".join(f"{s} {have[s]}" for s in SPLITS)
            raise CraftError(
                f"label {label!r} has no image in the {empty[0]} split: every row of it names a "
                f"split ({given}); set some rows' split to {empty[0]}, leave splits empty to "
                f"assign them, or set the {empty[0]} fraction to 0 in modalities.<name>.splits"
            )
    return list(result)  # every entry is set: explicit or assigned


def patient_groups(rows: Sequence[ManifestRow]) -> dict[str, list[int]]:
    """Row indices of each patient; a row that names no patient is a patient of its own."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[f"p:{r.patient}" if r.patient is not None else f"row:{r.file}"].append(i)
    return groups


def _assign_patients(rows: Sequence[ManifestRow], frac: dict[str, float], seed: int) -> list[str]:
    """Splits dealt by patient: a patient's rows share one split, stratified by label.

    A patient with an explicit split on some rows takes it for all of them (two different
    explicit splits are refused). The other patients are dealt into folds as scikit-learn's
    StratifiedGroupKFold deals them (:func:`stratified_group_folds`: each fold with about the
    same label mix, no patient in two folds), and whole folds go to the splits by
    ``fractions`` (largest remainder over the folds, at least one fold for every split of
    nonzero fraction that no explicit row covers).
    """
    groups = patient_groups(rows)
    result: list[str | None] = [None] * len(rows)
    todo: list[str] = []
    for key in sorted(groups):
        idx = groups[key]
        named = {rows[i].split for i in idx} - {None}
        if len(named) > 1:
            where = ", ".join(f"line {rows[i].row} ({rows[i].split})" for i in idx if rows[i].split)
            raise CraftError(
                f"patient {rows[idx[0]].patient!r} has rows in {len(named)} splits: {where}; give "
                "all rows of a patient the same split, or leave the split empty to assign it"
            )
        if named:
            for i in idx:
                result[i] = next(iter(named))
        else:
            todo.append(key)
    required = [s for s in SPLITS if frac[s] > 0 and s not in set(result)]
    if len(todo) < len(required):
        raise CraftError(
            f"{len(todo)} patient(s) have no explicit split, but {len(required)} are needed to "
            f"put one in each of {', '.join(required)}; add patients, set their split in the "
            "manifest, or set that split's fraction to 0 in modalities.<name>.splits"
        )
    if todo:
        # No more folds than the label with the fewest patients has (but one per split it
        # needs): each fold then holds every label, so every split does.
        fewest = min(Counter(rows[groups[key][0]].label for key in todo).values())
        n_folds = min(_fold_count(frac), len(todo))
        if fewest >= len(required):
            n_folds = min(n_folds, fewest)
        counts = _allocate(n_folds, frac, required)
        fold_split = [s for s in SPLITS for _ in range(counts[s])]
        fold_split = [fold_split[j] for j in np.random.default_rng(seed).permutation(n_folds)]
        members = [i for key in todo for i in groups[key]]
        if n_folds == 1:
            fold_of = np.zeros(len(members), dtype=np.int64)
        else:
            labels = [rows[i].label for i in members]
            group_ids = [key for key in todo for _ in groups[key]]
            fold_of = stratified_group_folds(labels, group_ids, n_folds, seed)
        for j, f in enumerate(fold_of.tolist()):
            result[members[j]] = fold_split[f]
    _check_every_label_split(rows, result, frac, groups)
    return list(result)


def stratified_group_folds(
    labels: Sequence[str], groups: Sequence[str], n_folds: int, seed: int
) -> np.ndarray:
    """The fold (0..n_folds-1) of each sample: what scikit-learn's
    ``StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)`` deals, sample for sample,
    in time linear in the groups with small constants.

    scikit-learn takes the groups (shuffled, then by falling spread of their label counts) one
    at a time and puts each in the fold that leaves the label mix most even: for every fold it
    tries, it computes the standard deviation over folds of each label's share with numpy on a
    (folds x labels) array, a dozen small numpy calls per fold and group: 148 s for CheXpert's
    65k patients in 20 folds. Here the trial of all folds for one group is one array operation
    on (folds x folds x labels), with the same floating-point operations in the same order, so
    the folds are bit for bit the same (tests/data/test_manifest.py checks it against
    scikit-learn). A split dealt by an older craft stays what it was.
    """
    y_inv, n_y = _sorted_codes(labels)
    y_cnt = np.bincount(y_inv, minlength=n_y)
    groups_inv, n_groups = _sorted_codes(groups)
    counts = np.zeros((n_groups, len(y_cnt)))
    np.add.at(counts, (groups_inv, y_inv), 1)
    # 1. Shuffle the groups (numpy's legacy RandomState, as scikit-learn's check_random_state).
    perm = np.arange(n_groups)
    np.random.RandomState(seed).shuffle(perm)
    counts = counts[perm]
    inv_perm = np.empty_like(perm)
    inv_perm[perm] = np.arange(n_groups)
    groups_inv = inv_perm[groups_inv]
    # 2. Groups with the most uneven label counts first (a stable sort keeps the shuffle's
    #    order among equals).
    order = np.argsort(-np.std(counts, axis=1), kind="stable")
    # 3. Each group to the fold whose label shares, with it added, vary least over the folds
    #    (the mean over labels of the standard deviation over folds); near-ties
    #    (np.isclose) go to the fold with fewer samples so far, exact ones to the first.
    #    numpy's std and mean are spelled out below (sum, divide, subtract, square, sum,
    #    divide, square root), into buffers made once: the same operations in the same order
    #    without a dozen small allocations per group.
    n_labels = len(y_cnt)
    per_fold = np.zeros((n_folds, n_labels))
    trial = np.eye(n_folds)[:, :, None]  # candidate i adds the group to fold i only
    share = y_cnt.reshape(1, 1, -1)
    tried = np.empty((n_folds, n_folds, n_labels))
    mean = np.empty((n_folds, 1, n_labels))
    spread = np.empty((n_folds, n_labels))
    fold_of_group = np.empty(n_groups, dtype=np.int64)
    for g in order.tolist():
        group_counts = counts[g]
        np.multiply(trial, group_counts, out=tried)
        np.add(tried, per_fold, out=tried)
        np.divide(tried, share, out=tried)  # each label's share in each fold
        np.add.reduce(tried, axis=1, keepdims=True, out=mean)
        np.true_divide(mean, n_folds, out=mean)
        np.subtract(tried, mean, out=tried)
        np.multiply(tried, tried, out=tried)
        np.add.reduce(tried, axis=1, out=spread)
        np.true_divide(spread, n_folds, out=spread)
        np.sqrt(spread, out=spread)  # (candidate, label): std over folds
        evals = (np.add.reduce(spread, axis=1) / n_labels).tolist()
        sizes = per_fold.sum(axis=1).tolist()
        best, best_eval, best_size = 0, evals[0], sizes[0]
        for i in range(1, n_folds):
            e = evals[i]
            if e < best_eval or (
                abs(e - best_eval) <= 1e-8 + 1e-5 * abs(best_eval) and sizes[i] < best_size
            ):
                best, best_eval, best_size = i, e, sizes[i]
        per_fold[best] += group_counts
        fold_of_group[g] = best
    return fold_of_group[groups_inv]


def _sorted_codes(values: Sequence[str]) -> tuple[np.ndarray, int]:
    """Each value's index among the distinct values in sorted order, and how many there are:
    ``np.unique(values, return_inverse=True)``'s inverse (numpy orders strings by code point,
    as Python does) without its fixed-width copy of every value and the sorted copies of it
    (at CheXpert's 224k rows 60 MB of the dealing's peak)."""
    names = sorted(set(values))
    index = {v: i for i, v in enumerate(names)}
    return np.fromiter((index[v] for v in values), dtype=np.intp, count=len(values)), len(names)


def _fold_count(frac: dict[str, float]) -> int:
    """The fewest folds (2 to MAX_FOLDS) whose whole numbers give the fractions exactly."""
    for k in range(2, MAX_FOLDS + 1):
        if all(abs(frac[s] * k - round(frac[s] * k)) < 1e-6 for s in SPLITS):
            return k
    return MAX_FOLDS


def _check_every_label_split(rows, result, frac, groups) -> None:
    """Every label has an image in every split of nonzero fraction, or one line says why not."""
    present = {(r.label, result[i]) for i, r in enumerate(rows)}
    for label in dict.fromkeys(r.label for r in rows):
        for s in SPLITS:
            if frac[s] > 0 and (label, s) not in present:
                n = sum(r.label == label for r in rows)
                patients = sum(any(rows[i].label == label for i in idx) for idx in groups.values())
                raise CraftError(
                    f"label {label!r} has no image in the {s} split once whole patients are "
                    f"dealt (its {n} image(s) come from {patients} patient(s)); add patients with "
                    f"that label, set splits explicitly in the manifest, or set the {s} fraction "
                    "to 0 in modalities.<name>.splits"
                )


def _check_fractions(fractions: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown:
        raise CraftError(f"split fractions: unknown split(s) {unknown}; use train, val, test")
    frac = {s: float(fractions.get(s, 0.0)) for s in SPLITS}
    if any(v < 0 for v in frac.values()) or abs(sum(frac.values()) - 1.0) > 1e-6:
        raise CraftError(
            f"split fractions {frac} must be >= 0 and sum to 1; fix modalities.<name>.splits"
        )
    return frac


def _allocate(n: int, frac: dict[str, float], required: list[str]) -> dict[str, int]:
    """Largest-remainder counts summing to n, then at least one in each required split."""
    exact = {s: frac[s] * n for s in SPLITS}
    counts = {s: int(np.floor(exact[s])) for s in SPLITS}
    by_remainder = sorted(SPLITS, key=lambda s: (-(exact[s] - counts[s]), SPLITS.index(s)))
    for s in by_remainder[: n - sum(counts.values())]:
        counts[s] += 1
    for s in required:
        if counts[s] == 0:
            donor = max(
                (d for d in SPLITS if counts[d] > (1 if d in required else 0)),
                key=lambda d: (counts[d], -SPLITS.index(d)),
            )
            counts[donor] -= 1
            counts[s] = 1
    return counts


def _label_key(label: str) -> int:
    return int.from_bytes(hashlib.sha256(label.encode()).digest()[:8], "little")
