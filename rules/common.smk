# Config validation, the results layout, and the named input/params functions of every rule.
# Imports no torch: this runs at parse time on the login node.
import os
import re
import sys
from pathlib import Path

from craft.checks import check_files
from craft.config import dump_config, read_config_file, validate_config
from craft.controller import clear_stale_lock
from craft.controller import record as record_controller
from craft.errors import CraftError
from craft.launch import (
    EVALUATION_GROUP,
    EVALUATION_SLOT,
    align_launcher,
    append_to_path,
    grouped_resources,
    rule_resources,
)
from craft.models.hub import check_offline, hub_offline
from craft.paths import Layout
from snakemake.utils import update_config

try:
    # The config: the --configfile(s) given, else the embedded default config.yaml, with
    # --config values on top. A given file replaces config.yaml whole. (With a `configfile:`
    # directive Snakemake merges the two key by key, and the jobs it spawns on a cluster do so
    # even under --replace-workflow-config, which it does not pass on to them: a config of
    # one's own then validated with the phantom default's modalities and evaluators mixed in.)
    # Snakemake reads the given files taking a key written twice silently (the last wins):
    # read them again to refuse that, naming the file and both lines.
    for _file in workflow.overwrite_configfiles:
        read_config_file(_file)
    if not workflow.overwrite_configfiles:
        _default = read_config_file(
            "config.yaml", "run from the craft folder, or pass --configfile FILE"
        )
        update_config(_default, config)  # --config values on top
        config.clear()
        config.update(_default)
    CFG = validate_config(config)
except CraftError as err:
    sys.exit(f"craft: error: {err}")
# Every file and folder the config names (manifests, image folders, knowledge files, local
# model folders) is there, before anything is submitted: one line each. Each manifest is read
# row by row (labels, splits, every image file there), in the main process only: the jobs a
# cluster runs parse this file again and need not stat every image each time.
_problems = check_files(CFG, manifests=workflow.is_main_process)
if _problems:
    sys.exit("\n".join(f"craft: error: {line}" for line in _problems))

# A controller killed hard (kill -9, a dropped login session, the OOM killer) leaves
# Snakemake's lock behind. The onstart hook records who holds it (host, pid); the next run
# of the same command removes it when that controller is known dead, and otherwise says
# whose it is and what to run (craft.controller).
if workflow.is_main_process:
    _lock = clear_stale_lock(".snakemake")
    if _lock:
        print(_lock, file=sys.stderr)


onstart:
    record_controller(".snakemake")


# With the hub switched off (HF_HUB_OFFLINE=1, as on compute nodes without internet), every
# pretrained model the config names must load from a local folder or the Hugging Face cache:
# say which do not before anything is submitted, one line each (craft models check).
if hub_offline():
    _given = list(workflow.overwrite_configfiles or []) or ["config.yaml"]
    _missing = check_offline(CFG, str(_given[-1]))
    if _missing:
        sys.exit(
            "\n".join(
                f"craft: error: not available offline: {line}" for line in _missing
            )
        )

LAYOUT = Layout(CFG.results)
# Snakemake's working directory (--directory, else where it was started): relative paths of
# inputs and outputs start here, in the jobs too.
WORKDIR = os.getcwd()
RESULTS = str(CFG.results)
# Logs live under the results folder, so that two configs with two results folders keep their
# own. Each attempt of a job writes its own file, {log}.attempts/<UTC time>-<pid>.log, so that a
# retried or rerun job keeps what a failed or preempted attempt said; {log} is a hard link to
# the newest attempt's file (Snakemake removes {log} before each attempt, not the attempts).
LOGS = f"{RESULTS}/logs"
# Snakemake writes each job's wall time, CPU time and peak memory here (bench/profile_workflow.py).
BENCHMARKS = f"{RESULTS}/benchmarks"
# Every rule's software under `--sdm conda` (relative to rules/, where the rules are): the
# dependencies, written by scripts/envs.py from the venv's pins. The craft package itself is the
# checkout's: bin/craft, last on PATH, runs it where the environment has no `craft` of its own
# (the venv's comes first where it is on PATH).
CONDA_ENV = "../envs/craft.yaml"
# ... and under `--sdm apptainer`, the image config.resources.container names (None: none).
CONTAINER = CFG.resources.container
append_to_path(Path(workflow.basedir) / "bin")
ATTEMPT_LOG = (
    'attempt="{log}.attempts/$(date -u +%Y%m%dT%H%M%SZ)-$$.log"; mkdir -p "{log}.attempts"; '
    ': > "$attempt"; ln -f "$attempt" "{log}"; exec >> "$attempt" 2>&1; '
)
MODALITIES = list(CFG.modalities)
METHODS = list(CFG.methods)
SEEDS = [str(s) for s in CFG.seeds]
PHANTOM_MODALITIES = [
    m for m, c in CFG.modalities.items() if c.source.kind == "phantom"
]
PRETRAIN = CFG.models.generator == "pretrain"
ALIGN_METHODS = [k for k, m in CFG.methods.items() if m.is_align]
ADAPT_METHODS = [k for k in METHODS if k not in ALIGN_METHODS]


