"""The README's figure (docs/assets/samples.png): generated images of two methods side by side,
one row per label of every modality, from a finished run's samples.

    python scripts/readme_figure.py results-benchmark --seed 0 --out docs/assets/samples.png

The first ``--per-label`` images of each label, in file order (no picking), upscaled by an
integer nearest-neighbour factor.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from craft.paths import Layout
from craft.store import read_samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="a results folder with runs/")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs=2, default=["lora-enriched", "craft"])
    ap.add_argument("--per-label", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("docs/assets/samples.png"))
    args = ap.parse_args()
    lay = Layout(args.results)
    rows: list[tuple[str, list[np.ndarray]]] = []
    for modality in sorted(p.name for p in (args.results / "runs").iterdir()):
        by_method = [read_samples(lay.samples(modality, m, args.seed)) for m in args.methods]
        for label in by_method[0].label_names:
            tiles = []
            for s in by_method:
                picked = s.images[s.labels == s.label_names.index(label)][: args.per_label]
                tiles += [np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im for im in picked]
            rows.append((f"{modality.removeprefix('phantom-')}: {label}", tiles))
    n = 2 * args.per_label
    fig = Figure(figsize=(1.0 + 0.75 * n, 0.8 * len(rows)), dpi=110)
    axes = fig.subplots(len(rows), n + 1, gridspec_kw={"width_ratios": [2.4] + [1] * n})
    for r, (name, tiles) in enumerate(rows):
        axes[r, 0].text(1, 0.5, name, ha="right", va="center", fontsize=9)
        for c in range(n + 1):
            axes[r, c].set_axis_off()
        for c, im in enumerate(tiles):
            axes[r, c + 1].imshow(im, interpolation="nearest")
    for k, m in enumerate(args.methods):
        axes[0, 1 + k * args.per_label].set_title(m, loc="left", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.01, wspace=0.06, hspace=0.08)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"figure: {args.out}")


if __name__ == "__main__":
    main()
