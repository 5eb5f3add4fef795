"""``craft profile install``: write a site's Snakemake profile where ``--profile NAME`` finds it.

``snakemake --profile slurm`` looks for a folder ``slurm/`` in the current directory, then in
the user's config dir (``$XDG_CONFIG_HOME/snakemake``, default ``~/.config/snakemake``), then in
``/etc/xdg/snakemake``; never in the repository's ``profiles/``. :func:`install_profile` copies
``profiles/{name}/config.yaml`` there with the site's SLURM account and partitions filled in.

The copy is made by text substitution, line by line, so every comment of the template survives:
``slurm_account`` becomes the account. Beside it, ``partitions.yaml`` names the site's CPU and
GPU partitions for the SLURM plugin's partition selection (a job that asks for GPUs goes to the
GPU partition). A job's own resources come from config.yaml (craft.launch), never from here.
This module imports neither torch nor snakemake.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

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


def render_profile(template: str, account: str) -> str:
    """Fill the account into a profile's text; comments and layout are kept."""
    _check_name("account", account)
    try:
        data = yaml.safe_load(template) or {}
    except yaml.YAMLError as err:
        raise CraftError(
            f"profile template is not valid YAML: {' '.join(str(err).split())}"
        ) from None
    if not isinstance(data, dict):
        raise CraftError("profile template must be a mapping of Snakemake options")
    if "set-resources" in data:
        raise CraftError(
            "profile template has set-resources: a job's resources come from config.yaml's "
            "resources section; the profile holds only the site (account, partitions)"
        )
    out: list[str] = []
    for line in template.splitlines(keepends=True):
        body = line.rstrip("\r\n")
        m = _KEY_LINE.match(body)
        if m is not None and not body.lstrip().startswith("#") and m["key"] == "slurm_account":
            out.append(f'{m["head"]}"{account}"{m["rest"]}{line[len(body) :]}')
        else:
            out.append(line)
    text = "".join(out)
    got = yaml.safe_load(text) or {}
    if (got.get("default-resources") or {}).get("slurm_account") != account:
        raise CraftError("profile template has no default-resources slurm_account to fill in")
    left = [ln.strip() for ln in text.splitlines() if re.search(r"<[A-Z_]+>", ln.split("#")[0])]
    if left:
        raise CraftError(f"profile template still has a placeholder after filling in: {left[0]}")
    return text


def render_partitions(partition: str, gpu_partition: str | None, gpus: int = 8) -> str:
    """The site's partition file for the SLURM plugin: ``partition`` serves CPU jobs,
    ``gpu_partition`` (default: the same) GPU jobs of up to ``gpus`` GPUs."""
    _check_name("partition", partition)
    gpu_partition = _check_name("gpu partition", gpu_partition) if gpu_partition else partition
    lines = [
        "# The site's SLURM partitions, for the Snakemake SLURM plugin's partition selection",
        "# (slurm-partition-config in config.yaml beside this file): a job that asks for GPUs",
        "# goes to a partition with GPUs, every other job to one without (written by craft",
        "# profile install; limits the plugin knows: max_runtime, max_mem_mb, max_gpu, ...).",
        "partitions:",
    ]
    if gpu_partition == partition:
        lines += [f"  {partition}:  # CPU and GPU jobs", f"    max_gpu: {gpus}"]
    else:
        lines += [f"  {partition}:  # CPU jobs", "    max_gpu: 0"]
        lines += [f"  {gpu_partition}:  # GPU jobs", f"    max_gpu: {gpus}"]
    return "\n".join(lines) + "\n"


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
    text = header + render_profile(template_file.read_text(), account)
    partitions = render_partitions(partition, gpu_partition)
    dest_dir = (Path(dest_root) if dest_root is not None else default_dest_root()) / name
    dest = dest_dir / "config.yaml"
    if dest.exists() and not dest.is_file():
        raise CraftError(f"{dest} exists and is not a file; remove it first")
    if dest.is_file():
        same = dest_dir / "partitions.yaml"
        if dest.read_text() == text and same.is_file() and same.read_text() == partitions:
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
    for path, content in ((dest_dir / "partitions.yaml", partitions), (dest, text)):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(content)
        tmp.replace(path)
    return dest