def write_resolved_config():
    """The validated config (with --config overrides) that every job reads.

    Written only when its content changes; reruns are decided by each rule's params (the
    config slice the job depends on), not by this file.
    """
    path = Path(RESULTS) / "config.resolved.yaml"
    text = dump_config(CFG)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)
    return str(path)


CONFIG_FILE = write_resolved_config()


wildcard_constraints:
    modality="[a-z0-9][a-z0-9_-]*",
    method="[a-z0-9][a-z0-9_-]*",
    seed="[0-9]+",
    evaluator="[a-z0-9][a-z0-9_-]*",


def get_spec(stage):
    """Params function: the digest of the job's spec (craft.specs), its rerun key. The spec
    holds what the job reads of the config; what it reads from other jobs are its inputs.
    """

    def spec(wildcards):
        key = (
            stage,
            wildcards.get("modality"),
            wildcards.get("method"),
            wildcards.get("evaluator"),
        )
        if key not in _SPEC_DIGESTS:  # Snakemake asks for a job's params several times
            _SPEC_DIGESTS[key] = CFG.spec(*key).digest
        return _SPEC_DIGESTS[key]

    return spec


#: get_spec's digests by (stage, modality, method, evaluator): a spec holds no seed.
_SPEC_DIGESTS = {}


def workdir_name(path):
    """The name of a file that a job reads, relative to the working directory where an
    absolute path lies inside it (the files shipped in the checkout, such as the curated
    knowledge bases, when Snakemake runs from the checkout), else as given. Snakemake reruns a job
    whose recorded input names changed: an absolute name inside the folder would rerun every
    job that reads the file once the folder is moved, copied or cloned anew. Jobs run in the
    same working directory (on a cluster node too), so a relative name finds the file there.
    """
    path = str(path)
    if not os.path.isabs(path):
        return path
    # the path as given, else with its links resolved (the working directory has them
    # resolved: a checkout reached through a link)
    for candidate in (os.path.abspath(path), os.path.realpath(path)):
        name = os.path.relpath(candidate, WORKDIR)
        if name != os.pardir and not name.startswith(os.pardir + os.sep):
            return name
    return path


def get_knowledge_review(wildcards):
    """A clinician-edited review file pinned in knowledge.review (an input: edits rerun)."""
    pinned = CFG.knowledge.review.get(wildcards.modality)
    return [str(pinned)] if pinned else []


def get_manifest(wildcards):
    """A hospital data set's manifest CSV (an input: editing it, say adding a patient column,
    reruns prepare and what reads its data)."""
    source = CFG.modality(wildcards.modality).source
    return [str(source.manifest)] if source.kind == "manifest" else []


def get_curated_knowledge(wildcards):
    """The curated knowledge YAML a modality's knowledge is built from (shipped or the
    user's own, knowledge.curated): an input, so that editing it reruns what reads it. A
    shipped base is named relative to the working directory (workdir_name).
    """
    from craft.knowledge.curated import curated_path, resolve_base

    kn = CFG.knowledge
    if wildcards.modality in kn.review or kn.backend.kind != "curated":
        return []
    m = CFG.modality(wildcards.modality)
    try:
        return [
            workdir_name(
                curated_path(
                    resolve_base(dict(kn.curated), wildcards.modality, m.phantom)
                )
            )
        ]
    except CraftError as err:
        sys.exit(f"craft: error: knowledge.curated.{wildcards.modality}: {err}")


