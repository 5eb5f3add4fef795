"""A site's data size, against a baseline commit, side by side in one run (issue 40).

Builds a synthetic CheXpert-size site (224,000 manifest rows of 74,667 patients and 8 labels,
each row a small real PNG, so that every stage can read it) and a few hundred real-size images
(1024x1024 8-bit PNG and 16-bit DICOM), then measures, for the baseline commit (a git worktree)
and for this checkout, one after the other for each figure:

- plan: ``craft config check`` and ``snakemake -n`` at 10k, 100k and 224k rows (the first
  plan of a manifest, and the plans after it);
- prepare at scale: wall time and peak memory (the process tree's RSS) at each size;
- prepare at 512 px on the real-size files: images/s against a plain one-process PIL/pydicom
  decode-and-resize loop over the same files, and peak memory at two sizes;
- decode: whole processes in turn (A B A B), ``craft prepare --threads 2`` against the plain
  loop over a few thousand real-size files, the ratio pair by pair;
- the stages: peak memory of adapt, reference, downstream and fidelity on phantom data sets
  of two sizes (Snakemake's benchmark files of a real workflow run);
- storage: bytes per image and read speed of a 512 px split without compression, lzf, gzip.

Run by hand (not in CI; about an hour on 2 cores with the stage part):

    python bench/bench_scale.py --work /scratch/craft-scale --baseline 5be17e7 \
        --out bench/results/scale.json

Every figure is written to --out as it is measured (JSON lines), so a run cut short keeps what
it measured; ``--parts`` chooses what runs (plan,prepare,real,stages,storage).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LABELS = [
    "no_finding",
    "cardiomegaly",
    "lung_opacity",
    "edema",
    "consolidation",
    "atelectasis",
    "pneumothorax",
    "pleural_effusion",
]


# ---------------------------------------------------------------------------------- running


def tree_rss(pid: int) -> int:
    """Bytes of memory of a process and all its descendants: the sum of their proportional
    set sizes (/proc/PID/smaps_rollup), so that pages a forked worker shares with its parent
    count once, not once per process as a sum of RSS would."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                pss = next(line for line in f if line.startswith("Pss:"))
                total += int(pss.split()[1]) * 1024
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError, StopIteration):
            continue
    return total


def run(cmd: list[str], cwd: Path, env: dict, timeout: float = 3600, sample_every=0.02) -> dict:
    """Run a command; its wall and CPU seconds (its own and its children's) and the peak RSS
    of its process tree, sampled every ``sample_every`` s (reading every process's
    smaps_rollup costs CPU: a timing that needs both cores samples rarely)."""
    t0 = time.perf_counter()
    before = os.times()
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(sample_every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate(timeout=timeout)
    sampler.join()
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} (in {cwd}) failed:\n{out[-3000:]}")
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak[0] / 2**20, "output": out}


class Code:
    """One version of craft: its checkout (the Snakefile's folder) and how to run it."""

    def __init__(self, name: str, root: Path):
        self.name, self.root = name, root
        self.env = {
            **os.environ,
            "PYTHONPATH": str(root),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "OMP_NUM_THREADS": "1",
        }

    def craft(self, *args: str) -> list[str]:
        return [sys.executable, "-c", "from craft.cli import main; main()", *args]

    def snakemake(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "snakemake", "-s", str(self.root / "Snakefile"), *args]

    def prepare_has_workers(self) -> bool:
        """Whether this version's prepare takes ``--threads`` (decode workers and the plan's
        split cache came together; 5be17e7 has neither, a later baseline both)."""
        help_ = subprocess.run(self.craft("prepare", "--help"), env=self.env, cwd=self.root,
                               capture_output=True, text=True)  # fmt: skip
        return "--threads" in help_.stdout


def baseline_checkout(work: Path, rev: str) -> Path:
    """A git worktree of the baseline commit (made once)."""
    path = work / f"baseline-{rev}"
    if not (path / "Snakefile").is_file():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(path), rev],
            check=True,
            capture_output=True,
        )
    return path


class Recorder:
    def __init__(self, out: Path):
        self.out = out
        out.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, **row) -> None:
        row.pop("output", None)
        print(json.dumps(row), flush=True)
        with self.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------ sites


