"""read_manifest and assign_splits on real CSV files and image folders."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from craft.data.manifest import ManifestRow, assign_splits, read_manifest, scan_manifest
from craft.errors import CraftError

LABELS = ["normal", "effusion"]


@pytest.fixture
def root(tmp_path) -> Path:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for name in ["a.png", "b.png", "c.png", "sub/d.png"]:
        (images / name).write_bytes(b"\x89PNG")  # existence is all read_manifest checks
    return images


def write_csv(tmp_path: Path, text: str, name: str = "manifest.csv", **kw) -> Path:
    path = tmp_path / name
    path.write_text(text, **kw)
    return path


def test_reads_rows_with_line_numbers_and_resolved_paths(tmp_path, root):
    absolute = root / "c.png"
    csv = write_csv(
        tmp_path,
        "path,label,split,site\n"
        "a.png,normal,train,x\n"
        "\n"
        f"{absolute},effusion,,y\n"
        " sub/d.png , effusion , TEST ,z\n",
    )
    rows = read_manifest(csv, root, LABELS)
    assert rows == [
        ManifestRow(row=2, path=root / "a.png", label="normal", split="train"),
        ManifestRow(row=4, path=absolute, label="effusion", split=None),
        ManifestRow(row=5, path=root / "sub" / "d.png", label="effusion", split="test"),
    ]
    assert all(r.path.is_absolute() for r in rows)


def test_header_with_bom_any_case_and_order(tmp_path, root):
    csv = write_csv(tmp_path, "Label, PATH\nnormal,a.png\neffusion,b.png\n", encoding="utf-8-sig")
    rows = read_manifest(csv, root, LABELS)
    assert [(r.label, r.path.name, r.split) for r in rows] == [
        ("normal", "a.png", None),
        ("effusion", "b.png", None),
    ]


def test_missing_manifest(tmp_path, root):
    with pytest.raises(CraftError, match=r"nope\.csv: manifest not found"):
        read_manifest(tmp_path / "nope.csv", root, LABELS)


def test_missing_columns_lists_existing(tmp_path, root):
    csv = write_csv(tmp_path, "file,label\na.png,normal\n")
    with pytest.raises(
        CraftError, match=r"manifest\.csv: missing column\(s\) path.*'file', 'label'"
    ):
        read_manifest(csv, root, LABELS)


def test_empty_path(tmp_path, root):
    csv = write_csv(tmp_path, "path,label\na.png,normal\n,effusion\n")
    with pytest.raises(CraftError, match=r"manifest\.csv line 3: empty path"):
        read_manifest(csv, root, LABELS)


def test_unknown_label_lists_allowed_and_config_key(tmp_path, root):
    csv = write_csv(tmp_path, "path,label\na.png,normal\nb.png,pneumonia\n")
    with pytest.raises(CraftError) as err:
        read_manifest(csv, root, LABELS)
    msg = str(err.value)
    assert "manifest.csv line 3" in msg and "'pneumonia'" in msg
    assert "normal, effusion" in msg and "modalities.<name>.labels" in msg and "\n" not in msg


def test_invalid_split(tmp_path, root):
    csv = write_csv(tmp_path, "path,label,split\na.png,normal,train\nb.png,effusion,validation\n")
    with pytest.raises(CraftError, match=r"manifest\.csv line 3: split 'validation'"):
        read_manifest(csv, root, LABELS)


def test_missing_image_names_row_path_and_count(tmp_path, root):
    csv = write_csv(
        tmp_path, "path,label\na.png,normal\ngone.png,effusion\nalso_gone.png,effusion\n"
    )
    with pytest.raises(
        CraftError,
        match=r"manifest\.csv line 3: image file not found: .*gone\.png; .*\(and 1 more "
        r"problem\(s\); `craft data check` lists them all\)$",
    ):
        read_manifest(csv, root, LABELS)
    rows, problems = scan_manifest(csv, root, LABELS)
    assert [r.row for r in rows] == [2]
    assert [p.split(": image file not found")[0][-6:] for p in problems] == ["line 3", "line 4"]


def test_missing_image_root_is_named(tmp_path, root):
    csv = write_csv(tmp_path, "path,label\na.png,normal\nb.png,effusion\n")
    with pytest.raises(CraftError, match=r"line 2: .*image root .*nowhere does not exist"):
        read_manifest(csv, tmp_path / "nowhere", LABELS)


def test_duplicate_paths_even_when_spelled_differently(tmp_path, root):
    csv = write_csv(tmp_path, "path,label\na.png,normal\nb.png,effusion\n./sub/../a.png,effusion\n")
    with pytest.raises(CraftError, match=r"manifest\.csv line 4: duplicate path .*line 2"):
        read_manifest(csv, root, LABELS)


def test_configured_label_without_images(tmp_path, root):
    csv = write_csv(tmp_path, "path,label\na.png,normal\nb.png,normal\n")
    with pytest.raises(
        CraftError, match=r"manifest\.csv: configured label\(s\) 'effusion' have no images"
    ):
        read_manifest(csv, root, LABELS)


def test_header_only_and_ragged_rows(tmp_path, root):
    with pytest.raises(CraftError, match="no rows"):
        read_manifest(write_csv(tmp_path, "path,label\n"), root, LABELS)
    with pytest.raises(CraftError, match=r"line 2: has 3 fields but the header has 2"):
        read_manifest(
            write_csv(tmp_path, "path,label\na.png,normal,extra\n", "r.csv"), root, LABELS
        )


# ----------------------------------------------------------------------------- assign_splits


def rows_for(counts: dict[str, int], split: str | None = None) -> list[ManifestRow]:
    rows, line = [], 2
    for label, n in counts.items():
        for i in range(n):
            rows.append(
                ManifestRow(
                    row=line, path=Path(f"/data/{label}/{i:04d}.png"), label=label, split=split
                )
            )
            line += 1
    return rows


FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_stratified_counts_per_label():
    rows = rows_for({"normal": 100, "effusion": 20})
    splits = assign_splits(rows, FRACTIONS, seed=0)
    per = Counter((r.label, s) for r, s in zip(rows, splits, strict=True))
    assert (per["normal", "train"], per["normal", "val"], per["normal", "test"]) == (70, 15, 15)
    assert (per["effusion", "train"], per["effusion", "val"], per["effusion", "test"]) == (14, 3, 3)


def test_deterministic_in_seed_and_independent_of_row_order():
    rows = rows_for({"normal": 50, "effusion": 50})
    a = assign_splits(rows, FRACTIONS, seed=3)
    assert a == assign_splits(rows, FRACTIONS, seed=3)
    assert a != assign_splits(rows, FRACTIONS, seed=4)
    reversed_rows = rows[::-1]
    b = assign_splits(reversed_rows, FRACTIONS, seed=3)
    assert dict(zip((r.path for r in rows), a, strict=True)) == dict(
        zip((r.path for r in reversed_rows), b, strict=True)
    )


def test_explicit_splits_are_kept_and_fractions_apply_to_the_rest():
    fixed = rows_for({"normal": 5, "effusion": 5}, split="test")
    free = [
        ManifestRow(r.row + 100, r.path.with_name("f" + r.path.name), r.label, None)
        for r in rows_for({"normal": 10, "effusion": 10})
    ]
    splits = assign_splits(fixed + free, {"train": 0.8, "val": 0.2, "test": 0.0}, seed=0)
    assert splits[:10] == ["test"] * 10
    assert Counter(splits[10:]) == {"train": 16, "val": 4}


def test_small_label_gets_one_in_each_split():
    rows = rows_for({"normal": 50, "rare": 3})
    splits = assign_splits(rows, {"train": 0.9, "val": 0.05, "test": 0.05}, seed=0)
    assert sorted(s for r, s in zip(rows, splits, strict=True) if r.label == "rare") == [
        "test",
        "train",
        "val",
    ]


def test_zero_fraction_split_gets_nothing():
    rows = rows_for({"normal": 10, "effusion": 10})
    assert "val" not in assign_splits(rows, {"train": 0.8, "val": 0.0, "test": 0.2}, seed=0)


def test_too_few_images_names_label_and_counts():
    rows = rows_for({"normal": 10, "rare": 2})
    with pytest.raises(
        CraftError, match=r"label 'rare' has 2 image\(s\).*at least 3.*train, val, test"
    ):
        assign_splits(rows, FRACTIONS, seed=0)


def test_explicit_rows_count_towards_the_minimum():
    rows = rows_for({"rare": 1}, split="test") + [
        ManifestRow(10, Path("/data/rare/x.png"), "rare", None),
        ManifestRow(11, Path("/data/rare/y.png"), "rare", None),
    ]
    splits = assign_splits(rows, FRACTIONS, seed=0)
    assert splits[0] == "test" and sorted(splits[1:]) == ["train", "val"]


def test_bad_fractions():
    with pytest.raises(CraftError, match="sum to 1"):
        assign_splits(rows_for({"a": 5}), {"train": 0.5, "val": 0.1, "test": 0.1}, seed=0)
    with pytest.raises(CraftError, match="unknown split"):
        assign_splits(rows_for({"a": 5}), {"train": 0.9, "holdout": 0.1}, seed=0)


# ----------------------------------------------------------------------------- patients


def patient_rows(n_patients: int, seed: int = 0) -> list[ManifestRow]:
    """1-6 images per patient; a patient's label mix: mostly one label, sometimes two."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows, line = [], 2
    for p in range(n_patients):
        main = LABELS[p % 2]
        for i in range(int(rng.integers(1, 7))):
            label = main if rng.random() < 0.8 else LABELS[(p + 1) % 2]
            path = Path(f"/data/p{p:03d}/{i}.png")
            rows.append(ManifestRow(line, path, label, None, patient=f"P{p:03d}"))
            line += 1
    return rows


