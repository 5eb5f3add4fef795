"""Bad inputs a new user gives craft, as a table: each case mutates a valid hospital site (a
manifest over real DICOM and PNG files, several per patient; tests/site_data.py) and its
config, and says when craft must refuse it and what the one line must name.

When:
- ``plan``: ``craft config check`` (and the Snakefile, which runs the same checks) refuses it
  before anything is submitted;
- ``job``: only decoding the image finds it; ``craft data check`` lists it with its CSV line
  and ``prepare`` refuses it the same way, writing nothing;
- ``ok``: a valid input that must pass every stage (the controls);
- ``accepted``: a doubtful input accepted on purpose; ``why`` says why.

``python -m tests.bad_input_cases`` prints the counts.
"""

from __future__ import annotations

import copy
import csv
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import yaml
from PIL import Image
from pydicom.data import get_testdata_file

SECRET = "sk-bad-input-7d1e0c9b-never-echoed"
MODALITY = "site-ct"


@dataclass
class Workspace:
    """A copy of the site: its folder, manifest, image folder and config (as data)."""

    root: Path
    config: dict
    raw: bytes | None = None  # the config file's bytes, when a case writes them itself
    config_path: Path | None = None  # where the config is, when not root/config.yaml
    absent: bool = False  # the config file is not written

    @property
    def manifest(self) -> Path:
        return self.root / "site" / "manifest.csv"

    @property
    def images(self) -> Path:
        return self.root / "site" / "images"

    @property
    def source(self) -> dict:
        return self.config["modalities"][MODALITY]["source"]

    @property
    def modality(self) -> dict:
        return self.config["modalities"][MODALITY]

    def rows(self) -> list[list[str]]:
        with self.manifest.open(newline="") as f:
            return list(csv.reader(f))

    def write_rows(self, rows: list[list[str]]) -> None:
        with self.manifest.open("w", newline="") as f:
            csv.writer(f).writerows(rows)

    def image(self, line: int = 2) -> Path:
        """The image file of the manifest's ``line`` (the header is line 1)."""
        return self.images / self.rows()[line - 1][0]

    def rename_image(self, line: int, name: str) -> Path:
        """Give line's image a new file name (in the manifest too); returns the new path."""
        rows = self.rows()
        old = self.images / rows[line - 1][0]
        new = old.with_name(name)
        old.rename(new)
        rows[line - 1][0] = str(new.relative_to(self.images))
        self.write_rows(rows)
        return new

    def write_config(self) -> Path:
        path = self.config_path or self.root / "config.yaml"
        if self.absent:
            return path
        if self.raw is not None:
            path.write_bytes(self.raw)
        elif not path.exists():
            path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        return path


@dataclass(frozen=True)
class Case:
    id: str
    when: str  # plan | job | ok | accepted
    mutate: Callable[[Workspace], None]
    says: tuple[str, ...] = ()  # each must be in the one line ({root}: the workspace)
    why: str = ""  # accepted cases: why on purpose
    line: int | None = None  # job cases: the CSV line the problem is on
    secret: bool = False  # the line must not hold SECRET


# ----------------------------------------------------------------------------- helpers


def at(path: str, value) -> Callable[[Workspace], None]:
    """Set a config field (dotted path; 'M' stands for the site modality)."""

    def mutate(ws: Workspace) -> None:
        keys = [MODALITY if k == "M" else k for k in path.split(".")]
        d = ws.config
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value

    return mutate


def drop(path: str) -> Callable[[Workspace], None]:
    def mutate(ws: Workspace) -> None:
        keys = [MODALITY if k == "M" else k for k in path.split(".")]
        d = ws.config
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]

    return mutate


def both(*fs: Callable[[Workspace], None]) -> Callable[[Workspace], None]:
    def mutate(ws: Workspace) -> None:
        for f in fs:
            f(ws)

    return mutate


def raw(data: bytes) -> Callable[[Workspace], None]:
    def mutate(ws: Workspace) -> None:
        ws.raw = data

    return mutate


def config_text(edit: Callable[[str], str]) -> Callable[[Workspace], None]:
    """Edit the config file's YAML text (e.g. to write a key twice)."""

    def mutate(ws: Workspace) -> None:
        ws.raw = edit(yaml.safe_dump(ws.config, sort_keys=False)).encode()

    return mutate


def manifest_text(text: str | bytes) -> Callable[[Workspace], None]:
    def mutate(ws: Workspace) -> None:
        data = text.encode() if isinstance(text, str) else text
        ws.manifest.write_bytes(data)

    return mutate


def edit_rows(edit: Callable[[list[list[str]]], None]) -> Callable[[Workspace], None]:
    def mutate(ws: Workspace) -> None:
        rows = ws.rows()
        edit(rows)
        ws.write_rows(rows)

    return mutate


def cell(line: int, column: int, value: str) -> Callable[[Workspace], None]:
    def edit(rows):
        rows[line - 1][column] = value

    return edit_rows(edit)


def image_bytes(data: bytes, line: int = 2, name: str | None = None):
    def mutate(ws: Workspace) -> None:
        path = ws.rename_image(line, name) if name else ws.image(line)
        path.write_bytes(data)

    return mutate


def image_array(arr: np.ndarray, name: str, mode: str | None = None, line: int = 2, **kw):
    def mutate(ws: Workspace) -> None:
        path = ws.rename_image(line, name)
        im = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
        im.save(path, **kw)

    return mutate


def image_with(write: Callable[[Path], None], name: str, line: int = 2):
    def mutate(ws: Workspace) -> None:
        write(ws.rename_image(line, name))

    return mutate


def png16(arr: np.ndarray, color_type: int) -> bytes:
    """A 16-bit-per-sample PNG written by hand (Pillow cannot write 16-bit colour)."""
    h, w = arr.shape[:2]
    rows = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )  # fmt: skip


def dicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom's test file {name} is not installed"
    return Path(path)


def dicom_edit(edit: Callable[[pydicom.Dataset], None], template: str = "CT_small.dcm"):
    def write(path: Path) -> None:
        ds = pydicom.dcmread(dicom_file(template))
        edit(ds)
        ds.save_as(path)

    return write


def copy_dicom(name: str) -> Callable[[Path], None]:
    return lambda path: shutil.copy(dicom_file(name), path)