def write_site(root: Path, rows: int, patients: int, seed: int = 0) -> Path:
    """``root/images/pXXXXX/studyY/viewZ.png`` (16x16 gray PNGs) and ``root/manifest.csv``
    with ``rows`` rows of ``patients`` patients (CheXpert's layout: 1-5 studies a patient,
    one label a patient); returns the manifest. Made once."""
    from PIL import Image

    manifest = root / "manifest.csv"
    if manifest.is_file():
        return manifest
    rng = np.random.default_rng(seed)
    per = np.ones(patients, np.int64)
    extra = rng.choice(patients, rows - patients)
    np.add.at(per, extra, 1)
    label = rng.choice(len(LABELS), patients, p=[0.3, 0.1, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05])
    tile = rng.integers(0, 256, (64, 16, 16), dtype=np.uint8)
    lines = ["path,label,patient"]
    n = 0
    for p in range(patients):
        for s in range(int(per[p])):
            rel = f"p{p:05d}/study{s + 1}/view1_frontal.png"
            path = root / "images" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(tile[n % 64] ^ np.uint8(p % 251)).save(path, compress_level=1)
            lines.append(f"{rel},{LABELS[label[p]]},P{p:05d}")
            n += 1
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(manifest)
    return manifest


def prefix_manifest(full: Path, rows: int) -> Path:
    """The first ``rows`` rows of the full manifest (every label appears early)."""
    out = full.with_name(f"manifest-{rows}.csv")
    if not out.is_file():
        with full.open() as f:
            lines = [next(f) for _ in range(rows + 1)]
        out.write_text("".join(lines))
    return out


