"""The manifest: a CSV naming each image of a modality with its label and optional split.

Format: a header with ``path`` and ``label`` and optionally ``split`` (other columns are
ignored; names are matched ignoring case and surrounding spaces). ``path`` is absolute or
relative to the image root; ``split`` is ``train``, ``val``, ``test`` or empty (assigned by
:func:`assign_splits`). Blank lines are skipped; values are stripped of surrounding spaces.
Every problem is one :class:`CraftError` line naming the CSV file and its line number.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from craft.errors import CraftError

SPLITS = ("train", "val", "test")
_LABELS_KEY = "modalities.<name>.labels"


@dataclass(frozen=True)
class ManifestRow:
    """One image of the manifest; ``row`` is its line in the CSV (the header is line 1)."""

    row: int
    path: Path
    label: str
    split: str | None


def read_manifest(csv_path: Path, image_root: Path, labels: Sequence[str]) -> list[ManifestRow]:
    """Read and check a manifest CSV; every configured label must have at least one image."""
    csv_path = Path(csv_path)
    image_root = Path(image_root)
    allowed = list(labels)
    if not csv_path.is_file():
        raise CraftError(f"{csv_path}: manifest not found; check modalities.<name>.source.manifest")
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as f:
            records = list(_records(csv.reader(f)))
    except UnicodeDecodeError:
        raise CraftError(f"{csv_path}: not UTF-8 text; save the manifest as a UTF-8 CSV") from None
    except csv.Error as err:
        raise CraftError(f"{csv_path}: not a valid CSV ({err}); fix the file") from None
    if not records:
        raise CraftError(
            f"{csv_path}: empty file; the first line must be a header with path,label[,split]"
        )

    header_line, header = records[0]
    names = [h.strip().lower() for h in header]
    missing = [c for c in ("path", "label") if c not in names]
    if missing:
        raise CraftError(
            f"{csv_path}: missing column(s) {', '.join(missing)} in the header "
            f"(line {header_line}), which has {', '.join(repr(h) for h in header)}; "
            "the header must name path,label[,split]"
        )
    col = {c: names.index(c) for c in ("path", "label", "split") if c in names}

    rows: list[ManifestRow] = []
    seen: dict[str, int] = {}
    missing_files: list[tuple[int, Path]] = []
    for line, rec in records[1:]:
        where = f"{csv_path} line {line}"
        if len(rec) != len(header):
            raise CraftError(
                f"{where}: has {len(rec)} fields but the header has {len(header)}; "
                "quote values that contain commas"
            )
        raw_path, label = rec[col["path"]].strip(), rec[col["label"]].strip()
        if not raw_path:
            raise CraftError(f"{where}: empty path; give the image file or remove the row")
        if label not in allowed:
            what = "empty label" if not label else f"label {label!r} is not a configured label"
            raise CraftError(
                f"{where}: {what} (allowed: {', '.join(allowed)}); add it to config "
                f"{_LABELS_KEY} or fix the row"
            )
        split = rec[col["split"]].strip().lower() if "split" in col else ""
        if split and split not in SPLITS:
            raise CraftError(
                f"{where}: split {rec[col['split']].strip()!r} is not one of train, val, test "
                "(or empty to assign it); fix the row"
            )
        path = Path(os.path.abspath(image_root / Path(raw_path).expanduser()))
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise CraftError(
                f"{where}: duplicate path {raw_path!r}, already listed on line {seen[key]}; "
                "remove one of the two rows"
            )
        seen[key] = line
        if not path.is_file():
            missing_files.append((line, path))
        rows.append(ManifestRow(row=line, path=path, label=label, split=split or None))

    if missing_files:
        line, path = missing_files[0]
        more = f" (and {len(missing_files) - 1} more rows)" if len(missing_files) > 1 else ""
        root_hint = "" if image_root.is_dir() else f"; the image root {image_root} does not exist"
        raise CraftError(
            f"{csv_path} line {line}: image file not found: {path}{more}{root_hint}; fix the path "
            "or modalities.<name>.source.image_root"
        )
    if not rows:
        raise CraftError(f"{csv_path}: has a header but no rows; list one image per line")
    counts = {lab: 0 for lab in allowed}
    for r in rows:
        counts[r.label] += 1
    empty = [lab for lab, n in counts.items() if n == 0]
    if empty:
        raise CraftError(
            f"{csv_path}: configured label(s) {', '.join(repr(e) for e in empty)} have no images; "
            f"add images for them or remove them from {_LABELS_KEY}"
        )
    return rows


def _records(reader):
    """(line number, fields) of each non-blank CSV record; the line is where the record ends."""
    for rec in reader:
        if rec and any(field.strip() for field in rec):
            yield reader.line_num, rec


def assign_splits(rows: Sequence[ManifestRow], fractions: dict[str, float], seed: int) -> list[str]:
    """Split of each row: explicit splits are kept, the rest split stratified by label.

    For each label, the rows without a split are divided by ``fractions`` (largest remainder),
    with at least one row in every split of nonzero fraction that the label's explicit rows do
    not already cover. Which rows go where depends only on ``seed``, the label and the set of
    paths, not on the manifest's row order or on other labels.
    """
    frac = _check_fractions(fractions)
    result: list[str | None] = [r.split for r in rows]
    by_label: dict[str, list[int]] = defaultdict(list)
    explicit: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for i, r in enumerate(rows):
        if r.split is None:
            by_label[r.label].append(i)
        else:
            explicit[r.label][r.split] += 1

    for label in sorted(by_label):
        todo = sorted(by_label[label], key=lambda i: str(rows[i].path))
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
    return list(result)  # every entry is set: explicit or assigned


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