def png_bytes(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    import io

    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, fmt)
    return buf.getvalue()


def local_model(field_path: str, files: dict[str, str]) -> Callable[[Workspace], None]:
    """Point a model field at a folder of ``files`` (name -> text) under the workspace."""

    def mutate(ws: Workspace) -> None:
        folder = ws.root / "models" / field_path.replace(".", "-")
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        at(field_path, str(folder))(ws)

    return mutate


def curated_file(text: str) -> Callable[[Workspace], None]:
    def mutate(ws: Workspace) -> None:
        path = ws.root / "mine.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        ws.config["knowledge"] = {"backend": {"kind": "curated"}, "curated": {MODALITY: str(path)}}

    return mutate


def review_file(text: str | bytes) -> Callable[[Workspace], None]:
    def mutate(ws: Workspace) -> None:
        path = ws.root / "review.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        ws.config["knowledge"]["review"] = {MODALITY: str(path)}

    return mutate


GRAY = np.random.default_rng(0).integers(0, 255, (40, 48), dtype=np.uint8)
RGB = np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8)
RGBA_SEE_THROUGH = np.dstack([RGB, np.full((40, 48), 128, np.uint8)])
RGBA_OPAQUE = np.dstack([RGB, np.full((40, 48), 255, np.uint8)])
DEEP = np.random.default_rng(2).integers(0, 65535, (40, 48), dtype=np.uint16)
DEEP_RGB = np.random.default_rng(3).integers(0, 65535, (40, 48, 3), dtype=np.uint16)
GOOD_REVIEW_LABEL = """
    prompts:
      - a CT slice with {x}
      - an MR slice with {x}
    checklist:
      - id: {id}
        finding: {id}
        statement: the slice shows {x}
        negation: the slice shows no {x}
        question: Does the slice show {x}?
        expected: true
        weight: 1.0
"""


def review_text(labels=("normal", "lesion"), extra: str = "") -> str:
    body = "".join(
        f"  {lab}:{GOOD_REVIEW_LABEL.format(x='a ' + lab + ' finding', id=lab + '_finding')}"
        for lab in labels
    )
    return f"modality: {MODALITY}\ndescription: CT or MR slice\n{extra}labels:\n{body}"


def _dup(key: str) -> Callable[[str], str]:
    """Write a top-level key twice (its block is repeated at the end of the file)."""

    def edit(text: str) -> str:
        block = yaml.safe_dump({key: yaml.safe_load(text)[key]}, sort_keys=False)
        return text + block

    return edit


# ----------------------------------------------------------------------------- the cases

CONFIG_FILE = [
    Case(
        "utf16",
        "plan",
        lambda ws: setattr(ws, "raw", yaml.safe_dump(ws.config).encode("utf-16")),
        ("UTF-16",),
    ),
    Case("binary-bytes", "plan", raw(b"seeds: [0]\n\x00\x01\x02\xff"), ("config.yaml",)),
    Case("latin1", "plan", raw("description: caf\xe9\n".encode("latin-1")), ("not UTF-8",)),
    Case("yaml-indent", "plan", raw(b"seeds:\n  - 0\n - 1\n"), ("line 3", "not valid YAML")),
    Case("yaml-tab", "plan", raw(b"seeds:\n\t- 0\n"), ("line 2", "not valid YAML")),
    Case("yaml-unclosed-quote", "plan", raw(b'results: "res\nseeds: [0]\n'), ("not valid YAML",)),
    Case("yaml-unclosed-bracket", "plan", raw(b"seeds: [0, 1\n"), ("not valid YAML",)),
    Case("top-level-list", "plan", raw(b"- seeds\n- 0\n"), ("mapping",)),
    Case("top-level-scalar", "plan", raw(b"craft\n"), ("mapping",)),
    Case("empty-file", "plan", raw(b""), ("config.yaml",)),
    Case("only-comments", "plan", raw(b"# nothing here\n"), ("config.yaml",)),
    Case("duplicate-seeds", "plan", config_text(_dup("seeds")), ("seeds", "twice")),
    Case("duplicate-modalities", "plan", config_text(_dup("modalities")), ("twice",)),
    Case(
        "duplicate-nested",
        "plan",
        config_text(lambda t: t.replace("  site-ct:\n", "  site-ct:\n    channels: 1\n", 1)),
        ("channels", "twice"),
    ),
    Case(
        "config-is-folder",
        "plan",
        lambda ws: setattr(ws, "config_path", ws.root / "site"),
        ("folder",),
    ),
    Case(
        "config-missing",
        "plan",
        lambda ws: ws.__dict__.update(config_path=ws.root / "nope.yaml", absent=True),
        ("nope.yaml", "does not exist"),
    ),
]

