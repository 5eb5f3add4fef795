# Config validation, the results layout, and the named input/params functions of every rule.
# Imports no torch: this runs at parse time on the login node.
import os
import sys
from pathlib import Path

from craft.config import dump_config, validate_config
from craft.errors import CraftError
from craft.paths import Layout

try:
    CFG = validate_config(config)
except CraftError as err:
    sys.exit(f"craft: error: {err}")

LAYOUT = Layout(CFG.results)
RESULTS = str(CFG.results)
LOGS = "logs"
MODALITIES = list(CFG.modalities)
METHODS = list(CFG.methods)
SEEDS = [str(s) for s in CFG.seeds]
PHANTOM_MODALITIES = [
    m for m, c in CFG.modalities.items() if c.source.kind == "phantom"
]
PRETRAIN = CFG.models.generator == "pretrain"


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


def get_settings(stage):
    """Params function: the plain config slice a stage's job depends on (rerun trigger)."""

    def settings(wildcards):
        return CFG.slice(stage, wildcards.modality, wildcards.get("method"))

    return settings


def get_cas_settings(stage):
    """Params function of the CAS rules (evaluator training, reference, score)."""

    def settings(wildcards):
        return CFG.cas_slice(
            stage, wildcards.modality, wildcards.evaluator, wildcards.get("method")
        )

    return settings


def get_knowledge_review(wildcards):
    """A clinician-edited review file pinned in knowledge.review (an input: edits rerun)."""
    pinned = CFG.knowledge.review.get(wildcards.modality)
    return [str(pinned)] if pinned else []


def get_adapt_knowledge(wildcards):
    """Methods that train on enriched prompts read the knowledge JSON."""
    if CFG.method(wildcards.method).prompts == "enriched":
        return [str(LAYOUT.knowledge(wildcards.modality))]
    return []


def get_trained_evaluator(wildcards):
    """The trained evaluator's dir when the workflow trains it (source 'train')."""
    if CFG.cas.evaluators[wildcards.evaluator].source == "train":
        return [str(LAYOUT.evaluator(wildcards.modality, wildcards.evaluator))]
    return []


def get_foundation(wildcards):
    """The pretrained foundation dir, when the workflow trains it (phantom configs)."""
    return [str(LAYOUT.foundation(wildcards.modality))] if PRETRAIN else []


def get_metric_files(modality, method, seed):
    """Every metrics file a finished run has (the oracle only for phantom modalities)."""
    files = []
    if modality in PHANTOM_MODALITIES:
        files.append(str(LAYOUT.metrics(modality, method, seed, "oracle")))
    for ev in CFG.cas.evaluators:
        files.append(str(LAYOUT.metrics(modality, method, seed, f"cas-{ev}")))
    return files


def get_report_inputs(wildcards=None):
    samples, metrics = [], []
    for m in MODALITIES:
        for k in METHODS:
            for s in SEEDS:
                samples.append(str(LAYOUT.samples(m, k, s)))
                metrics += get_metric_files(m, k, s)
    return {"samples": samples, "metrics": metrics}


def get_report_dir(wildcards, output):
    """The report folder, derived from the rule's output (no hard-coded prefix)."""
    return str(Path(output.html).parent)


def get_final_output():
    out = LAYOUT.report()
    return [str(out / "summary.csv"), str(out / "index.html")]


def res(stage, key):
    """A rule's resources from config.resources.<stage>."""
    return getattr(getattr(CFG.resources, stage), key)
