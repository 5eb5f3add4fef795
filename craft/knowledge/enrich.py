"""Knowledge from a chat model: enriched prompts and a checklist per label, then merged.

One request per label asks for prompts and checklist items (absence items included: generated
images exaggerate, so what must NOT be there is asked for explicitly), one more asks for the
modality-level items (view, anatomy, no overlays). Each answer is validated item by item:
items that are malformed, too long or not visually checkable are dropped with a reason; an
answer left with no prompt or no item is re-asked. Items repeated across labels are merged.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from craft.knowledge.backends import ChatBackend
from craft.knowledge.cache import ResponseCache
from craft.knowledge.checks import (
    cap_prompt,
    item_problem,
    merge_duplicates,
    normalized,
    not_visual_reason,
    unique_id,
)
from craft.knowledge.schema import (
    MAX_PROMPT_CHARS,
    MAX_STATEMENT_CHARS,
    ChecklistItem,
    LabelKnowledge,
    ModalityKnowledge,
    PromptRecord,
    snake_id,
)
from craft.knowledge.settings import EnrichmentConfig
from craft.knowledge.structured import AnswerError, Task, ask_all
from craft.progress import log

SYSTEM = (
    "You are a medical imaging expert who writes criteria for checking {description}s by eye. "
    "You answer with one JSON object and nothing else."
)

ITEM_RULES = """Rules for every checklist item:
- "statement": one declarative sentence about what is visible in this single image, at most {cap} characters.
- "negation": the visual opposite of the statement.
- "question": the statement as a yes/no question.
- "finding": snake_case name of the finding it tests.
- "polarity": "present" if the statement says the finding is there, "absent" if it says it is not.
- "weight": importance from 0.5 to 2.
- Only what can be seen in the image: no patient history, symptoms, age, sex, lab values, change over time or other tests."""  # noqa: E501

LABEL_REQUEST = """Modality: {description}.
Labels of this data set: {labels}.
Target label: {label}.

Write
(1) {n_prompts} short prompts for a text-to-image model, each describing a typical {description} of "{label}": name the label and its visible hallmark findings, one sentence of at most 30 words each;
(2) up to {n_items} checklist items: atomic, visually checkable criteria that an image of "{label}" must meet. Include ABSENCE items, findings that must NOT be visible for "{label}" (findings of other labels, or an exaggerated, bilateral or multiple form of its own finding), because generated images tend to exaggerate.

{rules}
- "expected": for each label in [{labels}]: true if the statement holds for a typical image of that label, false if it must not hold; leave out labels where it varies. "{label}" must be given.

Answer with JSON only, in exactly this form:
{{"prompts": ["..."], "items": [{{"finding": "...", "statement": "...", "negation": "...", "question": "...", "polarity": "present", "weight": 1.0, "expected": {{{example}}}}}]}}"""  # noqa: E501

MODALITY_REQUEST = """Modality: {description}.
Labels of this data set: {labels}.

Write up to {n_items} checklist items that EVERY {description} must meet, whatever its label: the view or projection, the anatomy that must be in the field, the image appearance, and no text overlays, rulers or drawn annotations.

{rules}