def write_real_files(root: Path, n_png: int, n_dcm: int, seed: int = 0) -> Path:
    """Real-size images: 1024x1024 8-bit PNGs (a smooth chest-like field with noise) and
    1024x1024 16-bit DICOMs (pydicom's CT test slice, enlarged, with noise). Made once."""
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file

    manifest = root / "manifest.csv"
    if manifest.is_file():
        return manifest
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:1024, :1024] / 1024.0
    base = 120 + 60 * np.sin(3 * xx) * np.cos(2 * yy)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    big = np.kron(ct.pixel_array.astype(np.float64), np.ones((8, 8)))
    lines = ["path,label,patient"]
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n_png + n_dcm):
        label = LABELS[i % len(LABELS)]
        if i < n_png:
            x = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
            name = f"{i:05d}.png"
            Image.fromarray(x).save(root / "images" / name)
        else:
            ds = ct.copy()
            x = (big * rng.uniform(0.9, 1.1) + rng.normal(0, 20, big.shape)).clip(0, 4095)
            ds.Rows, ds.Columns = x.shape
            ds.PixelData = x.astype(np.uint16).tobytes()
            name = f"{i:05d}.dcm"
            ds.save_as(root / "images" / name)
        lines.append(f"{name},{label},R{i // 2:05d}")
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def site_config(path: Path, manifest: Path, images: Path, resolution: int, results: Path) -> Path:
    """A manifest modality with the stack a site would name (hub ids; nothing is loaded)."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "craft-paper.yaml").read_text())
    chest = next(iter(cfg["modalities"].values()))
    chest.update(
        source={"kind": "manifest", "manifest": str(manifest), "image_root": str(images)},
        labels=list(LABELS),
        resolution=resolution,
        channels=3,
    )
    name = next(iter(cfg["modalities"]))
    cfg["modalities"] = {name: chest}
    cfg["results"] = str(results)
    cfg.pop("study", None)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------ parts


def part_plan(codes, work, record, sizes, repeats):
    """Each command first on a manifest it has not seen (no split cache), then ``repeats``
    times more; the baseline, which keeps nothing between plans, once each."""
    full = write_site(work / "site", max(sizes), round(max(sizes) / 3))
    for n in sizes:
        manifest = prefix_manifest(full, n)
        for code in codes:
            results = work / f"plan-{code.name}-{n}"
            cfg = site_config(work / f"plan-{code.name}-{n}.yaml", manifest, full.parent / "images",
                              512, results)  # fmt: skip
            commands = {
                "config_check": code.craft("config", "check", str(cfg)),
                "dry_run": code.snakemake("-n", "--configfile", str(cfg)),
            }
            for what, cmd in commands.items():
                shutil.rmtree(results / "data" / ".splits", ignore_errors=True)
                for i in range(1 + (repeats if code.name != "baseline" else 0)):
                    r = run(cmd, code.root, code.env)
                    record(part="plan", code=code.name, rows=n, what=what, repeat=i,
                           first_of_manifest=i == 0, **r)  # fmt: skip


def part_prepare(codes, work, record, sizes, resolution=64):
    """prepare at each size. This checkout's prepare twice: as the workflow runs it, after
    the plan has dealt the splits (``craft config check``, which every ``snakemake`` run does
    first: the split cache of results/data/.splits), and alone, dealing them itself. The
    baseline keeps no splits: once."""
    full = write_site(work / "site", max(sizes), round(max(sizes) / 3))
    modern = {code.name: code.prepare_has_workers() for code in codes}
    for n in sizes:
        manifest = prefix_manifest(full, n)
        for code in codes:
            results = work / f"prep-{code.name}-{n}"
            cfg = site_config(work / f"prep-{code.name}-{n}.yaml", manifest,
                              full.parent / "images", resolution, results)  # fmt: skip
            out = results / "data.h5"
            args = ["prepare", "--config", str(cfg), "--modality", "chexpert", "--out", str(out)]
            if modern[code.name]:
                args += ["--threads", "2"]
            for after_plan in (True, False) if modern[code.name] else (False,):
                shutil.rmtree(results / "data" / ".splits", ignore_errors=True)
                if after_plan:
                    run(code.craft("config", "check", str(cfg)), code.root, code.env)
                r = run(code.craft(*args), code.root, code.env)
                record(part="prepare", code=code.name, rows=n, resolution=resolution,
                       threads=2 if modern[code.name] else 1, after_plan=after_plan,
                       bytes=out.stat().st_size, images_per_s=n / r["wall_s"], **r)  # fmt: skip
                out.unlink()


def plain_loop(manifest: Path, images: Path, resolution: int, skip: int = 0) -> dict:
    """The floor: decode and resize each file in one process, keep nothing (the manifest's
    rows after the first ``skip``)."""
    import pydicom
    from PIL import Image

    rows = list(csv.DictReader(manifest.open()))[skip:]
    t0 = time.perf_counter()
    for r in rows:
        path = images / r["path"]
        if path.suffix == ".dcm":
            x = pydicom.dcmread(path).pixel_array.astype(np.float32)
            x = ((x - x.min()) / max(float(np.ptp(x)), 1e-6) * 255).astype(np.uint8)
            im = Image.fromarray(x)
        else:
            im = Image.open(path).convert("L")
        np.asarray(im.resize((resolution, resolution), Image.Resampling.BILINEAR))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "images_per_s": len(rows) / wall, "rows": len(rows)}


#: The real part's smallest run: start-up (interpreter, imports, the config, worker
#: processes) and eight images of each label (fewer cannot be dealt to three splits).
SMALL = 64


def part_real(codes, work, record, n_png, n_dcm, resolution=512):
    root = work / "real"
    full = write_real_files(root, n_png, n_dcm)
    total = n_png + n_dcm

    def floors():
        # The steady state, what a site's 224k images see: a code's whole process at its
        # smallest size and at ``total`` images; the difference against the plain loop over
        # the same rows (the baseline cannot split SMALL rows: its smallest is total // 4).
        for skip in (0, SMALL, total // 4):
            r = plain_loop(full, root / "images", resolution, skip=skip)
            record(part="real", code="plain-loop", resolution=resolution, skip=skip, **r)

    floors()
    for n in (SMALL, total // 4, total):
        lines = full.read_text().splitlines()
        keep = lines[: n + 1]  # labels cycle: every label in the first rows
        manifest = root / f"manifest-{n}.csv"
        manifest.write_text("\n".join(keep) + "\n")
        for code in codes:
            if n == SMALL and code.name == "baseline":
                continue
            results = work / f"real-{code.name}-{n}"
            cfg = site_config(work / f"real-{code.name}-{n}.yaml", manifest, root / "images",
                              resolution, results)  # fmt: skip
            out = results / "data.h5"
            for threads in (1, 2) if code.name != "baseline" else (1,):
                args = ["prepare", "--config", str(cfg), "--modality", "chexpert"]
                args += ["--out", str(out)]
                if code.name != "baseline":
                    args += ["--threads", str(threads)]
                r = run(code.craft(*args), code.root, code.env)
                record(part="real", code=code.name, rows=n, threads=threads,
                       resolution=resolution, bytes=out.stat().st_size,
                       images_per_s=n / r["wall_s"], **r)  # fmt: skip
                out.unlink()
    floors()  # again after: the machine's speed may drift during the part


def part_decode(codes, work, record, n_png, n_dcm, pairs, resolution=512):
    """Whole processes in turn, A B A B: ``craft prepare --threads 2`` (start-up, the manifest's
    scan and dealing, decode and the HDF5 file all included) against the plain one-process loop in a
    process of its own, over the same real-size files; the ratio is taken pair by pair, so
    that the machine's drift between runs moves both sides of a pair alike."""
    root = work / "real"
    full = write_real_files(root, n_png, n_dcm)
    loop = [sys.executable, "-c",
            "import sys, json; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
            "import bench_scale as b; print(json.dumps(b.plain_loop(Path(sys.argv[2]), "
            "Path(sys.argv[3]), int(sys.argv[4]))))",
            str(REPO / "bench"), str(full), str(root / "images"), str(resolution)]  # fmt: skip
    for code in codes:
        if not code.prepare_has_workers():
            continue  # 5be17e7's prepare has no decode workers
        results = work / f"decode-{code.name}"
        cfg = site_config(work / f"decode-{code.name}.yaml", full, root / "images", resolution,
                          results)  # fmt: skip
        out = results / "data.h5"
        args = ["prepare", "--config", str(cfg), "--modality", "chexpert", "--out", str(out),
                "--threads", "2"]  # fmt: skip
        for pair in range(-1, pairs):  # -1: a warm-up of each, not recorded (page cache)
            a = run(code.craft(*args), code.root, code.env, sample_every=1.0)
            out.unlink()
            b = run(loop, REPO, dict(os.environ), sample_every=1.0)
            if pair < 0:
                continue
            record(part="decode", code=code.name, pair=pair, rows=n_png + n_dcm,
                   craft_wall_s=a["wall_s"], loop_wall_s=b["wall_s"],
                   craft_peak_rss_mb=a["peak_rss_mb"], ratio=b["wall_s"] / a["wall_s"])  # fmt: skip


