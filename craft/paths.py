"""Where every stage's outputs live under ``results/``; the Snakefile and the CLI share it."""

from __future__ import annotations

from pathlib import Path


class Layout:
    """Paths of one results tree (``config.results``)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def data(self, modality: str) -> Path:
        return self.root / "data" / f"{modality}.h5"

    def split_cache(self, modality: str) -> Path:
        """Folder of a manifest modality's dealt splits, one file per manifest content
        (craft.data.manifest.manifest_splits): the plan and prepare deal them once."""
        return self.root / "data" / ".splits" / modality

    def foundation(self, modality: str) -> Path:
        return self.root / "models" / "foundation" / modality

    def run(self, modality: str, method: str, seed: int | str) -> Path:
        return self.root / "runs" / modality / method / str(seed)

    def card(self, modality: str, method: str, seed: int | str) -> Path:
        return self.run(modality, method, seed) / "model.json"

    def samples(self, modality: str, method: str, seed: int | str) -> Path:
        return self.run(modality, method, seed) / "samples.h5"

    def metrics(self, modality: str, method: str, seed: int | str, stage: str) -> Path:
        return self.run(modality, method, seed) / f"metrics-{stage}.json"

    def downstream_real(self, modality: str, seed: int | str) -> Path:
        """The real-only downstream classifiers of a modality and run seed, shared by every
        method's downstream job (their state files lie beside it)."""
        return self.root / "downstream" / modality / str(seed) / "real-phases.json"

    def knowledge(self, modality: str) -> Path:
        return self.root / "knowledge" / f"{modality}.json"

    def knowledge_review(self, modality: str) -> Path:
        """The editable review file written beside the knowledge JSON."""
        return self.root / "knowledge" / f"{modality}.review.yaml"

    def evaluator(self, modality: str, evaluator: str) -> Path:
        return self.root / "models" / "evaluators" / modality / evaluator

    def reference(self, modality: str, evaluator: str) -> Path:
        return self.root / "cas" / modality / f"reference-{evaluator}.h5"

    def cas_scores(self, modality: str, method: str, seed: int | str, evaluator: str) -> Path:
        return self.run(modality, method, seed) / f"cas-{evaluator}.h5"

    def study(self, modality: str) -> Path:
        """Folder of a modality's blinded study: study.html (for raters) and key.json (not)."""
        return self.root / "study" / modality

    def report(self) -> Path:
        return self.root / "report"
