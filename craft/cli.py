"""The ``craft`` command line: each verb parses arguments and calls one typed function.

Every verb reads the config (``--config``, default ``config.yaml``) and writes where the results
layout (craft.paths) says unless ``--out`` names another place, so each stage runs the same way
inside and outside Snakemake. Heavy imports (torch, diffusers) happen inside the verbs.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from craft.errors import CraftError, Interrupted

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="craft: Clinical Reward-Aligned Finetuning of diffusion models for medical images.",
)
config_app = typer.Typer(no_args_is_help=True, help="Check and show configs.")
evaluate_app = typer.Typer(no_args_is_help=True, help="Evaluate generated images.")
app.add_typer(config_app, name="config")
app.add_typer(evaluate_app, name="evaluate")
knowledge_app = typer.Typer(no_args_is_help=True, help="Enriched prompts and clinical checklists.")
evaluator_app = typer.Typer(no_args_is_help=True, help="CAS evaluators (vision-language models).")
app.add_typer(knowledge_app, name="knowledge")
app.add_typer(evaluator_app, name="evaluator")
study_app = typer.Typer(no_args_is_help=True, help="Blinded physician preference study.")
app.add_typer(study_app, name="study")
profile_app = typer.Typer(no_args_is_help=True, help="Install Snakemake profiles for a site.")
app.add_typer(profile_app, name="profile")
models_app = typer.Typer(
    no_args_is_help=True, help="Pretrained models a config names: offline check and download."
)
app.add_typer(models_app, name="models")
data_app = typer.Typer(no_args_is_help=True, help="Check a site's manifest and images.")
app.add_typer(data_app, name="data")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Config YAML file.")]
ModalityOpt = Annotated[
    str, typer.Option("--modality", "-m", help="Modality name from the config.")
]
MethodOpt = Annotated[str, typer.Option("--method", "-k", help="Method name from the config.")]
SeedOpt = Annotated[int, typer.Option("--seed", "-s", help="Run seed.")]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Output path (default: results layout).")
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", help="CPU threads for torch.")]
DecodeThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        help="Worker processes that decode images (default: the CPUs of the job, at most its "
        "OMP_NUM_THREADS, which Snakemake sets to the rule's threads).",
    ),
]
DataOpt = Annotated[Path | None, typer.Option(help="Prepared data .h5 (default: layout).")]


def _load(path: Path):
    from craft.config import load_config

    return load_config(path)


def _layout(cfg):
    from craft.paths import Layout

    return Layout(cfg.results)


def _record(
    out: Path, cfg, stage: str, modality=None, method=None, seed=None, evaluator=None, inputs=None
) -> None:
    """Save the job's spec and its inputs' digests beside its output (craft.specs)."""
    from craft.specs import record_job

    spec = cfg.spec(stage, modality, method, evaluator)
    job = {
        "stage": stage,
        "modality": modality,
        "method": method,
        "seed": seed,
        "evaluator": evaluator,
    }
    record_job(out, spec, inputs or {}, {k: v for k, v in job.items() if v is not None})


def _seed_in_config(cfg, seed: int) -> None:
    if seed not in cfg.seeds:
        # Allowed (e.g. a one-off run), but say so: the report only gathers configured seeds.
        print(f"craft: note: seed {seed} is not in the config's seeds {cfg.seeds}", file=sys.stderr)


@config_app.command("check")
def config_check(file: Annotated[Path, typer.Argument(help="Config YAML file.")]) -> None:
    """Validate a config file and the files and folders it names; one line per problem."""
    from craft.checks import check_files

    cfg = _load(file)
    problems = check_files(cfg)
    for line in problems:
        print(f"craft: error: {file}: {line}", file=sys.stderr)
    if problems:
        raise typer.Exit(2)
    n = len(cfg.modalities) * len(cfg.methods) * len(cfg.seeds)
    print(
        f"{file}: ok ({len(cfg.modalities)} modalities x {len(cfg.methods)} methods x "
        f"{len(cfg.seeds)} seeds = {n} runs)"
    )


@config_app.command("show")
def config_show(config: ConfigOpt = Path("config.yaml")) -> None:
    """Print the resolved config, every default filled in."""
    from craft.config import dump_config

    print(dump_config(_load(config)), end="")


@config_app.command("schema")
def config_schema(
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the schema here (default: stdout).")
    ] = None,
) -> None:
    """The JSON schema of config.yaml: every field, its type, default and description."""
    import json

    from craft.config import CraftConfig

    text = json.dumps(CraftConfig.model_json_schema(), indent=1) + "\n"
    if out is None:
        print(text, end="")
    else:
        Path(out).write_text(text)
        print(f"config schema: {out}")


@config_app.command("reference")
def config_reference(
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the page here (default: stdout)."),
    ] = None,
) -> None:
    """The configuration reference page (Markdown): every key, type, default, description."""
    from craft.config_reference import reference_markdown

    text = reference_markdown()
    if out is None:
        print(text, end="")
    else:
        Path(out).write_text(text)
        print(f"configuration reference: {out}")


@config_app.command("jobs")
def config_jobs(
    config: ConfigOpt = Path("config.yaml"),
    against: Annotated[
        Path | None,
        typer.Option(help="Another config: list the jobs whose spec differs, and the keys."),
    ] = None,
) -> None:
    """Every job's spec digest (the rerun key); with --against, which jobs a change reruns."""
    from craft.specs import job_spec, spec_changes, workflow_jobs

    cfg = _load(config)
    if against is None:
        for job in workflow_jobs(cfg):
            print(job_spec(cfg, *job).digest, " ".join(p for p in job if p))
        return
    other = _load(against)
    ours, theirs = set(workflow_jobs(cfg)), set(workflow_jobs(other))
    for job in sorted(ours | theirs, key=lambda j: tuple(p or "" for p in j)):
        name = " ".join(p for p in job if p)
        if job not in theirs or job not in ours:
            print(f"{name}: {'only in ' + str(config if job in ours else against)}")
            continue
        changes = spec_changes(job_spec(cfg, *job).plain(), job_spec(other, *job).plain())
        if changes:
            print(f"{name}: {'; '.join(changes)}")


