"""``craft prepare`` on a hospital's data set: real DICOM slices and PNGs, several per patient."""

from __future__ import annotations

from collections import defaultdict

from craft.config import validate_config
from craft.data.prepare import prepare
from craft.store import read_split
from tests.conftest import tiny_config
from tests.site_data import LABELS, write_site


def site_config(manifest, images, splits=None) -> dict:
    cfg = tiny_config()
    cfg["modalities"] = {
        "site-ct": {
            "source": {"kind": "manifest", "manifest": str(manifest), "image_root": str(images)},
            "labels": LABELS,
            "description": "CT or MR slice",
            "resolution": 32,
            "channels": 1,
            **({"splits": splits} if splits else {}),
        }
    }
    # Real data needs a pretrained generator and evaluators (hub ids: prepare loads none), and
    # knowledge from a model (no curated base knows these labels).
    cfg["models"] = {"generator": "org/stable-diffusion"}
    cfg["knowledge"] = {
        "backend": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "site/chat"}
    }
    cfg["cas"]["evaluators"] = {
        "clip": {"family": "clip", "role": "reward", "source": "org/clip"},
        "siglip": {"family": "siglip", "role": "out-of-family", "source": "org/siglip"},
    }
    return cfg


def test_prepare_keeps_each_patient_in_one_split_and_records_the_patients(tmp_path):
    manifest, images = write_site(tmp_path / "site", n_patients=24)
    cfg = validate_config(site_config(manifest, images))
    out = prepare(cfg, "site-ct", tmp_path / "site-ct.h5")
    where: dict[str, set[str]] = defaultdict(set)
    n = 0
    for split in ("train", "val", "test"):
        s = read_split(out, split)
        assert len(s.patients) == len(s) and all(s.patients), split
        assert set(s.label_names) == set(LABELS)
        assert set(s.labels.tolist()) == {0, 1}, split  # every label in every split
        for p in s.patients:
            where[p].add(split)
        n += len(s)
    assert len(where) == 24 and all(len(v) == 1 for v in where.values()), where
    assert n == sum(1 for _ in manifest.open()) - 1  # every row, once


def test_a_manifests_prepare_spec_says_its_splits_keep_patients_together(tmp_path):
    """So that upgrading reruns prepare where splits were drawn per image before; phantom
    sources' specs (and so the shipped configs' reruns) are unchanged."""
    manifest, images = write_site(tmp_path / "site", n_patients=4)
    cfg = validate_config(site_config(manifest, images))
    assert cfg.spec("prepare", "site-ct").plain()["source"]["split_by"] == "patient"
    phantom = validate_config(tiny_config())
    assert "split_by" not in phantom.spec("prepare", "phantom-cxr").plain()["source"]
