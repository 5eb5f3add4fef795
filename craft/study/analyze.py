"""``craft study analyze``: unblind raters' answers and test whether method A is preferred.

Per question (finding: which image depicts the requested finding better; plausibility: which
is more plausible) the win rate of method A over method B among decisive judgments, with a
two-sided exact binomial test against 0.5 (scipy.stats.binomtest) and a Wilson 95% interval,
overall and per label; 'neither' answers are counted and reported but excluded from the test.
Judgments of all raters are pooled as independent trials. Inter-rater agreement on the
unblinded outcome (A, B, neither): Cohen's kappa (scikit-learn) for two raters over the pairs
both answered, Fleiss' kappa (craft.study.stats, hand-written) for more raters over the pairs
all answered.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from craft.atomic import atomic_write_text
from craft.errors import CraftError
from craft.study.schema import (
    QUESTIONS,
    Answer,
    StudyKey,
    StudyPair,
    dump_json,
    read_answers,
    read_key,
)
from craft.study.stats import OUTCOMES, cohen_kappa, fleiss_kappa, win_rate

SUMMARY_CSV = "study_summary.csv"
SUMMARY_JSON = "study_summary.json"
CSV_FIELDS = ("modality", "method_a", "method_b", "label", "metric", "value", "n")
ALL = "all"


def unblind(pair: StudyPair, choice: str) -> str:
    """The outcome of one answer: 'a' (method A preferred), 'b', or 'neither'."""
    if choice == "neither":
        return "neither"
    return "a" if choice == pair.a_side else "b"


def _load_raters(answer_files: list[Path], key: StudyKey) -> dict[str, dict[str, Answer]]:
    """Rater id -> pair id -> answer, checking every file belongs to this study."""
    if not answer_files:
        raise CraftError("no answer files given: pass the files the raters exported")
    raters: dict[str, dict[str, Answer]] = {}
    source: dict[str, Path] = {}
    for path in answer_files:
        answers = read_answers(Path(path))
        if answers.study_id != key.study_id:
            raise CraftError(
                f"{path} holds answers to study '{answers.study_id}', but the key is for study "
                f"'{key.study_id}': pass the key.json exported with that page"
            )
        if answers.rater in raters:
            raise CraftError(
                f"rater '{answers.rater}' answers in both {source[answers.rater]} and {path}: "
                "pass one file per rater"
            )
        unknown = [a.pair_id for a in answers.answers if key.pair(a.pair_id) is None]
        if unknown:
            raise CraftError(
                f"{path} answers {len(unknown)} pair ids the key does not know "
                f"(first: '{unknown[0]}'): the file or the key was edited"
            )
        by_pair: dict[str, Answer] = {}
        for a in answers.answers:
            if a.pair_id in by_pair:
                raise CraftError(f"{path} answers pair '{a.pair_id}' twice")
            by_pair[a.pair_id] = a
        raters[answers.rater] = by_pair
        source[answers.rater] = Path(path)
    return raters


def _agreement(key: StudyKey, raters: dict[str, dict[str, Answer]], question: str) -> dict:
    """Cohen's (2 raters) or Fleiss' (> 2) kappa on the unblinded outcomes of one question."""
    names = sorted(raters)
    if len(names) < 2:
        return {
            "kind": None,
            "value": None,
            "n_items": 0,
            "n_raters": len(names),
            "note": "skipped: inter-rater agreement needs at least 2 raters",
        }
    items = [
        p
        for p in key.pairs
        if all(getattr(raters[r].get(p.pair_id), question, None) for r in names)
    ]
    outcomes = [[unblind(p, getattr(raters[r][p.pair_id], question)) for r in names] for p in items]
    if len(names) == 2:
        kind, how = "cohen", "Cohen's kappa (scikit-learn cohen_kappa_score)"
        value = cohen_kappa([o[0] for o in outcomes], [o[1] for o in outcomes])
    else:
        kind, how = "fleiss", "Fleiss' kappa (hand-written, craft.study.stats.fleiss_kappa)"
        counts = np.array([[o.count(c) for c in OUTCOMES] for o in outcomes]).reshape(-1, 3)
        value = fleiss_kappa(counts) if len(outcomes) else None
    note = f"{how} over the {len(items)} pairs every rater answered"
    if value is None:
        note += "; undefined (no pairs in common, or every rating in one category)"
    return {
        "kind": kind,
        "value": value,
        "n_items": len(items),
        "n_raters": len(names),
        "note": note,
    }


def _rows(key: StudyKey, label: str, question: str, stats: dict) -> list[dict]:
    base = {"modality": key.modality, "method_a": key.method_a, "method_b": key.method_b}
    out = []
    for name, field in (
        ("win_rate", "win_rate"),
        ("win_rate_ci_low", "ci_low"),
        ("win_rate_ci_high", "ci_high"),
        ("p_value", "p_value"),
        ("wins_a", "wins_a"),
        ("wins_b", "wins_b"),
        ("neither", "neither"),
    ):
        metric = f"study_{name}_{question}"
        out.append(
            {**base, "label": label, "metric": metric, "value": stats[field], "n": stats["n"]}
        )
    return out


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_FIELDS})
    return buf.getvalue()


def analyze_study(answer_files: list[Path], key: Path, out_dir: Path) -> dict:
    """Unblind answer files with ``key``; write study_summary.csv/.json to ``out_dir``.

    Returns the summary (the JSON's content): per question the overall and per-label win rate
    of method A over B with p value and Wilson interval, and inter-rater agreement.
    """
    key_path = Path(key)
    study = read_key(key_path)
    raters = _load_raters([Path(p) for p in answer_files], study)
    labels = [lab for lab in study.label_names if any(p.label == lab for p in study.pairs)]

    notes = [
        "win rate = wins of method A / (wins of A + wins of B); 'neither' is reported and "
        "excluded; p: two-sided exact binomial test against 0.5 (scipy.stats.binomtest); "
        "interval: Wilson 95%; judgments of all raters are pooled as independent trials",
    ]
    questions, rows = {}, []
    for q in QUESTIONS:
        outcomes: dict[str, list[str]] = {lab: [] for lab in labels}
        per_rater: dict[str, list[str]] = {r: [] for r in raters}
        for rater, answers in raters.items():
            for pair_id, answer in answers.items():
                choice = getattr(answer, q)
                if choice is None:
                    continue
                pair = study.pair(pair_id)
                outcome = unblind(pair, choice)
                outcomes[pair.label].append(outcome)
                per_rater[rater].append(outcome)
        overall = win_rate([o for lab in labels for o in outcomes[lab]]).as_dict()
        per_label = {lab: win_rate(outcomes[lab]).as_dict() for lab in labels}
        agreement = _agreement(study, raters, q)
        questions[q] = {
            "overall": overall,
            "per_label": per_label,
            "per_rater": {r: win_rate(o).as_dict() for r, o in sorted(per_rater.items())},
            "agreement": agreement,
        }
        rows += _rows(study, ALL, q, overall)
        for lab in labels:
            rows += _rows(study, lab, q, per_label[lab])
        rows.append(
            {
                "modality": study.modality,
                "method_a": study.method_a,
                "method_b": study.method_b,
                "label": ALL,
                "metric": f"study_kappa_{q}",
                "value": agreement["value"],
                "n": agreement["n_items"],
            }
        )
        if agreement["kind"] is None or agreement["value"] is None:
            notes.append(f"{q}: kappa {agreement['note']}")

    answered = {pid for answers in raters.values() for pid in answers}
    for rater, answers in sorted(raters.items()):
        done = sum(all(getattr(a, q) for q in QUESTIONS) for a in answers.values())
        if done < len(study.pairs):
            notes.append(
                f"rater '{rater}' answered both questions for {done} of {len(study.pairs)} pairs"
            )
    summary = {
        "study_id": study.study_id,
        "modality": study.modality,
        "method_a": study.method_a,
        "method_b": study.method_b,
        "key": str(key_path),
        "answer_files": [str(p) for p in answer_files],
        "raters": sorted(raters),
        "n_raters": len(raters),
        "n_pairs": len(study.pairs),
        "n_pairs_answered": len(answered),
        "questions": questions,
        "notes": notes,
        "metrics": rows,
    }
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / SUMMARY_CSV, _csv_text(rows))
    atomic_write_text(out_dir / SUMMARY_JSON, dump_json(summary))
    return summary
