"""export_study: a blinded, deterministic, self-contained page and a separate key."""

from __future__ import annotations

import base64
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from craft.errors import CraftError
from craft.store import read_samples
from craft.study.export import export_study
from craft.study.schema import read_key
from tests.study.helpers import DESCRIPTION, LABELS, METHOD_A, METHOD_B, write_samples

DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


def page_data(page: Path) -> dict:
    """The JSON the page embeds (pair ids, labels, prompts, images)."""
    text = page.read_text()
    m = re.search(r'<script type="application/json" id="study-data">(.*?)</script>', text, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


@pytest.fixture
def samples(tmp_path):
    # B from another run seed: its per-image seeds differ from A's and must not reach the page.
    a = write_samples(tmp_path / "runs" / METHOD_A / "samples.h5", METHOD_A, run_seed=0)
    b = write_samples(tmp_path / "runs" / METHOD_B / "samples.h5", METHOD_B, run_seed=1)
    return a, b


def export(samples, out: Path, n=8, seed=0, **kw) -> Path:
    a, b = samples
    args = dict(
        modality="phantom-cxr",
        description=DESCRIPTION,
        label_names=LABELS,
        samples_a=a,
        samples_b=b,
        method_a=METHOD_A,
        method_b=METHOD_B,
        out_dir=out,
        n_pairs_per_label=n,
        seed=seed,
    )
    return export_study(**{**args, **kw})


def test_page_holds_no_method_names_files_or_seeds(samples, tmp_path):
    page = export(samples, tmp_path / "study")
    raw = page.read_text()
    text = DATA_URI.sub("", raw).lower()
    assert "data:image/png;base64," in raw
    leaks = (METHOD_A, METHOD_B, "lora", "enriched", "samples.h5", "runs/", "key.json", "a_side")
    for leak in (*leaks, str(tmp_path)):
        assert leak.lower() not in text, leak
        assert leak not in raw, leak
    for path in samples:
        for seed in read_samples(path).seeds:
            assert str(seed) not in text
    # self-contained: no external resources of any kind
    assert not re.search(r"(src|href)\s*=\s*[\"'](?!data:)", text)
    assert "http://" not in text and "https://" not in text and "@import" not in text
    # the key sits beside the page and is the only place the methods are named
    assert sorted(p.name for p in page.parent.iterdir()) == ["key.json", "study.html"]
    key = read_key(page.parent / "key.json")
    assert (key.method_a, key.method_b) == (METHOD_A, METHOD_B)
    assert key.study_id in raw and key.study_id == page_data(page)["study_id"]


def test_pairs_match_label_prompt_row_and_the_key_unblinds_the_images(samples, tmp_path):
    page = export(samples, tmp_path / "study", n=8)
    key = read_key(page.parent / "key.json")
    data = page_data(page)
    a, b = (read_samples(p) for p in samples)
    assert len(key.pairs) == len(data["pairs"]) == 4 * 8
    assert [p.pair_id for p in key.pairs] == [p["id"] for p in data["pairs"]]
    assert Counter(p.label for p in key.pairs) == {lab: 8 for lab in LABELS}
    for pair, shown in zip(key.pairs, data["pairs"], strict=True):
        assert LABELS[a.labels[pair.row_a]] == LABELS[b.labels[pair.row_b]] == pair.label
        assert pair.prompt == pair.prompt_a == pair.prompt_b == a.prompts[pair.row_a]
        assert pair.row_a == pair.row_b  # same row: same prompt and noise index
        assert shown["label"] == pair.label and shown["prompt"] == pair.prompt
        left, right = decode(shown["left"]), decode(shown["right"])
        assert left.shape == (256, 256)  # 32 px upscaled x8, nearest neighbour
        want_a = np.kron(a.images[pair.row_a][..., 0], np.ones((8, 8), np.uint8))
        want_b = np.kron(b.images[pair.row_b][..., 0], np.ones((8, 8), np.uint8))
        shown_a, shown_b = (left, right) if pair.a_side == "left" else (right, left)
        np.testing.assert_array_equal(shown_a, want_a)
        np.testing.assert_array_equal(shown_b, want_b)


def test_sides_are_balanced_per_label_and_random(samples, tmp_path):
    patterns = set()
    for seed in range(4):
        key = read_key(export(samples, tmp_path / f"s{seed}", n=8, seed=seed).parent / "key.json")
        for label in LABELS:
            sides = [p.a_side for p in key.pairs if p.label == label]
            assert sides.count("left") == 4, (seed, label, sides)
        patterns.add(tuple(p.a_side for p in key.pairs))
        labels_in_order = [p.label for p in key.pairs]
        assert labels_in_order != sorted(labels_in_order, key=LABELS.index)  # shuffled
    assert len(patterns) == 4
    key = read_key(export(samples, tmp_path / "odd", n=5, seed=0).parent / "key.json")
    for label in LABELS:
        assert [p.a_side for p in key.pairs if p.label == label].count("left") in (2, 3)


def test_same_seed_same_files_other_seed_other_study(samples, tmp_path):
    first = export(samples, tmp_path / "one", seed=7)
    again = export(samples, tmp_path / "two", seed=7)
    other = export(samples, tmp_path / "three", seed=8)
    assert first.read_bytes() == again.read_bytes()
    assert (first.parent / "key.json").read_text() == (again.parent / "key.json").read_text()
    assert first.read_bytes() != other.read_bytes()
    assert (
        read_key(first.parent / "key.json").study_id != read_key(other.parent / "key.json").study_id
    )


def test_fewer_images_than_asked_and_mismatched_prompts(tmp_path, capsys):
    a = write_samples(tmp_path / "a.h5", METHOD_A, n_per_label=3)
    b = write_samples(tmp_path / "b.h5", METHOD_B, n_per_label=3)
    page = export((a, b), tmp_path / "few", n=5)
    assert len(read_key(page.parent / "key.json").pairs) == 4 * 3
    assert "fewer than the 5 asked for" in capsys.readouterr().err

    # prompts differ (e.g. enriched prompts): paired by label only, the page shows no prompt
    import h5py

    with h5py.File(b, "a") as f:
        f["prompts"][...] = [f"other prompt {i}" for i in range(len(f["prompts"]))]
    page = export((a, b), tmp_path / "mixed", n=3)
    key = read_key(page.parent / "key.json")
    assert all(p.prompt is None and p.prompt_b.startswith("other") for p in key.pairs)
    assert all(p["prompt"] is None for p in page_data(page)["pairs"])
    assert "other prompt" not in page.read_text()


def test_bad_inputs_are_one_line_errors(samples, tmp_path):
    a, b = samples
    with pytest.raises(CraftError, match="has labels"):
        export(samples, tmp_path / "x", label_names=["normal", "nodule"])
    with pytest.raises(CraftError, match="nothing to compare"):
        export(samples, tmp_path / "x", method_b=METHOD_A)
    with pytest.raises(CraftError, match="method name"):
        export(samples, tmp_path / "x", description="lora-enriched radiograph")
    with pytest.raises(CraftError, match="at least 1"):
        export(samples, tmp_path / "x", n=0)
    big = write_samples(tmp_path / "big.h5", METHOD_B, size=48)
    with pytest.raises(CraftError, match="tell the methods apart"):
        export((a, big), tmp_path / "x")
    with pytest.raises(CraftError, match="does not exist"):
        export((a, tmp_path / "missing.h5"), tmp_path / "x")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())