def test_manifest_reads_a_patient_or_patient_id_column(tmp_path, root):
    csv = write_csv(tmp_path, "path,label,Patient_ID\na.png,normal,P1\nb.png,effusion,\n")
    rows = read_manifest(csv, root, LABELS)
    assert [(r.path.name, r.patient) for r in rows] == [("a.png", "P1"), ("b.png", None)]
    csv = write_csv(tmp_path, "path,label,patient\na.png,normal, P7 \nb.png,effusion,P7\n")
    assert [r.patient for r in read_manifest(csv, root, LABELS)] == ["P7", "P7"]
    csv = write_csv(tmp_path, "path,label,patient,patient_id\na.png,normal,P1,P1\n")
    with pytest.raises(CraftError, match=r"both patient and patient_id; keep one"):
        read_manifest(csv, root, LABELS)


def test_no_patient_is_in_two_splits_and_labels_stay_stratified():
    rows = patient_rows(120)
    splits = assign_splits(rows, FRACTIONS, seed=0)
    where: dict[str, set] = {}
    for r, s in zip(rows, splits, strict=True):
        where.setdefault(r.patient, set()).add(s)
    assert all(len(s) == 1 for s in where.values())
    # the per-image split (what craft did before) puts many patients in two splits
    flat = assign_splits([ManifestRow(r.row, r.path, r.label, None) for r in rows], FRACTIONS, 0)
    mixed = {}
    for r, s in zip(rows, flat, strict=True):
        mixed.setdefault(r.patient, set()).add(s)
    assert sum(len(s) > 1 for s in mixed.values()) > 20
    per = Counter((r.label, s) for r, s in zip(rows, splits, strict=True))
    for label in LABELS:
        n = sum(r.label == label for r in rows)
        for s, f in FRACTIONS.items():
            assert abs(per[label, s] / n - f) < 0.06, (label, s, per)