def part_stages(codes, work, record, sizes):
    """Peak memory of the stages that read a data split, on a phantom-derm data set of each
    size (32 px RGB): the inputs made once by a workflow run, then each stage's command run
    by hand with one thread, for each code in turn, on the same inputs."""
    import yaml

    for n_per_label in sizes:
        run_dir = work / f"stages-{n_per_label}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = {
            "results": "results",
            "seeds": [0],
            "modalities": {
                "phantom-derm": {
                    "source": {
                        "kind": "phantom",
                        "phantom": "phantom-derm",
                        "n_per_label": n_per_label,
                    },  # fmt: skip
                    "labels": ["nevus", "melanoma"],
                    "description": "dermoscopy image",
                    "resolution": 32,
                    "channels": 3,
                }
            },
            "models": {"generator": str(REPO / "assets/phantom-foundation/{modality}")},
            "methods": {"lora": {"kind": "lora", "steps": 5, "batch_size": 8, "rank": 2}},
            "knowledge": {"backend": {"kind": "curated"}},
            "cas": {
                "evaluators": {
                    "clip": {
                        "family": "clip",
                        "role": "reward",
                        "train": {"steps": 5, "n_images": 64, "seed": 0},
                    },
                    "siglip": {
                        "family": "siglip",
                        "role": "out-of-family",
                        "train": {"steps": 5, "n_images": 64, "seed": 1},
                    },
                },  # fmt: skip
                "reference_max_per_label": 500,
            },
            "sampling": {"steps": 2, "n_per_label": 8, "batch_size": 16},
            # memorization's blocks (chunk_size^2) below both sizes' train splits, so that what
            # grows with the data set shows, not a block filling up to its size
            "evaluation": {
                "downstream": {"max_epochs": 1, "budgets": [0.5]},
                "memorization": {"chunk_size": 1024},
            },
        }
        config = run_dir / "config.yaml"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        samples = "results/runs/phantom-derm/lora/0/samples.h5"
        data = "results/data/phantom-derm.h5"
        inputs = [samples, "results/cas/phantom-derm/reference-clip.h5"]
        craft = codes[-1]
        run(craft.snakemake(*inputs, "--cores", "2", "--configfile", str(config)), run_dir,
            craft.env)  # fmt: skip
        out = run_dir / "out"
        common = ["--config", str(config), "--modality", "phantom-derm"]
        run_args = ["--method", "lora", "--seed", "0", "--samples", samples, "--data", data]
        stages = {
            "adapt": ["adapt", *common, "--method", "lora", "--seed", "0",
                      "--out", str(out / "adapt" / "model.json")],
            "reference": ["reference", *common, "--evaluator", "clip",
                          "--out", str(out / "reference.h5")],
            "downstream_real": ["downstream-real", *common, "--seed", "0", "--data", data,
                                "--out", str(out / "ds" / "real-phases.json")],
            "fidelity": ["fidelity", *common, *run_args, "--out", str(out / "fid.json")],
            "memorization": ["memorization", *common, *run_args,
                             "--out", str(out / "mem" / "metrics.json")],
        }  # fmt: skip
        for stage, args in stages.items():
            for code in codes:
                shutil.rmtree(out, ignore_errors=True)
                env = {**code.env, "OMP_NUM_THREADS": "1"}
                r = run(code.craft(*args, "--threads", "1"), run_dir, env)
                r["max_rss_mb"] = r.pop("peak_rss_mb")
                record(part="stages", code=code.name, n_per_label=n_per_label, stage=stage, **r)


