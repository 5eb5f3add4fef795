"""A Hugging Face cache in a folder, filled as a download leaves it (refs/<revision> naming a
snapshot), so that hub ids load with the hub switched off (HF_HUB_OFFLINE=1), as on a compute
node without internet."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def cache_repo(cache: Path, repo_id: str, folder: Path, revision: str = "main") -> Path:
    """Copy a saved model folder into ``cache`` as the snapshot of ``repo_id``; its path."""
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    repo = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


def offline_env(cache: Path, base: dict | None = None) -> dict[str, str]:
    """The environment of a compute node without internet whose cache is ``cache``."""
    env = dict(os.environ if base is None else base)
    env.update(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("HF_HOME", None)
    return env
