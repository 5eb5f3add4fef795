"""``craft profile install``: write a site's Snakemake profile where ``--profile NAME`` finds it.

``snakemake --profile slurm`` looks for a folder ``slurm/`` in the current directory, then in
the user's config dir (``$XDG_CONFIG_HOME/snakemake``, default ``~/.config/snakemake``), then in
``/etc/xdg/snakemake``; never in the repository's ``profiles/``. :func:`install_profile` copies
``profiles/{name}/config.yaml`` there with the site's SLURM account and partitions filled in.

The copy is made by text substitution, line by line, so every comment of the template survives:
``slurm_account`` everywhere becomes the account; ``slurm_partition`` under
``default-resources`` becomes the CPU partition, and under ``set-resources`` the GPU partition
for each rule that asks for a GPU (``gpu: N > 0``). The result is parsed again and checked.
This module imports neither torch nor snakemake.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from craft.errors import CraftError

# SLURM account and partition names: letters, digits, '_', '-', '.'; no spaces, quotes, commas
# (the plugin splits slurm_account on commas/whitespace) or shell characters.
SLURM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
PROFILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Other file names Snakemake reads as a profile's config; one of them next to our config.yaml
# could shadow it (Snakemake picks by version suffix, then by directory order).
_PROFILE_FILE = re.compile(r"^(profile|config)(\.v\d+\+)?\.yaml$")
# `  key: value   # comment` -> indent+key, value, rest (comment kept verbatim)
_KEY_LINE = re.compile(
    r"""^(?P<head>(?P<indent>[ ]*)(?P<key>[A-Za-z0-9_-]+):[ \t]*)"""
    r"""(?P<value>"[^"]*"|'[^']*'|[^\s#][^#]*?)?(?P<rest>[ \t]*(?:\#.*)?)$"""
)


def default_profiles_source() -> Path:
    """The repository's ``profiles/`` folder (next to the ``craft`` package)."""
    import craft

    return Path(craft.__file__).resolve().parents[1] / "profiles"


def default_dest_root() -> Path:
    """Where ``snakemake --profile NAME`` looks after the current directory (user config dir)."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "").strip()
    base = Path(xdg) if xdg else Path.home() / ".config"
    return base / "snakemake"


def _check_name(what: str, value: str, pattern: re.Pattern[str] = SLURM_NAME) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise CraftError(
            f"{what} {value!r} is not a valid name: use letters, digits, '_', '-' or '.' "
            "(no spaces, quotes or commas)"
        )
    return value


def _gpu_count(resources: Any) -> float:
    if not isinstance(resources, dict):
        return 0
    value = resources.get("gpu", 0)
    try:
        return float(value)
    except (TypeError, ValueError):
        return 1  # an expression such as "1 * attempt": treat as a GPU request


def render_profile(
    template: str, account: str, partition: str, gpu_partition: str | None = None
) -> str:
    """Fill account and partitions into a profile's text; comments and layout are kept."""
    _check_name("account", account)
    _check_name("partition", partition)
    gpu_partition = _check_name("gpu partition", gpu_partition) if gpu_partition else partition
    try:
        data = yaml.safe_load(template) or {}
    except yaml.YAMLError as err:
        raise CraftError(
            f"profile template is not valid YAML: {' '.join(str(err).split())}"
        ) from None
    if not isinstance(data, dict):
        raise CraftError("profile template must be a mapping of Snakemake options")
    set_res = data.get("set-resources") or {}
    gpu_rules = {rule for rule, res in set_res.items() if _gpu_count(res) > 0}

    out: list[str] = []
    section = None  # top-level key we are in
    rule, rule_indent = None, None  # rule key under set-resources, and its indent
    for line in template.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        end = line[len(body) :]
        m = _KEY_LINE.match(body)
        if m is None or body.lstrip().startswith("#"):
            out.append(line)
            continue
        indent, key = len(m["indent"]), m["key"]
        if indent == 0:
            section, rule, rule_indent = key, None, None
        elif section == "set-resources" and (rule_indent is None or indent <= rule_indent):
            rule, rule_indent = key, indent
        new = None
        if key == "slurm_account" and indent > 0:
            new = account
        elif key == "slurm_partition" and section == "default-resources":
            new = partition
        elif key == "slurm_partition" and section == "set-resources" and rule in gpu_rules:
            new = gpu_partition
        if new is None:
            out.append(line)
        else:
            out.append(f'{m["head"]}"{new}"{m["rest"]}{end}')
    text = "".join(out)

    # The result must parse, carry the values, and keep no placeholder outside comments.
    got = yaml.safe_load(text) or {}
    defaults = got.get("default-resources") or {}
    if defaults.get("slurm_account") != account or defaults.get("slurm_partition") != partition:
        raise CraftError(
            "profile template has no default-resources slurm_account / slurm_partition to fill in"
        )
    for r in gpu_rules:
        if (got.get("set-resources") or {}).get(r, {}).get("slurm_partition", gpu_partition) != (
            gpu_partition
        ):
            raise CraftError(f"profile template: could not set the GPU partition of rule {r}")
    left = [ln.strip() for ln in text.splitlines() if re.search(r"<[A-Z_]+>", ln.split("#")[0])]
    if left:
        raise CraftError(f"profile template still has a placeholder after filling in: {left[0]}")
    return text