VALUES = [
    # seeds and results
    Case("seed-negative", "plan", at("seeds", [-1]), ("seeds",)),
    Case("seed-duplicate", "plan", at("seeds", [0, 0]), ("seeds",)),
    Case("seed-string", "plan", at("seeds", ["zero"]), ("seeds",)),
    Case("seed-float", "plan", at("seeds", [0.5]), ("seeds",)),
    Case("seeds-empty", "plan", at("seeds", []), ("seeds",)),
    Case("seeds-scalar", "plan", at("seeds", "0,1"), ("seeds",)),
    Case("unknown-top-key", "plan", at("seed", [0]), ("seed", "unknown key")),
    Case("results-empty", "plan", at("results", ""), ("results",)),
    # the modality
    Case("resolution-not-8", "plan", at("modalities.M.resolution", 30), ("resolution",)),
    Case("resolution-zero", "plan", at("modalities.M.resolution", 0), ("resolution",)),
    Case("resolution-negative", "plan", at("modalities.M.resolution", -8), ("resolution",)),
    Case("resolution-string", "plan", at("modalities.M.resolution", "big"), ("resolution",)),
    Case("resolution-inf", "plan", at("modalities.M.resolution", float("inf")), ("resolution",)),
    Case("channels-2", "plan", at("modalities.M.channels", 2), ("channels",)),
    Case("labels-empty", "plan", at("modalities.M.labels", []), ("labels",)),
    Case("labels-one", "plan", at("modalities.M.labels", ["normal"]), ("labels",)),
    Case("labels-duplicate", "plan", at("modalities.M.labels", ["normal", "normal"]), ("labels",)),
    Case("labels-not-list", "plan", at("modalities.M.labels", "normal,lesion"), ("labels",)),
    Case("description-missing", "plan", drop("modalities.M.description"), ("description",)),
    Case("modality-unknown-key", "plan", at("modalities.M.colour", 1), ("colour",)),
    Case("modalities-empty", "plan", at("modalities", {}), ("modalities",)),
    Case(
        "modality-name-space",
        "plan",
        lambda ws: ws.config.update(modalities={"site ct": ws.modality}),
        ("site ct",),
    ),
    Case(
        "split-nan",
        "plan",
        at("modalities.M.splits", {"train": float("nan"), "val": 0.5, "test": 0.5}),
        ("splits.train", "finite"),
    ),
    Case("split-inf", "plan", at("modalities.M.splits.train", float("inf")), ("splits.train",)),
    Case(
        "split-negative",
        "plan",
        at("modalities.M.splits", {"train": 1.2, "val": -0.2, "test": 0.0}),
        ("modalities.site-ct.splits",),
    ),
    Case(
        "split-sum",
        "plan",
        at("modalities.M.splits", {"train": 0.5, "val": 0.2, "test": 0.2}),
        ("splits", "sum to 1"),
    ),
    Case("split-seed-negative", "plan", at("modalities.M.splits.seed", -3), ("splits.seed",)),
    Case("split-unknown", "plan", at("modalities.M.splits.holdout", 0.1), ("holdout",)),
    # the manifest source's options
    Case("source-kind", "plan", at("modalities.M.source.kind", "folder"), ("source",)),
    Case("source-resize", "plan", at("modalities.M.source.resize", "stretch"), ("resize",)),
    Case("source-color", "plan", at("modalities.M.source.color", "gray"), ("color",)),
    Case("source-alpha", "plan", at("modalities.M.source.alpha", "keep"), ("alpha",)),
    Case("source-intensity", "plan", at("modalities.M.source.intensity", "auto"), ("intensity",)),
    Case(
        "window-one-value", "plan", at("modalities.M.source.dicom_window", [40]), ("dicom_window",)
    ),
    Case(
        "window-width-negative",
        "plan",
        at("modalities.M.source.dicom_window", [40, -400]),
        ("dicom_window",),
    ),
    Case(
        "window-nan",
        "plan",
        at("modalities.M.source.dicom_window", [float("nan"), 400]),
        ("dicom_window",),
    ),
    Case("source-unknown-key", "plan", at("modalities.M.source.root", "x"), ("source.root",)),
    Case("manifest-field-missing", "plan", drop("modalities.M.source.manifest"), ("manifest",)),
    Case(
        "phantom-key-on-manifest",
        "plan",
        at("modalities.M.source.phantom", "phantom-cxr"),
        ("phantom",),
    ),
    # methods
    Case("method-kind", "plan", at("methods.lora.kind", "dreambooth"), ("methods.lora.kind",)),
    Case("lr-inf", "plan", at("methods.lora.lr", float("inf")), ("methods.lora.lr", "finite")),
    Case("lr-nan", "plan", at("methods.lora.lr", float("nan")), ("methods.lora.lr",)),
    Case("lr-negative", "plan", at("methods.lora.lr", -0.001), ("methods.lora.lr",)),
    Case("lr-zero", "plan", at("methods.lora.lr", 0), ("methods.lora.lr",)),
    Case("lr-string", "plan", at("methods.lora.lr", "1e-3x"), ("methods.lora.lr",)),
    Case(
        "weight-decay-nan", "plan", at("methods.lora.weight_decay", float("nan")), ("weight_decay",)
    ),
    Case("steps-float", "plan", at("methods.lora.steps", 2.5), ("methods.lora.steps",)),
    Case("batch-zero", "plan", at("methods.lora.batch_size", 0), ("batch_size",)),
    Case("rank-zero", "plan", at("methods.lora.rank", 0), ("methods.lora.rank",)),
    Case("prompts-unknown", "plan", at("methods.lora.prompts", "fancy"), ("prompts",)),
    Case("method-unknown-key", "plan", at("methods.lora.learning_rate", 0.1), ("learning_rate",)),
    Case("methods-empty", "plan", at("methods", {}), ("methods",)),
    Case(
        "method-name-bad",
        "plan",
        lambda ws: ws.config["methods"].update({"my method!": {"kind": "zero-shot"}}),
        ("my method!",),
    ),
    Case(
        "craft-init-unknown",
        "plan",
        at("methods.craft", {"kind": "craft", "init": "lora-x"}),
        ("methods.craft.init", "lora-x"),
    ),
    Case(
        "craft-init-missing",
        "plan",
        at("methods.craft", {"kind": "craft"}),
        ("methods.craft.init",),
    ),
    Case(
        "craft-init-self",
        "plan",
        at("methods.craft", {"kind": "craft", "init": "craft"}),
        ("methods.craft.init",),
    ),
    Case("init-on-lora", "plan", at("methods.lora.init", "zero-shot"), ("methods.lora.init",)),
    Case(
        "align-window",
        "plan",
        at("methods.craft", {"kind": "craft", "init": "lora", "align": {"window": "everything"}}),
        ("window",),
    ),
    Case(
        "align-k-zero",
        "plan",
        at("methods.craft", {"kind": "craft", "init": "lora", "align": {"k": 0}}),
        ("methods.craft.align.k",),
    ),
    Case(
        "align-reward-power-inf",
        "plan",
        at(
            "methods.craft",
            {"kind": "craft", "init": "lora", "align": {"reward_power": float("inf")}},
        ),
        ("reward_power",),
    ),
    Case(
        "align-kl-nan",
        "plan",
        at(
            "methods.craft", {"kind": "craft", "init": "lora", "align": {"kl_weight": float("nan")}}
        ),
        ("kl_weight",),
    ),
    Case(
        "align-holdout-1",
        "plan",
        at("methods.craft", {"kind": "craft", "init": "lora", "align": {"holdout_prompts": 1.0}}),
        ("holdout_prompts",),
    ),
    Case(
        "align-patience-no-evals",
        "plan",
        at(
            "methods.craft",
            {"kind": "craft", "init": "lora", "align": {"eval_every": 0, "patience": 2}},
        ),
        ("patience",),
    ),
    Case(
        "align-zero-stage-4",
        "plan",
        at("methods.craft", {"kind": "craft", "init": "lora", "align": {"zero_stage": 4}}),
        ("zero_stage",),
    ),
    Case(
        "checklist-weight-generic",
        "plan",
        at(
            "methods.gen",
            {"kind": "generic-reward", "init": "lora", "align": {"checklist_weight": 0.5}},
        ),
        ("checklist_weight",),
    ),
    Case("align-on-lora", "plan", at("methods.lora.align", {"k": 2}), ("methods.lora.align",)),
    # models
    Case("generator-empty", "plan", at("models.generator", ""), ("models.generator",)),
    Case(
        "generator-pretrain-site",
        "plan",
        at("models.generator", "pretrain"),
        ("models.generator", "pretrain"),
    ),
    Case("precision", "plan", at("models.gpu_precision", "fp8"), ("gpu_precision",)),
    # sampling
    Case("guidance-inf", "plan", at("sampling.guidance_scale", float("inf")), ("guidance_scale",)),
    Case("guidance-negative", "plan", at("sampling.guidance_scale", -1), ("guidance_scale",)),
    Case("sampling-steps-zero", "plan", at("sampling.steps", 0), ("sampling.steps",)),
    Case("n-per-label-zero", "plan", at("sampling.n_per_label", 0), ("n_per_label",)),
    Case("scheduler", "plan", at("sampling.scheduler", "magic"), ("scheduler",)),
    Case("spacing", "plan", at("sampling.timestep_spacing", "middle"), ("timestep_spacing",)),
    # CAS
    Case(
        "cas-weights-zero",
        "plan",
        at(
            "cas.weights",
            {
                "label_fidelity": 0,
                "prompt_alignment": 0,
                "checklist_adherence": 0,
                "plausibility": 0,
            },
        ),
        ("cas.weights",),
    ),
    Case("cas-weight-negative", "plan", at("cas.weights.plausibility", -1), ("plausibility",)),
    Case("cas-weight-inf", "plan", at("cas.weights.plausibility", float("inf")), ("plausibility",)),
    Case("tail-100", "plan", at("cas.tail_quantile", 100), ("tail_quantile",)),
    Case("knn-zero", "plan", at("cas.knn_k", 0), ("knn_k",)),
    Case("bootstrap-few", "plan", at("cas.bootstrap", 10), ("bootstrap",)),
    Case("aggregation", "plan", at("cas.aggregation", "median"), ("aggregation",)),
    Case("evaluators-empty", "plan", at("cas.evaluators", {}), ("cas.evaluators",)),
    Case(
        "two-rewards",
        "plan",
        at("cas.evaluators.siglip.role", "reward"),
        ("cas.evaluators", "reward"),
    ),
    Case(
        "no-reward",
        "plan",
        at("cas.evaluators.clip.role", "out-of-family"),
        ("cas.evaluators", "reward"),
    ),
    Case(
        "same-family",
        "plan",
        at("cas.evaluators.siglip.family", "clip"),
        ("cas.evaluators", "family"),
    ),
    Case(
        "train-family",
        "plan",
        both(
            at("cas.evaluators.siglip.family", "biomedclip"),
            at("cas.evaluators.siglip.source", "train"),
        ),
        ("cas.evaluators.siglip",),
    ),
    Case(
        "train-on-site",
        "plan",
        at("cas.evaluators.clip.source", "train"),
        ("cas.evaluators.clip.source", "train"),
    ),
    Case("evaluator-role", "plan", at("cas.evaluators.clip.role", "judge"), ("role",)),
    Case(
        "evaluator-batch",
        "plan",
        at("cas.evaluators.clip.batch_size", 0),
        ("cas.evaluators.clip.batch_size",),
    ),
    Case(
        "evaluator-unknown-key",
        "plan",
        at("cas.evaluators.clip.weights", "x"),
        ("cas.evaluators.clip.weights",),
    ),
    Case("adapter", "plan", at("cas.evaluators.clip.adapter", "magic"), ("adapter",)),
    # knowledge
    Case("backend-kind", "plan", at("knowledge.backend.kind", "gpt"), ("knowledge.backend",)),
    Case(
        "url-user-key",
        "plan",
        at("knowledge.backend.base_url", f"http://user:{SECRET}@host/v1"),
        ("base_url",),
        secret=True,
    ),
    Case(
        "url-query-key",
        "plan",
        at("knowledge.backend.base_url", f"http://host/v1?api_key={SECRET}"),
        ("base_url",),
        secret=True,
    ),
    Case(
        "url-token-query",
        "plan",
        at("knowledge.backend.base_url", f"https://host/v1?token={SECRET}&x=1"),
        ("base_url",),
        secret=True,
    ),
    Case("url-no-scheme", "plan", at("knowledge.backend.base_url", "host:8000/v1"), ("base_url",)),
    Case(
        "url-key-in-model",
        "plan",
        at("knowledge.backend.api_key", SECRET),
        ("knowledge.backend.api_key",),
        secret=True,
    ),
    Case("timeout-negative", "plan", at("knowledge.backend.timeout_s", -1), ("timeout_s",)),
    Case("timeout-inf", "plan", at("knowledge.backend.timeout_s", float("inf")), ("timeout_s",)),
    Case("retries-negative", "plan", at("knowledge.backend.max_retries", -1), ("max_retries",)),
    Case("n-prompts-zero", "plan", at("knowledge.enrichment.n_prompts", 0), ("n_prompts",)),
    Case(
        "review-is-output",
        "plan",
        at("knowledge.review", {MODALITY: "results/knowledge/site-ct.review.yaml"}),
        ("knowledge.review.site-ct",),
    ),
    Case(
        "review-unknown-modality",
        "plan",
        at("knowledge.review", {"chest": "r.yaml"}),
        ("knowledge.review",),
    ),
    # study, evaluation, resources, report
    Case("study-method-unknown", "plan", at("study.method_a", "craft"), ("study.method_a",)),
    Case("study-same-methods", "plan", at("study.method_b", "lora-enriched"), ("study.method_b",)),
    Case("study-seed", "plan", at("study.seed", 7), ("study.seed",)),
    Case("budgets-empty", "plan", at("evaluation.downstream.budgets", []), ("budgets",)),
    Case("budgets-zero", "plan", at("evaluation.downstream.budgets", [0]), ("budgets",)),
    Case(
        "memorization-threshold",
        "plan",
        at("evaluation.memorization.threshold", 1.5),
        ("threshold",),
    ),
    Case(
        "memorization-threshold-nan",
        "plan",
        at("evaluation.memorization.threshold", float("nan")),
        ("threshold",),
    ),
    Case(
        "fidelity-subset",
        "plan",
        at("evaluation.fidelity.kid_subset_size", 0),
        ("kid_subset_size",),
    ),
    Case("classifier", "plan", at("evaluation.downstream.classifier", 12), ("classifier",)),
    Case("resources-gpu-negative", "plan", at("resources.align.gpu", -1), ("resources.align",)),
    Case("resources-nodes", "plan", at("resources.score.nodes", 2), ("resources.score.nodes",)),
    Case("resources-threads-zero", "plan", at("resources.adapt.threads", 0), ("threads",)),
    Case("resources-stage-unknown", "plan", at("resources.training.gpu", 1), ("training",)),
    Case("grid-zero", "plan", at("report.grid_per_label", 0), ("grid_per_label",)),
]

