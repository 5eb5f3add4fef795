"""Job specs decide reruns: the rerun matrix of every shipped config's every setting.

For each leaf setting of config.yaml, the phantom benchmark and the paper config, the test
changes that setting alone (to the first other value the config accepts) and derives every
job's spec again (craft.specs.workflow_jobs). The jobs whose spec digest changed are the jobs
that rerun. The matrix is generated from the configs and the specs, not from a list of
settings; what is listed by hand is only what must change nothing, with the reason.
"""

from __future__ import annotations

import copy
import fnmatch
import json

import pytest
import yaml

from craft.config import validate_config
from craft.errors import CraftError
from craft.specs import (
    RUNTIME_BACKEND_FIELDS,
    describe_changes,
    job_spec,
    read_job,
    record_job,
    spec_changes,
    workflow_digests,
)
from tests.conftest import REPO

SHIPPED = ("config.yaml", "configs/phantom-benchmark.yaml", "configs/craft-paper.yaml")

#: Settings that change how a job runs, never what it makes: no spec holds them.
RUNTIME = (
    "results",  # where the outputs go, not what they are
    "resources.*",  # threads, memory, time, GPUs (align's process count: see below)
    "methods.*.checkpoint_every",
    "methods.*.gradient_checkpointing",
    "methods.*.align.gradient_checkpointing",
    "methods.*.align.compile",
    *(f"knowledge.backend.{f}" for f in RUNTIME_BACKEND_FIELDS),
)
#: Settings that one variant of a config does not use, with the variant (tagged unions).
IDLE_IN_VARIANT = {
    "methods.zero-shot.*": "zero-shot trains nothing: only its prompts (generate) count",
    "methods.full.rank": "full finetunes the whole UNet: no LoRA shape",
    "methods.full.alpha": "full: no LoRA",
    "methods.full.target_modules": "full: no LoRA",
    "methods.generic-reward.align.reward": "generic-reward has no CAS reward",
    "methods.generic-reward.align.reward_power": "generic-reward has no CAS reward",
    "methods.*.align.realism_real": "realism_weight 0: no realism term",
    "methods.*.align.lv_draws": "window draft, not draft-lv",
    "pretrain.*": "models.generator is a pretrained model, not 'pretrain'",
    "cas.evaluators.*.train.*": "a pretrained evaluator is loaded, not trained",
    "knowledge.enrichment.*": "the curated backend asks no model",
}


def leaves(data, path=()):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaves(value, (*path, key))
    else:
        yield path, data


def candidates(value):
    """Other values to try for a setting, in order (the first the config accepts is used)."""
    if value is None:
        return [0.5, 2, "main", True]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1, value * 2, 1]
    if isinstance(value, float):
        return [value * 1.5 if value else 0.5, value / 2, 0.25, 1.0]
    if isinstance(value, str):
        literals = ["clip", "arithmetic", "alignprop", "label", "enriched", "leading"]
        literals += ["float32", "log-cas", "crop", "error", "full", "composite", "hf", "cpu"]
        return [value + "x", *literals]
    if isinstance(value, list) and value:
        return [value[:-1], value + value[-1:]]
    return []


def rerun_matrix(path: str) -> tuple[dict, dict[str, set | None]]:
    """(base digests, setting -> the jobs whose spec changes; None when no other value of
    the setting validates, 'jobs' when the change alters which jobs exist)."""
    cfg = validate_config(yaml.safe_load((REPO / path).read_text()))
    full = cfg.model_dump(mode="json")
    base = workflow_digests(cfg)
    out: dict[str, set | None] = {}
    for keys, value in leaves(full):
        name = ".".join(map(str, keys))
        out[name] = None
        for other in (c for c in candidates(value) if c != value):
            data = copy.deepcopy(full)
            node = data
            for k in keys[:-1]:
                node = node[k]
            node[keys[-1]] = other
            try:
                changed = workflow_digests(validate_config(data))
            except CraftError:
                continue
            if changed.keys() != base.keys():
                out[name] = "jobs"
            else:
                out[name] = {job for job in base if base[job] != changed[job]}
            break
    return base, out


def matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@pytest.fixture(scope="module", params=SHIPPED)
def matrix(request):
    return request.param, *rerun_matrix(request.param)


def test_runtime_settings_rerun_nothing_and_every_other_setting_reruns_a_job(matrix):
    path, base, out = matrix
    tried = {k: v for k, v in out.items() if v is not None}
    assert len(tried) > 250, (path, len(tried))
    for name, jobs in tried.items():
        if name in ("resources.align.gpu", "resources.align.nodes"):
            # align's processes each draw their own noise: more of them change what it learns
            assert jobs in (set(), {j for j in base if j[0] == "align"}), (path, name)
        elif matches(name, RUNTIME):
            assert jobs == set(), (path, name, sorted(jobs)[:4])
        elif jobs == set():
            assert matches(name, IDLE_IN_VARIANT), f"{path}: {name} changes no job spec"


def test_a_setting_reruns_only_the_jobs_of_its_modality_method_or_evaluator(matrix):
    path, base, out = matrix
    for name, jobs in out.items():
        if not isinstance(jobs, set) or not jobs:
            continue
        part, _, rest = name.partition(".")
        if part == "modalities":
            modality = rest.split(".")[0]
            assert {j[1] for j in jobs} <= {modality, None}, (path, name)
            assert ("report", None, None, None) not in jobs or rest.endswith(".labels"), name
        elif part == "methods":
            method = rest.split(".")[0]
            assert {j[2] for j in jobs if j[0] != "report"} == {method}, (path, name)
            # an align method's start reaches it as a file (the init card), not as a spec
            assert not any(j[0] == "adapt" and j[2] != method for j in jobs), (path, name)
        elif name.startswith("cas.evaluators."):
            ev = rest.split(".")[1]
            # a job that loads the evaluator itself (align, audit, a reward path's scores) or
            # makes its files
            loads = ("align", "audit", "path")
            assert all(j[3] == ev or j[0] in loads for j in jobs), (path, name)


