"""Quality rules for checklist items and prompts: visually checkable, short, not duplicated."""

from __future__ import annotations

import re

from craft.knowledge.schema import ChecklistItem

#: Words that mark a criterion one cannot check by looking at a single image: history,
#: symptoms, demographics, lab values, change over time, other tests.
NOT_VISUAL: list[tuple[str, str]] = [
    (r"\bhistory\b|\bprevious(ly)?\b|\bprior\b|\bfollow[- ]?up\b", "patient history"),
    (
        r"\bpatients?\b|\breports?\b|\bcomplain\w*|\bsymptom\w*|\bpain\w*|\bitch\w*|\btender\w*",
        "symptoms or what the patient says",
    ),
    (
        r"\bfever\w*|\bcough\w*|\bdyspn\w*|\bbleeds?\b|\bbleeding easily\b|\bpalpa\w*|\bfeels?\b",
        "symptoms or examination by touch",
    ),
    (
        r"\bage[ds]?\b|\byears?[- ]old\b|\belderly\b|\bsex\b|\bgender\b|\bsmok\w*|\bfamily\b",
        "patient demographics or risk factors",
    ),
    (
        r"\blab(oratory)?\b|\bblood tests?\b|\bserum\b|\bglucose\b|\bhba1c\b|\blevels? of\b|"
        r"\bbiops\w*|\bimmunohisto\w*|\bpositive for\b|\bnegative for\b|\bgenetic\w*|\bmutation\w*",
        "lab values or other tests",
    ),
    (
        r"\bgrew\b|\bgrow(s|ing|th)? over\b|\bchang(ed|es|ing) over\b|\bevolv\w*|\bevolution\b|"
        r"\bduration\b|\bweeks?\b|\bmonths?\b|\bover time\b",
        "change over time",
    ),
    (
        r"\bmedication\w*|\btreat(ed|ment)\b|\bdiagnosed\b|\bprognos\w*|\brisk\b",
        "treatment, diagnosis or prognosis",
    ),
]
_RULES = [(re.compile(p, re.IGNORECASE), why) for p, why in NOT_VISUAL]


def not_visual_reason(text: str) -> str | None:
    """Why ``text`` cannot be checked on one image ('patient history ("history")'), else None."""
    for rx, why in _RULES:
        m = rx.search(text)
        if m:
            return f'{why} ("{m.group(0)}")'
    return None


def item_problem(item: ChecklistItem) -> str | None:
    """Why a checklist item is not visually checkable, else None."""
    for text in (item.statement, item.negation, item.question):
        why = not_visual_reason(text)
        if why:
            return f"not visually checkable: {why}"
    return None


def normalized(text: str) -> str:
    """Text reduced to its words, for duplicate detection."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def cap_prompt(text: str, cap: int) -> str:
    """Whitespace collapsed; cut at the last word boundary within ``cap`` characters."""
    text = " ".join(text.split())
    if len(text) <= cap:
        return text
    cut = text[: cap + 1].rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.")


def merge_duplicates(items: list[ChecklistItem]) -> tuple[list[ChecklistItem], int]:
    """Drop items that repeat an earlier one (same statement, or its statement and negation
    swapped); the earlier item gains the labels only the duplicate had. Returns the kept items
    and how many were merged."""
    kept: list[ChecklistItem] = []
    by_text: dict[str, tuple[ChecklistItem, bool]] = {}  # text -> (item, is its negation)
    merged = 0
    for it in items:
        hit = by_text.get(normalized(it.statement))
        if hit is None:
            inverse = by_text.get(normalized(it.negation))
            if inverse is not None and not inverse[1]:
                hit = (inverse[0], True)
        if hit is None:
            kept.append(it)
            by_text[normalized(it.statement)] = (it, False)
            by_text.setdefault(normalized(it.negation), (it, True))
            continue
        first, flipped = hit
        for lab, v in it.expected.items():
            first.expected.setdefault(lab, (not v) if flipped else v)
        merged += 1
    return kept, merged


def unique_id(base: str, taken: set[str]) -> str:
    """``base``, or ``base_2``, ``base_3``... whichever is not taken yet (then taken)."""
    out, n = base, 1
    while out in taken:
        n += 1
        out = f"{base}_{n}"
    taken.add(out)
    return out
