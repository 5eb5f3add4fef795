"""Cross-site aggregation: each site exports scores and summaries, one place pools them.

A site runs the workflow on its own data and calls :func:`export_summary`: a ``.tar.gz`` with
every ``metrics-*.json`` under ``results/runs/``, ``report/summary.csv`` when there is one, and
a ``site.json`` manifest (site name, craft version, per (modality, method) the config digests
and slices that matter for pooling, the seeds, the baseline methods, and a sha256 of each
file). No images, samples or data leave the site.

:func:`aggregate` reads several exports (tarballs or extracted folders), verifies the sha256s,
refuses to pool a (modality, method) whose method digest or CAS evaluator digests differ
between sites (naming the differing config keys) unless told to, and writes ``summary.csv``
with a leading ``site`` column (each site's seeds, then ``pooled`` over every (site, seed)),
``aggregate.json`` (provenance, accepted mismatches) and ``index.html`` (the report page of the
pooled numbers; no image grids, samples do not travel). Imports no torch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import html
import io
import json
import os
import re
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from craft.atomic import atomic_write_text
from craft.config import digest_of
from craft.errors import CraftError
from craft.progress import log
from craft.report.html import build_report
from craft.report.summary import (
    NAME_PATTERN,
    PER_SEED_COLUMNS,
    SUMMARY_COLUMNS,
    load_metrics_file,
    per_seed_table,
    summarize_table,
    with_tail_reductions,
)
from craft.version import code_version, commit

__all__ = ["AGGREGATE_COLUMNS", "MANIFEST", "POOLED", "aggregate", "export_summary"]

#: The manifest's name inside an export.
MANIFEST = "site.json"
#: Format tag and version of the manifest.
FORMAT = "craft-site-summary"
FORMAT_VERSION = 1
#: The ``site`` value of the pooled rows.
POOLED = "pooled"
#: Columns of the aggregated summary.csv.
AGGREGATE_COLUMNS = ("site", *SUMMARY_COLUMNS)


#: Keys that name where a site keeps its files: they differ at every hospital and say nothing
#: about the method, so they are left out of the digests that decide whether sites may pool.
SITE_LOCAL_KEYS = ("manifest", "image_root")


def portable(data: Any) -> Any:
    """A config slice without site-local file locations (a manifest source's paths)."""
    if isinstance(data, dict):
        local = data.get("kind") == "manifest"
        return {k: portable(v) for k, v in data.items() if not (local and k in SITE_LOCAL_KEYS)}
    if isinstance(data, list):
        return [portable(v) for v in data]
    return data


def method_specs(config: Any, modality: str, method: str) -> dict[str, Any]:
    """The portable job specs that made a method's samples: the data set, the knowledge where
    the method reads it, the run (and for an align method the run it starts from), and
    generate. Sites pool a method only where these agree."""
    k = config.method(method)
    out = {"prepare": config.spec("prepare", modality).plain()}
    if k.is_align or k.prompts == "enriched":
        out["knowledge"] = config.spec("knowledge", modality).plain()
    if k.is_align:
        out["init"] = config.spec("adapt", modality, k.init).plain()
        out["align"] = config.spec("align", modality, method).plain()
    else:
        out["adapt"] = config.spec("adapt", modality, method).plain()
    out["generate"] = config.spec("generate", modality, method).plain()
    return portable(out)


def evaluator_specs(config: Any, modality: str, evaluator: str) -> dict[str, Any]:
    """The portable job specs of an evaluator's scores: its training (a trained one), its
    reference on the real images, and the scoring."""
    out = {}
    if config.cas.evaluators[evaluator].source == "train":
        out["train_evaluator"] = config.spec("train_evaluator", modality, evaluator=evaluator)
        out["train_evaluator"] = out["train_evaluator"].plain()
    for stage in ("reference", "score"):
        out[stage] = config.spec(stage, modality, evaluator=evaluator).plain()
    out["prepare"] = config.spec("prepare", modality).plain()
    return portable(out)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_site_name(site: str, what: str = "site name") -> str:
    if not isinstance(site, str) or not re.match(NAME_PATTERN, site):
        raise CraftError(
            f"{what} {site!r} is invalid: use lowercase letters, digits, '-' and '_' "
            "(starting with a letter or digit)"
        )
    if site == POOLED:
        raise CraftError(f"{what} '{POOLED}' is reserved for the pooled rows; choose another")
    return site


# ----------------------------------------------------------------------------- export


def export_summary(results_dir: Path, config, out: Path, site: str) -> Path:
    """Write the site's export tarball ``out`` (atomically) and return its path.

    ``config`` is the site's :class:`craft.config.CraftConfig`; ``results_dir`` its results
    tree (usually ``config.results``). Every ``runs/*/*/*/metrics-*.json`` is validated and
    must belong to a modality and method of ``config``.
    """
    _check_site_name(site)
    results_dir = Path(results_dir)
    runs = results_dir / "runs"
    files = sorted(runs.glob("*/*/*/metrics-*.json")) if runs.is_dir() else []
    if not files:
        raise CraftError(f"no metrics files under {runs}: run the workflow before exporting")

    seeds: dict[tuple[str, str], set[int]] = {}
    for path in files:
        mf = load_metrics_file(path)
        folder = (path.parent.parent.parent.name, path.parent.parent.name, path.parent.name)
        if (mf.modality, mf.method, str(mf.seed)) != folder:
            raise CraftError(
                f"metrics file {path} is for {mf.modality}/{mf.method} seed {mf.seed}, "
                "not the run folder it lies in; move or remove it"
            )
        if mf.modality not in config.modalities or mf.method not in config.methods:
            raise CraftError(
                f"metrics file {path} is for {mf.modality}/{mf.method}, which the config does "
                "not have; pass the config the results were made with"
            )
        seeds.setdefault((mf.modality, mf.method), set()).add(mf.seed)

    payload: dict[str, bytes] = {
        p.relative_to(results_dir).as_posix(): p.read_bytes() for p in files
    }
    summary = results_dir / "report" / "summary.csv"
    if summary.is_file():
        payload["report/summary.csv"] = summary.read_bytes()

    evaluators = list(config.cas.evaluators)
    run_entries = []
    for modality in config.modalities:
        for method in config.methods:
            if (modality, method) not in seeds:
                continue
            run_entries.append(
                {
                    "modality": modality,
                    "method": method,
                    "method_digest": digest_of(method_specs(config, modality, method)),
                    "evaluator_digests": {
                        ev: digest_of(evaluator_specs(config, modality, ev)) for ev in evaluators
                    },
                    "seeds": sorted(seeds[(modality, method)]),
                    # The job specs behind the digests, so a mismatch can name its keys.
                    "method_slice": method_specs(config, modality, method),
                    "evaluator_slices": {
                        ev: evaluator_specs(config, modality, ev) for ev in evaluators
                    },
                }
            )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "site": site,
        "craft_version": code_version(),
        "craft_commit": commit(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "modality_order": list(config.modalities),
        "method_order": list(config.methods),
        # Tail reductions are measured against the strongest method that is not CRAFT.
        "baselines": config.baseline_methods,
        "runs": run_entries,
        "files": {name: _sha256(data) for name, data in sorted(payload.items())},
    }
    payload = {MANIFEST: (json.dumps(manifest, indent=2) + "\n").encode(), **payload}

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w:gz") as tar:
            for name, data in payload.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                info.mtime = int(_dt.datetime.now(_dt.UTC).timestamp())
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


# ----------------------------------------------------------------------------- reading exports


def _safe_name(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


def _read_export(source: Path, into: Path) -> dict[str, Any]:
    """Verify one export (tarball or folder), copy its files into ``into``; its manifest."""
    source = Path(source)
    files: dict[str, bytes] = {}
    if source.is_dir():
        if not (source / MANIFEST).is_file():
            raise CraftError(f"{source} has no {MANIFEST}: pass a 'craft export-summary' export")
        raw = (source / MANIFEST).read_bytes()
        read = lambda name: (source / name).read_bytes() if (source / name).is_file() else None  # noqa: E731
    elif source.is_file():
        try:
            with tarfile.open(source, "r:gz") as tar:
                for member in tar.getmembers():
                    if not member.isfile():
                        continue
                    if not _safe_name(member.name):
                        raise CraftError(f"{source}: unsafe path {member.name!r} in the tarball")
                    files[member.name] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise CraftError(f"{source} is not a readable .tar.gz export: {err}") from None
        if MANIFEST not in files:
            raise CraftError(f"{source} has no {MANIFEST}: pass a 'craft export-summary' export")
        raw = files[MANIFEST]
        read = files.get
    else:
        raise CraftError(f"site export {source} does not exist")

    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CraftError(f"{source}: {MANIFEST} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CraftError(f"{source}: {MANIFEST} is not a craft site manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CraftError(
            f"{source}: manifest format version {manifest.get('format_version')} is not "
            f"{FORMAT_VERSION}; export it again with this craft version"
        )
    missing = [
        k
        for k in ("runs", "files", "baselines", "modality_order", "method_order")
        if k not in manifest
    ]
    if missing or not isinstance(manifest["files"], dict):
        raise CraftError(f"{source}: {MANIFEST} lacks '{(missing or ['files'])[0]}'; export again")
    for name, sha in manifest["files"].items():
        if not _safe_name(name):
            raise CraftError(f"{source}: unsafe path {name!r} in {MANIFEST}")
        data = read(name)
        if data is None:
            raise CraftError(f"{source}: {name} is listed in {MANIFEST} but missing")
        if _sha256(data) != sha:
            raise CraftError(
                f"{source}: {name} does not match its sha256 in {MANIFEST} (corrupted or "
                "edited); export the site again"
            )
        dest = into / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    extra = sorted(
        n for n in files if n != MANIFEST and n not in manifest["files"] and "metrics-" in n
    )
    if extra:
        raise CraftError(f"{source}: {extra[0]} is not listed in {MANIFEST}; export it again")
    manifest["_source"] = str(source)
    return manifest


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two plain-data trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in [*a, *(k for k in b if k not in a)]:
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(path)
            else:
                out += _diff_keys(a[k], b[k], path)
        return out
    return [] if a == b else [prefix or "(root)"]


def _mismatches(manifests: list[dict[str, Any]], sites: list[str]) -> list[dict[str, Any]]:
    """Each (modality, method) digest that differs from the first site that has it."""
    first: dict[tuple[str, str], tuple[str, dict]] = {}
    found = []
    for site, man in zip(sites, manifests, strict=True):
        for run in man["runs"]:
            key = (run["modality"], run["method"])
            if key not in first:
                first[key] = (site, run)
                continue
            ref_site, ref = first[key]
            checks = [("method", ref["method_digest"], run["method_digest"])]
            checks += [
                (f"evaluator {ev}", d, run["evaluator_digests"][ev])
                for ev, d in ref["evaluator_digests"].items()
                if ev in run["evaluator_digests"]
            ]
            for what, d_ref, d_own in checks:
                if d_ref == d_own:
                    continue
                if what == "method":
                    keys = _diff_keys(ref["method_slice"], run["method_slice"])
                else:
                    ev = what.split(" ", 1)[1]
                    keys = _diff_keys(ref["evaluator_slices"][ev], run["evaluator_slices"][ev])
                found.append(
                    {
                        "modality": key[0],
                        "method": key[1],
                        "what": what,
                        "sites": [ref_site, site],
                        "digests": [d_ref, d_own],
                        "keys": keys,
                    }
                )
    return found


def _describe(m: dict[str, Any]) -> str:
    keys = ", ".join(m["keys"][:4]) + (
        f" (+{len(m['keys']) - 4} more)" if len(m["keys"]) > 4 else ""
    )
    return (
        f"{m['modality']}/{m['method']}: {m['what']} digest differs between sites "
        f"{m['sites'][0]} ({m['digests'][0]}) and {m['sites'][1]} ({m['digests'][1]}), "
        f"keys: {keys or 'unknown'}"
    )


# ----------------------------------------------------------------------------- aggregate


def _union(lists: Sequence[Sequence[str]]) -> list[str]:
    return list(dict.fromkeys(x for xs in lists for x in xs))


def _with_site(summary: pd.DataFrame, site: str) -> pd.DataFrame:
    out = summary.copy()
    out.insert(0, "site", site)
    return out


def aggregate(
    tarballs_or_dirs: list[Path],
    out_dir: Path,
    allow_mismatch: bool = False,
    site_names: Sequence[str] | None = None,
    title: str = "craft: pooled over sites",
) -> Path:
    """Pool several sites' exports into ``out_dir``; returns ``out_dir/index.html``.

    ``summary.csv`` holds each site's rows (its seeds) and ``pooled`` rows: mean and sample sd
    over every (site, seed), ``n_seeds`` their count. Tail reductions are computed per site and
    on the pooled table against the strongest baseline (the sites' non-CRAFT methods).
    ``site_names`` overrides the names in the manifests (one per export).
    """
    sources = [Path(p) for p in tarballs_or_dirs]
    if not sources:
        raise CraftError("no site exports given: pass one or more 'craft export-summary' files")
    if site_names is not None and len(site_names) != len(sources):
        raise CraftError(f"{len(site_names)} site names for {len(sources)} exports; give one each")

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="craft-aggregate-") as tmp:
        manifests, sites, tables = [], [], []
        for i, source in enumerate(sources):
            root = Path(tmp) / str(i)
            root.mkdir()
            man = _read_export(source, root)
            site = _check_site_name(
                site_names[i] if site_names is not None else man.get("site"),
                f"site name of {source}",
            )
            if site in sites:
                raise CraftError(
                    f"two exports are both site '{site}' ({sources[sites.index(site)]} and "
                    f"{source}); pass distinct site names"
                )
            files = [root / n for n in man["files"] if PurePosixPath(n).name.startswith("metrics-")]
            table = per_seed_table(files)
            declared = {(r["modality"], r["method"], s) for r in man["runs"] for s in r["seeds"]}
            found = set(zip(table["modality"], table["method"], table["seed"], strict=True))
            if not found <= declared:
                extra = sorted(found - declared)[0]
                raise CraftError(
                    f"{source}: metrics for {extra[0]}/{extra[1]} seed {extra[2]} are not "
                    f"declared in {MANIFEST}; export the site again"
                )
            manifests.append(man)
            sites.append(site)
            tables.append(table)

    n_files = sum(
        PurePosixPath(n).name.startswith("metrics-") for m in manifests for n in m["files"]
    )
    mismatches = _mismatches(manifests, sites)
    if mismatches and not allow_mismatch:
        more = f" (+{len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise CraftError(
            f"refusing to pool: {_describe(mismatches[0])}{more}; make the configs agree or "
            "pass --allow-mismatch"
        )

    modality_order = _union([m["modality_order"] for m in manifests])
    method_order = _union([m["method_order"] for m in manifests])
    baselines = _union([m["baselines"] for m in manifests])

    parts = []
    pooled_tables = []
    pooled_ids: dict[tuple[str, int], int] = {}
    for site, man, table in zip(sites, manifests, tables, strict=True):
        site_table = with_tail_reductions(table, man["baselines"])
        parts.append(_with_site(summarize_table(site_table, modality_order, method_order), site))
        # One pooled seed id per (site, seed): seed 0 of two sites are two seeds, never paired.
        ids = {s: pooled_ids.setdefault((site, int(s)), len(pooled_ids)) for s in table["seed"]}
        pooled_tables.append(table.assign(seed=table["seed"].map(ids).astype("int64")))
    pooled = pd.concat(pooled_tables, ignore_index=True)[list(PER_SEED_COLUMNS)]
    pooled = with_tail_reductions(pooled.astype(tables[0].dtypes.to_dict()), baselines)
    pooled_summary = summarize_table(pooled, modality_order, method_order)
    parts.append(_with_site(pooled_summary, POOLED))
    combined = pd.concat(parts, ignore_index=True)[list(AGGREGATE_COLUMNS)]

    site_info = [
        {
            "site": site,
            "export": man["_source"],
            "craft_version": man.get("craft_version"),
            "craft_commit": man.get("craft_commit"),
            "created": man.get("created"),
            "baselines": man["baselines"],
            "runs": [
                {
                    "modality": r["modality"],
                    "method": r["method"],
                    "seeds": r["seeds"],
                    "method_digest": r["method_digest"],
                    "evaluator_digests": r["evaluator_digests"],
                }
                for r in man["runs"]
            ],
        }
        for site, man in zip(sites, manifests, strict=True)
    ]
    code_differs = code_versions_differ(site_info)
    if code_differs:
        log(f"craft aggregate: {code_differs}")
    provenance = {
        "craft_version": code_version(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "allow_mismatch": allow_mismatch,
        "mismatches": mismatches,
        "code_versions_differ": code_differs,
        "pooled_baselines": baselines,
        "sites": site_info,
    }

    # The pooled numbers through the report's page (no samples: no image grids), then the
    # site-column summary.csv over the one build_report writes, and a section on the sites.
    footer = {
        "sites": ", ".join(sites),
        "craft versions of the sites": ", ".join(
            sorted({str(m.get("craft_version")) for m in manifests})
        ),
    }
    if mismatches:
        footer["pooled despite config mismatches"] = str(len(mismatches))
    index = build_report(
        pooled_summary,
        {},
        out_dir,
        title,
        n_metric_files=n_files,
        provenance=footer,
    )
    atomic_write_text(
        out_dir / "summary.csv", combined.to_csv(index=False, na_rep="", lineterminator="\n")
    )
    atomic_write_text(out_dir / "aggregate.json", json.dumps(provenance, indent=2) + "\n")
    page = index.read_text(encoding="utf-8")
    marker = "<footer>"
    if marker in page:
        page = page.replace(marker, _sites_section(site_info, mismatches, code_differs) + marker, 1)
        page = page.replace("</ul></nav>", '<li><a href="#sites">sites</a></li></ul></nav>', 1)
        atomic_write_text(index, page)
    return index


def code_versions_differ(site_info: list[dict[str, Any]]) -> str | None:
    """One line naming each site's craft code where the sites ran different code (their
    ``craft_version``: release and source digest, craft.version), else None. Job digests
    cover the settings, not the code: two sites' numbers can differ by code alone."""
    versions = {s["site"]: s.get("craft_version") for s in site_info}
    if len(set(versions.values())) <= 1:
        return None
    named = []
    for s in site_info:
        commit_ = f", commit {str(s['craft_commit'])[:10]}" if s.get("craft_commit") else ""
        named.append(f"{s['site']} {s.get('craft_version') or 'unknown'}{commit_}")
    return (
        f"the sites ran different craft code ({'; '.join(named)}); their numbers may differ "
        "by the code as well as by their data"
    )


def _sites_section(
    site_info: list[dict[str, Any]],
    mismatches: list[dict[str, Any]],
    code_differs: str | None = None,
) -> str:
    e = lambda x: html.escape(str(x), quote=True)  # noqa: E731
    rows = []
    for s in site_info:
        for r in s["runs"]:
            rows.append(
                f'<tr><td class="name">{e(s["site"])}</td><td class="name">{e(r["modality"])}'
                f'</td><td class="name">{e(r["method"])}</td>'
                f"<td>{e(', '.join(map(str, r['seeds'])))}</td>"
                f'<td class="name">{e(r["method_digest"])}</td></tr>'
            )
    out = [
        '<section><h2 id="sites">Sites</h2>',
        '<p class="note">Every number above is pooled over each (site, seed); per-site rows are '
        'in <a href="summary.csv">summary.csv</a> (column <code>site</code>), provenance in '
        '<a href="aggregate.json">aggregate.json</a>.</p>',
    ]
    if code_differs:
        out.append(f'<p class="mismatch"><b>Different code:</b> {e(code_differs)}.</p>')
    if mismatches:
        out.append('<p class="mismatch"><b>Pooled despite config mismatches:</b></p><ul>')
        out += [f"<li>{e(_describe(m))}</li>" for m in mismatches]
        out.append("</ul>")
    out.append(
        '<table class="sites"><thead><tr><th class="name">site</th><th class="name">modality</th>'
        '<th class="name">method</th><th>seeds</th><th class="name">method digest</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></section>"
    )
    return "\n".join(out)