FILES = [
    Case(
        "manifest-missing",
        "plan",
        at("modalities.M.source.manifest", "nope.csv"),
        ("modalities.site-ct.source.manifest", "nope.csv", "does not exist"),
    ),
    Case(
        "manifest-is-folder",
        "plan",
        lambda ws: at("modalities.M.source.manifest", str(ws.images))(ws),
        ("source.manifest", "folder"),
    ),
    Case(
        "image-root-missing",
        "plan",
        lambda ws: at("modalities.M.source.image_root", str(ws.root / "imgs"))(ws),
        ("source.image_root", "imgs"),
    ),
    Case(
        "image-root-is-file",
        "plan",
        lambda ws: at("modalities.M.source.image_root", str(ws.manifest))(ws),
        ("source.image_root", "not a folder"),
    ),
    Case(
        "image-root-wrong-folder",
        "plan-many",
        lambda ws: at("modalities.M.source.image_root", str(ws.root))(ws),
        ("source.manifest", "line 2", "not found"),
    ),
    Case(
        "curated-missing",
        "plan",
        at("knowledge", {"backend": {"kind": "curated"}, "curated": {MODALITY: "mine.yaml"}}),
        ("knowledge.curated.site-ct", "mine.yaml"),
    ),
    Case(
        "curated-folder",
        "plan",
        lambda ws: at(
            "knowledge", {"backend": {"kind": "curated"}, "curated": {MODALITY: str(ws.images)}}
        )(ws),
        ("knowledge.curated.site-ct", "folder"),
    ),
    Case(
        "curated-none-for-site",
        "plan",
        at("knowledge", {"backend": {"kind": "curated"}}),
        ("knowledge.curated.site-ct", "no curated knowledge"),
    ),
    Case(
        "curated-shipped-wrong-labels",
        "plan",
        at("knowledge", {"backend": {"kind": "curated"}, "curated": {MODALITY: "chexpert"}}),
        ("knowledge.curated.site-ct", "no label"),
    ),
    Case(
        "review-missing",
        "plan",
        at("knowledge.review", {MODALITY: "r.yaml"}),
        ("knowledge.review.site-ct", "r.yaml"),
    ),
    Case(
        "review-folder",
        "plan",
        lambda ws: at("knowledge.review", {MODALITY: str(ws.images)})(ws),
        ("knowledge.review.site-ct", "folder"),
    ),
]