def test_patient_splits_depend_on_seed_not_on_row_order():
    rows = patient_rows(60, seed=1)
    a = assign_splits(rows, FRACTIONS, seed=5)
    b = assign_splits(rows[::-1], FRACTIONS, seed=5)
    assert dict(zip((r.path for r in rows), a, strict=True)) == dict(
        zip((r.path for r in rows[::-1]), b, strict=True)
    )
    assert a != assign_splits(rows, FRACTIONS, seed=6)


def test_a_patients_explicit_split_takes_all_its_rows_and_two_splits_are_refused():
    rows = patient_rows(40)
    first = rows[0].patient
    rows[0] = ManifestRow(rows[0].row, rows[0].path, rows[0].label, "test", patient=first)
    splits = assign_splits(rows, FRACTIONS, seed=0)
    assert {s for r, s in zip(rows, splits, strict=True) if r.patient == first} == {"test"}
    twin = next(i for i, r in enumerate(rows) if r.patient == first and i > 0)
    rows[twin] = ManifestRow(rows[twin].row, rows[twin].path, rows[twin].label, "train", first)
    with pytest.raises(
        CraftError, match=rf"patient 'P000' has rows in 2 splits: line 2 \(test\), line {twin + 2}"
    ):
        assign_splits(rows, FRACTIONS, seed=0)