def get_method_knowledge(wildcards):
    """Methods with enriched prompts (adapt trains on them, generate samples with them) read
    the knowledge JSON."""
    if CFG.method(wildcards.method).prompts == "enriched":
        return [str(LAYOUT.knowledge(wildcards.modality))]
    return []


def one_of(names):
    """A wildcard constraint that matches exactly these names (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def get_align_launcher(wildcards):
    """How the align job starts its processes (craft.launch): ``craft`` for one GPU; torchrun
    with one process per GPU the job was granted; with several nodes, one torchrun per node
    under srun, joined by a c10d rendezvous on the first node."""
    r = CFG.resources.align
    return align_launcher(r.gpu, r.nodes)


def get_init_card(wildcards):
    """The model card of the method an align method starts from (same modality and seed)."""
    init = CFG.method(wildcards.method).init
    return str(LAYOUT.card(wildcards.modality, init, wildcards.seed))


def get_align_references(wildcards):
    """References of the evaluators an align method uses (reward, and out-of-family for its
    held-out evaluations)."""
    evaluators = CFG.align_evaluators(wildcards.method)
    return [str(LAYOUT.reference(wildcards.modality, ev)) for ev in evaluators]


def get_align_evaluators(wildcards):
    """Trained dirs of those evaluators, when the workflow trains them (source 'train')."""
    return [
        str(LAYOUT.evaluator(wildcards.modality, ev))
        for ev in CFG.align_evaluators(wildcards.method)
        if CFG.cas.evaluators[ev].source == "train"
    ]


def get_trained_evaluator(wildcards):
    """The trained evaluator's dir when the workflow trains it (source 'train')."""
    if CFG.cas.evaluators[wildcards.evaluator].source == "train":
        return [str(LAYOUT.evaluator(wildcards.modality, wildcards.evaluator))]
    return []


def get_auditor_evaluators(wildcards):
    """Trained dirs of the audit's evaluators, when the workflow trains them (source 'train')."""
    m = CFG.modality(wildcards.modality)
    return [
        str(LAYOUT.evaluator(wildcards.modality, ev))
        for ev in CFG.evaluation.audit.auditor_names(CFG.cas, m.phantom)
        if ev != "oracle" and CFG.cas.evaluators[ev].source == "train"
    ]


#: Model folders shipped in the checkout (the phantom foundations): versioned with the code.
SHIPPED_ASSETS = os.path.realpath(os.path.join(workflow.basedir, "assets"))


def get_foundation(wildcards):
    """The foundation dir when the workflow trains it or it is a local dir (not a hub id),
    such as the shipped phantom foundations (named as workdir_name does).

    A shipped folder is marked ancient: a fresh clone of the same commit gives its files new
    times, and Snakemake, which cannot checksum a folder, would rerun every adapt job. Its
    content changes only with a new folder name (assets/README.md), which reruns them.
    """
    if PRETRAIN:
        return [str(LAYOUT.foundation(wildcards.modality))]
    local = Path(CFG.models.generator_for(wildcards.modality))
    if not local.is_dir():
        return []
    name = workdir_name(local)
    shipped = os.path.realpath(local).startswith(SHIPPED_ASSETS + os.sep)
    return [ancient(name) if shipped else name]


def get_metric_files(modality, method, seed):
    """Every metrics file a finished run has (the oracle only for phantom modalities)."""
    files = []
    if modality in PHANTOM_MODALITIES:
        files.append(str(LAYOUT.metrics(modality, method, seed, "oracle")))
    for ev in CFG.cas.evaluators:
        files.append(str(LAYOUT.metrics(modality, method, seed, f"cas-{ev}")))
    for stage in ("downstream", "memorization", "audit", "fidelity"):
        files.append(str(LAYOUT.metrics(modality, method, seed, stage)))
    return files


def get_report_inputs(wildcards=None):
    samples, metrics = [], []
    for m in MODALITIES:
        for k in METHODS:
            for s in SEEDS:
                samples.append(str(LAYOUT.samples(m, k, s)))
                metrics += get_metric_files(m, k, s)
                if k in ALIGN_METHODS:
                    metrics.append(str(LAYOUT.metrics(m, k, s, "path")))
    return {"samples": samples, "metrics": metrics}


