"""Every model request and its raw answer, stored by content digest.

A request is the backend's identity (model, revision, decoding settings: never a URL or a key)
plus the chat messages. Its digest names the file, so a rerun, another seed or a resumed run
finds the answer without calling the model, and nothing secret is ever written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from craft.atomic import atomic_write_text


def request_digest(identity: dict[str, Any], messages: list[dict[str, str]]) -> str:
    """sha256 of the canonical JSON of (backend identity, messages)."""
    text = json.dumps(
        {"identity": identity, "messages": messages},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseCache:
    """Raw answers under ``root/<2 hex>/<digest>.json`` (written atomically)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}.json"

    def get(self, digest: str) -> str | None:
        """The cached answer, or None (an unreadable entry counts as missing)."""
        p = self.path(digest)
        try:
            return json.loads(p.read_text())["response"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def drop(self, digest: str) -> None:
        """Forget one answer (those of a request that never got a usable answer)."""
        self.path(digest).unlink(missing_ok=True)

    def put(
        self, digest: str, identity: dict[str, Any], messages: list[dict[str, str]], response: str
    ) -> None:
        entry = {
            "digest": digest,
            "request": {"identity": identity, "messages": messages},
            "response": response,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        atomic_write_text(self.path(digest), json.dumps(entry, indent=1, ensure_ascii=False))
