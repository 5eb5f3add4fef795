"""Session fixtures of the CAS tests: one tiny phantom evaluator, trained once, and its reference.

The evaluator is trained at a reduced budget (about 30 s on 2 threads) through the same recipe
and the same save/load path as the workflow's; everything else reuses it. It is cached in
pytest's cache under a digest of the code and settings that make it, so a rerun with unchanged
training code skips the training (``--cache-clear`` or ``-p no:cacheprovider`` retrains).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.cas.knowledge_standin import CXR_LABELS, phantom_knowledge
from tests.cas.phantom_sets import write_phantom_data

PHANTOM = "phantom-cxr"
RESOLUTION = 32


@pytest.fixture(scope="session")
def cxr_knowledge():
    return phantom_knowledge(PHANTOM)


def _training_digest(settings) -> str:
    """What the trained evaluator depends on: the code that makes it and its settings."""
    import transformers

    repo = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for rel in (
        "craft/cas/train_evaluator.py",
        "craft/cas/evaluators.py",
        "craft/cas/knowledge_view.py",
        "craft/cas/settings.py",
        "craft/models/tokenizer.py",
        "craft/data/phantoms.py",
        "craft/data/oracle.py",
        "tests/cas/knowledge_standin.py",
        "tests/cas/conftest.py",
    ):
        h.update((repo / rel).read_bytes())
    h.update(
        f"{settings.model_dump_json()} {torch.__version__} {transformers.__version__}".encode()
    )
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def trained_cxr(request, tmp_path_factory, cxr_knowledge):
    """(evaluator dir, accuracy) of a CLIP evaluator trained on chest phantoms, reduced budget."""
    from craft.cas.settings import EvaluatorTraining
    from craft.cas.train_evaluator import CARD, train_evaluator

    settings = EvaluatorTraining(steps=300, n_images=2000, seed=0)
    cache = getattr(request.config, "cache", None)
    cached = None
    if cache is not None:
        cached = cache.mkdir("craft-cas-evaluator") / _training_digest(settings)
        if (cached / CARD).is_file():
            return cached, json.loads((cached / CARD).read_text())["accuracy"]
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    out = tmp_path_factory.mktemp("evaluator") / "clip"
    try:
        acc = train_evaluator(
            PHANTOM,
            CXR_LABELS,
            "chest radiograph",
            RESOLUTION,
            "clip",
            settings,
            cxr_knowledge,
            out,
            name="clip",
        )
    finally:
        torch.set_num_threads(threads)
    if cached is not None:
        shutil.rmtree(cached.parent, ignore_errors=True)  # older digests
        shutil.copytree(out, cached)
    return out, acc


@pytest.fixture(scope="session")
def cxr_evaluator(trained_cxr):
    from craft.cas.evaluators import load_evaluator

    return load_evaluator(trained_cxr[0], name="clip")


@pytest.fixture(scope="session")
def cxr_data(tmp_path_factory) -> Path:
    return write_phantom_data(
        tmp_path_factory.mktemp("data") / f"{PHANTOM}.h5", PHANTOM, CXR_LABELS, 100, RESOLUTION
    )


@pytest.fixture(scope="session")
def cxr_reference(cxr_evaluator, cxr_data, cxr_knowledge):
    from craft.cas.reference import build_reference

    return build_reference(cxr_evaluator, cxr_data, cxr_knowledge, tail_quantile=10.0, knn_k=10)