def big_config(path: Path, results: Path) -> Path:
    """8 modalities (four copies of each phantom) x the default's 6 methods x 10 seeds."""
    import yaml

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["modalities"] = {
        f"{name}-{i}": m for name, m in cfg["modalities"].items() for i in range(4)
    }
    cfg["seeds"] = list(range(10))
    cfg["results"] = str(results)
    links = path.parent / "foundations"  # each modality's name for its phantom's foundation
    links.mkdir(exist_ok=True)
    for name, m in cfg["modalities"].items():
        if not (links / name).exists():
            (links / name).symlink_to(REPO / "assets/phantom-foundation" / m["source"]["phantom"])
    cfg["models"]["generator"] = str(links / "{modality}")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def part_jobs(codes, work, record, repeats):
    """The dry run of a config of thousands of jobs, and the SLURM jobs it would submit."""
    for code in codes:
        cfg = big_config(work / f"jobs-{code.name}.yaml", work / f"jobs-{code.name}")
        for i in range(repeats):
            r = run(code.snakemake("-n", "--configfile", str(cfg)), code.root, code.env)
            table = [ln.split() for ln in r["output"].split("Job stats:")[1].splitlines()[3:]]
            jobs = next(int(t[1]) for t in table if len(t) == 2 and t[0] == "total")
            record(part="jobs", code=code.name, repeat=i, jobs=jobs, **r)


def part_storage(work, record, n=256, resolution=512):
    """Bytes per image and random-batch read speed of a 512 px split, per compression."""
    import h5py
    from PIL import Image

    root = work / "real"
    files = sorted((root / "images").glob("*.png"))[:n]
    images = np.stack(
        [np.asarray(Image.open(f).convert("L").resize((resolution, resolution))) for f in files]
    )[..., None]
    rng = np.random.default_rng(0)
    for name, kw in (("none", {}), ("lzf", {"compression": "lzf"}),
                     ("gzip-1", {"compression": "gzip", "compression_opts": 1})):  # fmt: skip
        path = work / f"storage-{name}.h5"
        t0 = time.perf_counter()
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("x", shape=images.shape, dtype=np.uint8,
                                  chunks=(1, resolution, resolution, 1), **kw)  # fmt: skip
            for i, im in enumerate(images):
                ds[i] = im
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with h5py.File(path, "r") as f:
            for _ in range(50):
                idx = np.unique(rng.choice(n, 8, replace=False))
                np.stack([f["x"][int(i)] for i in idx])  # as SplitImages reads them
        read_s = (time.perf_counter() - t0) / 50
        record(part="storage", compression=name, resolution=resolution,
               bytes_per_image=path.stat().st_size / n, write_mb_s=images.nbytes / write_s / 1e6,
               batch8_read_ms=read_s * 1e3)  # fmt: skip
        path.unlink()