def test_what_each_job_reads_reruns_it_and_nothing_upstream():
    """Spot checks of the matrix on the quick default."""
    _, out = rerun_matrix("config.yaml")
    stages = lambda name: {j[0] for j in out[name]}  # noqa: E731
    # the report's grid is the report's: the oracle never reads it
    assert out["report.grid_per_label"] == {("report", None, None, None)}
    # more images per label: generate (and a reward path, which samples the same plan at
    # each scale), not the training of any method
    assert stages("sampling.n_per_label") == {"generate", "path"}
    # the sampler reward finetuning trains through reruns align; not adapt
    assert stages("sampling.guidance_scale") == {"generate", "align", "path"}
    assert stages("methods.craft.align.k") == {"align"}
    assert {j[2] for j in out["methods.craft.align.k"]} == {"craft"}
    # the data set reaches the training jobs through the data file: only prepare's spec
    assert stages("modalities.phantom-cxr.source.n_per_label") == {"prepare"}
    assert stages("modalities.phantom-cxr.splits.seed") == {"prepare"}
    # an evaluator's weights: where they are loaded (reference, score, align, audit, and the
    # reward paths, which score every scale with the out-of-family siglip)
    loaded = {"reference", "score", "align", "audit", "path"}
    assert stages("cas.evaluators.siglip.revision") == loaded
    assert stages("cas.evaluators.clip.train.steps") == {"train_evaluator"}


def test_a_knowledge_server_is_hashed_by_its_model_not_by_where_it_runs():
    data = yaml.safe_load((REPO / "config.yaml").read_text())
    data["knowledge"] = {
        "backend": {"kind": "openai", "base_url": "http://gpu-1:8000/v1", "model": "qwen"}
    }
    base = workflow_digests(validate_config(data))
    for key, value in (
        ("timeout_s", 5.0),
        ("base_url", "http://gpu-9:8000/v1"),
        ("max_retries", 1),
        ("api_key_env", "MY_KEY"),
        ("requests_per_minute", 30.0),
    ):
        other = copy.deepcopy(data)
        other["knowledge"]["backend"][key] = value
        assert workflow_digests(validate_config(other)) == base, key
    other = copy.deepcopy(data)
    other["knowledge"]["backend"]["model"] = "llava"
    changed = workflow_digests(validate_config(other))
    assert {j for j in base if base[j] != changed[j]} == {
        ("knowledge", m, None, None) for m in data["modalities"]
    }


def test_variants_hold_only_their_own_settings():
    cfg = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    craft = job_spec(cfg, "align", "phantom-cxr", "craft").plain()["method"]
    generic = job_spec(cfg, "align", "phantom-cxr", "generic-reward").plain()["method"]
    assert craft["reward"]["kind"] == "cas" and set(craft["reward"]) >= {"checklist_weight"}
    assert generic["reward"] == {"kind": "generic"}
    assert generic["prompts"] == {"kind": "label"}  # it trains on the plain label prompt
    assert set(craft["window"]) == {"kind", "k"} or craft["window"]["kind"] != "draft"
    zero = job_spec(cfg, "adapt", "phantom-cxr", "zero-shot").plain()["method"]
    assert zero == {"kind": "zero-shot"}
    full = job_spec(cfg, "adapt", "phantom-cxr", "full").plain()["method"]
    assert "lora" not in full
    # plain data only: the spec is saved as JSON and read back the same
    spec = job_spec(cfg, "generate", "phantom-cxr", "lora")
    assert json.loads(json.dumps(spec.plain())) == spec.plain()
    with pytest.raises(CraftError, match="nope"):
        job_spec(cfg, "adapt", "nope", "lora")
    with pytest.raises(CraftError, match="nope"):
        job_spec(cfg, "adapt", "phantom-cxr", "nope")
    with pytest.raises(CraftError, match="align"):
        job_spec(cfg, "adapt", "phantom-cxr", "craft")


def test_spec_changes_name_the_keys_and_both_values():
    old = {"method": {"training": {"lr": 0.001, "steps": 10}, "window": {"kind": "draft", "k": 1}}}
    new = {"method": {"training": {"lr": 0.002, "steps": 10}, "window": {"kind": "refl"}}}
    assert spec_changes(old, new) == [
        "method.training.lr: 0.001 -> 0.002",
        "method.window.k: 1 -> (absent)",
        'method.window.kind: "draft" -> "refl"',
    ]
    assert describe_changes(old, new).endswith("+1 more")
    assert describe_changes(old, old) == "the same settings"
    assert "no spec recorded" in describe_changes(None, new)


def test_record_job_saves_the_spec_and_input_digests(tmp_path):
    cfg = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    spec = job_spec(cfg, "knowledge", "phantom-cxr")
    curated = tmp_path / "mine.yaml"
    curated.write_text("a: 1\n")
    out = tmp_path / "phantom-cxr.json"
    out.write_text("{}")
    path = record_job(out, spec, {"curated": curated, "gone": tmp_path / "x"}, {"stage": "k"})
    assert path == tmp_path / "job-phantom-cxr.json"
    first = read_job(out)
    assert first["spec"] == spec.plain() and first["digest"] == spec.digest
    assert set(first["inputs"]) == {"curated"}  # a missing file is not recorded
    curated.write_text("a: 2\n")  # an edit in place changes the recorded digest
    record_job(out, spec, {"curated": curated})
    assert read_job(out)["inputs"] != first["inputs"]
