"""Config nodes of the knowledge stage (``knowledge:`` in config.yaml), part of the one tree.

craft/config.py mounts :class:`KnowledgeConfig` as ``CraftConfig.knowledge``. This module
imports only pydantic (the Snakefile validates the config at parse time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NAME = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CuratedBackend(_Strict):
    """The YAML knowledge base shipped in craft/knowledge/curated/ (offline, no model)."""

    kind: Literal["curated"] = Field(description="Backend type: 'curated' (shipped YAML).")


class TransformersBackend(_Strict):
    """A local chat / instruction model or vision-language model run with transformers."""

    kind: Literal["transformers"] = Field(
        description="Backend type: 'transformers' (a local model)."
    )
    model: str = Field(description="Any from_pretrained source: hub id or local dir.")
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit); None = the default branch."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="'auto': cuda if available.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Dtype the weights are loaded in; 'auto': the model's saved dtype."
    )
    batch_size: int = Field(4, ge=1, description="Requests generated together (left-padded).")
    max_new_tokens: int = Field(1536, ge=16, description="Most tokens generated per answer.")
    do_sample: bool = Field(False, description="False: greedy, deterministic decoding.")
    temperature: float = Field(0.7, gt=0, description="Only with do_sample.")
    top_p: float = Field(0.9, gt=0, le=1, description="Only with do_sample.")
    seed: int = Field(0, description="Torch seed set before each generation (do_sample only).")
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped in the model's repository (transformers)."
    )


class OpenAIBackend(_Strict):
    """An OpenAI-compatible chat-completions endpoint (a vLLM server, or a hosted API)."""

    kind: Literal["openai"] = Field(
        description="Backend type: 'openai' (an OpenAI-compatible HTTP endpoint)."
    )
    base_url: str = Field(description="Up to /v1, e.g. http://gpu-node-3:8000/v1.")
    model: str = Field(description="Model name the server knows, e.g. Qwen/Qwen2-VL-7B-Instruct.")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="NAME of the environment variable holding the API key (never the key).",
    )
    timeout_s: float = Field(120.0, gt=0, description="Per HTTP request.")
    max_retries: int = Field(5, ge=0, description="Retries after timeouts, 5xx, 429, lost sockets.")
    backoff_s: float = Field(1.0, ge=0, description="First retry wait; doubles on each retry.")
    max_backoff_s: float = Field(60.0, ge=0, description="Cap on a wait (Retry-After included).")
    requests_per_minute: float | None = Field(None, gt=0, description="Client-side rate limit.")
    max_tokens: int = Field(
        1536, ge=16, description="Most tokens per answer (a cut-off answer is logged)."
    )
    temperature: float = Field(
        0.0, ge=0, description="Sampling temperature (0 = the least random)."
    )
    seed: int | None = Field(
        0, description="Seed sent with each request (servers may ignore it); None: not sent."
    )
    json_mode: bool = Field(
        False, description="Send response_format json_object (OpenAI, vLLM support it)."
    )

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        # Never repeat the URL in an error: it may hold a key (this field's errors are shown
        # without their value, craft.config.SECRET_PRONE).
        parts = urlsplit(v)
        if parts.username or parts.password or "@" in parts.netloc:
            raise ValueError("must not hold credentials; name the key's env var in api_key_env")
        if parts.query or parts.fragment:
            raise ValueError(
                "must end at the API root (e.g. http://host:8000/v1), without ?query or "
                "#fragment; a key goes in the environment variable named by api_key_env"
            )
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("is not an http(s) URL such as http://gpu-node-3:8000/v1")
        return v.rstrip("/")


KnowledgeBackendConfig = Annotated[
    CuratedBackend | TransformersBackend | OpenAIBackend, Field(discriminator="kind")
]


class EnrichmentConfig(_Strict):
    """What the model backends are asked for, and how their answers are checked."""

    n_prompts: int = Field(4, ge=1, le=16, description="Enriched prompts asked per label.")
    max_items_per_label: int = Field(8, ge=1, le=32, description="Checklist items kept per label.")
    max_modality_items: int = Field(4, ge=0, le=16, description="View / anatomy / overlay items.")
    max_attempts: int = Field(
        3, ge=1, le=10, description="Answers per request before failing: the first + re-asks."
    )


class KnowledgeConfig(_Strict):
    """The knowledge stage: enriched prompts and clinical checklists per modality."""

    backend: KnowledgeBackendConfig = Field(
        CuratedBackend(kind="curated"),
        description="Where prompts and checklists come from: the curated YAML knowledge base, "
        "a local transformers model or an OpenAI-compatible endpoint.",
    )
    enrichment: EnrichmentConfig = Field(
        EnrichmentConfig(), description="What the model backends are asked for, and checks."
    )
    include_label_prompt: bool = Field(
        True, description="Put the plain label prompt ('chest radiograph, cardiomegaly') first."
    )
    curated: dict[_NAME, str] = Field(
        {},
        description="modality -> shipped knowledge base name (phantom-cxr, chexpert, ham10000, "
        "fundus-dr, nct-crc-he) or a YAML path; default: the modality's phantom or its name.",
    )
    review: dict[_NAME, Path] = Field(
        {},
        description="modality -> a clinician-edited review YAML, used verbatim (its digest is "
        "recorded); start from results/knowledge/{modality}.review.yaml.",
    )

    def check_modalities(self, names: list[str]) -> None:
        """ValueError naming the field when curated / review name an unconfigured modality."""
        for field in ("curated", "review"):
            for m in getattr(self, field):
                if m not in names:
                    raise ValueError(
                        f"knowledge.{field}.{m}: not a configured modality "
                        f"(configured: {', '.join(names)})"
                    )
