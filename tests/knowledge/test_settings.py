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


def test_the_knowledge_spec_holds_only_that_modalitys_pins():
    from craft.config import validate_config
    from tests.conftest import tiny_config

    data = tiny_config()
    data["knowledge"] = {
        "backend": {"kind": "transformers", "model": "Qwen/Qwen2-VL-7B-Instruct"},
        "review": {"phantom-cxr": "reviews/a.yaml"},
    }
    cfg = validate_config(data)
    a, c = (cfg.spec("knowledge", m).plain() for m in ("phantom-cxr", "phantom-derm"))
    assert a["knowledge"] == {"kind": "review", "review": "reviews/a.yaml"}
    assert c["knowledge"]["backend"]["model"] == "Qwen/Qwen2-VL-7B-Instruct"
    assert c["knowledge"]["n_prompts"] == 4 and "reviews/a.yaml" not in str(c)
    assert c["modality"] == "phantom-derm" and c["labels"] == ["nevus", "melanoma"]
    k = KnowledgeConfig.model_validate({"review": {"a": "a.yaml", "b": "b.yaml"}})
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
    assert cfg.models.generator == "stable-diffusion-v1-5/stable-diffusion-v1-5"
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
    assert k.provenance["config_digest"] == cfg.spec("knowledge", "phantom-derm").digest
