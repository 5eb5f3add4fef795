"""Shared fixtures: the repository root, the venv's tools, a tiny phantom config, and a real
headless Chromium (``browser``)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tiny_cas() -> dict:
    """CAS with two tiny evaluators (reward clip, out-of-family siglip) trained for 3 steps."""
    train = {
        "steps": 3,
        "batch_size": 8,
        "n_images": 32,
        "architecture": {"hidden_size": 16, "layers": 1, "projection_dim": 16},
    }
    return {
        "evaluators": {
            "clip": {"family": "clip", "role": "reward", "train": train},
            "siglip": {"family": "siglip", "role": "out-of-family", "train": {**train, "seed": 1}},
        },
        "bootstrap": 100,
        "reference_max_per_label": 8,
    }


def tiny_config(results: str = "results", seeds=(0,)) -> dict:
    """The default config's structure at the smallest sizes that still run every stage."""
    return {
        "results": results,
        "seeds": list(seeds),
        "modalities": {
            "phantom-cxr": {
                "source": {"kind": "phantom", "phantom": "phantom-cxr", "n_per_label": 12},
                "labels": ["normal", "cardiomegaly", "effusion", "nodule"],
                "description": "chest radiograph",
                "resolution": 24,
                "channels": 1,
            },
            "phantom-derm": {
                "source": {"kind": "phantom", "phantom": "phantom-derm", "n_per_label": 12},
                "labels": ["nevus", "melanoma"],
                "description": "dermoscopy image",
                "resolution": 24,
                "channels": 3,
            },
        },
        "pretrain": {
            "steps": 4,
            "batch_size": 4,
            "n_images": 32,
            "architecture": {
                "block_out_channels": [8, 16, 16],
                "cross_attention_dim": 16,
                "text_layers": 1,
                "text_max_length": 16,
            },
        },
        "methods": {
            "zero-shot": {"kind": "zero-shot"},
            "lora": {"kind": "lora", "steps": 3, "batch_size": 4, "rank": 2},
            "lora-enriched": {
                "kind": "lora",
                "prompts": "enriched",
                "steps": 3,
                "batch_size": 4,
                "rank": 2,
            },
        },
        "sampling": {"steps": 2, "n_per_label": 2, "batch_size": 8},
        "cas": tiny_cas(),
        "study": {"method_a": "lora-enriched", "method_b": "lora", "pairs_per_label": 2},
    }


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def env() -> dict:
    """Environment for subprocesses: the venv's `craft` and `snakemake` first on PATH."""
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def backward_of(loss_fn, module) -> tuple[dict, int]:
    """Run ``loss_fn()`` and its backward pass: ``module``'s parameter gradients and the bytes
    autograd kept for the backward pass (what gradient checkpointing saves)."""
    import torch

    kept = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return grads, sum(kept)


# ----------------------------------------------------------------------------- headless Chromium

#: Debian's chromium and chromium-driver (same version, so the driver always fits the browser).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
#: The browser window's size in CSS pixels: a laptop screen.
WINDOW = (1280, 800)


def require_browser(what: str):
    """Skip a browser test, or fail it where a browser is required (CRAFT_REQUIRE_BROWSER=1,
    as in CI)."""
    reason = f"{what} (apt-get install -y chromium chromium-driver; pip install selenium)"
    if os.environ.get("CRAFT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"CRAFT_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium driven by selenium, its window :data:`WINDOW` CSS pixels large;
    files it downloads land in ``browser.downloads``. Skipped (failed under
    CRAFT_REQUIRE_BROWSER=1) without chromium, chromium-driver or selenium."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # pragma: no cover - depends on the machine
        require_browser("the selenium package is not installed")
    if not CHROMIUM or not CHROMEDRIVER:
        require_browser("Debian's chromium / chromium-driver are not installed")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(arg)
    opts.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "profile.default_content_setting_values.automatic_downloads": 1,
        },
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()
