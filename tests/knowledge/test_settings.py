"""The knowledge config node and the cluster example config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from craft.knowledge.settings import KnowledgeConfig

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_curated_and_offline():
    k = KnowledgeConfig()
    assert k.backend.kind == "curated" and k.include_label_prompt
    assert k.for_modality("phantom-cxr") == {
        "backend": {"kind": "curated"},
        "include_label_prompt": True,
        "curated": None,
    }


def test_backends_parse_and_reject_bad_values():
    k = KnowledgeConfig.model_validate(
        {
            "backend": {
                "kind": "openai",
                "base_url": "http://node:8000/v1/",
                "model": "m",
                "api_key_env": "KEY",
            }
        }
    )
    assert k.backend.base_url == "http://node:8000/v1"
    for bad, field in [
        ({"kind": "openai", "base_url": "http://u:pw@node/v1", "model": "m"}, "credentials"),
        ({"kind": "openai", "base_url": "node:8000", "model": "m"}, "not an http"),
        (
            {"kind": "openai", "base_url": "http://n/v1", "model": "m", "api_key_env": "sk-123"},
            "pattern",
        ),
        ({"kind": "transformers", "model": "m", "dtype": "int4"}, "dtype"),
        ({"kind": "vllm"}, "tag"),
    ]:
        with pytest.raises(ValidationError, match=field):
            KnowledgeConfig.model_validate({"backend": bad})


def test_for_modality_holds_only_that_modalitys_pins():
    k = KnowledgeConfig.model_validate(
        {
            "backend": {"kind": "transformers", "model": "Qwen/Qwen2-VL-7B-Instruct"},
            "review": {"a": "reviews/a.yaml", "b": "reviews/b.yaml"},
        }
    )
    a, b, c = (k.for_modality(m) for m in "abc")
    assert a == {"review": "reviews/a.yaml"} and b == {"review": "reviews/b.yaml"}
    assert c["backend"]["model"] == "Qwen/Qwen2-VL-7B-Instruct" and "enrichment" in c
    assert "review" not in c and "reviews/a.yaml" not in str(c)
    sl = k.slice_for("c", "chest radiograph", ["x", "y"], None)
    assert sl == {
        "modality": {
            "name": "c",
            "description": "chest radiograph",
            "labels": ["x", "y"],
            "phantom": None,
        },
        "knowledge": c,
    }
    k.check_modalities(["a", "b"])
    with pytest.raises(ValueError, match=r"knowledge.review.b: not a configured modality"):
        k.check_modalities(["a"])


def test_craft_paper_config_validates():
    """configs/craft-paper.yaml: the current config model plus the knowledge node."""
    from craft.config import CraftConfig, validate_config

    data = yaml.safe_load((REPO / "configs" / "craft-paper.yaml").read_text())
    if "knowledge" in CraftConfig.model_fields:  # the lead has mounted the node
        cfg = validate_config(data)
        knowledge = cfg.knowledge
    else:
        knowledge = KnowledgeConfig.model_validate(data.pop("knowledge"))
        cfg = validate_config(data)
    assert knowledge.backend.kind == "transformers"
    assert cfg.models.generator == "runwayml/stable-diffusion-v1-5"
    assert set(cfg.modalities) == {"chexpert", "ham10000", "fundus-dr", "nct-crc-he"}
    knowledge.check_modalities(list(cfg.modalities))

    # The curated fallback covers every modality and label of the example.
    from craft.knowledge.curated import curated_knowledge, load_curated, resolve_base

    for name, m in cfg.modalities.items():
        base = load_curated(resolve_base(dict(knowledge.curated), name, None))[0]
        k = curated_knowledge(base, name, m.description, list(m.labels))
        assert list(k.labels) == list(m.labels)


def test_build_from_config_when_mounted(tmp_path):
    """Once craft/config.py mounts KnowledgeConfig, the config path builds phantom knowledge."""
    from craft.config import CraftConfig, validate_config
    from tests.conftest import tiny_config

    if "knowledge" not in CraftConfig.model_fields:
        pytest.skip("craft.config has no knowledge node yet")
    from craft.knowledge.build import build_from_config

    cfg = validate_config(tiny_config(str(tmp_path / "results")))
    k = build_from_config(cfg, "phantom-derm", tmp_path / "phantom-derm.json")
    assert list(k.labels) == ["nevus", "melanoma"]
    assert all(it.oracle_criterion for it in k.checklist)
    assert k.provenance["config_digest"] == cfg.digest("knowledge", "phantom-derm")
