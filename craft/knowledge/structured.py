"""Structured answers from a chat model: ask for JSON, repair, validate, re-ask, or fail clean.

``ask_all`` runs a set of tasks (one conversation each) through a backend in rounds: every
answer is cached by request digest before it is parsed, an invalid answer is repaired when it
can be (code fences stripped, the first JSON object cut out, trailing commas dropped) and
re-asked otherwise, with the problem named, up to ``max_attempts`` answers per task. A task
that never gets a valid answer stops the run with one line naming the file that holds every
raw answer it got; those answers leave the cache, so a rerun asks the model again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from craft.atomic import atomic_write_text
from craft.errors import CraftError
from craft.knowledge.backends import ChatBackend, Messages
from craft.knowledge.cache import ResponseCache, request_digest
from craft.progress import log

T = TypeVar("T")


class AnswerError(ValueError):
    """An answer that cannot be used; the message is shown to the model when re-asking."""


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)(?:```|$)", re.DOTALL)


def _first_object(text: str) -> str:
    """The first balanced {...} in ``text`` (strings and escapes respected)."""
    start = text.find("{")
    if start < 0:
        raise AnswerError("the answer holds no JSON object")
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        ch = text[i]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    raise AnswerError("the JSON object is cut off before its end (answer too long?)")


def extract_json(text: str) -> dict[str, Any]:
    """The first JSON object in a model answer, repaired where that is safe."""
    fenced = _FENCE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    last: AnswerError | None = None
    for cand in candidates:
        try:
            obj = _first_object(cand)
        except AnswerError as err:
            last = err
            continue
        for attempt in (obj, re.sub(r",\s*([}\]])", r"\1", obj)):
            try:
                value = json.loads(attempt)
            except json.JSONDecodeError as err:
                last = AnswerError(f"the JSON is malformed: {err.msg} at character {err.pos}")
                continue
            if isinstance(value, dict):
                return value
    raise last or AnswerError("the answer holds no JSON object")


@dataclass
class Task(Generic[T]):
    """One question for the model and how to read its answer."""

    key: str  # short, file-name safe: 'label-cardiomegaly'
    messages: Messages
    parse: Callable[[dict[str, Any]], T]  # raises AnswerError on unusable content


@dataclass
class Answer(Generic[T]):
    value: T
    digest: str  # of the request whose answer was used
    attempts: int


@dataclass
class _State:
    task: Task
    answers: list[tuple[str, str, str]] = field(default_factory=list)  # (digest, raw, problem)

    def messages(self) -> Messages:
        if not self.answers:
            return list(self.task.messages)
        _, raw, problem = self.answers[-1]
        return [
            *self.task.messages,
            {"role": "assistant", "content": raw},
            {
                "role": "user",
                "content": f"That answer could not be used: {problem}. Answer again with only "
                "the JSON object in the requested form, nothing before or after it.",
            },
        ]


def ask_all(
    tasks: Sequence[Task[T]],
    backend: ChatBackend,
    cache: ResponseCache,
    max_attempts: int,
    failed_dir: Path,
) -> dict[str, Answer[T]]:
    """Valid answers of every task (by key), asking the model only for what is not cached."""
    identity = backend.identity()
    pending = [_State(t) for t in tasks]
    done: dict[str, Answer[T]] = {}
    for attempt in range(1, max_attempts + 1):
        if not pending:
            break
        convs = [s.messages() for s in pending]
        digests = [request_digest(identity, m) for m in convs]
        missing = [i for i, d in enumerate(digests) if cache.get(d) is None]
        if attempt == 1:
            log(
                f"knowledge: {len(pending)} requests to {backend.name}, "
                f"{len(pending) - len(missing)} answered from the cache"
            )
        elif missing:
            log(f"knowledge: re-asking {len(missing)} requests (answer {attempt}/{max_attempts})")
        for start in range(0, len(missing), backend.batch_size):
            batch = missing[start : start + backend.batch_size]
            answers = backend.generate([convs[i] for i in batch])
            for i, raw in zip(batch, answers, strict=True):
                cache.put(digests[i], identity, convs[i], raw)  # before parsing: resumable
        still = []
        for s, d in zip(pending, digests, strict=True):
            raw = cache.get(d) or ""
            try:
                value = s.task.parse(extract_json(raw))
            except AnswerError as err:
                s.answers.append((d, raw, str(err)))
                still.append(s)
                continue
            done[s.task.key] = Answer(value, d, attempt)
        pending = still
    if pending:
        for s in pending:  # a rerun asks again (a fixed server, a changed model) ...
            for digest, _, _ in s.answers:
                cache.drop(digest)
        paths = [save_failed(s, failed_dir) for s in pending]  # ... and stay here to inspect
        s, path = pending[0], paths[0]
        more = f" ({len(pending) - 1} other requests failed too)" if len(pending) > 1 else ""
        raise CraftError(
            f"knowledge: {backend.name} gave no usable answer to '{s.task.key}' in "
            f"{len(s.answers)} tries (last problem: {s.answers[-1][2]}){more}; raw answers "
            f"saved in {path}"
        )
    return done


def save_failed(state: _State, failed_dir: Path) -> Path:
    """Write every raw answer of a failed task, with its problem, for inspection."""
    parts = [f"# knowledge request '{state.task.key}': no usable answer\n"]
    for n, (digest, raw, problem) in enumerate(state.answers, 1):
        parts.append(
            f"\n===== answer {n} (request {digest[:16]}) =====\n{raw}\n===== problem: {problem}\n"
        )
    return atomic_write_text(Path(failed_dir) / f"{state.task.key}.txt", "".join(parts))