@app.command("init")
def init(
    manifest: Annotated[Path, typer.Option(help="CSV with path,label[,patient][,split].")],
    image_root: Annotated[Path, typer.Option(help="Folder the CSV's relative paths start from.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The config to write.")] = Path(
        "my.yaml"
    ),
    generator: Annotated[
        str, typer.Option(help="Stable Diffusion pipeline: hub id or local folder.")
    ] = "stable-diffusion-v1-5/stable-diffusion-v1-5",
    modality: Annotated[
        str | None, typer.Option(help="Modality name (default: the CSV's folder name).")
    ] = None,
    description: Annotated[
        str, typer.Option(help="What the images are, e.g. 'chest radiograph'.")
    ] = "medical image",
    force: Annotated[bool, typer.Option(help="Overwrite existing files.")] = False,
) -> None:
    """Write a starting config for your own data: labels and counts from the manifest,
    channels and resolution suggested from the images, hub models, all six methods (and a
    knowledge template beside it where no shipped knowledge base knows the labels)."""
    from craft.starter import init as run

    written = run(manifest, image_root, out, generator, modality, description, force)
    for path in written:
        print(f"wrote {path}")
    print(
        f"next: craft config check {out}; craft models fetch -c {out}; "
        f"snakemake -n --configfile {out}"
    )


@models_app.command("check")
def models_check(config: ConfigOpt = Path("config.yaml")) -> None:
    """List every pretrained model the config names that a job could not load offline (from
    a local folder or the Hugging Face cache), one line each; exits 1 if there is one."""
    from craft.models.hub import config_models, problem, with_dependencies

    refs = list(with_dependencies(config_models(_load(config))))
    problems = [line for ref in refs if (line := problem(ref, str(config))) is not None]
    for line in problems:
        print(f"craft: missing: {line}", file=sys.stderr)
    n = len(refs)
    if problems:
        raise typer.Exit(1)
    print(f"{config}: all {n} pretrained model(s) load offline")


@models_app.command("fetch")
def models_fetch(config: ConfigOpt = Path("config.yaml")) -> None:
    """Download every hub model the config names, and what each needs besides (an open_clip
    model's text tower and tokenizer), into the Hugging Face cache; run it where there is
    internet (a login node), then compute nodes can run with HF_HUB_OFFLINE=1."""
    from craft.models.hub import fetch_all

    cfg = _load(config)
    done = fetch_all(cfg, log=lambda line: print(f"craft: {line}", file=sys.stderr))
    for ref, path in done:
        print(f"{ref.describe()}: {path}")
    check = f"HF_HUB_OFFLINE=1 craft models check -c {config}"
    print(f"{len(done)} model(s) ready; check them offline: {check}")


@data_app.command("check")
def data_check(
    config: ConfigOpt = Path("config.yaml"),
    modality: Annotated[
        str | None, typer.Option("--modality", "-m", help="One modality (default: all).")
    ] = None,
    threads: DecodeThreadsOpt = None,
) -> None:
    """Read every manifest row and decode every image once, as prepare would; list every bad
    row and file, one line each naming its CSV line; exits 1 if there is one. Writes nothing
    but the split cache."""
    from craft.data.prepare import check_data, job_cpus

    cfg = _load(config)
    names = [modality] if modality else list(cfg.modalities)
    if modality:
        cfg.modality(modality)  # an unknown name is one line
    found = 0
    for name in names:
        if cfg.modalities[name].source.kind != "manifest":
            print(f"{name}: phantom modality, nothing to check")
            continue
        n, problems = check_data(cfg, name, threads or job_cpus())
        for line in problems:
            print(f"craft: bad: {line}", file=sys.stderr)
        found += len(problems)
        print(f"{name}: {n} image(s) read" + (f", {len(problems)} problem(s)" if problems else ""))
    if found:
        raise typer.Exit(1)


@app.command()
def prepare(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    out: OutOpt = None,
    threads: DecodeThreadsOpt = None,
) -> None:
    """Read (or draw) a modality's images into results/data/{modality}.h5 with splits,
    decoding with --threads worker processes."""
    from craft.data.prepare import job_cpus
    from craft.data.prepare import prepare as run

    cfg = _load(config)
    out = out or _layout(cfg).data(modality)
    run(cfg, modality, out, threads or job_cpus())
    m = cfg.modality(modality)
    files = [m.source.manifest] if m.source.kind == "manifest" else []
    _record(out, cfg, "prepare", modality, inputs={"manifest": files})