KNOWLEDGE_FILES = [
    Case(
        "curated-not-yaml",
        "plan",
        curated_file("labels: [a\n"),
        ("knowledge.curated.site-ct", "mine.yaml", "not valid YAML"),
    ),
    Case(
        "curated-utf16",
        "plan",
        curated_file("name: x\n".encode("utf-16")),
        ("knowledge.curated.site-ct", "UTF-16"),
    ),
    Case(
        "curated-duplicate-key",
        "plan",
        curated_file("name: a\nname: b\n"),
        ("knowledge.curated.site-ct", "twice"),
    ),
    Case(
        "curated-todo",
        "plan",
        lambda ws: curated_file(_template())(ws),
        ("knowledge.curated.site-ct", "TODO"),
    ),
    Case("curated-empty", "plan", curated_file(""), ("knowledge.curated.site-ct",)),
    Case("curated-wrong-shape", "plan", curated_file("- a\n- b\n"), ("knowledge.curated.site-ct",)),
    Case(
        "review-not-yaml",
        "plan",
        review_file("labels: {a\n"),
        ("knowledge.review.site-ct", "not valid YAML"),
    ),
    Case(
        "review-no-labels",
        "plan",
        review_file("modality: site-ct\n"),
        ("knowledge.review.site-ct", "labels"),
    ),
    Case(
        "review-wrong-labels",
        "plan",
        review_file(review_text(("normal", "tumour"))),
        ("knowledge.review.site-ct", "labels"),
    ),
    Case(
        "review-label-not-mapping",
        "plan",
        review_file("labels:\n  normal: 3\n  lesion: 4\n"),
        ("knowledge.review.site-ct", "labels.normal"),
    ),
    Case(
        "review-duplicate-key",
        "plan",
        review_file(review_text() + "modality: again\n"),
        ("knowledge.review.site-ct", "twice"),
    ),
    Case(
        "review-no-prompts",
        "plan",
        review_file(
            review_text().replace(
                "      - a CT slice with a normal finding\n"
                "      - an MR slice with a normal finding\n",
                "",
            )
        ),
        ("knowledge.review.site-ct",),
    ),
    Case("review-binary", "plan", review_file(b"labels:\x00\xff"), ("knowledge.review.site-ct",)),
]