def get_path_inputs(wildcards):
    """What a reward method's path reads: its card (and the reward LoRA beside it), the
    metric files of its start (scale 0) and of the run (scale 1) that a path point takes,
    and what measuring a scale needs (data, knowledge, the out-of-family evaluators)."""
    m, k, s = wildcards.modality, wildcards.method, wildcards.seed
    start = CFG.method(k).init
    points = []
    for run in (start, k):
        if m in PHANTOM_MODALITIES:
            points.append(str(LAYOUT.metrics(m, run, s, "oracle")))
        for ev in CFG.out_of_family_evaluators:
            points.append(str(LAYOUT.metrics(m, run, s, f"cas-{ev}")))
        points.append(str(LAYOUT.metrics(m, run, s, "fidelity")))
    oof = CFG.out_of_family_evaluators
    return {
        "card": str(LAYOUT.card(m, k, s)),
        "start": str(LAYOUT.card(m, start, s)),
        "points": points,
        "data": str(LAYOUT.data(m)),
        "knowledge": str(LAYOUT.knowledge(m)),
        "references": [str(LAYOUT.reference(m, ev)) for ev in oof],
        "evaluators": [
            str(LAYOUT.evaluator(m, ev))
            for ev in oof
            if CFG.cas.evaluators[ev].source == "train"
        ],
    }


def get_report_dir(wildcards, output):
    """The report folder, derived from the rule's output (no hard-coded prefix)."""
    return str(Path(output.html).parent)


def get_study_samples(wildcards):
    """The two samples.h5 the study pairs images from (named a and b)."""
    st = CFG.spec("study", wildcards.modality)
    return {
        side: str(
            LAYOUT.samples(wildcards.modality, getattr(st, f"method_{side}"), st.seed)
        )
        for side in ("a", "b")
    }


def get_study_settings(wildcards):
    """The study's settings as plain data (the export command's arguments)."""
    return CFG.spec("study", wildcards.modality).plain()


def get_study_dir(wildcards, output):
    """The study folder, derived from the rule's output."""
    return str(Path(output.html).parent)


def get_final_output():
    out = LAYOUT.report()
    # claim.csv and figures/ too: a results folder from before they were outputs of the report
    # rule gets them (and `snakemake --report` finds them) from a plain `snakemake`
    files = [
        str(out / f) for f in ("summary.csv", "claim.csv", "index.html", "figures")
    ]
    if CFG.study is not None:
        files += [str(LAYOUT.study(m) / "study.html") for m in MODALITIES]
    return files


def res(stage, key):
    """One resource of a rule from config.resources.<stage>."""
    return getattr(getattr(CFG.resources, stage), key)


def get_modules(stage):
    """The environment modules a rule's job loads under `--sdm env-modules`
    (config.resources.<stage>.modules; none by default)."""
    return list(getattr(CFG.resources, stage).modules)


def get_resources(stage):
    """A rule's resources, all from config.resources.<stage> (craft.launch): memory, time,
    CPUs, and for a GPU job its GPUs (the profile's partition file sends a job that asks for
    GPUs to a GPU partition, every other job to a CPU one)."""
    return rule_resources(getattr(CFG.resources, stage))


# ----------------------------------------------------------------------------- evaluation groups
# With config.resources.group_evaluations, the evaluation jobs of one run (score per evaluator,
# evaluate_oracle, audit, downstream, fidelity, memorization) are one Snakemake group,
# craft.launch.EVALUATION_GROUP; the SLURM profile's group-components merges each run's jobs
# into one group job, one sbatch. Local runs ignore groups, and a plan for them has none.


def evaluations_grouped():
    """Whether this process plans a run's evaluations as one group: grouping is on and the
    jobs go to a cluster (--jobs, which a cluster profile sets), or this process runs a
    cluster job. A local run's plan, `snakemake -n` included, has no groups: Snakemake would
    run them one by one anyway, and a dry run that builds them is slower (a 4,458-job config:
    12.5 s without, 17.9 s with; docs/benchmark.md)."""
    if not CFG.resources.group_evaluations:
        return False
    return workflow.resource_settings.nodes is not None or not workflow.is_main_process