Answer with JSON only, in exactly this form:
{{"items": [{{"finding": "...", "statement": "...", "negation": "...", "question": "...", "polarity": "present", "weight": 0.5}}]}}"""  # noqa: E501

_BOOL = {"true": True, "yes": True, "false": False, "no": False}


def _label_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_")


@dataclass
class ParsedAnswer:
    prompts: list[str]
    items: list[ChecklistItem]
    dropped: list[str] = field(default_factory=list)


class AnswerReader:
    """Validates one answer (label or modality request) into prompts and schema items."""

    def __init__(self, labels: list[str], target: str | None, settings: EnrichmentConfig):
        self.labels = labels
        self.target = target  # None: the modality request
        self.s = settings
        self._keys = {_label_key(lab): lab for lab in labels}

    def __call__(self, data: dict[str, Any]) -> ParsedAnswer:
        dropped: list[str] = []
        prompts: list[str] = []
        if self.target is not None:
            raw_prompts = data.get("prompts")
            if not isinstance(raw_prompts, list):
                raise AnswerError('"prompts" must be a list of strings')
            seen: set[str] = set()
            for p in raw_prompts:
                if not isinstance(p, str) or not p.strip():
                    dropped.append("prompt: not a non-empty string")
                    continue
                why = not_visual_reason(p)
                if why:
                    dropped.append(f"prompt: {why}")
                    continue
                text = cap_prompt(p, MAX_PROMPT_CHARS)
                if normalized(text) not in seen:
                    seen.add(normalized(text))
                    prompts.append(text)
            prompts = prompts[: self.s.n_prompts]
            if not prompts:
                raise AnswerError(f"no usable prompt ({'; '.join(dropped) or 'none given'})")
        raw_items = data.get("items")
        if not isinstance(raw_items, list):
            raise AnswerError('"items" must be a list of objects')
        items = []
        for n, raw in enumerate(raw_items, 1):
            try:
                items.append(self._item(raw))
            except AnswerError as err:
                dropped.append(f"item {n}: {err}")
        cap = self.s.max_items_per_label if self.target else self.s.max_modality_items
        items = items[:cap]
        if not items and cap:
            why = "; ".join(dropped[:3]) or "none given"
            raise AnswerError(f"no usable checklist item ({why})")
        return ParsedAnswer(prompts, items, dropped)

    def _expected(self, raw: Any) -> dict[str, bool]:
        if self.target is None:
            return {lab: True for lab in self.labels}
        if not isinstance(raw, dict):
            raise AnswerError('"expected" must be an object of label -> true/false')
        out: dict[str, bool] = {}
        for k, v in raw.items():
            lab = self._keys.get(_label_key(k))
            if lab is None or v is None:
                continue  # unknown label, or 'varies'
            if isinstance(v, str):
                v = _BOOL.get(v.strip().lower())
            if isinstance(v, bool):
                out[lab] = v
        if self.target not in out:
            raise AnswerError(f'"expected" gives no true/false for "{self.target}"')
        return out

    def _item(self, raw: Any) -> ChecklistItem:
        if not isinstance(raw, dict):
            raise AnswerError("not an object")
        for key in ("finding", "statement", "negation"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise AnswerError(f'"{key}" is missing')
        statement = " ".join(raw["statement"].split())
        question = raw.get("question")
        if not isinstance(question, str) or not question.strip():
            question = f"Is it true that {statement.rstrip('.')}?"
        polarity = str(raw.get("polarity", "present")).strip().lower()
        if polarity not in ("present", "absent"):
            raise AnswerError(f'"polarity" is "{polarity}", not present or absent')
        try:
            weight = float(raw.get("weight", 1.0))
        except (TypeError, ValueError):
            weight = 1.0
        weight = min(max(weight, 0.1), 3.0) if weight == weight else 1.0
        for key, text in (
            ("statement", statement),
            ("negation", raw["negation"]),
            ("question", question),
        ):
            if len(" ".join(text.split())) > MAX_STATEMENT_CHARS:
                raise AnswerError(f'"{key}" is longer than {MAX_STATEMENT_CHARS} characters')
        try:
            item = ChecklistItem(
                id="pending",
                finding=snake_id(raw["finding"]),
                statement=statement,
                negation=raw["negation"],
                question=question,
                polarity=polarity,
                weight=weight,
                expected=self._expected(raw.get("expected")),
                scope="label" if self.target else "modality",
            )
        except ValidationError as err:
            raise AnswerError(err.errors()[0]["msg"]) from None
        why = item_problem(item)
        if why:
            raise AnswerError(why)
        return item


def label_task(
    modality: str,
    description: str,
    labels: list[str],
    label: str,
    s: EnrichmentConfig,
    key: str | None = None,
) -> Task[ParsedAnswer]:
    example = ", ".join(f'"{lab}": {"true" if lab == label else "false"}' for lab in labels[:3])
    if label not in labels[:3]:
        example = f'"{label}": true, ' + example
    user = LABEL_REQUEST.format(
        description=description,
        labels=", ".join(labels),
        label=label,
        n_prompts=s.n_prompts,
        n_items=s.max_items_per_label,
        example=example,
        rules=ITEM_RULES.format(cap=MAX_STATEMENT_CHARS - 50),
    )
    return Task(
        key=key or f"label-{snake_id(label)}",
        messages=[
            {"role": "system", "content": SYSTEM.format(description=description)},
            {"role": "user", "content": user},
        ],
        parse=AnswerReader(labels, label, s),
    )


def modality_task(
    modality: str, description: str, labels: list[str], s: EnrichmentConfig
) -> Task[ParsedAnswer]:
    user = MODALITY_REQUEST.format(
        description=description,
        labels=", ".join(labels),
        n_items=s.max_modality_items,
        rules=ITEM_RULES.format(cap=MAX_STATEMENT_CHARS - 50),
    )
    return Task(
        key="modality",
        messages=[
            {"role": "system", "content": SYSTEM.format(description=description)},
            {"role": "user", "content": user},
        ],
        parse=AnswerReader(labels, None, s),
    )


def link_oracle(items: list[ChecklistItem], phantom: str) -> int:
    """Set ``oracle_criterion`` where an item's finding is an oracle criterion and its
    expectations agree with the oracle's ``label_criteria``; returns how many were linked."""
    from craft.data.oracle import label_criteria

    crit = label_criteria(phantom)
    n = 0
    for it in items:
        if not all(it.finding in c for c in crit.values()):
            continue
        agree = all(
            v == (crit[lab][it.finding] if it.polarity == "present" else not crit[lab][it.finding])
            for lab, v in it.expected.items()
            if lab in crit
        )
        if agree:
            it.oracle_criterion = it.finding
            n += 1
    return n


