"""Which craft code made an output: the release and a digest of the code itself.

``craft.__version__`` is the release (bumped with every change that moves results; see
CHANGELOG.md). Two checkouts of one release can still differ (a site's local patch, a commit
between releases), and the release alone would not tell their outputs apart. So every output
records :func:`code_version`: the release with the sha256 of craft's own source as its PEP 440
local part (``0.2.0+c0de1234abcd``), which changes when any source file does, with or without
git; and, run from a git checkout, :func:`commit` names the commit beside it.

Standard library only: the Snakefile's parse-time checks import this package.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from craft import __version__

PACKAGE = Path(__file__).resolve().parent
#: The checkout the package runs from, when it runs from one (its workflow files beside it).
CHECKOUT = PACKAGE.parent


def _sources() -> list[Path]:
    """Every file whose content can change what craft computes: the package's Python and data
    files and, in a checkout, the workflow (Snakefile and rules/)."""
    files = [
        p
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    ]
    if (CHECKOUT / "Snakefile").is_file():
        files.append(CHECKOUT / "Snakefile")
        files += [p for p in (CHECKOUT / "rules").rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(CHECKOUT).as_posix())


@cache
def source_digest() -> str:
    """sha256 (first 12 hex digits) of the source files' paths and contents."""
    h = hashlib.sha256()
    for path in _sources():
        h.update(path.relative_to(CHECKOUT).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:12]


@cache
def code_version() -> str:
    """The release and the source digest, e.g. ``0.2.0+c0de1234abcd``: what every output
    records as ``craft_version``."""
    return f"{__version__}+{source_digest()}"


@cache
def commit() -> str | None:
    """The git commit of the checkout craft runs from (read from ``.git`` without running git,
    which a compute node may lack); None outside a checkout. Uncommitted edits do not change
    it: :func:`code_version` tells those apart."""
    git = CHECKOUT / ".git"
    try:
        if git.is_file():  # a worktree or submodule: "gitdir: <path>"
            git = (CHECKOUT / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head  # a detached HEAD is the commit itself
        ref = head[5:]
        for root in (git, _common_dir(git)):
            if (root / ref).is_file():
                return (root / ref).read_text().strip()
            packed = root / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split()[0]
    except (OSError, IndexError):
        return None
    return None


def _common_dir(git: Path) -> Path:
    """A worktree's shared git folder (where its branches live)."""
    common = git / "commondir"
    return (git / common.read_text().strip()).resolve() if common.is_file() else git
