"""A small stand-in for craft.knowledge's phantom knowledge, with the schema's fields.

CAS reads only the fields listed in craft/cas/knowledge_view.py. When craft.knowledge.schema
is importable, the same content is built with its real classes (so the contract is checked);
otherwise with these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PromptRecord:
    text: str
    source: str = "curated"
    request_digest: str = ""


@dataclass
class LabelKnowledge:
    label: str
    prompts: list[PromptRecord]


@dataclass
class ChecklistItem:
    id: str
    finding: str
    statement: str
    negation: str
    question: str
    polarity: str
    weight: float
    expected: dict[str, bool]
    scope: str = "label"
    oracle_criterion: str | None = None


@dataclass
class ModalityKnowledge:
    schema_version: int
    modality: str
    description: str
    labels: dict[str, LabelKnowledge]
    checklist: list[ChecklistItem]
    provenance: dict = field(default_factory=dict)

    def items_for(self, label: str) -> list[ChecklistItem]:
        return [it for it in self.checklist if label in it.expected]

    def prompts_for(self, label: str) -> list[PromptRecord]:
        return self.labels[label].prompts


CXR_LABELS = ["normal", "cardiomegaly", "effusion", "nodule"]
CXR_PROMPTS = {
    "normal": [
        "chest radiograph, normal",
        "a normal frontal chest radiograph with clear lungs and a normal heart size",
        "chest xray with sharp costophrenic angles and no nodule",
    ],
    "cardiomegaly": [
        "chest radiograph, cardiomegaly",
        "a frontal chest radiograph showing an enlarged cardiac silhouette",
        "chest xray with a large heart, cardiothoracic ratio above one half",
    ],
    "effusion": [
        "chest radiograph, effusion",
        "a frontal chest radiograph with a pleural effusion blunting one costophrenic angle",
        "chest xray with fluid and a meniscus at the base of one lung",
    ],
    "nodule": [
        "chest radiograph, nodule",
        "a frontal chest radiograph with a solitary round nodule in one lung field",
        "chest xray showing a small round opacity in the lung",
    ],
}
# (id, finding, statement, negation, polarity, criterion, expected-true labels, weight)
CXR_ITEMS = [
    (
        "lungs",
        "lungs_visible",
        "two clear lung fields are visible",
        "no lung fields are visible",
        "present",
        "lungs_visible",
        CXR_LABELS,
        1.0,
    ),
    (
        "heart",
        "cardiomegaly",
        "the heart is enlarged",
        "the heart has a normal size",
        "present",
        "cardiomegaly",
        ["cardiomegaly"],
        1.0,
    ),
    (
        "angles",
        "effusion",
        "the costophrenic angles are sharp",
        "a costophrenic angle is blunted by fluid",
        "absent",
        "effusion",
        ["normal", "cardiomegaly", "nodule"],
        1.0,
    ),
    (
        "bilateral",
        "bilateral_effusion",
        "fluid in both lungs",
        "fluid in at most one lung",
        "present",
        "bilateral_effusion",
        [],
        0.5,
    ),
    (
        "nodule",
        "nodule",
        "a round nodule in a lung field",
        "no nodule in the lungs",
        "present",
        "nodule",
        ["nodule"],
        1.0,
    ),
    (
        "multiple",
        "multiple_nodules",
        "several nodules in the lungs",
        "at most one nodule",
        "present",
        "multiple_nodules",
        [],
        0.5,
    ),
]

DERM_LABELS = ["nevus", "melanoma"]
DERM_PROMPTS = {
    "nevus": [
        "dermoscopy image, nevus",
        "a small symmetric brown nevus with a regular border",
        "dermoscopic image of a benign nevus of one or two similar brown colours",
    ],
    "melanoma": [
        "dermoscopy image, melanoma",
        "a large asymmetric lesion with an irregular notched border and several colours",
        "dermoscopic image of a melanoma with a blue white veil and dark brown areas",
    ],
}
DERM_ITEMS = [
    (
        "lesion",
        "lesion_visible",
        "one pigmented lesion on skin",
        "no lesion on the skin",
        "present",
        "lesion_visible",
        DERM_LABELS,
        1.0,
    ),
    (
        "asymmetry",
        "asymmetric",
        "the lesion is asymmetric",
        "the lesion is symmetric",
        "present",
        "asymmetric",
        ["melanoma"],
        1.0,
    ),
    (
        "border",
        "irregular_border",
        "the border is irregular and notched",
        "the border is regular and smooth",
        "present",
        "irregular_border",
        ["melanoma"],
        1.0,
    ),
    (
        "colours",
        "multicolour",
        "three or more colours",
        "one or two similar brown colours",
        "present",
        "multicolour",
        ["melanoma"],
        1.0,
    ),
    (
        "veil",
        "blue_white_veil",
        "a blue white veil",
        "no blue white veil",
        "present",
        "blue_white_veil",
        ["melanoma"],
        1.0,
    ),
    (
        "diameter",
        "large_diameter",
        "a large lesion",
        "a small lesion",
        "present",
        "large_diameter",
        ["melanoma"],
        1.0,
    ),
]


def _classes():
    try:  # the real schema, when the knowledge stage exists
        from craft.knowledge import schema

        return (
            schema.ChecklistItem,
            schema.LabelKnowledge,
            schema.ModalityKnowledge,
            schema.PromptRecord,
        )
    except ImportError:
        return ChecklistItem, LabelKnowledge, ModalityKnowledge, PromptRecord


def phantom_knowledge(modality: str, use_real_schema: bool = False):
    """Knowledge of a phantom modality: prompts per label and an oracle-linked checklist."""
    if use_real_schema:
        Item, Label, Modality, Prompt = _classes()
    else:
        Item, Label, Modality, Prompt = (
            ChecklistItem,
            LabelKnowledge,
            ModalityKnowledge,
            PromptRecord,
        )
    if modality == "phantom-cxr":
        labels, prompts, items, desc = CXR_LABELS, CXR_PROMPTS, CXR_ITEMS, "chest radiograph"
    else:
        labels, prompts, items, desc = DERM_LABELS, DERM_PROMPTS, DERM_ITEMS, "dermoscopy image"
    checklist = []
    for iid, finding, st, neg, pol, crit, true_for, w in items:
        checklist.append(
            Item(
                id=iid,
                finding=finding,
                statement=st,
                negation=neg,
                question=f"Is it true that {st}?",
                polarity=pol,
                weight=w,
                expected={lab: lab in true_for for lab in labels},
                scope="modality" if set(true_for) == set(labels) else "label",
                oracle_criterion=crit,
            )
        )
    return Modality(
        schema_version=1,
        modality=modality,
        description=desc,
        labels={
            lab: Label(
                label=lab,
                prompts=[Prompt(text=t, source="curated", request_digest="") for t in prompts[lab]],
            )
            for lab in labels
        },
        checklist=checklist,
        provenance={},
    )