def enrich(
    backend: ChatBackend,
    modality: str,
    description: str,
    labels: list[str],
    settings: EnrichmentConfig,
    cache_dir: Path,
    failed_dir: Path,
    phantom: str | None = None,
) -> ModalityKnowledge:
    """Ask ``backend`` for the knowledge of every label, validated, filtered and merged."""
    taken_keys = {"modality"}
    keys = {lab: unique_id(f"label-{snake_id(lab)}", taken_keys) for lab in labels}
    tasks = [label_task(modality, description, labels, lab, settings, keys[lab]) for lab in labels]
    if settings.max_modality_items:
        tasks.append(modality_task(modality, description, labels, settings))
    answers = ask_all(tasks, backend, ResponseCache(cache_dir), settings.max_attempts, failed_dir)

    label_k: dict[str, LabelKnowledge] = {}
    items: list[ChecklistItem] = []
    dropped = 0
    order = [*keys.values(), "modality"]
    for key in order:
        if key not in answers:
            continue
        ans = answers[key]
        parsed: ParsedAnswer = ans.value
        for why in parsed.dropped:
            log(f"knowledge {modality}: {key}: dropped {why}")
        dropped += len(parsed.dropped)
        if key != "modality":
            lab = labels[order.index(key)]
            label_k[lab] = LabelKnowledge(
                label=lab,
                prompts=[
                    PromptRecord(text=t, source=backend.name, request_digest=ans.digest)
                    for t in parsed.prompts
                ],
            )
        items += parsed.items
    items, merged = merge_duplicates(items)
    taken: set[str] = set()
    for it in items:
        base = it.finding if it.polarity == "present" else f"no_{it.finding}"
        it.id = unique_id(snake_id(base), taken)
    linked = link_oracle(items, phantom) if phantom else 0
    provenance = {
        "backend": backend.identity()["backend"],
        "model": backend.name,
        "identity": json.dumps(backend.identity(), sort_keys=True),
        "requests": ",".join(answers[k].digest[:16] for k in order if k in answers),
        "items_dropped": str(dropped),
        "items_merged": str(merged),
    }
    if phantom:
        provenance["oracle_linked_items"] = str(linked)
    return ModalityKnowledge(
        modality=modality,
        description=description,
        labels=label_k,
        checklist=items,
        provenance=provenance,
    )
