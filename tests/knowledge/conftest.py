"""Fixtures of the knowledge tests: settings for a local chat server, the phantom chest labels."""

from __future__ import annotations

import pytest

from craft.knowledge.settings import EnrichmentConfig, KnowledgeConfig, OpenAIBackend

KEY_ENV = "CRAFT_TEST_KNOWLEDGE_KEY"
SECRET = "sk-test-9f8e7d6c5b4a-do-not-leak"
LABELS = ["normal", "cardiomegaly", "effusion", "nodule"]


@pytest.fixture
def api_key(monkeypatch) -> str:
    monkeypatch.setenv(KEY_ENV, SECRET)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return SECRET


def openai_settings(base_url: str, **backend) -> KnowledgeConfig:
    """Knowledge settings for the test server: short timeouts, tiny backoff."""
    opts = dict(
        kind="openai",
        base_url=base_url,
        model="test/chat-model",
        api_key_env=KEY_ENV,
        timeout_s=2.0,
        max_retries=3,
        backoff_s=0.01,
        max_backoff_s=2.0,
    )
    opts.update(backend)
    return KnowledgeConfig(
        backend=OpenAIBackend(**opts),
        enrichment=EnrichmentConfig(
            n_prompts=2, max_items_per_label=4, max_modality_items=2, max_attempts=3
        ),
    )
