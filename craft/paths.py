"""Where every stage's outputs live under ``results/``; the Snakefile and the CLI share it."""

from __future__ import annotations

from pathlib import Path


class Layout:
    """Paths of one results tree (``config.results``)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def data(self, modality: str) -> Path:
        return self.root / "data" / f"{modality}.h5"

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

    def report(self) -> Path:
        return self.root / "report"
