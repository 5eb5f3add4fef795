"""A hospital site's whole set-up in a folder, for the rehearsal (tests/slurm/test_site.py):
its data (real DICOM slices and PNGs, several per patient), its models in the formats it
downloads (hub ids in a Hugging Face cache that jobs read offline, and local folders), a
knowledge server's settings, and a config naming all of it, with all six methods."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.hub_cache import cache_repo, offline_env
from tests.site_data import LABELS, write_site
from tests.site_models import (
    dinov2,
    hf_dual_encoder,
    sd15_pipeline,
    timm_classifier,
    tiny_bert,
    tiny_biomedclip,
)

MODALITY = "site-ct"
SD, BIOMEDCLIP, BERT, RESNET = (
    "site/tiny-sd15",
    "site/tiny-biomedclip",
    "site/tiny-pubmedbert",
    "site/tiny-resnet",
)
KEY_ENV = "CRAFT_SITE_LLM_KEY"
SECRET = "sk-site-3c1f9a7e55d24b0e-never-in-a-file"
METHODS = ("zero-shot", "lora", "lora-enriched", "full", "generic-reward", "craft")


@dataclass(frozen=True)
class Site:
    root: Path
    config: Path
    cache: Path  # the Hugging Face cache the jobs read, offline
    manifest: Path
    sd: Path  # the pipeline folder the hub id names (for diffusers outside craft)

    def env(self, base: dict) -> dict[str, str]:
        """The jobs' environment: the hub offline, the key of the knowledge server set."""
        return {**offline_env(self.cache, base), KEY_ENV: SECRET}


def site_answer(body: dict) -> str:
    """A knowledge server's answer for the site's labels (the OpenAI chat protocol's content)."""
    user = body["messages"][1]["content"]
    m = re.search(r"Target label: ([^\n]+?)\.\n", user)
    if m is None:
        item = {
            "finding": "anatomy",
            "statement": "the body outline fills the image",
            "negation": "no body outline is visible",
            "question": "Does the body outline fill the image?",
            "polarity": "present",
        }
        return json.dumps({"items": [item]})
    label = m.group(1)
    items = [
        {
            "finding": "lesion",
            "statement": "a bright round lesion lies in the tissue",
            "negation": "the tissue holds no bright round lesion",
            "question": "Is there a bright round lesion in the tissue?",
            "polarity": "present",
            "expected": {lab: lab == "lesion" for lab in LABELS},
        },
        {
            "finding": "lesions_multiple",
            "statement": "two or more bright lesions are visible",
            "negation": "at most one bright lesion is visible",
            "question": "Are two or more bright lesions visible?",
            "polarity": "present",
            "expected": {lab: False for lab in LABELS},
        },
    ]
    prompts = [f"ct slice, {label}, dark tissue", f"mr slice of {label} tissue"]
    return json.dumps({"prompts": prompts, "items": items})


def build_site(root: Path, base_url: str, n_patients: int = 30) -> Site:
    """Write the site's data, models and config under ``root``."""
    manifest, images = write_site(root / "data", n_patients=n_patients)
    models, cache = root / "models", root / "hf-cache"
    sd = sd15_pipeline(models / "sd15")
    cache_repo(cache, SD, sd)
    bert = tiny_bert(models / "pubmedbert")
    cache_repo(cache, BERT, bert)
    cache_repo(cache, BIOMEDCLIP, tiny_biomedclip(models / "biomedclip", bert, BERT))
    cache_repo(cache, RESNET, timm_classifier(models / "resnet"))
    clip = hf_dual_encoder(models / "clip", "clip", seed=1)
    siglip = hf_dual_encoder(models / "siglip", "siglip", seed=2)
    dino = dinov2(models / "dinov2")
    lora = {"steps": 3, "batch_size": 4, "lr": 0.001, "rank": 2}
    align = {
        "window": "draft",
        "k": 1,
        "sample_steps": 3,
        "diffusion_weight": 0.5,
        "kl_weight": 0.5,
        "eval_every": 0,
        "zero_stage": 2,
    }
    cfg = {
        "results": str(root / "results"),
        "seeds": [0],
        "modalities": {
            MODALITY: {
                "source": {
                    "kind": "manifest",
                    "manifest": str(manifest),
                    "image_root": str(images),
                },
                "labels": LABELS,
                "description": "ct slice",
                "resolution": 32,
                "channels": 1,
                "splits": {"train": 0.6, "val": 0.2, "test": 0.2},
            }
        },
        "models": {"generator": SD},
        "knowledge": {
            "backend": {
                "kind": "openai",
                "base_url": base_url,
                "model": "site/chat-model",
                "api_key_env": KEY_ENV,
                "timeout_s": 20,
                "max_retries": 2,
                "backoff_s": 0.1,
            },
            "enrichment": {"n_prompts": 2, "max_items_per_label": 4, "max_modality_items": 2},
        },
        "methods": {
            "zero-shot": {"kind": "zero-shot"},
            "lora": {"kind": "lora", **lora},
            "lora-enriched": {"kind": "lora", "prompts": "enriched", **lora},
            "full": {"kind": "full", "steps": 2, "batch_size": 4, "lr": 0.0001},
            "generic-reward": {
                "kind": "generic-reward",
                "init": "lora-enriched",
                **lora,
                "align": align,
            },
            "craft": {
                "kind": "craft",
                "init": "lora-enriched",
                "prompts": "enriched",
                **lora,
                "align": {**align, "reward": "cas"},
            },
        },
        "sampling": {"steps": 3, "n_per_label": 4, "batch_size": 8, "guidance_scale": 3.0},
        "cas": {
            "evaluators": {
                "biomedclip": {
                    "family": "biomedclip",
                    "role": "reward",
                    "source": f"hf-hub:{BIOMEDCLIP}",
                },
                "clip": {"family": "clip", "role": "out-of-family", "source": str(clip)},
                "siglip": {"family": "siglip", "role": "out-of-family", "source": str(siglip)},
            },
            "bootstrap": 100,
            "reference_max_per_label": 8,
        },
        "evaluation": {
            "downstream": {
                "classifier": f"hf-hub:{RESNET}",
                "pretrained": True,
                "image_size": 32,
                "max_epochs": 2,
                "batch_size": 8,
            },
            "memorization": {"encoder": str(dino)},
            "fidelity": {"features": str(dino), "kid_subset_size": 4, "kid_subsets": 5},
        },
        "study": {"method_a": "craft", "method_b": "lora-enriched", "pairs_per_label": 2},
        # two DeepSpeed processes hold more than one job's default 4000 MB (the test cluster
        # enforces --mem): a site's multi-GPU align asks for memory per process
        "resources": {"align": {"gpu": 2, "threads": 1, "mem_mb": 8000}},
    }
    config = root / "site.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Site(root, config, cache, manifest, sd)
