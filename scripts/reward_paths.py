"""Agreement against realism along each reward method's path from its start: the kept reward
LoRA of every run at several scales on top of the starting model (0 = the start, 1 = the run
as trained), sampled with the run's own plan and measured by the phantom oracle (label
agreement, distribution shift) and the out-of-family evaluator (mean CAS, tail rate).

It answers whether one reward method gains more agreement than another for the same loss of
realism, which neither method's end point shows alone (docs/benchmark.md, "Agreement at
matched realism"). Measuring needs a finished benchmark run (its runs, data, knowledge and
references); scale 1 is read from the runs' own metric files, every other scale is sampled:

    python scripts/reward_paths.py measure configs/phantom-benchmark.yaml --seeds 0,1,2 \\
        --scales craft=0.25,0.5,0.75 generic-reward=0,0.5,1.5,2 --out paths/
    python scripts/reward_paths.py table paths/ --against generic-reward --budget 0.01
    python scripts/reward_paths.py figure paths/ --out docs/assets/reward-paths.png

``measure`` appends one JSON line per (modality, method, seed, scale) to paths/results.jsonl
and skips those already there, so a killed run goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from craft.report.frontier import PathPoint, crossing
from craft.report.frontier import at_budget as frontier_at_budget

RESULTS = "results.jsonl"
# the columns of a path point compared between methods: (scale, agree, shift, oof_cas, oof_tail)
COMPARED = {"agree": 1, "oof_cas": 3, "oof_tail": 4}


def _scales(items: list[str]) -> dict[str, list[float]]:
    out = {}
    for item in items:
        method, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"--scales {item}: write METHOD=S1,S2,... (e.g. craft=0.25,0.5)")
        out[method] = [float(v) for v in values.split(",")]
    return out


def _row(modality, method, seed, scale, oracle: dict, cas: dict, oof: str) -> dict:
    return {
        "mod": modality,
        "method": method,
        "seed": seed,
        "scale": scale,
        "agree": oracle["oracle_label_agreement"],
        "shift": oracle["oracle_distribution_shift"],
        "oof_cas": cas[f"cas_mean__{oof}"],
        "oof_tail": cas[f"tail_rate__{oof}"],
    }


def measure(args) -> None:
    from craft.cas.stages import score_configured_samples
    from craft.config import load_config
    from craft.evaluate.oracle import evaluate_oracle
    from craft.models.card import ModelCard
    from craft.models.lora import combine_loras, read_lora, write_lora
    from craft.paths import Layout
    from craft.report.summary import load_metrics_file
    from craft.sample import generate

    cfg = load_config(args.config)
    lay = Layout(cfg.results)
    oof = cfg.out_of_family_evaluators[0]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else cfg.seeds
    args.out.mkdir(parents=True, exist_ok=True)
    res = args.out / RESULTS
    done = set()
    if res.is_file():
        for line in res.read_text().splitlines():
            r = json.loads(line)
            done.add((r["mod"], r["method"], r["seed"], r["scale"]))

    def write(row: dict) -> None:
        with res.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(row, flush=True)

    for modality in cfg.modalities:
        m = cfg.modality(modality)
        for seed in seeds:
            for method, scales in _scales(args.scales).items():
                card_path = lay.card(modality, method, seed)
                card = ModelCard.read(card_path)
                if card.reward_lora_dir is None or card.handover_t is not None:
                    raise SystemExit(f"{card_path}: not a reward run without a handover")
                key = (modality, method, seed, 1.0)
                if key not in done:  # the run as trained: its own metric files
                    metrics = lay.metrics(modality, method, seed, "oracle")
                    cas = lay.metrics(modality, method, seed, f"cas-{oof}")
                    write(
                        _row(
                            *key,
                            load_metrics_file(metrics).metrics,
                            load_metrics_file(cas).metrics,
                            oof,
                        )
                    )
                start_card = lay.card(modality, card.init, seed)
                start_lora = ModelCard.read(start_card).lora_dir
                if start_lora is None or card.unet_dir is not None:
                    raise SystemExit(f"{start_card}: the start must be a LoRA run of the base")
                start = read_lora(start_card.parent / start_lora)
                reward = read_lora(card_path.parent / card.reward_lora_dir)
                for scale in scales:
                    if (modality, method, seed, scale) in done or scale == 1.0:
                        continue
                    d = args.out / modality / method / str(seed) / f"scale-{scale}"
                    shutil.rmtree(d, ignore_errors=True)
                    d.mkdir(parents=True)
                    write_lora(combine_loras([(start, 1.0), (reward, scale)]), d / "lora")
                    plain = {"lora_dir": "lora", "reward_lora_dir": None, "lora_scale": None}
                    card.model_copy(update=plain).write(d / "model.json")
                    generate(cfg, modality, method, seed, d / "model.json", d / "samples.h5")
                    oracle = evaluate_oracle(
                        cfg, modality, method, seed, d / "samples.h5", d / "oracle.json",
                        lay.data(modality),
                    )  # fmt: skip
                    cas = score_configured_samples(
                        cfg.cas, oof, modality, m.source, method, seed, d / "samples.h5",
                        lay.reference(modality, oof), lay.knowledge(modality), lay,
                        d / f"cas-{oof}.h5", d / f"cas-{oof}.json", "reward-paths",
                    )  # fmt: skip
                    write(_row(modality, method, seed, scale, oracle, cas, oof))


def _load(folder: Path) -> dict:
    """(modality, method) -> seed -> sorted list of (scale, agree, shift, oof_cas, oof_tail)."""
    paths: dict = defaultdict(lambda: defaultdict(list))
    for line in (folder / RESULTS).read_text().splitlines():
        r = json.loads(line)
        point = (r["scale"], r["agree"], r["shift"], r["oof_cas"], r["oof_tail"])
        paths[r["mod"], r["method"]][r["seed"]].append(point)
    for by_seed in paths.values():
        for points in by_seed.values():
            points.sort()
    return paths


def along(points: list[tuple], target: float, x: int, y: int) -> float:
    """Walking a path in scale order, its ``y`` column where its ``x`` column first reaches
    ``target`` (linear between the two scales around the crossing); nan if it never does."""
    found = crossing([p[x] for p in points], target)
    if found is None:
        return float("nan")
    i, w = found
    return float(points[i][y] + w * (points[i + 1][y] - points[i][y]))


def _paired(diffs: list[float], lower_is_better: bool) -> str:
    from craft.report.summary import paired_margin

    d = np.array(diffs)
    mean, se, _ = paired_margin(d)
    better = (d < 0) if lower_is_better else (d > 0)
    won = f"better on {int(better.sum())} of {len(d)} seeds"
    return f"{mean:+.3f} ± {se:.3f} (paired SE; {won})"


def _against(paths: dict, against: str):
    """(modality, method, its paths by seed, ``against``'s paths by seed) for every other
    method of a modality where ``against`` has paths too."""
    for (modality, method), by_seed in sorted(paths.items()):
        if method != against and (modality, against) in paths:
            yield modality, method, by_seed, paths[modality, against]


def table(args) -> None:
    paths = _load(args.folder)
    for (modality, method), by_seed in sorted(paths.items()):
        scales = sorted({p[0] for pts in by_seed.values() for p in pts})
        print(f"\n{modality} {method} ({len(by_seed)} seeds): scale, mean agreement / shift / "
              "out-of-family CAS / tail")  # fmt: skip
        for s in scales:
            pts = [p for pts in by_seed.values() for p in pts if p[0] == s]
            means = np.mean([p[1:] for p in pts], axis=0)
            print(f"  {s:5.2f}  " + "  ".join(f"{v:.3f}" for v in means) + f"  (n {len(pts)})")
    if not args.against:
        return
    print(f"\nAgainst {args.against} as trained (scale 1), each other path where it first")
    print("reaches that run's distribution shift, and where it first reaches its agreement:")
    for modality, method, by_seed, other in _against(paths, args.against):
        rows = {name: [] for name in (*COMPARED, "shift at equal agreement")}
        for seed, pts in sorted(by_seed.items()):
            end = [p for p in other.get(seed, []) if p[0] == 1.0]
            if not end:
                continue
            for name, col in COMPARED.items():
                mine = along(pts, end[0][2], 2, col)
                if np.isfinite(mine):
                    rows[name].append(mine - end[0][col])
            mine = along(pts, end[0][1], 1, 2)
            if np.isfinite(mine):
                rows["shift at equal agreement"].append(mine - end[0][2])
        for name, diffs in rows.items():
            lower = name in ("oof_tail", "shift at equal agreement")
            text = _paired(diffs, lower) if diffs else "no seed's path reaches it"
            print(f"  {modality} {method} - {args.against}, {name}: {text}")
    if args.budget is not None:
        within_budget(paths, args.against, args.budget)


def at_budget(points: list[tuple], budget: float) -> tuple:
    """craft.report.frontier.at_budget of a path of (scale, agree, shift, oof_cas, oof_tail)
    points, the oracle's shift as its realism."""
    stop = frontier_at_budget(
        [PathPoint(p[0], p[2], {"agree": p[1], "oof_cas": p[3], "oof_tail": p[4]}) for p in points],
        budget,
    ).point
    m = stop.metrics
    return (stop.scale, m["agree"], stop.realism, m["oof_cas"], m["oof_tail"])


def within_budget(paths: dict, against: str, budget: float) -> None:
    print(f"\nEach path where it first exceeds its own start's shift + {budget:g} (its end if")
    print(f"it never does), against {against}'s path at the same budget, paired over seeds:")
    for modality, method, by_seed, other in _against(paths, against):
        seeds = [s for s in sorted(by_seed) if s in other]
        seeds = [s for s in seeds if by_seed[s][0][0] == 0.0 and other[s][0][0] == 0.0]
        if not seeds:
            print(f"  {modality} {method}: no seed has both paths from scale 0")
            continue
        mine = [at_budget(by_seed[s], budget) for s in seeds]
        theirs = [at_budget(other[s], budget) for s in seeds]
        for who, pts in ((method, mine), (against, theirs)):
            scale, *means = np.mean(pts, axis=0)
            values = " / ".join(f"{v:.3f}" for v in means)
            print(f"  {modality} {who}: scale {scale:.2f}, agreement / shift / "
                  f"out-of-family CAS / tail {values}")  # fmt: skip
        for name, col in COMPARED.items():
            diffs = [a[col] - b[col] for a, b in zip(mine, theirs, strict=True)]
            print(f"  {modality} {method} - {against}, {name}: "
                  f"{_paired(diffs, name == 'oof_tail')}")  # fmt: skip


def figure(args) -> None:
    from matplotlib.figure import Figure

    paths = _load(args.folder)
    modalities = sorted({m for m, _ in paths})
    fig = Figure(figsize=(5 * len(modalities), 4.2), layout="constrained")
    axes = fig.subplots(1, len(modalities), squeeze=False)[0]
    colours = {}
    for ax, modality in zip(axes, modalities, strict=True):
        for (mod, method), by_seed in sorted(paths.items()):
            if mod != modality:
                continue
            colour = colours.setdefault(method, f"C{len(colours)}")
            for pts in by_seed.values():
                ax.plot([p[2] for p in pts], [p[1] for p in pts], color=colour, alpha=0.2, lw=1)
            scales = sorted({p[0] for pts in by_seed.values() for p in pts})
            mean = [
                np.mean([p[1:3] for pts in by_seed.values() for p in pts if p[0] == s], axis=0)
                for s in scales
            ]
            ax.plot([m[1] for m in mean], [m[0] for m in mean], "o-", color=colour, label=method)
            for s, m in zip(scales, mean, strict=True):
                ax.annotate(f"{s:g}", (m[1], m[0]), fontsize=7, xytext=(3, -9),
                            textcoords="offset points")  # fmt: skip
        ax.set_title(modality)
        ax.set_xlabel("oracle distribution shift of the right images (lower: more real)")
        ax.set_ylabel("oracle label agreement")
        ax.legend(fontsize=8)
    fig.suptitle("reward LoRA scaled from 0 (the start) to 1 (as trained) and beyond; "
                 "thin: one seed, dots: mean", fontsize=9)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"figure: {args.out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="sample and measure each run at each scale")
    m.add_argument("config", type=Path)
    m.add_argument("--seeds", help="comma-separated (default: the config's)")
    m.add_argument("--scales", nargs="+", required=True, help="METHOD=S1,S2,...")
    m.add_argument("--out", type=Path, required=True)
    m.set_defaults(run=measure)
    t = sub.add_parser("table", help="mean path per method; paired comparison at matched shift")
    t.add_argument("folder", type=Path)
    t.add_argument("--against", help="compare every other method at this method's shift")
    t.add_argument("--budget", type=float, help="and each at its own start's shift + BUDGET")
    t.set_defaults(run=table)
    f = sub.add_parser("figure", help="agreement against shift, one panel per modality")
    f.add_argument("folder", type=Path)
    f.add_argument("--out", type=Path, default=Path("docs/assets/reward-paths.png"))
    f.set_defaults(run=figure)
    args = ap.parse_args()
    if getattr(args, "budget", None) is not None and not args.against:
        ap.error("--budget compares each method with another one: name it with --against")
    args.run(args)


if __name__ == "__main__":
    main()
