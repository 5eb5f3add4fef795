"""Atomic text writes: a temporary name beside the target, renamed on success only.

Standard library only, so that modules imported at Snakefile parse time can use it.
"""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` so that a killed job never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