def install_profile(
    name: str,
    account: str,
    partition: str,
    gpu_partition: str | None,
    dest_root: Path | None = None,
    force: bool = False,
    source: Path | None = None,
) -> Path:
    """Write ``profiles/{name}/config.yaml`` with the site's values to ``dest_root/{name}/``.

    ``source`` is the folder holding the profile templates (default: the repository's
    ``profiles/``); ``dest_root`` defaults to the user's Snakemake config dir, so that
    ``snakemake --profile {name}`` finds it. ``gpu_partition`` defaults to ``partition``.
    An existing, different file is replaced only with ``force``; an identical one is left as
    is. Returns the path of the written ``config.yaml``.
    """
    _check_name("profile name", name, PROFILE_NAME)
    _check_name("account", account)
    _check_name("partition", partition)
    if gpu_partition is not None:
        _check_name("gpu partition", gpu_partition)
    source = Path(source) if source is not None else default_profiles_source()
    template_file = source / name / "config.yaml"
    if not template_file.is_file():
        available = (
            sorted(p.name for p in source.iterdir() if (p / "config.yaml").is_file())
            if source.is_dir()
            else []
        )
        raise CraftError(
            f"no profile template {template_file} (available: {', '.join(available) or 'none'}; "
            "craft must be installed from its repository, e.g. pip install -e .)"
        )
    header = (
        f"# Installed by: craft profile install {name} --account {account} "
        f"--partition {partition}"
        + (f" --gpu-partition {gpu_partition}" if gpu_partition else "")
        + f"\n# from {template_file}. Edit freely; reinstall with --force.\n"
    )
    text = header + render_profile(template_file.read_text(), account, partition, gpu_partition)

    dest_dir = (Path(dest_root) if dest_root is not None else default_dest_root()) / name
    dest = dest_dir / "config.yaml"
    if dest.exists() and not dest.is_file():
        raise CraftError(f"{dest} exists and is not a file; remove it first")
    if dest.is_file():
        if dest.read_text() == text:
            return dest
        if not force:
            raise CraftError(f"{dest} already exists and differs; pass --force to overwrite it")
    if dest_dir.is_dir():
        shadow = sorted(
            p.name
            for p in dest_dir.iterdir()
            if _PROFILE_FILE.match(p.name) and p.name != dest.name
        )
        if shadow:
            raise CraftError(
                f"{dest_dir} also holds {shadow[0]}, which Snakemake may read instead of "
                "config.yaml; remove it first"
            )
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(dest)
    return dest
