"""Atomic text writes: a temporary name beside the target, renamed on success only.

Standard library only, so that modules imported at Snakefile parse time can use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` so that a killed job never leaves a half file."""
    return atomic_write_lines(path, [text])


def atomic_write_lines(path: Path | str, lines: Iterable[str]) -> Path:
    """Write ``"\n".join(lines)`` (UTF-8) to ``path`` as :func:`atomic_write_text` does,
    a line at a time: memory holds one line, not the file (a manifest's 224k paths)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as f:
            for i, line in enumerate(lines):
                f.write(f"\n{line}" if i else line)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
