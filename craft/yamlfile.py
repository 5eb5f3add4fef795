"""Reading a YAML file a user wrote: every problem is one line naming the file (and the line).

PyYAML takes a key written twice silently (the last one wins): a second ``seeds:`` or a second
block of one modality would change a run without a word. Here it is refused, with both lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from craft.errors import CraftError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping key written twice."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' merges, legitimately
            continue
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise CraftError(
                f"line {line}: key '{key}' is written twice (first on line {seen[key]}); keep one"
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_text(path: Path, what: str, hint: str) -> str:
    """A user's text file as str, or one line: missing, a folder, unreadable, not UTF-8."""
    path = Path(path)
    if path.is_dir():
        raise CraftError(f"{what} {path} is a folder, not a file; {hint}")
    if not path.exists():
        raise CraftError(f"{what} {path} does not exist; {hint}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CraftError(
            f"{what} {path} cannot be read ({err.strerror}); check its permissions"
        ) from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CraftError(f"{path}: saved as UTF-16; save it as UTF-8 text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CraftError(
            f"{path}: not UTF-8 text (byte {err.start} cannot be read); save it as UTF-8 text"
        ) from None
    if "\x00" in text:
        raise CraftError(f"{path}: holds binary bytes (NUL), not YAML text; fix the file")
    return text


def read_yaml(
    path: Path, what: str = "config file", hint: str = "give the path of a config YAML file"
) -> Any:
    """Parse a user's YAML file; a problem is one line naming the file, line and column."""
    text = read_text(path, what, hint)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except CraftError as err:
        raise CraftError(f"{path}: {err}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise CraftError(f"{path}:{where}: not valid YAML: {err.problem}") from None
    except yaml.YAMLError as err:
        raise CraftError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
