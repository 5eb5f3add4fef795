"""Clinical knowledge: enriched prompts and clinical checklists per label (the knowledge stage).

``schema`` holds the file format (``ModalityKnowledge``), ``build`` the stage, ``curated`` the
shipped knowledge bases, ``backends`` the chat models, ``review`` the editable review file.
Importing this package loads no model library.
"""

from craft.knowledge.schema import (
    SCHEMA_VERSION,
    ChecklistItem,
    LabelKnowledge,
    ModalityKnowledge,
    PromptRecord,
    load_knowledge,
    save_knowledge,
)

__all__ = [
    "SCHEMA_VERSION",
    "ChecklistItem",
    "LabelKnowledge",
    "ModalityKnowledge",
    "PromptRecord",
    "load_knowledge",
    "save_knowledge",
]
