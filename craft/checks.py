"""Plan-time checks of the files and folders a config names, before anything is submitted.

A mistake a job finds is found late: after queueing, on a compute node, in a log. What can be
checked without reading images is checked when the workflow is planned (the Snakefile) and by
``craft config check``: each manifest and image folder exists, each curated knowledge and
review file exists, and each local model folder has the layout its loader reads. Each problem
is one line naming the config field, the path and the fix. Imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from craft.models.hub import config_models, problem

if TYPE_CHECKING:
    from craft.config import CraftConfig


def _file(field: str, path: Path, what: str) -> str | None:
    if path.is_dir():
        return f"{field}: '{path}' is a folder, not a {what}; name the file"
    if not path.is_file():
        where = f" (relative paths start at {Path.cwd()})" if not path.is_absolute() else ""
        return f"{field}: '{path}' does not exist; fix the path{where}"
    return None


def check_files(cfg: CraftConfig) -> list[str]:
    """One line per file or folder the config names that a job could not read."""
    from craft.knowledge.curated import shipped_bases

    problems: list[str | None] = []
    for name, m in cfg.modalities.items():
        if m.source.kind == "manifest":
            where = f"modalities.{name}.source"
            problems.append(_file(f"{where}.manifest", Path(m.source.manifest), "CSV file"))
            root = Path(m.source.image_root)
            if not root.is_dir():
                problems.append(
                    f"{where}.image_root: '{root}' is not a folder; name the folder the "
                    "manifest's relative paths start from"
                )
    for name, base in cfg.knowledge.curated.items():
        if base not in shipped_bases():
            problems.append(_file(f"knowledge.curated.{name}", Path(base), "YAML file"))
    for name, path in cfg.knowledge.review.items():
        problems.append(_file(f"knowledge.review.{name}", Path(path), "review YAML file"))
    problems += [problem(ref) for ref in config_models(cfg) if ref.local]
    return [p for p in problems if p is not None]
