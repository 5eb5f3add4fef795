"""Typed wrappers of the study's files: the unblinding key and the raters' answer files.

The key (``key.json``) lives beside the page and maps each pair id to the side method A was
shown on. An answer file is what the page exports (JSON, or CSV with the same fields); both
carry the study id, so answers are never unblinded with another study's key.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from craft.errors import CraftError

KEY_SCHEMA = 1
#: The ``format`` field of the page's JSON export; CSV exports carry the same columns.
ANSWERS_FORMAT = "study-answers/1"
CSV_COLUMNS = ("study_id", "rater", "pair_id", "finding", "plausibility", "answered_at")
QUESTIONS = ("finding", "plausibility")
Choice = Literal["left", "right", "neither"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StudyPair(_Strict):
    """One pair shown to raters, and where its two images came from."""

    pair_id: str
    label: str
    prompt: str | None = Field(
        description="The prompt both images were made from; None if theirs differ."
    )
    a_side: Literal["left", "right"] = Field(description="Where method A's image is shown.")
    row_a: int = Field(ge=0, description="Row of the image in samples_a.")
    row_b: int = Field(ge=0, description="Row of the image in samples_b.")
    prompt_a: str
    prompt_b: str


class StudyKey(_Strict):
    """The unblinding key of one exported study page (``key.json``); never shown to raters."""

    schema_version: Literal[1] = KEY_SCHEMA
    study_id: str
    modality: str
    description: str
    label_names: list[str]
    method_a: str
    method_b: str
    samples_a: str
    samples_b: str
    seed: int
    n_pairs_per_label: int
    craft_version: str
    pairs: list[StudyPair]
    _by_id: dict[str, StudyPair] = PrivateAttr(default_factory=dict)

    def pair(self, pair_id: str) -> StudyPair | None:
        return self._by_id.get(pair_id)

    def model_post_init(self, _context) -> None:
        self._by_id = {p.pair_id: p for p in self.pairs}


class Answer(_Strict):
    """One rater's answers to one pair; a question left unanswered is None."""

    pair_id: str
    finding: Choice | None = None
    plausibility: Choice | None = None
    answered_at: str | None = None


class RaterAnswers(_Strict):
    """One answer file as the page exports it."""

    format: Literal["study-answers/1"] = ANSWERS_FORMAT
    study_id: str
    rater: str = Field(min_length=1)
    exported_at: str | None = None
    n_pairs: int | None = None
    answers: list[Answer]


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(x) for x in e["loc"]) or "file"
    return f"{where}: {e['msg']}"


def read_key(path: Path) -> StudyKey:
    """Load ``key.json`` written by ``export_study``."""
    path = Path(path)
    if not path.is_file():
        raise CraftError(f"study key {path} does not exist: run `craft study export` first")
    try:
        return StudyKey.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as err:
        raise CraftError(f"{path} is not a study key ({_first_error(err)})") from None


def read_answers(path: Path) -> RaterAnswers:
    """Load one rater's answer file, JSON or CSV, as the study page exports it."""
    path = Path(path)
    if not path.is_file():
        raise CraftError(f"answer file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise CraftError(f"answer file {path} is unreadable ({err})") from None
    if path.suffix.lower() == ".csv":
        return _answers_from_csv(path, text)
    try:
        return RaterAnswers.model_validate_json(text)
    except ValidationError as err:
        raise CraftError(f"answer file {path} is malformed ({_first_error(err)})") from None


def _answers_from_csv(path: Path, text: str) -> RaterAnswers:
    rows = list(csv.DictReader(io.StringIO(text)))
    header = tuple(rows[0].keys()) if rows else tuple(next(csv.reader(io.StringIO(text)), ()))
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise CraftError(f"answer file {path} is malformed (CSV lacks columns {missing})")
    if not rows:
        raise CraftError(f"answer file {path} holds no answers")
    for field in ("study_id", "rater"):
        values = {r[field] for r in rows}
        if len(values) != 1:
            raise CraftError(
                f"answer file {path} is malformed (several {field}s: {sorted(values)})"
            )
    data = {
        "study_id": rows[0]["study_id"],
        "rater": rows[0]["rater"],
        "answers": [
            {
                "pair_id": r["pair_id"],
                "finding": r["finding"] or None,
                "plausibility": r["plausibility"] or None,
                "answered_at": r["answered_at"] or None,
            }
            for r in rows
        ],
    }
    try:
        return RaterAnswers.model_validate(data)
    except ValidationError as err:
        raise CraftError(f"answer file {path} is malformed ({_first_error(err)})") from None


def dump_json(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