@app.command()
def pretrain(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train the phantom foundation generator of a modality (phantom configs only)."""
    from craft.train.pretrain import pretrain as run

    cfg = _load(config)
    if cfg.models.generator != "pretrain":
        raise CraftError(
            f"models.generator is '{cfg.models.generator}', a pretrained model: nothing to pretrain"
        )
    out = out or _layout(cfg).foundation(modality)
    run(cfg, modality, out, threads)
    _record(out, cfg, "pretrain", modality)


@app.command()
def adapt(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    method: MethodOpt = ...,
    seed: SeedOpt = 0,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Adapt the foundation model with a diffusion-loss method; writes the run's model.json."""
    from craft.train.adapt import adapt as run

    cfg = _load(config)
    _seed_in_config(cfg, seed)
    if cfg.method(method).is_align:
        raise CraftError(
            f"method '{method}' is kind {cfg.method(method).kind}: run `craft align` for it"
        )
    lay = _layout(cfg)
    out = out or lay.card(modality, method, seed)
    run(cfg, modality, method, seed, out, threads)
    _record(out, cfg, "adapt", modality, method, seed, inputs=_run_inputs(cfg, lay, modality))


def _run_inputs(cfg, lay, modality: str, init_card: Path | None = None) -> dict:
    """The files a training job reads (those that exist are recorded with their digests)."""
    base = Path(cfg.models.generator_for(modality))
    inputs = {"data": lay.data(modality), "knowledge": lay.knowledge(modality)}
    if cfg.models.generator == "pretrain":
        inputs["foundation"] = lay.foundation(modality)
    elif base.is_dir():
        inputs["foundation"] = base / "model_index.json"
    if init_card is not None:
        inputs["init"] = init_card
    return inputs


@app.command()
def align(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    method: MethodOpt = ...,
    seed: SeedOpt = 0,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Reward-finetune the init method's result (kind craft or generic-reward); writes the
    run's model.json, its LoRA and curves.csv."""
    from craft.train.align import align as run

    cfg = _load(config)
    _seed_in_config(cfg, seed)
    lay = _layout(cfg)
    out = out or lay.card(modality, method, seed)
    run(cfg, modality, method, seed, out, threads)
    import os

    if os.environ.get("RANK", "0") != "0":
        return  # rank 0 writes the outputs
    init = lay.card(modality, cfg.method(method).init, seed)
    inputs = _run_inputs(cfg, lay, modality, init)
    inputs["references"] = [lay.reference(modality, ev) for ev in cfg.align_evaluators(method)]
    _record(out, cfg, "align", modality, method, seed, inputs=inputs)


@app.command()
def generate(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    method: MethodOpt = ...,
    seed: SeedOpt = 0,
    model: Annotated[
        Path | None, typer.Option(help="model.json of the run (default: layout).")
    ] = None,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Draw N images per label into samples.h5 (resumes after a kill)."""
    from craft.sample import generate as run

    cfg = _load(config)
    lay = _layout(cfg)
    card = model or lay.card(modality, method, seed)
    out = out or lay.samples(modality, method, seed)
    run(cfg, modality, method, seed, card, out, threads)
    inputs = {"card": card, "knowledge": lay.knowledge(modality)}
    _record(out, cfg, "generate", modality, method, seed, inputs=inputs)


@evaluate_app.command("oracle")
def evaluate_oracle(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    method: MethodOpt = ...,
    seed: SeedOpt = 0,
    samples: Annotated[Path | None, typer.Option(help="samples.h5 (default: layout).")] = None,
    data: DataOpt = None,
    out: OutOpt = None,
) -> None:
    """Measure generated phantoms with the oracle: label agreement, criterion pass rate, and
    the distribution shift of the right images from the real test split's."""
    from craft.evaluate.oracle import evaluate_oracle as run

    cfg = _load(config)
    lay = _layout(cfg)
    samples = samples or lay.samples(modality, method, seed)
    out = out or lay.metrics(modality, method, seed, "oracle")
    data = data or lay.data(modality)
    run(cfg, modality, method, seed, samples, out, data)
    inputs = {"samples": samples, "data": data}
    _record(out, cfg, "evaluate_oracle", modality, method, seed, inputs=inputs)


def _knowledge_in(cfg, modality: str, path: Path | None) -> Path:
    path = path or _layout(cfg).knowledge(modality)
    if not Path(path).is_file():
        from craft.knowledge.schema import missing_knowledge

        raise missing_knowledge(path, modality)
    return Path(path)


@knowledge_app.command("template")
def knowledge_template(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here (default: {modality}.yaml).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a curated knowledge file to fill in for a modality the shipped bases do not cover:
    its labels from the config, each field explained; knowledge build refuses it until every
    TODO is filled in."""
    from craft.knowledge.curated import template

    cfg = _load(config)
    m = cfg.modality(modality)
    out = Path(out or f"{modality}.yaml")
    if out.exists() and not force:
        raise CraftError(f"{out} exists; pass --force to overwrite it, or --out another path")
    out.write_text(template(modality, m.description, list(m.labels)))
    print(f"wrote {out}: fill in every TODO, then set knowledge.curated.{modality}: {out}")


@knowledge_app.command("schema")
def knowledge_schema() -> None:
    """The JSON schema of a curated knowledge file: every field, its type and description."""
    import json

    from craft.knowledge.curated import CuratedBase

    print(json.dumps(CuratedBase.model_json_schema(), indent=1))


@knowledge_app.command("build")
def knowledge_build(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    out: OutOpt = None,
) -> None:
    """Enriched prompts + checklist of a modality -> results/knowledge/{modality}.json (and a
    review YAML beside it that a clinician can edit and pin with knowledge.review)."""
    from craft.knowledge.build import build_from_config
    from craft.knowledge.curated import curated_path, resolve_base

    cfg = _load(config)
    out = out or _layout(cfg).knowledge(modality)
    build_from_config(cfg, modality, out)
    kn, m = cfg.knowledge, cfg.modality(modality)
    inputs = {}
    if modality in kn.review:
        inputs["review"] = kn.review[modality]
    elif kn.backend.kind == "curated":
        inputs["curated"] = curated_path(resolve_base(dict(kn.curated), modality, m.phantom))
    _record(out, cfg, "knowledge", modality, inputs=inputs)


@knowledge_app.command("show")
def knowledge_show(
    target: Annotated[
        str, typer.Argument(help="A modality of the config, or a knowledge JSON / review YAML.")
    ],
    config: ConfigOpt = Path("config.yaml"),
    prompts: Annotated[bool, typer.Option(help="Also list the prompts.")] = False,
) -> None:
    """Print a modality's clinical checklist (and prompts) as tables."""
    from craft.knowledge.show import print_knowledge, read_knowledge_file

    path = Path(target)
    if not path.is_file():
        cfg = _load(config)
        cfg.modality(target)  # a clear error when it is neither a file nor a modality
        path = _knowledge_in(cfg, target, None)
    print_knowledge(read_knowledge_file(path), prompts=prompts)


EvaluatorOpt = Annotated[
    str, typer.Option("--evaluator", "-e", help="Evaluator name (cas.evaluators).")
]


@evaluator_app.command("train")
def evaluator_train(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    evaluator: EvaluatorOpt = ...,
    knowledge: Annotated[
        Path | None, typer.Option(help="Knowledge JSON (default: layout).")
    ] = None,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train a tiny phantom evaluator (source 'train') on the modality's phantoms."""
    from craft.cas.stages import train_phantom_evaluator

    cfg = _load(config)
    lay = _layout(cfg)
    knowledge = _knowledge_in(cfg, modality, knowledge)
    out = out or lay.evaluator(modality, evaluator)
    train_phantom_evaluator(
        cfg.cas, evaluator, modality, cfg.modality(modality), knowledge, out, threads
    )
    inputs = {"knowledge": knowledge}
    _record(out, cfg, "train_evaluator", modality, evaluator=evaluator, inputs=inputs)


@app.command()
def reference(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    evaluator: EvaluatorOpt = ...,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """CAS of the real test images: calibration, the tail threshold, plausibility neighbours."""
    from craft.cas.stages import build_configured_reference

    cfg = _load(config)
    lay = _layout(cfg)
    knowledge = _knowledge_in(cfg, modality, None)
    out = out or lay.reference(modality, evaluator)
    build_configured_reference(
        cfg.cas,
        evaluator,
        modality,
        cfg.modality(modality),
        lay.data(modality),
        knowledge,
        lay,
        out,
        cfg.spec("reference", modality, evaluator=evaluator).digest,
        threads,
    )
    inputs = {"data": lay.data(modality), "knowledge": knowledge}
    if cfg.cas.evaluators[evaluator].source == "train":
        inputs["evaluator"] = lay.evaluator(modality, evaluator)
    _record(out, cfg, "reference", modality, evaluator=evaluator, inputs=inputs)


@app.command()
def score(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    method: MethodOpt = ...,
    seed: SeedOpt = 0,
    evaluator: EvaluatorOpt = ...,
    samples: Annotated[Path | None, typer.Option(help="samples.h5 (default: layout).")] = None,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """CAS of a run's samples with one evaluator -> cas-{evaluator}.h5 and its metrics file."""
    from craft.cas.stages import score_configured_samples

    cfg = _load(config)
    lay = _layout(cfg)
    _seed_in_config(cfg, seed)
    scores = out or lay.cas_scores(modality, method, seed, evaluator)
    samples = samples or lay.samples(modality, method, seed)
    knowledge = _knowledge_in(cfg, modality, None)
    score_configured_samples(
        cfg.cas,
        evaluator,
        modality,
        cfg.modality(modality),
        method,
        seed,
        samples,
        lay.reference(modality, evaluator),
        knowledge,
        lay,
        scores,
        scores.with_name(f"metrics-cas-{evaluator}.json"),
        cfg.spec("score", modality, evaluator=evaluator).digest,
        threads,
    )
    inputs = {"samples": samples, "reference": lay.reference(modality, evaluator)}
    inputs["knowledge"] = knowledge
    _record(scores, cfg, "score", modality, method, seed, evaluator, inputs)


@app.command()
def report(
    config: ConfigOpt = Path("config.yaml"),
    out: OutOpt = None,
    title: Annotated[str, typer.Option(help="Report title.")] = "craft report",
) -> None:
    """Gather every run's metrics and samples into results/report/ (summary.csv, index.html)."""
    from craft.report import report as run
    from craft.report.claim import PathClaim

    cfg = _load(config)
    lay = _layout(cfg)
    metric_files = _run_metric_files(cfg, lay)
    samples = {
        (m, k, s): lay.samples(m, k, s)
        for m in cfg.modalities
        for k in cfg.methods
        for s in cfg.seeds
    }
    missing = [str(p) for p in samples.values() if not p.is_file()]
    if missing:
        raise CraftError(
            f"{len(missing)} runs have no samples yet (first: {missing[0]}); run the workflow"
        )
    out_dir = out or lay.report()
    craft_method = cfg.craft_method
    index = run(
        metric_files,
        samples,
        out_dir,
        title,
        cfg.report.grid_per_label,
        modality_order=list(cfg.modalities),
        method_order=list(cfg.methods),
        # Tail reductions are measured against the strongest method that is not CRAFT.
        baselines=cfg.baseline_methods,
        # the page's claim: the first craft method, against its configured start for the costs
        claim_method=craft_method,
        claim_start=cfg.method(craft_method).init if craft_method else None,
        evaluators=list(cfg.cas.evaluators),
        claim_paths=PathClaim.of(cfg),
        **_report_figure_inputs(cfg, lay),
    )
    _record(out_dir, cfg, "report")
    print(f"report: {index}")


@app.command()
def claim(
    config: ConfigOpt = Path("config.yaml"),
    method: Annotated[
        str | None, typer.Option(help="The method to judge (default: the first of kind craft).")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            help="Metrics to judge against the best other method (repeatable; default: the "
            "whole claim, see docs/benchmark.md)."
        ),
    ] = None,
    out: OutOpt = None,
    check: Annotated[
        bool, typer.Option(help="Exit with status 1 unless every row passes.")
    ] = False,
    alpha: Annotated[
        float | None,
        typer.Option(
            help="A row that must be better passes only if its one-sided paired t-test over "
            "seeds also gives p < ALPHA (e.g. 0.05)."
        ),
    ] = None,
) -> None:
    """Does a method make the paper's whole claim? Per modality and metric: mean ± sd over the
    configured seeds against the best other method (methods of kind craft are not counted as
    others) or, for what a reward could cost (memorization, distribution shift), against the
    method's own start; on how many seeds, and the paired margin with its p-value. Reads the
    runs' metric files; writes claim.csv (the report's, the same table), or with --method,
    --metric or --alpha a file named after them beside it, so that the report's is kept."""
    from rich.console import Console
    from rich.table import Table

    from craft.report.claim import PathClaim, full_claim, realism_agreement
    from craft.report.frontier import MATCHED
    from craft.report.html import format_cell
    from craft.report.summary import ZERO, ClaimRow, per_seed_table, whole_claim, write_claim

    if alpha is not None and not 0.0 < alpha < 1.0:
        raise CraftError(f"--alpha must lie between 0 and 1 (e.g. 0.05), got {alpha}")
    cfg = _load(config)
    lay = _layout(cfg)
    if method is None:
        method = cfg.craft_method
        if method is None:
            raise CraftError("no method of kind craft in the config: name one with --method")
    start = cfg.method(method).init  # CraftError naming the configured ones if unknown
    rows = [ClaimRow(m) for m in metric] if metric else whole_claim(list(cfg.cas.evaluators))
    files = _run_metric_files(cfg, lay)
    if not files:
        raise CraftError(f"no metric files under {lay.root / 'runs'}: run the workflow first")
    per_seed = per_seed_table(files)
    table = full_claim(
        per_seed,
        method,
        cfg.baseline_methods,
        start,
        list(cfg.cas.evaluators),
        PathClaim.of(cfg),
        alpha,
        rows,
    )
    if table.empty:
        names = ", ".join(r.metric for r in rows)
        raise CraftError(f"no metric of {names} has values for '{method}' and another method")
    path = write_claim(table, out or lay.report() / _claim_name(method, cfg, metric, alpha))
    view = Table(title=f"{method}: the claim, row by row (mean ± sd over seeds)")
    cols = ("judged", "modality", "metric", method, "against", "test", "seeds", "margin (p)")
    for col in (*cols, "passes"):
        view.add_column(col)
    for r in table.itertuples(index=False):
        against = (
            "0"
            if r.against == ZERO
            else f"{r.best_other} {format_cell(r.other_mean, r.other_sd, r.n_seeds)}"
        )
        view.add_row(
            _judged(r),
            r.modality,
            r.metric,
            format_cell(r.mean, r.sd, r.n_seeds),
            against,
            r.test,
            f"{r.seeds_won}/{r.n_seeds}",
            _format_margin(r.margin, r.margin_se, r.p_paired),
            "yes" if r.passes else "[bold red]no[/]",
        )
    Console(width=max(Console().width, 160)).print(view)
    matched = table[table["judged"] == MATCHED]
    if len(matched):
        print(
            f"at matched realism (budget {cfg.claim.realism_budget:g}): "
            f"{int(matched['passes'].sum())} of {len(matched)} rows pass"
        )
    else:
        print("at matched realism: no rows (no reward method's path to compare with)")
    for modality, measures in realism_agreement(per_seed).items():
        shown = ", ".join(f"{k} {rho:+.2f} over {n} points" for k, (rho, n) in measures.items())
        print(f"{modality}: oracle-free realism against the oracle's shift (Spearman): {shown}")
    print(f"claim table: {path} ({int(table['passes'].sum())} of {len(table)} rows pass)")
    trained = table[table["judged"] != MATCHED]
    judged = set(zip(trained["modality"], trained["metric"], strict=True))
    unjudged = [
        f"{m}: {name}"
        for m in cfg.modalities
        for name in (r.metric for r in rows)
        if (m, name) not in judged
    ]
    if unjudged:
        print(
            f"not judged (no values for {method} and what it is compared with): "
            + "; ".join(unjudged)
        )
    machines = _training_machines(cfg, lay, table)
    if len(machines) > 1:
        print(
            f"note: these runs were trained on {len(machines)} kinds of machine "
            f"({'; '.join(sorted(machines))}): reward finetuning amplifies their rounding "
            "differences, so part of the spread between runs is the machine's"
        )
    if check and not table["passes"].all():
        raise typer.Exit(1)


def _judged(r) -> str:
    """How a claim row was judged, for the terminal: where the paths stopped, or the end
    points with what they cost."""
    from craft.report.frontier import MATCHED

    if r.judged == MATCHED:
        end = (
            f", {r.seeds_at_end}+{r.other_seeds_at_end} at end"
            if r.seeds_at_end + r.other_seeds_at_end
            else ""
        )
        return f"matched: scale {r.stop_scale:.2f} vs {r.other_stop_scale:.2f}{end}"
    if math.isnan(r.realism_cost):
        return "as trained"
    other = "" if math.isnan(r.other_realism_cost) else f" vs {r.other_realism_cost:+.3f}"
    return f"as trained (realism cost {r.realism_cost:+.3f}{other})"


def _training_machines(cfg, lay, table) -> set[str]:
    """The distinct ``machine`` of the model cards behind a claim table's runs (cards written
    before craft recorded it, and runs without training, count as none)."""
    from craft.models.card import ModelCard

    rows = table.itertuples(index=False)
    runs = {(r.modality, k) for r in rows for k in (r.method, r.best_other) if k}
    cards = [lay.card(m, k, s) for m, k in runs for s in cfg.seeds]
    return {c.machine for c in map(ModelCard.read, filter(Path.is_file, cards)) if c.machine}


def _claim_name(method: str, cfg, metric: list[str] | None, alpha: float | None) -> str:
    """claim.csv for the default claim (the same table the report writes); another claim
    a name of its own: claim-lora-alpha0.05.csv, claim-metrics.csv."""
    parts = [] if method == cfg.craft_method else [method]
    if metric:
        parts.append("metrics")
    if alpha is not None:
        parts.append(f"alpha{alpha:g}")
    return "-".join(["claim", *parts]) + ".csv"


def _format_margin(margin: float, se: float, p: float) -> str:
    """'+0.012 ± 0.020 (p 0.31)': the report's margin cell and its p-value in one."""
    from craft.report.html import format_margin, format_p

    text = format_margin(margin, se)
    return text if math.isnan(p) else f"{text} (p {format_p(p)})"


def _run_metric_files(cfg, lay) -> list[Path]:
    """Every configured run's metrics-*.json that exists, in config order."""
    return [
        f
        for m in cfg.modalities
        for k in cfg.methods
        for s in cfg.seeds
        for f in sorted(lay.run(m, k, s).glob("metrics-*.json"))
    ]


def _report_figure_inputs(cfg, lay) -> dict:
    """Where the report's per-run figures come from (build_report leaves out missing files)."""
    runs = [(m, k, s) for m in cfg.modalities for k in cfg.methods for s in cfg.seeds]
    evs = list(cfg.cas.evaluators)
    return {
        "cas_scores": {(*r, ev): lay.cas_scores(*r, ev) for r in runs for ev in evs},
        "references": {(m, ev): lay.reference(m, ev) for m in cfg.modalities for ev in evs},
        "run_figures": {
            r: [lay.run(*r) / n for n in ("audit.png", "memorization-pairs.png")] for r in runs
        },
        "curves": {r: lay.run(*r) / "curves.csv" for r in runs},
    }


# ----------------------------------------------------------------------------- evaluation stages

SamplesOpt = Annotated[Path | None, typer.Option(help="samples.h5 (default: layout).")]


def _evaluation_paths(cfg, modality, method, seed, stage, samples, data, out):
    """(samples, data, metrics out) with the layout's defaults; the run must be configured."""
    cfg.modality(modality)  # CraftError naming the configured ones if unknown
    cfg.method(method)
    _seed_in_config(cfg, seed)
    lay = _layout(cfg)
    return (
        samples or lay.samples(modality, method, seed),
        data or lay.data(modality),
        out or lay.metrics(modality, method, seed, stage),
    )


def _evaluation_stage(stage, config, modality, method, seed, samples, data, out, threads, **extra):
    """Run one of the data-based evaluation stages (downstream, memorization, fidelity)."""
    from importlib import import_module

    from craft.train.common import setup_torch

    cfg = _load(config)
    samples, data, out = _evaluation_paths(cfg, modality, method, seed, stage, samples, data, out)
    settings = getattr(cfg.evaluation, stage)
    # Downstream classifiers differ per run seed; the feature extractors are fixed per config.
    setup_torch(settings.seed + (seed if stage == "downstream" else 0), threads)
    run = getattr(import_module(f"craft.evaluate.{stage}"), stage)
    digest = cfg.spec(stage, modality, method).digest
    run(settings, data, samples, out, modality, method, seed, digest, **extra)
    _record(out, cfg, stage, modality, method, seed, inputs={"samples": samples, "data": data})


@app.command("downstream")
def downstream_cmd(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    method: MethodOpt = ...,
    seed: SeedOpt = 0,
    samples: SamplesOpt = None,
    data: DataOpt = None,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
    real: Annotated[
        Path | None,
        typer.Option(
            help="real-phases.json of `craft downstream-real` for this modality and seed: its "
            "real-only classifiers are taken from there, not trained again."
        ),
    ] = None,
) -> None:
    """Classifiers on synthetic, real+synthetic and real images, tested on REAL images.

    Writes metrics-downstream.json; resumable (per-phase state in downstream/ beside it).
    """
    if real is not None and not real.is_file():
        raise CraftError(f"--real {real} does not exist: run `craft downstream-real` first")
    real_dir = real.parent if real is not None else None
    _evaluation_stage(
        "downstream",
        config,
        modality,
        method,
        seed,
        samples,
        data,
        out,
        threads,
        real_dir=real_dir,
    )


@app.command("downstream-real")
def downstream_real_cmd(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    seed: SeedOpt = 0,
    data: DataOpt = None,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """The real-only downstream classifiers of a modality and run seed, trained once for every
    method (`craft downstream --real`). Writes real-phases.json; resumable."""
    from craft.evaluate.downstream import real_phases
    from craft.train.common import setup_torch

    cfg = _load(config)
    cfg.modality(modality)
    _seed_in_config(cfg, seed)
    lay = _layout(cfg)
    settings = cfg.evaluation.downstream
    setup_torch(settings.seed + seed, threads)
    out = out or lay.downstream_real(modality, seed)
    data = data or lay.data(modality)
    real_phases(settings, data, out, seed, cfg.spec("downstream", modality).digest)


@app.command("memorization")
def memorization_cmd(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    method: MethodOpt = ...,
    seed: SeedOpt = 0,
    samples: SamplesOpt = None,
    data: DataOpt = None,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Nearest training image of every generated (and real test) image.

    Writes metrics-memorization.json, memorization.h5 and memorization-pairs.png beside it.
    """
    _evaluation_stage("memorization", config, modality, method, seed, samples, data, out, threads)


@app.command("audit")
def audit_cmd(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    method: MethodOpt = ...,
    seed: SeedOpt = 0,
    samples: SamplesOpt = None,
    knowledge: Annotated[
        Path | None, typer.Option(help="Knowledge JSON (default: layout).")
    ] = None,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Checklist pass rates judged by the oracle or out-of-family evaluators, never the reward.

    Writes metrics-audit.json, audit.csv and audit.png beside it.
    """
    from craft.cas.stages import load_configured_evaluator, load_configured_judge
    from craft.evaluate.audit import audit
    from craft.knowledge.schema import load_knowledge
    from craft.train.common import setup_torch

    cfg = _load(config)
    samples, _, out = _evaluation_paths(cfg, modality, method, seed, "audit", samples, None, out)
    m = cfg.modality(modality)
    lay = _layout(cfg)
    setup_torch(0, threads)

    def load_auditor(name):
        return (
            load_configured_evaluator(cfg.cas, name, lay, modality),
            load_configured_judge(cfg.cas, name),
        )

    audit(
        cfg.evaluation.audit,
        cfg.cas,
        samples,
        load_knowledge(_knowledge_in(cfg, modality, knowledge)),
        out,
        modality,
        method,
        seed,
        cfg.spec("audit", modality, method).digest,
        phantom=m.phantom,
        load_auditor=load_auditor,
    )
    knowledge = _knowledge_in(cfg, modality, knowledge)
    inputs = {"samples": samples, "knowledge": knowledge}
    _record(out, cfg, "audit", modality, method, seed, inputs=inputs)


@app.command("fidelity")
def fidelity_cmd(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    method: MethodOpt = ...,
    seed: SeedOpt = 0,
    samples: SamplesOpt = None,
    data: DataOpt = None,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Frechet distance and KID against the REAL test split, overall and per label.

    Writes metrics-fidelity.json.
    """
    _evaluation_stage("fidelity", config, modality, method, seed, samples, data, out, threads)


@app.command("path")
def path_cmd(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    method: MethodOpt = ...,
    seed: SeedOpt = 0,
    out: OutOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """A reward method's path from its start: its reward LoRA at each of
    evaluation.paths.scales, each scale measured as a run is (oracle, out-of-family CAS,
    fidelity). Scale 0 and 1 are the start's and the run's own metrics.

    Writes metrics-path.json; resumable (finished points in path/points.jsonl beside it).
    """
    from craft.evaluate.paths import reward_path

    cfg = _load(config)
    cfg.modality(modality)  # CraftError naming the configured ones if unknown
    _seed_in_config(cfg, seed)
    lay = _layout(cfg)
    out = out or lay.metrics(modality, method, seed, "path")
    digest = cfg.spec("path", modality, method).digest
    reward_path(cfg, lay, modality, method, seed, out, digest, threads)
    start = cfg.method(method).init
    inputs = {"card": lay.card(modality, method, seed), "start": lay.card(modality, start, seed)}
    _record(out, cfg, "path", modality, method, seed, inputs=inputs)


@app.command("export-summary")
def export_summary_cmd(
    config: ConfigOpt = Path("config.yaml"),
    site: Annotated[
        str, typer.Option("--site", help="This site's name (lowercase, '-', '_').")
    ] = ...,
    out: OutOpt = None,
) -> None:
    """Pack this site's scores and summaries (no images, no data) for `craft aggregate`.

    Writes results/export/{site}.tar.gz: every metrics-*.json under results/runs/,
    report/summary.csv if present, and site.json (config digests, seeds, sha256s).
    """
    from craft.report.aggregate import export_summary

    cfg = _load(config)
    lay = _layout(cfg)
    tarball = export_summary(lay.root, cfg, out or lay.root / "export" / f"{site}.tar.gz", site)
    print(f"export-summary: {tarball}")


@app.command("aggregate")
def aggregate_cmd(
    sites: Annotated[
        list[Path], typer.Argument(help="Site exports (.tar.gz or extracted folders).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = ...,
    allow_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-mismatch",
            help="Pool even when method or evaluator config digests differ (recorded).",
        ),
    ] = False,
    title: Annotated[str, typer.Option(help="Report title.")] = "craft: pooled over sites",
) -> None:
    """Pool several sites' exports: summary.csv with a site column, pooled rows, index.html."""
    from craft.report.aggregate import aggregate

    index = aggregate(sites, out, allow_mismatch=allow_mismatch, title=title)
    print(f"aggregate: {index}")


@study_app.command("export")
def study_export(
    config: ConfigOpt = Path("config.yaml"),
    modality: ModalityOpt = ...,
    method_a: Annotated[
        str | None, typer.Option("--method-a", help="Method A (default: study.method_a).")
    ] = None,
    method_b: Annotated[
        str | None, typer.Option("--method-b", help="Method B (default: study.method_b).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", "-s", help="Run seed.")] = None,
    samples_a: Annotated[Path | None, typer.Option(help="samples.h5 of method A.")] = None,
    samples_b: Annotated[Path | None, typer.Option(help="samples.h5 of method B.")] = None,
    pairs_per_label: Annotated[int | None, typer.Option(help="Image pairs per label.")] = None,
    study_seed: Annotated[int | None, typer.Option(help="Seed of pairs, order, sides.")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for study.html + key.json (default: layout)."),
    ] = None,
) -> None:
    """Write a blinded, offline study page (study.html) and its unblinding key (key.json)."""
    from craft.study import export_study

    cfg = _load(config)
    m = cfg.modality(modality)
    st = cfg.spec("study", modality).plain() if cfg.study is not None else {}
    method_a = method_a or st.get("method_a")
    method_b = method_b or st.get("method_b")
    if not method_a or not method_b:
        raise CraftError("name --method-a and --method-b, or add a study section to the config")
    cfg.method(method_a), cfg.method(method_b)  # clear errors for unknown names
    seed = seed if seed is not None else st.get("seed", cfg.seeds[0])
    _seed_in_config(cfg, seed)
    lay = _layout(cfg)
    page = export_study(
        modality,
        m.description,
        list(m.labels),
        samples_a or lay.samples(modality, method_a, seed),
        samples_b or lay.samples(modality, method_b, seed),
        method_a,
        method_b,
        out or lay.study(modality),
        pairs_per_label if pairs_per_label is not None else st.get("pairs_per_label", 8),
        study_seed if study_seed is not None else st.get("study_seed", 0),
    )
    print(f"study page: {page}; key: {page.parent / 'key.json'} (keep the key from the raters)")


@study_app.command("analyze")
def study_analyze(
    answers: Annotated[
        list[Path], typer.Argument(help="Answer files (JSON or CSV) the raters exported.")
    ],
    key: Annotated[Path, typer.Option(help="key.json written by `craft study export`.")] = ...,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for study_summary.csv/.json (default: the key's folder)."
        ),
    ] = None,
) -> None:
    """Unblind raters' answers: win rates, binomial tests, Wilson intervals, kappa."""
    from craft.study import analyze_study

    summary = analyze_study(answers, key, out or key.parent)
    for q, res in summary["questions"].items():
        o = res["overall"]
        rate = (
            "n/a"
            if o["win_rate"] is None
            else (
                f"{o['win_rate']:.2f} [{o['ci_low']:.2f}, {o['ci_high']:.2f}], p={o['p_value']:.3g}"
            )
        )
        kappa = res["agreement"]["value"]
        print(
            f"{q}: {summary['method_a']} preferred over {summary['method_b']} {rate} "
            f"({o['wins_a']}:{o['wins_b']}, {o['neither']} neither); "
            f"kappa {'n/a' if kappa is None else f'{kappa:.2f}'}"
        )
    for note in summary["notes"][1:]:
        print(f"note: {note}", file=sys.stderr)


@profile_app.command("install")
def profile_install(
    name: Annotated[str, typer.Argument(help="Profile to install: slurm.")] = "slurm",
    account: Annotated[str, typer.Option(help="SLURM account (sbatch -A).")] = ...,
    partition: Annotated[str, typer.Option(help="Partition of the CPU stages.")] = ...,
    gpu_partition: Annotated[
        str | None, typer.Option(help="Partition of the GPU stages (default: --partition).")
    ] = None,
    dest: Annotated[
        Path | None,
        typer.Option(
            help="Folder to install into (default: ~/.config/snakemake, $XDG_CONFIG_HOME)."
        ),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option(help="Folder of profile templates (default: the repo's profiles/)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing, different profile.")] = False,
) -> None:
    """Write the site's profile where `snakemake --profile NAME` finds it."""
    from craft.profile import install_profile

    path = install_profile(name, account, partition, gpu_partition, dest, force, source)
    print(f"installed {path}; run: snakemake --profile {name}")


#: Exit status of a job stopped by SIGTERM after saving its checkpoint (128 + 15, the shell's
#: convention for a process ended by SIGTERM): not 0, so Snakemake and SLURM see it unfinished.
EXIT_INTERRUPTED = 143


def main() -> None:
    """Console entry point: user errors print one line and exit 2, with no traceback; a
    training job stopped by SIGTERM (preemption) prints one line and exits 143."""
    try:
        app()
    except CraftError as err:
        print(f"craft: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as err:
        print(f"craft: {err}; rerun the same command to resume", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":  # torchrun -m craft.cli align ... (DeepSpeed, several processes)
    main()
