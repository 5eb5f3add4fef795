"""Where a workflow run's time went: per rule, from Snakemake's benchmark files.

Every rule writes ``{results}/benchmarks/{rule}/...tsv`` (wall seconds, CPU seconds, peak
memory of the job). This sums them per rule, largest first, and gives the run's span (first
job's start to last job's end, from the files' mtimes less their wall time), so that a change
meant to save time can be judged against the same table from a run before it.

    python bench/profile_workflow.py results-benchmark            # the table
    python bench/profile_workflow.py results-benchmark --csv t.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path


def read_jobs(results: Path) -> list[dict]:
    """One dict per benchmark file: rule, job (path below the rule), wall s, cpu s, rss MB, end."""
    root = results / "benchmarks"
    if not root.is_dir():
        raise SystemExit(
            f"{root} does not exist: run the workflow (its rules write benchmark files)"
        )
    jobs = []
    for f in sorted(root.rglob("*.tsv")):
        with f.open() as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows:
            continue
        row = rows[-1]
        rel = f.relative_to(root).with_suffix("")
        jobs.append(
            {
                "rule": rel.parts[0],  # report.tsv: one job, no wildcards
                "job": "/".join(rel.parts[1:]),
                "wall_s": float(row["s"]),
                "cpu_s": float(row["cpu_time"]),
                "rss_mb": float(row["max_rss"]) if row["max_rss"] not in ("", "NA", "-") else 0.0,
                "end": f.stat().st_mtime,
            }
        )
    return jobs


def per_rule(jobs: list[dict]) -> list[dict]:
    """Jobs, wall, CPU and peak memory summed (or maxed) per rule, most wall time first."""
    acc: dict[str, dict] = defaultdict(
        lambda: {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0, "max_wall_s": 0.0, "max_rss_mb": 0.0}
    )
    for j in jobs:
        a = acc[j["rule"]]
        a["jobs"] += 1
        a["wall_s"] += j["wall_s"]
        a["cpu_s"] += j["cpu_s"]
        a["max_wall_s"] = max(a["max_wall_s"], j["wall_s"])
        a["max_rss_mb"] = max(a["max_rss_mb"], j["rss_mb"])
    rows = [{"rule": r, **a} for r, a in acc.items()]
    return sorted(rows, key=lambda r: -r["wall_s"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="the run's results folder (config 'results')")
    ap.add_argument("--csv", type=Path, help="also write the per-rule table here")
    args = ap.parse_args(argv)
    jobs = read_jobs(args.results)
    if not jobs:
        raise SystemExit(f"no benchmark files under {args.results / 'benchmarks'}")
    rows = per_rule(jobs)
    total = sum(r["wall_s"] for r in rows)
    span = max(j["end"] for j in jobs) - min(j["end"] - j["wall_s"] for j in jobs)
    print(
        f"{'rule':<18}{'jobs':>6}{'wall s':>10}{'share':>8}{'cpu s':>10}{'max s':>9}{'max MB':>9}"
    )
    for r in rows:
        print(
            f"{r['rule']:<18}{r['jobs']:>6}{r['wall_s']:>10.0f}{r['wall_s'] / total:>8.1%}"
            f"{r['cpu_s']:>10.0f}{r['max_wall_s']:>9.0f}{r['max_rss_mb']:>9.0f}"
        )
    print(f"{'all jobs':<18}{len(jobs):>6}{total:>10.0f}")
    print(f"span (first start to last end): {span / 60:.1f} min")
    if args.csv:
        with args.csv.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