def get_evaluation_group():
    """The `group:` of a run's evaluation jobs, or None where they are not grouped."""
    return EVALUATION_GROUP if evaluations_grouped() else None


def get_evaluation_resources(stage):
    """A grouped evaluation rule's resources: get_resources(stage), and where grouping is on
    one evaluation slot (craft.launch.EVALUATION_SLOT), of which each group job has one: its
    jobs then run one after the other, and the group job asks for the most threads, memory
    and GPUs of any of them and the sum of their runtimes."""
    r = getattr(CFG.resources, stage)
    return grouped_resources(r) if evaluations_grouped() else rule_resources(r)


def setup_evaluation_groups():
    """Where grouping is on, offer one evaluation slot per group job (a resource of scope
    local, as `--resources evaluation_slot=1 --set-resource-scopes evaluation_slot=local`
    would): in the process that submits jobs to a cluster (what a group job asks for) and in
    those that run its jobs there (a group job's members one at a time). Not in a local run,
    which would run one evaluation at a time. The submitting process also keeps what the
    members of a failed group job finished (keep_finished_evaluations)."""
    # Which executor runs the jobs is not known yet when this file is read: like Snakemake's
    # scheduler, take --jobs (the nodes of remote execution) for a cluster. The processes
    # that run jobs on the cluster are not the main process; whether they run a group job
    # is not known yet either, and the slot constrains no other job.
    if not evaluations_grouped():
        return
    submits = workflow.is_main_process
    if EVALUATION_SLOT not in workflow.resource_settings.overwrite_resource_scopes:
        workflow.resourcescope(**{EVALUATION_SLOT: "local"})
    if workflow.global_resources.get(EVALUATION_SLOT).value is None:
        workflow.global_resources[EVALUATION_SLOT] = 1
    if submits:
        keep_finished_evaluations()
    else:
        keep_going_in_group_jobs()


def keep_going_in_group_jobs():
    """In the processes that run jobs on the cluster, go on with a group job's other members
    when one fails (Snakemake passes them no --keep-going): they finish and are kept
    (keep_finished_evaluations). A process that runs one job is not changed by this."""
    from snakemake.scheduling.job_scheduler import JobScheduler

    init = JobScheduler.__init__
    if getattr(init, "craft_keeps_going", False):
        return

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.keepgoing = True

    __init__.craft_keeps_going = True
    JobScheduler.__init__ = __init__


def keep_finished_evaluations():
    """When a group job fails, Snakemake removes the outputs of all its jobs, also of those
    that finished in it. For a run's evaluation group, keep and record as done the jobs that
    finished (every output there and none marked incomplete: the group job's own snakemake
    clears a job's marks when it ends and removes the outputs of a job that failed; a job that
    never started keeps the marks the submission set), and clean up only the others, so that
    the next `snakemake` reruns them alone. A retry still resubmits the whole group job.
    """
    from snakemake.jobs import GroupJob
    from snakemake.logging import logger

    original = GroupJob.postprocess
    if getattr(original, "craft_keeps_finished", False):
        return
    prefix = EVALUATION_GROUP.split("{", 1)[0]

    async def postprocess(self, error=False, **kwargs):
        persistence = self.dag.workflow.persistence
        # the marks were changed by another process: read them afresh (without a way to,
        # leave it to Snakemake, which removes every output of the group job)
        clear = getattr(persistence, "_clear_cache", None)
        if not error or not str(self.groupid).startswith(prefix) or clear is None:
            return await original(self, error=error, **kwargs)
        clear()
        for job in self.jobs:
            there = [await f.exists() for f in job.output]
            if all(there) and not await persistence.incomplete(job):
                logger.info(
                    f"Keeping the outputs of {job}, finished in failed group job"
                )
                await job.postprocess(
                    store_in_storage=False,
                    handle_log=True,
                    handle_touch=True,
                    check_output_mtime=False,
                )
            else:
                await job.postprocess(error=True, check_output_mtime=False)

    postprocess.craft_keeps_finished = True
    GroupJob.postprocess = postprocess


setup_evaluation_groups()
