"""Chat backends: send chat conversations to a model, get raw answer texts back.

Two kinds, one interface (:class:`ChatBackend`): a local model run with transformers, and an
OpenAI-compatible chat-completions endpoint (a vLLM server, or a hosted API). Neither parses
answers: craft.knowledge.structured does that, with the cache in front of both. The API key is
read from the environment variable the config names, sent in one header, and never logged,
cached or put in an error message.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Protocol

from craft.errors import CraftError
from craft.knowledge.settings import OpenAIBackend, TransformersBackend
from craft.progress import log

Messages = list[dict[str, str]]


class ChatBackend(Protocol):
    """What the knowledge stage needs from a model."""

    #: The model id, recorded as the source of what it wrote.
    name: str
    #: How many conversations one ``generate`` call should get.
    batch_size: int

    def identity(self) -> dict[str, Any]:
        """Everything that decides the answer besides the messages (no URL, no secret)."""
        ...

    def generate(self, conversations: Sequence[Messages]) -> list[str]:
        """One raw answer text per conversation."""
        ...


# ----------------------------------------------------------------------------- OpenAI-compatible


class _Retryable(Exception):
    def __init__(self, why: str, wait: float | None = None):
        super().__init__(why)
        self.wait = wait


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIChat:
    """Chat completions over HTTP(S), one request at a time, with retries and a rate limit."""

    batch_size = 1

    def __init__(self, cfg: OpenAIBackend, sleep=time.sleep):
        self.cfg = cfg
        self.name = cfg.model
        self.url = f"{cfg.base_url}/chat/completions"
        self._sleep = sleep
        self._last_start = 0.0
        self._key: str | None = None
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise CraftError(
                    f"environment variable {cfg.api_key_env} (knowledge.backend.api_key_env) is "
                    f"not set; export the API key there"
                )
            self._key = key

    def identity(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "backend": "openai",
            "model": c.model,
            "max_tokens": c.max_tokens,
            "temperature": c.temperature,
            "seed": c.seed,
            "json_mode": c.json_mode,
        }

    def generate(self, conversations: Sequence[Messages]) -> list[str]:
        return [self._complete(list(m)) for m in conversations]

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _throttle(self) -> None:
        if self.cfg.requests_per_minute:
            gap = 60.0 / self.cfg.requests_per_minute - (time.monotonic() - self._last_start)
            if gap > 0:
                self._sleep(gap)
        self._last_start = time.monotonic()

    def _complete(self, messages: Messages) -> str:
        c = self.cfg
        body: dict[str, Any] = {
            "model": c.model,
            "messages": messages,
            "max_tokens": c.max_tokens,
            "temperature": c.temperature,
        }
        if c.seed is not None:
            body["seed"] = c.seed
        if c.json_mode:
            body["response_format"] = {"type": "json_object"}
        data = json.dumps(body).encode()
        tries = c.max_retries + 1
        for attempt in range(tries):
            self._throttle()
            try:
                return self._post(data)
            except _Retryable as err:
                if attempt + 1 == tries:
                    raise CraftError(
                        f"knowledge: the chat endpoint {self.url} failed {tries} times, last: "
                        f"{self._redact(str(err))}; check that the server runs and "
                        f"knowledge.backend.base_url"
                    ) from None
                wait = min(c.backoff_s * 2**attempt, c.max_backoff_s)
                if err.wait is not None:
                    wait = min(max(wait, err.wait), c.max_backoff_s)
                log(
                    f"knowledge: {self._redact(str(err))}; retry {attempt + 1}/{c.max_retries} "
                    f"in {wait:.1f} s"
                )
                self._sleep(wait)
        raise AssertionError("unreachable")

    def _post(self, data: bytes) -> str:
        """One HTTP request: the answer text, a _Retryable, or a CraftError."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            status = err.code
            # redacted before it is cut short: a key cut in two would leak its first part
            snippet = self._redact(" ".join(err.read(300).decode("utf-8", "replace").split()))
            if status == 429:
                raise _Retryable(
                    "HTTP 429 (rate limited)", _retry_after(err.headers.get("Retry-After"))
                ) from None
            if status >= 500 or status == 408:
                raise _Retryable(f"HTTP {status}: {snippet[:120]}") from None
            hint = " (check the API key's env var)" if status in (401, 403) else ""
            raise CraftError(
                f"knowledge: the chat endpoint {self.url} answered HTTP {status}{hint}: "
                f"{snippet[:200]}"
            ) from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, TimeoutError | socket.timeout):
                raise _Retryable(f"no answer within {self.cfg.timeout_s:g} s") from None
            raise _Retryable(f"cannot connect ({reason})") from None
        except TimeoutError:
            raise _Retryable(f"no answer within {self.cfg.timeout_s:g} s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as err:
            raise _Retryable(f"connection lost ({type(err).__name__}: {err})") from None
        try:
            payload = json.loads(raw)
            choice = payload["choices"][0]
            content = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            start = self._redact(" ".join(raw[:300].decode("utf-8", "replace").split()))[:120]
            raise _Retryable(f"not a chat-completions answer: {start}") from None
        if choice.get("finish_reason") == "length":
            log(
                f"knowledge: an answer of {self.cfg.model} was cut off at max_tokens "
                f"({self.cfg.max_tokens})"
            )
        return content


# ----------------------------------------------------------------------------- transformers


class TransformersChat:
    """A local chat model (causal LM, or an image-text-to-text model used with text only).

    The model loads on the first ``generate``: a run whose answers are all cached never loads
    it. Prompts are rendered with the model's own chat template, left-padded and batched;
    decoding is greedy unless ``do_sample``.
    """

    def __init__(self, cfg: TransformersBackend):
        self.cfg = cfg
        self.name = cfg.model
        self.batch_size = cfg.batch_size
        self.model = None
        self.tokenizer = None
        self._template = None  # object whose apply_chat_template renders conversations
        self._structured = False  # processors want content as [{"type": "text", ...}]
        self.device = None

    def identity(self) -> dict[str, Any]:
        c = self.cfg
        out = {
            "backend": "transformers",
            "model": c.model,
            "revision": c.revision,
            "dtype": c.dtype,
            "max_new_tokens": c.max_new_tokens,
            "do_sample": c.do_sample,
        }
        if c.do_sample:
            out.update(temperature=c.temperature, top_p=c.top_p, seed=c.seed)
        return out

    def generation_kwargs(self) -> dict[str, Any]:
        """The arguments ``model.generate`` gets besides the inputs."""
        c = self.cfg
        kw: dict[str, Any] = {"max_new_tokens": c.max_new_tokens, "do_sample": c.do_sample}
        if c.do_sample:
            kw.update(temperature=c.temperature, top_p=c.top_p)
        else:  # no sampling knobs: the model's generation_config may hold some
            kw.update(temperature=None, top_p=None, top_k=None)
        kw["pad_token_id"] = self.tokenizer.pad_token_id
        return kw

    def load(self) -> None:
        if self.model is not None:
            return
        import torch
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
            MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        )

        c = self.cfg
        kw = {"revision": c.revision, "trust_remote_code": c.trust_remote_code}
        try:
            config = AutoConfig.from_pretrained(c.model, **kw)
        except (OSError, ValueError) as err:
            why = " ".join(str(err).split())[:200]
            raise CraftError(f"knowledge.backend.model: cannot load '{c.model}': {why}") from None
        dtype = "auto" if c.dtype == "auto" else getattr(torch, c.dtype)
        kind = config.model_type
        if kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            model = AutoModelForCausalLM.from_pretrained(c.model, dtype=dtype, **kw)
            tok = AutoTokenizer.from_pretrained(c.model, **kw)
            self._template = tok
        elif kind in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            model = AutoModelForImageTextToText.from_pretrained(c.model, dtype=dtype, **kw)
            proc = AutoProcessor.from_pretrained(c.model, **kw)
            tok = proc.tokenizer
            self._template = proc if getattr(proc, "chat_template", None) else tok
            self._structured = self._template is proc
        else:
            raise CraftError(
                f"knowledge.backend.model: '{c.model}' is a {kind} model, not a chat or "
                f"vision-language model"
            )
        if not getattr(self._template, "chat_template", None):
            raise CraftError(
                f"knowledge.backend.model: '{c.model}' has no chat template; use an instruction "
                f"or chat model"
            )
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        if c.device == "auto":
            from craft.device import compute_device

            self.device = compute_device()
        else:
            self.device = c.device
        self.model = model.to(self.device).eval()
        self.tokenizer = tok
        log(f"knowledge: loaded {c.model} ({kind}) on {self.device}")

    def render(self, conversations: Sequence[Messages]) -> list[str]:
        """The prompt texts the model reads: each conversation through the chat template."""
        self.load()
        out = []
        for messages in conversations:
            if self._structured:
                messages = [
                    {"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                    for m in messages
                ]
            out.append(
                self._template.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=True
                )
            )
        return out

    def generate(self, conversations: Sequence[Messages]) -> list[str]:
        import torch

        texts = self.render(conversations)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        if self.cfg.do_sample:
            torch.manual_seed(self.cfg.seed)
        with torch.inference_mode():
            out = self.model.generate(**enc, **self.generation_kwargs())
        new = out[:, enc["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


def make_chat_backend(cfg: OpenAIBackend | TransformersBackend) -> ChatBackend:
    """The chat backend a ``knowledge.backend`` config node names."""
    if cfg.kind == "openai":
        return OpenAIChat(cfg)
    if cfg.kind == "transformers":
        return TransformersChat(cfg)
    raise CraftError(f"knowledge.backend.kind '{cfg.kind}' is not a chat model backend")