def summarize(path: Path) -> str:
    """Markdown tables of a results file: medians, and craft against the baseline."""
    from statistics import median

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    plan = [r for r in rows if r["part"] == "plan"]
    if plan:
        out += ["| rows | command | baseline s (CPU s) | craft, first plan s | craft, later s "
                "(median) | later, baseline/craft |", "|---|---|---|---|---|---|"]  # fmt: skip
        for n in sorted({r["rows"] for r in plan}):
            for what in ("config_check", "dry_run"):
                b = [r for r in plan if r["rows"] == n and r["what"] == what
                     and r["code"] == "baseline"]  # fmt: skip
                c = [r for r in plan if r["rows"] == n and r["what"] == what
                     and r["code"] == "craft"]  # fmt: skip
                if not (b and c):
                    continue
                bw = median(r["wall_s"] for r in b)
                bc = median(r["cpu_s"] for r in b)
                first = c[0]["wall_s"]
                later = median(r["wall_s"] for r in c[1:]) if len(c) > 1 else float("nan")
                out.append(f"| {n:,} | {what} | {bw:.1f} ({bc:.1f}) | {first:.1f} | "
                           f"{later:.1f} | {ratio(bw, later)} |")  # fmt: skip
        out.append("")
    jobs = [r for r in rows if r["part"] == "jobs"]
    if jobs:
        out += ["| code | jobs | dry run wall s (median) | CPU s |", "|---|---|---|---|"]
        for code in ("baseline", "craft"):
            js = [r for r in jobs if r["code"] == code]
            if js:
                out.append(f"| {code} | {js[0]['jobs']:,} | {median(r['wall_s'] for r in js):.1f}"
                           f" | {median(r['cpu_s'] for r in js):.1f} |")  # fmt: skip
        out.append("")
    for part, size in (("prepare", "rows"), ("real", "rows")):
        ps = [r for r in rows if r["part"] == part]
        if not ps:
            continue
        out += [f"| {part}: code | {size} | threads | images/s | wall s | peak RSS MB | "
                "file MB |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in ps:
            name = r["code"] + {True: ", after the plan", False: ", alone"}.get(
                r.get("after_plan") if r.get("threads", 1) > 1 else None, ""
            )
            out.append(f"| {name} | {r.get(size, '-')} | {r.get('threads', 1)} | "
                       f"{r['images_per_s']:.1f} | {r['wall_s']:.1f} | "
                       f"{r.get('peak_rss_mb', float('nan')):.0f} | "
                       f"{r.get('bytes', 0) / 1e6:.1f} |")  # fmt: skip
        out.append("")
    real = [r for r in rows if r["part"] == "real"]
    if any(r["code"] == "plain-loop" and r.get("skip") for r in real):
        out += ["| steady state: code | threads | images | s beyond start-up | images/s | "
                "plain loop, same rows, images/s | ratio |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        big = max(r["rows"] for r in real if r["code"] != "plain-loop")
        for code in ("baseline", "craft"):
            for t in sorted({r.get("threads", 1) for r in real if r["code"] == code}):
                at = {}
                for r in real:
                    if r["code"] == code and r.get("threads", 1) == t:
                        at.setdefault(r["rows"], []).append(r["wall_s"])
                small = min(at)
                floor = [r["images_per_s"] for r in real
                         if r["code"] == "plain-loop" and r.get("skip") == small]  # fmt: skip
                if small == big or not floor:
                    continue
                dt, n = median(at[big]) - median(at[small]), big - small
                out.append(f"| {code} | {t} | {n} | {dt:.1f} | {n / dt:.1f} | "
                           f"{median(floor):.1f} | {n / dt / median(floor):.2f}x |")  # fmt: skip
        out.append("")
    dec = [r for r in rows if r["part"] == "decode"]
    if dec:
        out += ["| files | pairs | craft prepare --threads 2, s (median) | plain loop, s "
                "(median) | loop / craft, pair by pair: median (min-max) |",
                "|---|---|---|---|---|"]  # fmt: skip
        ratios = [r["ratio"] for r in dec]
        out.append(f"| {dec[0]['rows']:,} | {len(dec)} | "
                   f"{median(r['craft_wall_s'] for r in dec):.1f} | "
                   f"{median(r['loop_wall_s'] for r in dec):.1f} | {median(ratios):.2f}x "
                   f"({min(ratios):.2f}-{max(ratios):.2f}) |")  # fmt: skip
        out.append("")
    st = [r for r in rows if r["part"] == "stages"]
    if st:
        sizes = sorted({r["n_per_label"] for r in st})
        out += ["| stage | code | " + " | ".join(f"peak RSS MB, {n:,}/label" for n in sizes)
                + " | growth |", "|---|---|" + "---|" * (len(sizes) + 1)]  # fmt: skip
        for stage in dict.fromkeys(r["stage"] for r in st):
            for code in ("baseline", "craft"):
                v = [next((r["max_rss_mb"] for r in st if r["stage"] == stage
                           and r["code"] == code and r["n_per_label"] == n), float("nan"))
                     for n in sizes]  # fmt: skip
                out.append(f"| {stage} | {code} | " + " | ".join(f"{x:.0f}" for x in v)
                           + f" | {v[-1] / v[0]:.2f}x |")  # fmt: skip
        out.append("")
    sto = [r for r in rows if r["part"] == "storage"]
    if sto:
        out += ["| compression | bytes/image | write MB/s | random batch of 8, ms |",
                "|---|---|---|---|"]  # fmt: skip
        for r in sto:
            out.append(f"| {r['compression']} | {r['bytes_per_image']:,.0f} | "
                       f"{r['write_mb_s']:.0f} | {r['batch8_read_ms']:.1f} |")  # fmt: skip
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="Scratch folder (tens of GB).")
    ap.add_argument("--baseline", default="5be17e7", help="Baseline commit.")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, one per figure.")
    ap.add_argument("--parts", default="plan,jobs,prepare,real,decode,stages,storage")
    ap.add_argument("--rows", default="10000,100000,224000", help="Manifest sizes.")
    ap.add_argument("--prepare-rows", default="10000,224000", help="Sizes prepare runs at.")
    ap.add_argument("--repeats", type=int, default=3, help="Plans after the first.")
    ap.add_argument("--real", default="600,200", help="Real-size PNG,DICOM files.")
    ap.add_argument("--decode-files", default="2400,800", help="PNG,DICOM files, decode part.")
    ap.add_argument("--pairs", type=int, default=4, help="A B pairs of the decode part.")
    ap.add_argument("--stage-sizes", default="2000,20000", help="Phantoms per label.")
    ap.add_argument("--codes", default="baseline,craft", help="Which code(s) to measure.")
    ap.add_argument("--summarize", action="store_true", help="Only print --out's tables.")
    a = ap.parse_args(argv)
    if a.summarize:
        print(summarize(a.out))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    record = Recorder(a.out)
    codes = [Code("baseline", baseline_checkout(a.work, a.baseline)), Code("craft", REPO)]
    codes = [c for c in codes if c.name in a.codes.split(",")]
    parts = a.parts.split(",")
    if "plan" in parts:
        sizes = [int(x) for x in a.rows.split(",")]
        part_plan(codes, a.work, record, sizes, a.repeats)
    if "jobs" in parts:
        part_jobs(codes, a.work, record, a.repeats)
    if "prepare" in parts:
        part_prepare(codes, a.work, record, [int(x) for x in a.prepare_rows.split(",")])
    if "real" in parts:
        n_png, n_dcm = (int(x) for x in a.real.split(","))
        part_real(codes, a.work, record, n_png, n_dcm)
    if "decode" in parts:
        n_png, n_dcm = (int(x) for x in a.decode_files.split(","))
        part_decode(codes, a.work, record, n_png, n_dcm, a.pairs)
    if "stages" in parts:
        part_stages(codes, a.work, record, [int(x) for x in a.stage_sizes.split(",")])
    if "storage" in parts:
        part_storage(a.work, record)


if __name__ == "__main__":
    main()