MODELS = [
    Case(
        "generator-folder-missing",
        "plan",
        at("models.generator", "/nowhere/sd"),
        ("models.generator", "/nowhere/sd"),
    ),
    Case(
        "generator-relative-missing",
        "plan",
        at("models.generator", "./models/sd-15"),
        ("models.generator", "sd-15"),
    ),
    Case(
        "generator-no-index",
        "plan",
        local_model("models.generator", {"unet/config.json": "{}"}),
        ("models.generator", "model_index.json"),
    ),
    Case(
        "generator-no-unet",
        "plan",
        local_model("models.generator", {"model_index.json": "{}"}),
        ("models.generator", "unet"),
    ),
    Case(
        "evaluator-folder-missing",
        "plan",
        at("cas.evaluators.clip.source", "/nowhere/clip"),
        ("cas.evaluators.clip.source", "/nowhere/clip"),
    ),
    Case(
        "evaluator-folder-empty",
        "plan",
        local_model("cas.evaluators.clip.source", {"README.md": "x"}),
        ("cas.evaluators.clip.source",),
    ),
    Case(
        "open-clip-no-config",
        "plan",
        both(
            at("cas.evaluators.clip.adapter", "open_clip"),
            local_model("cas.evaluators.clip.source", {"open_clip_model.safetensors": "x"}),
        ),
        ("cas.evaluators.clip.source",),
    ),
    Case(
        "classifier-folder-missing",
        "plan",
        at("evaluation.downstream.classifier", "/nowhere/resnet"),
        ("evaluation.downstream.classifier",),
    ),
]


def _template() -> str:
    from craft.knowledge.curated import template

    return template("mine", "CT or MR slice", ["normal", "lesion"])


def _rows_only(first: str) -> Callable[[Workspace], None]:
    """Keep the manifest's header replaced by ``first`` and its rows."""

    def mutate(ws: Workspace) -> None:
        rows = ws.rows()
        text = first + "\n" + "".join(",".join(r) + "\n" for r in rows[1:])
        ws.manifest.write_text(text)

    return mutate


def _all_split(split: str) -> Callable[[Workspace], None]:
    def edit(rows):
        rows[0].append("split")
        for r in rows[1:]:
            r.append(split)

    return edit_rows(edit)


def _patient_in_two_splits(rows):
    rows[0].append("split")
    for r in rows[1:]:
        r.append("")
    rows[1][-1], rows[2][-1] = "train", "test"  # lines 2 and 3: patient P000 (2+ images)


def _few_patients(rows):
    for r in rows[1:]:
        r[2] = "P000" if r[1] == "normal" else "P001"


def _one_label_rows(rows):
    rows[1:] = [r for r in rows[1:] if r[1] == "normal"]


MANIFESTS = [
    Case("manifest-empty", "plan", manifest_text(""), ("manifest.csv", "empty")),
    Case(
        "manifest-header-only",
        "plan",
        manifest_text("path,label,patient_id\n"),
        ("manifest.csv", "no rows"),
    ),
    Case(
        "manifest-no-label-column",
        "plan",
        _rows_only("path,diagnosis,patient_id"),
        ("manifest.csv", "label"),
    ),
    Case(
        "manifest-no-path-column",
        "plan",
        _rows_only("file,label,patient_id"),
        ("manifest.csv", "path"),
    ),
    Case(
        "manifest-semicolons",
        "plan",
        lambda ws: ws.manifest.write_text(ws.manifest.read_text().replace(",", ";")),
        ("manifest.csv", "missing column"),
    ),
    Case(
        "manifest-utf16",
        "plan",
        lambda ws: ws.manifest.write_bytes(ws.manifest.read_text().encode("utf-16")),
        ("manifest.csv", "UTF-8"),
    ),
    Case(
        "manifest-latin1",
        "plan",
        lambda ws: ws.manifest.write_bytes(
            ws.manifest.read_text().replace("P001", "P\xe9").encode("latin-1")
        ),
        ("manifest.csv", "UTF-8"),
    ),
    Case("manifest-binary", "plan", manifest_text(b"\x89PNG\r\n\x1a\n\x00\x00"), ("manifest.csv",)),
    Case(
        "manifest-extra-field",
        "plan",
        lambda ws: ws.manifest.write_text(
            "".join(
                line + (",x" if i == 2 else "") + "\n"
                for i, line in enumerate(ws.manifest.read_text().splitlines())
            )
        ),
        ("manifest.csv line 3", "fields"),
    ),
    Case(
        "manifest-short-row",
        "plan",
        edit_rows(lambda rows: rows[2].pop()),
        ("manifest.csv line 3", "fields"),
    ),
    Case("manifest-empty-path", "plan", cell(3, 0, ""), ("manifest.csv line 3", "empty path")),
    Case(
        "manifest-unknown-label", "plan", cell(3, 1, "tumour"), ("manifest.csv line 3", "'tumour'")
    ),
    Case("manifest-empty-label", "plan", cell(3, 1, ""), ("manifest.csv line 3", "empty label")),
    Case("manifest-label-case", "plan", cell(3, 1, "Normal"), ("manifest.csv line 3", "Normal")),
    Case(
        "manifest-bad-split",
        "plan",
        edit_rows(
            lambda rows: (
                [r.append("validation" if i == 2 else "") for i, r in enumerate(rows)]
                and rows[0].__setitem__(-1, "split")
            )
        ),
        ("manifest.csv line 3", "validation"),
    ),
    Case(
        "manifest-dotdot",
        "plan",
        cell(3, 0, "../manifest.csv"),
        ("manifest.csv line 3", "out of the image root"),
    ),
    Case(
        "manifest-etc-hostname",
        "plan",
        cell(3, 0, "../../../../../../../etc/hostname"),
        ("manifest.csv line 3", "out of the image root"),
    ),
    Case(
        "manifest-duplicate",
        "plan",
        lambda ws: edit_rows(
            lambda rows: rows.__setitem__(2, [rows[1][0], rows[2][1], rows[2][2]])
        )(ws),
        ("manifest.csv line 3", "duplicate"),
    ),
    Case(
        "manifest-duplicate-dot",
        "plan",
        lambda ws: edit_rows(
            lambda rows: rows.__setitem__(2, ["./" + rows[1][0], rows[1][1], rows[1][2]])
        )(ws),
        ("manifest.csv line 3", "duplicate"),
    ),
    Case(
        "manifest-file-missing",
        "plan",
        cell(3, 0, "patient-000/gone.png"),
        ("manifest.csv line 3", "gone.png", "not found"),
    ),
    Case(
        "manifest-path-is-folder",
        "plan",
        cell(3, 0, "patient-001"),
        ("manifest.csv line 3", "folder"),
    ),
    Case(
        "manifest-many-missing",
        "plan-many",
        lambda ws: edit_rows(lambda rows: [r.__setitem__(0, r[0] + ".bak") for r in rows[1:]])(ws),
        ("manifest.csv line 2", "not found"),
    ),
    Case(
        "manifest-two-patient-columns",
        "plan",
        edit_rows(
            lambda rows: [r.append(r[2]) for r in rows] and rows[0].__setitem__(-1, "patient")
        ),
        ("manifest.csv", "patient_id"),
    ),
    Case(
        "manifest-patient-two-splits",
        "plan",
        edit_rows(_patient_in_two_splits),
        ("source.manifest", "'P000'", "line 2"),
    ),
    Case(
        "manifest-all-train",
        "plan",
        _all_split("train"),
        ("source.manifest", "no explicit split", "val, test"),
    ),
    Case(
        "manifest-too-few-patients",
        "plan",
        edit_rows(_few_patients),
        ("source.manifest", "patient"),
    ),
    Case(
        "manifest-label-without-images",
        "plan",
        edit_rows(_one_label_rows),
        ("manifest.csv", "'lesion'", "no images"),
    ),
]

