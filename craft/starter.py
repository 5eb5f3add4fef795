"""``craft init``: a starting config for a site's own data, written from its manifest.

The labels and their counts come from the CSV, the channels and a resolution are suggested from
a sample of the images (headers only: DICOM tags, image modes and sizes), the models are hub
ids with comments, and all six methods are there. Where no shipped curated knowledge base knows
the labels, a knowledge template to fill in is written beside the config. What is written is
validated as a config before it is saved, so ``craft config check`` accepts it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from craft.errors import CraftError

DEFAULT_GENERATOR = "stable-diffusion-v1-5/stable-diffusion-v1-5"
REWARD_EVALUATOR = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
OUT_OF_FAMILY_EVALUATOR = "openai/clip-vit-large-patch14"
#: Images whose headers are read to suggest channels and resolution.
SAMPLE = 32


@dataclass(frozen=True)
class ImageSummary:
    """What a sample of a manifest's images says: channels and the median shorter side."""

    channels: int
    short_side: int
    n_read: int


def summarise_images(paths: Sequence[Path], sample: int = SAMPLE) -> ImageSummary:
    """Channels (3 if any sampled image is colour) and the median shorter side, from headers."""
    import numpy as np
    import pydicom
    from PIL import Image

    from craft.data.images import is_dicom

    step = max(1, len(paths) // sample)
    colour, sides = False, []
    for path in list(paths)[::step][:sample]:
        try:
            if is_dicom(path):
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                colour |= int(getattr(ds, "SamplesPerPixel", 1)) > 1
                sides.append(min(int(ds.Rows), int(ds.Columns)))
            else:
                with Image.open(path) as im:
                    colour |= im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV")
                    sides.append(min(im.size))
        except Exception as err:  # a bad file is for `craft data check`; say which one here
            raise CraftError(
                f"{path}: cannot read the image header ({err}); fix or remove it"
            ) from None
    return ImageSummary(3 if colour else 1, int(np.median(sides)), len(sides))


def suggest_resolution(short_side: int) -> int:
    """512 (Stable Diffusion 1.x's size) for images at least that large, else the largest
    multiple of 64 they hold, at least 64."""
    return 512 if short_side >= 512 else max(64, short_side // 64 * 64)


def modality_name(text: str) -> str:
    """A valid modality name (lower-case letters, digits, - and _) from a folder name."""
    name = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    return name if name[:1].isalnum() else f"site-{name}".strip("-")


def matching_base(labels: Sequence[str]) -> str | None:
    """A shipped curated knowledge base that knows every label (by name or alias), if any."""
    from craft.knowledge.curated import label_map, load_curated, shipped_bases

    for name in shipped_bases():
        base, _ = load_curated(name)
        if base.phantom:
            continue
        try:
            label_map(base, list(labels))
        except CraftError:
            continue
        return name
    return None


def starter_config(
    manifest: Path,
    image_root: Path,
    modality: str,
    description: str,
    labels: dict[str, int],
    images: ImageSummary,
    generator: str,
    knowledge_file: str | None,
    base: str | None,
    patients: int,
    out: Path,
) -> str:
    """The config's text (YAML with comments)."""
    q = json.dumps
    kind = "colour" if images.channels == 3 else "grey"
    counts = ", ".join(f"{k} {v}" for k, v in labels.items())
    resolution = suggest_resolution(images.short_side)
    curated = (
        f"{{{modality}: {base}}}   # shipped base matching your labels"
        if base
        else f"{{{modality}: {knowledge_file}}}   # fill in its TODOs first"
    )
    patient_line = (
        f"# {patients} patients: splits keep each patient's images together."
        if patients
        else "# No patient column: images are split one by one. If a patient has several "
        "images, add a\n# patient column (patient or patient_id) so that none is in two splits."
    )
    return f"""\
# craft config written by `craft init` from {manifest}
# Check it:   craft config check {out}
# Models:     craft models fetch -c {out}   (on a login node with internet)
# Plan it:    snakemake -n --configfile {out}
# Run it:     snakemake --profile slurm --configfile {out}
# Every field: craft config show -c {out}; the settings below are starting points.
results: results
seeds: [0, 1, 2]

modalities:
  {modality}:
    # labels and images per label, from the manifest: {counts}
    {patient_line}
    source:
      kind: manifest
      manifest: {q(str(manifest))}
      image_root: {q(str(image_root))}
    labels: [{", ".join(q(lab) for lab in labels)}]
    description: {q(description)}   # what the images are: used in every prompt
    # {images.n_read} images sampled: {kind}, median shorter side {images.short_side} px
    resolution: {resolution}
    channels: {images.channels}

models:
  # any diffusers Stable Diffusion pipeline: a hub id or a local folder (the pipeline folder,
  # not its unet/), e.g. stabilityai/stable-diffusion-2-1-base or a medical one
  generator: {generator}

knowledge:
  # offline: a curated knowledge file (`craft knowledge template` writes one to fill in);
  # a multimodal LLM instead: backend: {{kind: transformers, model: Qwen/Qwen2-VL-7B-Instruct}}
  backend: {{kind: curated}}
  curated: {curated}

methods:
  zero-shot: {{kind: zero-shot}}
  lora: {{kind: lora, steps: 2000, batch_size: 16, lr: 0.0001, rank: 16}}
  lora-enriched:
    {{kind: lora, prompts: enriched, steps: 2000, batch_size: 16, lr: 0.0001, rank: 16}}
  full: {{kind: full, steps: 2000, batch_size: 16, lr: 0.00001, gradient_checkpointing: true}}
  generic-reward:
    kind: generic-reward
    init: lora-enriched
    steps: 400
    batch_size: 8
    lr: 0.0001
    rank: 16
    checkpoint_every: 25
    align: &align
      window: draft
      k: 1
      sample_steps: 50
      gradient_checkpointing: true
      diffusion_weight: 0.5
      kl_weight: 5.0
      eval_every: 50
      eval_per_label: 8
      patience: 3
  craft:
    kind: craft
    init: lora-enriched
    prompts: enriched
    steps: 400
    batch_size: 8
    lr: 0.0001
    rank: 16
    checkpoint_every: 25
    align: {{<<: *align, reward: cas, checklist_weight: 1.0}}

sampling: {{steps: 50, guidance_scale: 7.5, n_per_label: 500, batch_size: 16}}

cas:
  # the reward evaluator and an out-of-family one (another family, never trained on)
  evaluators:
    biomedclip: {{family: biomedclip, source: {q(REWARD_EVALUATOR)}, role: reward}}
    clip-l: {{family: clip, source: {OUT_OF_FAMILY_EVALUATOR}, role: out-of-family}}

evaluation:
  downstream:
    {{classifier: densenet121, pretrained: true, image_size: 224, lr: 0.0001, batch_size: 64}}
  memorization: {{encoder: facebook/dinov2-base, batch_size: 128}}
  fidelity: {{features: facebook/dinov2-base}}

study: {{method_a: craft, method_b: lora-enriched, pairs_per_label: 8}}

resources:   # per rule; the SLURM profile holds only your account and partitions
  knowledge: {{runtime: 60}}
  prepare: {{threads: 8, mem_mb: 32000, runtime: 120}}
  reference: {{gpu: 1, mem_mb: 32000, runtime: 120}}
  score: {{gpu: 1, mem_mb: 32000, runtime: 120}}
  adapt: {{gpu: 1, mem_mb: 48000, runtime: 720}}
  align: {{gpu: 1, mem_mb: 48000, runtime: 480}}
  generate: {{gpu: 1, mem_mb: 32000, runtime: 240}}
  downstream: {{gpu: 1, mem_mb: 32000, runtime: 480}}
  evaluate: {{gpu: 1, mem_mb: 32000, runtime: 240}}
"""


def init(
    manifest: Path,
    image_root: Path,
    out: Path,
    generator: str = DEFAULT_GENERATOR,
    modality: str | None = None,
    description: str = "medical image",
    force: bool = False,
) -> list[Path]:
    """Write ``out`` (and a knowledge template beside it where no shipped base fits); the
    paths written."""
    from craft.config import NAME_PATTERN, load_config
    from craft.data.manifest import manifest_labels, read_manifest
    from craft.knowledge.curated import template

    manifest, image_root, out = Path(manifest).resolve(), Path(image_root).resolve(), Path(out)
    if out.exists() and not force:
        raise CraftError(f"{out} exists; pass --force to overwrite it, or --out another path")
    labels = manifest_labels(manifest)
    if len(labels) < 2:
        raise CraftError(
            f"{manifest}: {len(labels)} label(s) ({', '.join(labels) or 'none'}); craft needs at "
            "least two classes to generate and compare"
        )
    for lab in labels:
        if not re.fullmatch(NAME_PATTERN, lab):
            fix = re.sub(r"[^a-z0-9_-]+", "-", lab.lower()).strip("-_") or "label1"
            raise CraftError(
                f"{manifest}: label '{lab}' is not a craft name (lowercase letters, digits, _ "
                f"and -, starting with a letter or digit); rename it in the label column, e.g. "
                f"'{fix}'"
            )
    rows = read_manifest(manifest, image_root, list(labels))  # every file exists, etc.
    images = summarise_images([r.path for r in rows])
    name = modality_name(modality or manifest.parent.name)
    base = matching_base(list(labels))
    written = []
    knowledge_file = None
    if base is None:
        knowledge = out.parent / f"{name}.knowledge.yaml"
        if not knowledge.exists() or force:
            knowledge.write_text(template(name, description, list(labels)))
            written.append(knowledge)
        knowledge_file = str(knowledge.resolve())
    patients = len({r.patient for r in rows if r.patient is not None})
    text = starter_config(
        manifest,
        image_root,
        name,
        description,
        labels,
        images,
        generator,
        knowledge_file,
        base,
        patients,
        out,
    )
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    try:
        load_config(tmp)  # what is written is a valid config
    except CraftError:
        tmp.unlink()
        raise
    tmp.replace(out)
    return [out, *written]
