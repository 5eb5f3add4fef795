"""Plan-time checks of the files and folders a config names, before anything is submitted.

A mistake a job finds is found late: after queueing, on a compute node, in a log. What can be
checked without reading images is checked when the workflow is planned (the Snakefile) and by
``craft config check``: each manifest and image folder exists, each curated knowledge and
review file exists, and each local model folder has the layout its loader reads. Each problem
is one line naming the config field, the path and the fix. A manifest is read row by row
(each file must exist, inside the image root), but no image is decoded: that is ``craft data
check``. Imports no torch.
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


#: At most this many problems of one manifest are shown at plan time.
MAX_SHOWN = 5


def check_manifest(cfg: CraftConfig, name: str) -> list[str]:
    """What prepare would refuse in a modality's manifest, short of decoding its images: the
    header, every row (label, split, path inside the image root, the file exists, no
    duplicate), every label with images, and whole patients dealt to every split. At most the
    first few lines, with the count of the rest; ``craft data check`` lists every one."""
    from craft.data.manifest import ManifestSpec, manifest_problems
    from craft.errors import CraftError

    m = cfg.modalities[name]
    try:
        problems = manifest_problems(ManifestSpec.of(cfg, name))
    except CraftError as err:  # the file itself: its errors name it
        problems = [str(err)]
    shown = problems[:MAX_SHOWN]
    if len(problems) > MAX_SHOWN:
        shown.append(
            f"... and {len(problems) - MAX_SHOWN} more problem(s) in {m.source.manifest}; "
            f"`craft data check -m {name}` lists them all"
        )
    return [f"modalities.{name}.source.manifest: {line}" for line in shown]


def check_knowledge(cfg: CraftConfig) -> list[str]:
    """What the knowledge job would refuse in the files it reads verbatim: each pinned review
    file (valid knowledge, the config's labels) and, with the curated backend, each
    modality's curated base (no template TODO left, valid, every config label known)."""
    from craft.errors import CraftError
    from craft.knowledge.build import pinned_review
    from craft.knowledge.curated import label_map, load_curated, resolve_base

    problems = []
    for name, m in cfg.modalities.items():
        try:
            if name in cfg.knowledge.review:
                pinned_review(Path(cfg.knowledge.review[name]), name, list(m.labels))
            elif cfg.knowledge.backend.kind == "curated":
                base, _ = load_curated(resolve_base(dict(cfg.knowledge.curated), name, m.phantom))
                label_map(base, list(m.labels))
        except CraftError as err:
            field = "review" if name in cfg.knowledge.review else "curated"
            where = f"knowledge.{field}.{name}: "
            problems.append(str(err) if str(err).startswith(where) else where + str(err))
    return problems


def check_files(cfg: CraftConfig, manifests: bool = True) -> list[str]:
    """One line per file or folder the config names that a job could not read; with
    ``manifests``, also what prepare would refuse in each manifest (:func:`check_manifest`)."""
    from craft.knowledge.curated import shipped_bases

    problems: list[str | None] = []
    for name, m in cfg.modalities.items():
        if m.source.kind == "manifest":
            where = f"modalities.{name}.source"
            csv = _file(f"{where}.manifest", Path(m.source.manifest), "CSV file")
            problems.append(csv)
            root = Path(m.source.image_root)
            if not root.is_dir():
                problems.append(
                    f"{where}.image_root: '{root}' is not a folder; name the folder the "
                    "manifest's relative paths start from"
                )
            elif csv is None and manifests:
                problems += check_manifest(cfg, name)
    for name, base in cfg.knowledge.curated.items():
        if base not in shipped_bases():
            problems.append(_file(f"knowledge.curated.{name}", Path(base), "YAML file"))
    for name, path in cfg.knowledge.review.items():
        problems.append(_file(f"knowledge.review.{name}", Path(path), "review YAML file"))
    if not any(problems):
        problems += check_knowledge(cfg)
    problems += [problem(ref) for ref in config_models(cfg, local_only=True) if ref.local]
    return [p for p in problems if p is not None]