IMAGES = [
    Case(
        "png-truncated",
        "job",
        image_bytes(png_bytes(GRAY)[:60], name="cut.png"),
        ("cut.png", "not a readable"),
        line=2,
    ),
    Case("png-empty", "job", image_bytes(b"", name="empty.png"), ("empty.png",), line=2),
    Case(
        "png-is-text",
        "job",
        image_bytes(b"patient notes\n", name="notes.png"),
        ("notes.png", "not a readable image"),
        line=2,
    ),
    Case(
        "png-named-dcm",
        "job",
        image_bytes(png_bytes(GRAY), name="x.dcm"),
        ("x.dcm", "PNG image named .dcm"),
        line=2,
    ),
    Case(
        "jpeg-named-dcm",
        "job",
        image_bytes(png_bytes(GRAY, fmt="JPEG"), name="x.dcm"),
        ("x.dcm", "JPEG image named .dcm"),
        line=2,
    ),
    Case(
        "random-bytes-dcm",
        "job",
        image_bytes(bytes(range(256)) * 4, name="noise.dcm"),
        ("noise.dcm",),
        line=2,
    ),
    Case("empty-dcm", "job", image_bytes(b"", name="empty.dcm"), ("empty.dcm",), line=2),
    Case(
        "dicom-no-pixels",
        "job",
        image_with(copy_dicom("rtplan.dcm"), "plan.dcm"),
        ("plan.dcm", "no pixel data"),
        line=2,
    ),
    Case(
        "dicom-multiframe",
        "job",
        image_with(copy_dicom("rtdose.dcm"), "dose.dcm"),
        ("dose.dcm", "frames"),
        line=2,
    ),
    Case(
        "dicom-truncated",
        "job",
        image_with(copy_dicom("MR_truncated.dcm"), "cut.dcm"),
        ("cut.dcm", "damaged"),
        line=2,
    ),
    Case(
        "dicom-window-zero",
        "job",
        image_with(
            dicom_edit(lambda ds: (setattr(ds, "WindowCenter", 40), setattr(ds, "WindowWidth", 0))),
            "w0.dcm",
        ),
        ("w0.dcm", "window width"),
        line=2,
    ),
    Case(
        "dicom-photometric",
        "job",
        image_with(
            dicom_edit(lambda ds: setattr(ds, "PhotometricInterpretation", "HSV")), "hsv.dcm"
        ),
        ("hsv.dcm", "photometric"),
        line=2,
    ),
    Case(
        "rgba-see-through",
        "job",
        image_array(RGBA_SEE_THROUGH, "a.png"),
        ("a.png", "transparency", "alpha"),
        line=2,
    ),
    Case(
        "colour-with-color-error",
        "job",
        both(at("modalities.M.source.color", "error"), image_array(RGB, "c.png")),
        ("c.png", "colour image", "color"),
        line=2,
    ),
    Case(
        "png16-colour-minmax",
        "job",
        image_bytes(png16(DEEP_RGB, 2), name="deep.png"),
        ("deep.png", "16-bit colour", "intensity"),
        line=2,
    ),
    Case(
        "float-tiff-full",
        "job",
        both(
            at("modalities.M.source.intensity", "full"),
            image_array(DEEP.astype(np.float32), "f.tif", "F"),
        ),
        ("f.tif", "full range"),
        line=2,
    ),
    Case(
        "cmyk-jpeg",
        "job",
        image_array(np.dstack([RGB, RGB[..., :1]]), "k.jpg", "CMYK"),
        ("k.jpg",),
        line=2,
    ),
    Case(
        "gif-multiframe",
        "job",
        image_with(
            lambda p: Image.fromarray(GRAY).save(
                p, save_all=True, append_images=[Image.fromarray(255 - GRAY)]
            ),
            "two.gif",
        ),
        ("two.gif", "2 frames"),
        line=2,
    ),
    Case(
        "bad-file-later-line", "job", lambda ws: ws.image(7).write_bytes(b"x"), ("line 7",), line=7
    ),
]

