"""Offline compute nodes: `craft models check` lists what a job could not load from the
Hugging Face cache, and hub ids load from that cache with the hub switched off (HF_HUB_OFFLINE=1),
BiomedCLIP's second hub model (its BERT text tower) included."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from craft.config import TinyUNet
from craft.models.generator import save_generator
from craft.models.tiny import build_tiny_generator
from tests.conftest import BIN
from tests.hub_cache import cache_repo, offline_env
from tests.site_models import tiny_bert, tiny_biomedclip

SD, BIOMEDCLIP, BERT = "site/tiny-sd", "site/tiny-biomedclip", "site/tiny-pubmedbert"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Saved folders: a latent (VAE) pipeline, a BERT and a BiomedCLIP-layout open_clip model."""
    root = tmp_path_factory.mktemp("hub-models")
    arch = TinyUNet(
        block_out_channels=[8, 16, 16], cross_attention_dim=16, text_layers=1, text_max_length=16
    )
    save_generator(build_tiny_generator(arch, 16, 3, with_vae=True, seed=1), root / "sd")
    bert = tiny_bert(root / "bert")
    return {SD: root / "sd", BERT: bert, BIOMEDCLIP: tiny_biomedclip(root / "bmc", bert, BERT)}


def site_config(tmp_path: Path, clip_dir: Path) -> Path:
    (tmp_path / "m.csv").write_text("path,label\n")
    cfg = {
        "modalities": {
            "ct": {
                "source": {
                    "kind": "manifest",
                    "manifest": str(tmp_path / "m.csv"),
                    "image_root": str(tmp_path),
                },
                "labels": ["normal", "lesion"],
                "description": "CT slice",
                "resolution": 16,
                "channels": 3,
            }
        },
        "models": {"generator": SD},
        "methods": {"zero-shot": {"kind": "zero-shot"}},
        "cas": {
            "evaluators": {
                "biomedclip": {
                    "family": "biomedclip",
                    "role": "reward",
                    "source": f"hf-hub:{BIOMEDCLIP}",
                },
                "clip": {"family": "clip", "role": "out-of-family", "source": str(clip_dir)},
            }
        },
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def craft(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "craft"), *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_models_check_lists_each_model_an_offline_job_could_not_load(tmp_path, built):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    clip = tmp_path / "clip"
    config = site_config(tmp_path, clip)
    env = offline_env(cache)

    empty = craft(["models", "check", "-c", str(config)], env)
    assert empty.returncode == 1, empty.stderr
    lines = empty.stderr.strip().splitlines()
    assert lines == [
        f"craft: missing: models.generator: '{SD}': not in the Hugging Face cache; run "
        f"`craft models fetch --config {config}` on a machine with internet",
        f"craft: missing: cas.evaluators.biomedclip.source: 'hf-hub:{BIOMEDCLIP}': not in the "
        f"Hugging Face cache; run `craft models fetch --config {config}` on a machine with "
        "internet",
        f"craft: missing: cas.evaluators.clip.source: '{clip}': no such "
        "folder; fix cas.evaluators.clip.source or copy the model there",
    ], lines

    # the pipeline without its VAE, BiomedCLIP without its BERT: both named
    snapshot = cache_repo(cache, SD, built[SD])
    for f in (snapshot / "vae").iterdir():
        f.unlink()
    cache_repo(cache, BIOMEDCLIP, built[BIOMEDCLIP])
    clip.mkdir()
    (clip / "config.json").write_text("{}")
    partial = craft(["models", "check", "-c", str(config)], env)
    assert partial.returncode == 1
    lines = partial.stderr.strip().splitlines()
    assert len(lines) == 3, "\n".join(lines)
    assert (
        "models.generator: 'site/tiny-sd': in the Hugging Face cache without vae/config.json"
        in lines[0]
    )
    assert (
        f"cas.evaluators.biomedclip.source: '{BERT}' (the text tower and tokenizer of "
        f"'hf-hub:{BIOMEDCLIP}'): "
        "not in the Hugging Face cache" in lines[1]
    ), lines
    assert (
        "cas.evaluators.clip.source" in lines[2]
        and "the folder has no model.safetensors" in lines[2]
    )

    cache_repo(cache, SD, built[SD])
    cache_repo(cache, BERT, built[BERT])
    for f in built[BERT].iterdir():  # a CLIP folder's files: config and weights
        if f.name in ("config.json", "model.safetensors"):
            (clip / f.name).write_bytes(f.read_bytes())
    ok = craft(["models", "check", "-c", str(config)], env)
    assert ok.returncode == 0, ok.stderr
    assert "all 4 pretrained model(s) load offline" in ok.stdout


def test_hub_ids_load_from_the_cache_with_the_hub_offline(tmp_path, built):
    cache = tmp_path / "hf-cache"
    for repo, folder in built.items():
        cache_repo(cache, repo, folder)
    script = textwrap.dedent(
        f"""
        import torch
        from craft.cas.evaluators import load_evaluator
        from craft.models.generator import load_generator
        gen = load_generator({SD!r})
        assert gen.vae is not None, "the pipeline's VAE was dropped"
        ev = load_evaluator("hf-hub:{BIOMEDCLIP}", name="biomedclip")
        x = torch.rand(2, 3, 16, 16) * 2 - 1
        print("ok", tuple(ev.encode_images(x).shape), tuple(ev.encode_texts(["a lesion"]).shape))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=offline_env(cache),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok (2, 32) (1, 32)" in out.stdout


def test_an_uncached_hub_id_offline_is_one_line_naming_the_field_and_the_fix(tmp_path):
    script = textwrap.dedent(
        """
        import sys
        from craft.errors import CraftError
        from craft.models.generator import load_generator
        try:
            load_generator("site/absent")
        except CraftError as err:
            print(err)
            sys.exit(2)
        """
    )
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=offline_env(cache),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stdout.strip() == (
        "models.generator: 'site/absent' could not be loaded from the Hugging Face cache and "
        "the hub is offline (HF_HUB_OFFLINE); run `craft models fetch --config CONFIG` on a "
        "machine with internet, or name a local folder"
    )


def test_a_revision_is_fetched_for_the_knowledge_model_and_refused_where_open_clip_cannot_load_it(
    tmp_path,
):
    """What `craft models fetch` downloads is what the job loads: the knowledge model's pinned
    revision is fetched (it used to be the default branch), and an open_clip 'hf-hub:' id,
    which open_clip loads from its default branch only, refuses a revision at config time."""
    from pydantic import ValidationError

    from craft.cas.settings import EvaluatorConfig
    from craft.config import load_config
    from craft.models.hub import config_models

    raw = yaml.safe_load(site_config(tmp_path, tmp_path / "clip").read_text())
    raw["knowledge"] = {
        "backend": {"kind": "transformers", "model": "site/tiny-qwen", "revision": "v1.2"}
    }
    (tmp_path / "pinned.yaml").write_text(yaml.safe_dump(raw))
    refs = {r.field: r for r in config_models(load_config(tmp_path / "pinned.yaml"))}
    assert refs["knowledge.backend.model"].revision == "v1.2"

    with pytest.raises(ValidationError, match="open_clip loads 'hf-hub:site/x' from its default"):
        EvaluatorConfig(family="biomedclip", role="reward", source="hf-hub:site/x", revision="r1")
    # a transformers evaluator keeps its revision
    ev = EvaluatorConfig(family="clip", role="reward", source="site/clip", revision="r1")
    assert ev.revision == "r1"