def test_rows_without_a_patient_are_patients_of_their_own():
    rows = patient_rows(40)
    rows += [ManifestRow(900 + i, Path(f"/data/x/{i}.png"), LABELS[i % 2], None) for i in range(20)]
    splits = assign_splits(rows, FRACTIONS, seed=0)
    assert set(splits[-20:]) == {"train", "val", "test"}


def test_too_few_patients_for_a_label_in_a_split_is_one_line():
    rows = patient_rows(40)
    rows += [ManifestRow(900 + i, Path(f"/data/r/{i}.png"), "rare", None, "R1") for i in range(9)]
    with pytest.raises(
        CraftError, match=r"label 'rare' has no image in the (val|test|train) split .*9 image\(s\) "
        r"come from 1 patient\(s\)"
    ):  # fmt: skip
        assign_splits(rows, FRACTIONS, seed=0)


def test_a_relative_path_out_of_the_image_root_is_refused(tmp_path, root):
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((root / "a.png").read_bytes())
    csv = write_csv(tmp_path, "path,label\na.png,normal\n../elsewhere.png,effusion\n")
    with pytest.raises(CraftError, match=r"line 3: path '../elsewhere.png' leads out of the"):
        read_manifest(csv, root, LABELS)
    csv = write_csv(tmp_path, f"path,label\na.png,normal\n{outside},effusion\n")
    assert [r.path for r in read_manifest(csv, root, LABELS)][1] == outside  # absolute: fine


def test_explicit_splits_that_leave_a_split_empty_are_refused():
    rows = [ManifestRow(i + 2, Path(f"/d/{i}.png"), LABELS[i % 2], "train") for i in range(8)]
    with pytest.raises(CraftError, match=r"label 'normal' has no image in the val split: every"):
        assign_splits(rows, FRACTIONS, seed=0)
    rows[0] = ManifestRow(2, Path("/d/0.png"), LABELS[0], "val")
    rows[2] = ManifestRow(4, Path("/d/2.png"), LABELS[0], "test")
    rows[1] = ManifestRow(3, Path("/d/1.png"), LABELS[1], "val")
    rows[3] = ManifestRow(5, Path("/d/3.png"), LABELS[1], "test")
    assert set(assign_splits(rows, FRACTIONS, seed=0)) == {"train", "val", "test"}