CONTROLS = [
    Case("site-as-is", "ok", lambda ws: None),
    Case("dicom-implicit-vr", "ok", image_with(copy_dicom("MR_small_implicit.dcm"), "i.dcm")),
    Case("dicom-big-endian", "ok", image_with(copy_dicom("MR_small_bigendian.dcm"), "b.dcm")),
    Case("dicom-jpeg2000", "ok", image_with(copy_dicom("MR_small_jp2klossless.dcm"), "j.dcm")),
    Case("dicom-rle", "ok", image_with(copy_dicom("MR_small_RLE.dcm"), "r.dcm")),
    Case("dicom-rgb-rle", "ok", image_with(copy_dicom("SC_rgb_rle.dcm"), "rgb.dcm")),
    Case("dicom-padded", "ok", image_with(copy_dicom("MR_small_padded.dcm"), "pad.dcm")),
    Case("dicom-no-suffix", "ok", image_with(copy_dicom("CT_small.dcm"), "IM0001")),
    Case("dicom-upper-suffix", "ok", image_with(copy_dicom("CT_small.dcm"), "IM0001.DCM")),
    Case("png-16-bit-gray", "ok", image_bytes(png16(DEEP, 0), name="deep.png")),
    Case(
        "png-16-bit-colour-full",
        "ok",
        both(
            at("modalities.M.source.intensity", "full"),
            image_bytes(png16(DEEP_RGB, 2), name="deep.png"),
        ),
    ),
    Case("rgba-opaque", "ok", image_array(RGBA_OPAQUE, "opaque.png")),
    Case(
        "rgba-composite",
        "ok",
        both(at("modalities.M.source.alpha", "composite"), image_array(RGBA_SEE_THROUGH, "a.png")),
    ),
    Case("jpeg", "ok", image_array(RGB, "photo.jpg")),
    Case(
        "palette-png",
        "ok",
        image_with(lambda p: Image.fromarray(GRAY).convert("P").save(p), "pal.png"),
    ),
    Case(
        "manifest-bom",
        "ok",
        lambda ws: ws.manifest.write_bytes(b"\xef\xbb\xbf" + ws.manifest.read_bytes()),
    ),
    Case(
        "manifest-crlf",
        "ok",
        lambda ws: ws.manifest.write_bytes(
            ws.manifest.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        ),
    ),
    Case(
        "manifest-absolute-paths",
        "ok",
        lambda ws: edit_rows(
            lambda rows: [r.__setitem__(0, str(ws.images / r[0])) for r in rows[1:]]
        )(ws),
    ),
    Case("manifest-header-case-spaces", "ok", _rows_only(" Path , LABEL , Patient_ID ")),
    Case(
        "manifest-blank-lines",
        "ok",
        lambda ws: ws.manifest.write_text(ws.manifest.read_text().replace("\n", "\n\n")),
    ),
    Case("manifest-quoted-comma-path", "ok", lambda ws: ws.rename_image(2, "a, b.png")),
    Case("manifest-unicode-path", "ok", lambda ws: ws.rename_image(2, "bild-ä-画像.png")),
    Case("config-bom-crlf", "ok", config_text(lambda t: "\ufeff" + t.replace("\n", "\r\n"))),
]

ACCEPTED = [
    Case(
        "tiny-image-upscaled",
        "accepted",
        image_array(GRAY[:4, :4], "tiny.png"),
        why="a 4x4 image is padded and resized like any other: small inputs are legal, and "
        "the resolution is the user's choice",
    ),
    Case(
        "colour-converted-to-gray",
        "accepted",
        image_array(RGB, "c.png"),
        why="color: convert (the default) converts by luminance, as documented; color: error "
        "refuses it",
    ),
    Case(
        "rows-without-patient",
        "accepted",
        cell(3, 2, ""),
        why="a row naming no patient is a patient of its own; prepare logs how many",
    ),
    Case(
        "extra-columns",
        "accepted",
        edit_rows(lambda rows: [r.append("x") for r in rows] and rows[0].__setitem__(-1, "notes")),
        why="other columns are a site's own; ignored",
    ),
    Case(
        "path-with-spaces-around",
        "accepted",
        lambda ws: edit_rows(lambda rows: rows[1].__setitem__(0, "  " + rows[1][0] + "  "))(ws),
        why="values are stripped of surrounding spaces, as spreadsheets pad them",
    ),
    Case(
        "unwindowed-16bit-dicom",
        "accepted",
        image_with(
            dicom_edit(
                lambda ds: [ds.__delattr__(k) for k in ("WindowCenter", "WindowWidth") if k in ds],
                "MR_small.dcm",
            ),
            "nowin.dcm",
        ),
        why="no window in the file: intensity minmax (the default) stretches the 0.5-99.5th "
        "percentile, as documented",
    ),
    Case(
        "non-square-image",
        "accepted",
        image_array(GRAY[:, :10], "thin.png"),
        why="resize: pad (the default) centres it on a black square",
    ),
    Case(
        "steps-zero",
        "accepted",
        at("methods.lora.steps", 0),
        why="lora with 0 steps trains nothing, as documented: a baseline's sanity check",
    ),
    Case(
        "family-free-name",
        "accepted",
        at("cas.evaluators.siglip.family", "blip"),
        why="a pretrained evaluator's family is a free name, compared only to keep the "
        "out-of-family evaluators apart from the reward's; source 'train' knows clip and siglip",
    ),
    Case(
        "label-spaces",
        "accepted",
        cell(3, 1, " normal "),
        why="values are stripped of surrounding spaces",
    ),
]

ALL: list[Case] = (
    CONFIG_FILE + VALUES + FILES + KNOWLEDGE_FILES + MODELS + MANIFESTS + IMAGES + CONTROLS
    + ACCEPTED
)  # fmt: skip


def base_config(ws_root: Path) -> dict:
    """The valid config of the site under ``ws_root``."""
    from tests.data.test_prepare import site_config

    cfg = site_config(ws_root / "site" / "manifest.csv", ws_root / "site" / "images")
    cfg["results"] = str(ws_root / "results")
    return cfg


def workspace(template: Path, root: Path) -> Workspace:
    """A fresh copy of the site in ``root`` with its valid config."""
    shutil.copytree(template, root / "site")
    return Workspace(root=root, config=copy.deepcopy(base_config(root)))


def counts() -> dict[str, int]:
    out: dict[str, int] = {}
    for c in ALL:
        out[c.when] = out.get(c.when, 0) + 1
    return out


if __name__ == "__main__":
    n = counts()
    bad = sum(v for k, v in n.items() if k != "ok")
    n["plan"] = n.get("plan", 0) + n.pop("plan-many", 0)
    print(f"{len(ALL)} cases: {bad} bad inputs ({n.get('plan', 0)} refused at plan time, "
          f"{n.get('job', 0)} refused at job time, {n.get('accepted', 0)} accepted on purpose), "
          f"{n.get('ok', 0)} valid controls")  # fmt: skip