@pytest.mark.parametrize("n_folds", [2, 5, 10, 20])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_folds_are_scikit_learns_stratified_group_kfold_sample_for_sample(n_folds, seed):
    """craft's linear-time dealing is scikit-learn's (so no split dealt before changes)."""
    import warnings

    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    from craft.data.manifest import stratified_group_folds

    rng = np.random.default_rng(100 * n_folds + seed)
    n_groups = int(rng.integers(n_folds, 400))
    sizes = rng.integers(1, 6, n_groups)
    groups = [f"g{g}" for g in range(n_groups) for _ in range(sizes[g])]
    labels = [f"l{int(x)}" for x in rng.choice(4, len(groups), p=[0.55, 0.25, 0.15, 0.05])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sgkf = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
        expected = np.empty(len(groups), dtype=np.int64)
        for f, (_, test) in enumerate(sgkf.split(groups, labels, groups)):
            expected[test] = f
    assert stratified_group_folds(labels, groups, n_folds, seed).tolist() == expected.tolist()


def test_the_same_file_by_a_hard_link_is_a_duplicate(tmp_path, root):
    (root / "sub" / "e.png").hardlink_to(root / "a.png")
    csv = write_csv(tmp_path, "path,label\na.png,normal\nb.png,effusion\nsub/e.png,effusion\n")
    with pytest.raises(
        CraftError, match=r"manifest\.csv line 4: duplicate path 'sub/e.png'.*line 2"
    ):
        read_manifest(csv, root, LABELS)


def test_splits_are_dealt_once_per_manifest_content_and_again_when_a_row_changes(
    tmp_path, monkeypatch
):
    import craft.data.manifest as manifest

    images = tmp_path / "images"
    images.mkdir()
    lines = ["path,label,patient"]
    for p in range(12):
        for i in range(2):
            (images / f"{p}-{i}.png").write_bytes(b"\x89PNG")
            lines.append(f"{p}-{i}.png,{LABELS[p % 2]},P{p}")
    csv = write_csv(tmp_path, "\n".join(lines) + "\n")
    calls = []
    real = manifest.assign_splits
    monkeypatch.setattr(manifest, "assign_splits", lambda *a: calls.append(1) or real(*a))
    cache = tmp_path / "results" / "data" / ".splits" / "site"

    def dealt(seed=0):  # the plan's check, then prepare
        spec = manifest.ManifestSpec(csv, images, tuple(LABELS), FRACTIONS, seed, cache)
        rows, problems = manifest.check_rows(spec)
        assert not problems, problems
        return manifest.manifest_splits(spec, rows)

    first = dealt()
    assert first == real(manifest.read_manifest(csv, images, LABELS), FRACTIONS, 0)
    assert len(calls) == 1 and len(list(cache.glob("*.json"))) == 1
    assert dealt() == first and len(calls) == 1  # planned again: nothing dealt
    assert dealt(seed=1) != first and len(calls) == 2  # another seed is another key
    lines[5] = lines[5].replace(",P2", ",P9")  # one row changes patient
    csv.write_text("\n".join(lines) + "\n")
    changed = dealt()
    assert len(calls) == 3 and len(list(cache.glob("*.json"))) == 3
    assert changed == real(manifest.read_manifest(csv, images, LABELS), FRACTIONS, 0)
    for f in cache.glob("*.json"):
        f.write_text("{not json")
    assert dealt() == changed and len(calls) == 4  # a damaged cache file: dealt again


def test_a_manifest_checked_sound_before_is_checked_again_by_its_files_alone(tmp_path, monkeypatch):
    """The plan's check of a manifest whose content was sound: no row is parsed again, but a
    file gone is found, with check_rows' own words; a second name of one file made since is
    not the later plan's to find, and check_rows (prepare's scan) finds it."""
    import craft.data.manifest as manifest

    images = tmp_path / "images"
    images.mkdir()
    lines = ["path,label,patient"]
    for p in range(12):
        (images / f"{p}.png").write_bytes(b"\x89PNG")
        lines.append(f"{p}.png,{LABELS[p % 2]},P{p}")
    csv = write_csv(tmp_path, "\n".join(lines) + "\n")
    cache = tmp_path / "cache"
    args = (manifest.ManifestSpec(csv, images, tuple(LABELS), FRACTIONS, 0, cache),)
    assert manifest.manifest_problems(*args) == []  # the first plan: rows parsed, dealt
    parsed = []
    real = manifest._row
    monkeypatch.setattr(manifest, "_row", lambda *a: parsed.append(1) or real(*a))
    assert manifest.manifest_problems(*args) == [] and not parsed
    (images / "3.png").unlink()
    assert manifest.manifest_problems(*args) == manifest.check_rows(*args)[1]
    assert "image file not found" in manifest.manifest_problems(*args)[0]
    (images / "3.png").hardlink_to(images / "5.png")  # one file under two names
    parsed.clear()
    assert manifest.manifest_problems(*args) == [] and not parsed
    assert "line 7: duplicate path '5.png', already listed on line 5" in (
        " ".join(manifest.check_rows(*args)[1])
    )


def test_manifest_rows_keep_every_field_as_columns():
    """ManifestRows (a scan's rows, kept as columns for memory) gives back each row as it was
    appended: unicode files and patients, rows without a patient or split, and one code per
    patient."""
    import numpy as np

    from craft.data.manifest import ManifestRows

    given = [
        ManifestRow(2, "/d/a.png", "effusion", None, "P2"),
        ManifestRow(3, "/d/ü ñ.png", "normal", "val", None),
        ManifestRow(5, "/d/c.png", "effusion", "test", "Pätient 1"),
        ManifestRow(9, "/d/d.png", "normal", None, "P2"),
    ]
    rows = ManifestRows(LABELS)
    for r in given:
        rows.append(r)
    assert rows == given and list(rows) == given and rows[-1] == given[-1]
    assert len(rows) == 4 and rows[1:3] == given[1:3]
    assert list(rows.files()) == [r.file for r in given]
    codes = rows.patients()
    assert codes[1] == -1 and codes[0] == codes[3] != codes[2]
    assert [rows.patient_name(c) for c in codes] == [r.patient for r in given]
    want = [LABELS.index(r.label) for r in given]
    assert rows.label_codes(LABELS).tolist() == want
    assert np.array_equal(rows.label_codes(LABELS[::-1]), [len(LABELS) - 1 - w for w in want])


def test_rows_without_files_are_the_same_rows_and_their_files_read_again(tmp_path, root):
    """prepare's scan keeps lines, labels and splits only; manifest_records gives each kept
    row's file and patient again, skipping the rows the scan did not keep."""
    from craft.data.manifest import manifest_records

    text = (
        "path,label,split,patient\n"
        "a.png,normal,train,P1\n"
        "\n"
        "gone.png,normal,,P2\n"
        " sub/d.png , effusion , ,P3\n"
        f"{root / 'c.png'},effusion,,\n"
    )
    csv = write_csv(tmp_path, text)
    full, problems = scan_manifest(csv, root, LABELS)
    light, light_problems = scan_manifest(csv, root, LABELS, keep_files=False)
    assert problems == light_problems and len(problems) == 1  # gone.png, in both
    assert not light.keeps_files
    assert light.lines().tolist() == [r.row for r in full] == [2, 5, 6]
    assert light.split_codes().tolist() == [0, -1, -1]
    assert light.label_codes(LABELS).tolist() == full.label_codes(LABELS).tolist() == [0, 1, 1]
    with pytest.raises(TypeError, match="without their files"):
        light.file(0)
    again = list(manifest_records(csv, root, light.lines()))
    assert again == [(r.file, r.patient or "") for r in full]


def test_a_manifest_changed_between_the_scan_and_the_second_reading_is_refused(tmp_path, root):
    from craft.data.manifest import manifest_records

    csv = write_csv(tmp_path, "path,label\na.png,normal\nb.png,effusion\n")
    rows, _ = scan_manifest(csv, root, LABELS, keep_files=False)
    csv.write_text("path,label\na.png,normal\n\nb.png,effusion\n")  # b moved down a line
    with pytest.raises(CraftError, match=r"manifest\.csv: changed while craft read it"):
        list(manifest_records(csv, root, rows.lines()))


def test_a_scan_without_files_names_duplicates_as_the_full_scan_does(tmp_path, root):
    csv = write_csv(tmp_path, "path,label\na.png,normal\nb.png,effusion\n./sub/../a.png,effusion\n")
    full = scan_manifest(csv, root, LABELS)[1]
    assert scan_manifest(csv, root, LABELS, keep_files=False)[1] == full
    assert "line 4: duplicate path" in full[0]


def test_cached_splits_are_the_dealt_splits_and_none_where_not_dealt(tmp_path, root):
    from craft.data.manifest import (
        SPLITS,
        ManifestSpec,
        cached_splits,
        manifest_splits,
        read_manifest,
    )

    for i in range(12):
        (root / f"x{i}.png").write_bytes(b"\x89PNG")
    text = "path,label\n" + "".join(f"x{i}.png,{LABELS[i % 2]}\n" for i in range(12))
    csv = write_csv(tmp_path, text)
    spec = ManifestSpec(csv, root, tuple(LABELS), {"train": 0.5, "val": 0.25, "test": 0.25}, 0,
                        tmp_path / "cache")  # fmt: skip
    assert cached_splits(spec, 12) is None
    dealt = manifest_splits(spec, read_manifest(csv, root, LABELS))
    codes = cached_splits(spec, 12)
    assert [SPLITS[c] for c in codes] == dealt
    assert cached_splits(spec, 11) is None  # other rows: deal again
    csv.write_text(text + "\n")  # other bytes, another key
    assert cached_splits(spec, 12) is None
