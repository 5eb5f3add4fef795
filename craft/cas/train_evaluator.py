"""Train a tiny phantom evaluator: a CLIP or SigLIP dual encoder on phantoms and clinical texts.

The recipe (``EvaluatorRecipe``) draws phantoms, asks the oracle which of the knowledge stage's
texts are TRUE for each image, and trains a Hugging Face ``CLIPModel`` (softmax contrastive
loss) or ``SiglipModel`` (sigmoid loss) from scratch so that the evaluator knows the labels'
prompts and each checklist item's statement versus its negation. Several texts can be true for
one image (its label prompts, every satisfied checklist statement), so both losses use the
oracle's truth matrix as multi-positive targets rather than the diagonal.

Training images: ``n_images`` phantoms with balanced labels from ``data_seed`` (never the
prepared data file's images, which calibrate CAS), a share of them drawn with contradictory
findings (``HYBRIDS``) so the absence items ("fluid in at most one lung") are learned too.
The result is saved in Hugging Face format (model, tokenizer, image processor) plus
``craft_evaluator.json`` (settings, steps, time, accuracy) and loads through
:func:`craft.cas.evaluators.load_evaluator`, like any hub evaluator.

Run: ``craft evaluator train --config config.yaml --modality phantom-cxr --evaluator clip``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from craft.cas.evaluators import HFClipEvaluator, _hf_preprocessing, load_evaluator, to_model_range
from craft.cas.knowledge_view import all_texts, prompt_texts, statement_holds
from craft.cas.settings import EvaluatorTraining
from craft.data import oracle
from craft.data.phantoms import draw_batch, get_spec
from craft.errors import CraftError
from craft.progress import log
from craft.prompts import label_prompt

CARD = "craft_evaluator.json"

#: Contradictory phantoms per modality: (drawn label, overrides). The oracle decides what they show.
HYBRIDS: dict[str, list[tuple[str, dict[str, float]]]] = {
    "phantom-cxr": [
        ("effusion", {"effusion_left": 1, "effusion_right": 1}),
        ("nodule", {"nodule_count": 2}),
        ("cardiomegaly", {"nodule_count": 1}),
        ("effusion", {"cardiothoracic_ratio": 0.6}),
        ("normal", {"nodule_count": 2}),
    ],
    "phantom-derm": [
        ("nevus", {"blue_white_veil": 1}),
        ("nevus", {"diameter_fraction": 0.5}),
        ("melanoma", {"blue_white_veil": 0}),
        ("melanoma", {"diameter_fraction": 0.3}),
        # A veil twice the usual size, with and without the other colours: without these, a
        # veil meant "three or more colours" to both evaluators, and reward finetuning drew
        # melanomas with oversized veils and two colours that both scored as multicoloured.
        ("melanoma", {"veil_size": 0.55}),
        ("melanoma", {"veil_size": 0.55, "n_colours": 2}),
    ],
}


@dataclass
class TrainingSet:
    """Phantoms with the truth of every text for every image."""

    images: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) drawn label index
    texts: list[str]  # the text catalogue
    truth: np.ndarray  # (N, T) bool: text t is true for image i
    known: np.ndarray  # (N, T) bool: the oracle knows whether text t holds for image i
    prompt_ids: list[int]  # ids of every label prompt in the catalogue
    item_ids: list[tuple[int, int]]  # per checklist item: (statement id, negation id)


def degrade(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Acquisition faults, one random mix per image: blur, sensor noise, lost contrast."""
    out = images.astype(np.float32)
    for i in range(len(out)):
        kind = rng.integers(4)
        if kind in (0, 3):
            s = rng.uniform(0.4, 2.2)
            out[i] = ndimage.gaussian_filter(out[i], (s, s, 0))
        if kind in (1, 3):
            out[i] += rng.normal(0.0, rng.uniform(6.0, 60.0), out[i].shape)
        if kind == 2:
            mean = out[i].mean()
            out[i] = mean + rng.uniform(0.15, 0.7) * (out[i] - mean)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _validity_criterion(phantom: str, criteria: dict[str, np.ndarray], valid: np.ndarray) -> str:
    """The criterion that says the image shows the modality at all (lungs_visible, ...)."""
    expected = oracle.label_criteria(phantom)
    for name, values in criteria.items():
        if all(exp.get(name) for exp in expected.values()) and np.array_equal(values, valid):
            return name
    raise CraftError(f"the oracle of {phantom} names no validity criterion")


def build_training_set(
    phantom: str,
    label_names: list[str],
    description: str,
    knowledge: Any,
    resolution: int,
    n_images: int,
    hybrid_fraction: float,
    seed: int,
    degraded_fraction: float = 0.0,
) -> TrainingSet:
    """Draw phantoms (balanced labels, hybrids, degraded copies) and the oracle truth of every
    text. Where the oracle finds no valid image (a heavily degraded one), only the validity
    item (e.g. "two clear lung fields are visible") is known to be false; the other items'
    truth is unknown and left out of the loss."""
    rng = np.random.default_rng(seed)
    n_hybrid = int(round(n_images * hybrid_fraction)) if HYBRIDS.get(phantom) else 0
    n_clean = n_images - n_hybrid
    drawn = [label_names[i % len(label_names)] for i in range(n_clean)]
    parts, labs = [draw_batch(phantom, drawn, seed, resolution)[0]], list(drawn)
    hybrids = [h for h in HYBRIDS.get(phantom, []) if h[0] in label_names]
    for j, (lab, ov) in enumerate(hybrids):
        n = n_hybrid // len(hybrids) + (j < n_hybrid % len(hybrids))
        if n:
            parts.append(
                draw_batch(phantom, [lab] * n, seed + 1000 + j, resolution, overrides=ov)[0]
            )
            labs += [lab] * n
    images = np.concatenate(parts)
    n_degraded = int(round(len(images) * degraded_fraction))
    if n_degraded:
        pick = rng.choice(len(images), n_degraded, replace=False)
        images = np.concatenate([images, degrade(images[pick], rng)])
        labs = labs + [labs[i] for i in pick]
    res = oracle.measure(phantom, images)
    validity = _validity_criterion(phantom, res.criteria, res.valid)
    order = rng.permutation(len(images))
    images, labs, predicted, valid = (
        images[order],
        np.array(labs)[order],
        res.predicted[order],
        res.valid[order],
    )
    criteria = {k: v[order] for k, v in res.criteria.items()}

    texts: list[str] = []
    columns: list[np.ndarray] = []
    known_columns: list[np.ndarray] = []
    everywhere = np.ones(len(images), dtype=bool)

    def add(text: str, truth: np.ndarray, known: np.ndarray = everywhere) -> int:
        if text in texts:  # the same words mean the same thing
            return texts.index(text)
        texts.append(text)
        columns.append(truth)
        known_columns.append(known)
        return len(texts) - 1

    prompt_cols: dict[str, list[int]] = {}
    for lab in label_names:
        bank = [label_prompt(description, lab), *prompt_texts(knowledge, lab)]
        prompt_cols[lab] = [add(t, predicted == lab) for t in dict.fromkeys(bank)]
    item_ids = []
    for item in knowledge.checklist:
        holds = statement_holds(item, criteria)
        known = everywhere
        if holds is None:  # no oracle criterion: the label's expectation stands for it
            holds = np.array([bool(item.expected.get(lab, True)) for lab in labs])
        if getattr(item, "oracle_criterion", None) != validity:
            known = valid
        item_ids.append((add(item.statement, holds, known), add(item.negation, ~holds, known)))
    truth = np.stack(columns, axis=1)
    known = np.stack(known_columns, axis=1)
    prompt_ids = sorted({i for ids in prompt_cols.values() for i in ids})
    label_index = np.array([label_names.index(lab) for lab in labs])
    return TrainingSet(images, label_index, texts, truth, known, prompt_ids, item_ids)


def canonical_ids(tokenizer):
    """The same CLIPTokenizer with token ids in sorted order (special tokens first).

    ``build_tokenizer``'s BPE trainer breaks frequency ties in hash order, so the ids (and with
    them which embedding rows a seed initialises) differ between processes; sorted ids make a
    seeded training run repeatable.
    """
    import json

    from transformers import CLIPTokenizer

    vocab = tokenizer.get_vocab()
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    special = [t for t in tokenizer.all_special_tokens if t in vocab]
    order = sorted(special, key=vocab.get) + sorted(t for t in vocab if t not in special)
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(order)},
        merges=merges,
        model_max_length=tokenizer.model_max_length,
        pad_token=tokenizer.pad_token,
    )


def tiny_dual_encoder(family: str, vocab_size: int, settings: EvaluatorTraining, resolution: int):
    """A randomly initialised HF CLIPModel or SiglipModel of the configured size."""
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    a = settings.architecture
    text = dict(
        vocab_size=vocab_size,
        hidden_size=a.hidden_size,
        intermediate_size=2 * a.hidden_size,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        max_position_embeddings=a.text_max_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(
        image_size=resolution,
        patch_size=a.patch_size,
        hidden_size=a.hidden_size,
        intermediate_size=2 * a.hidden_size,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_channels=3,
    )
    torch.manual_seed(settings.seed)
    if family == "clip":
        return CLIPModel(
            CLIPConfig(text_config=text, vision_config=vision, projection_dim=a.projection_dim)
        )
    if family == "siglip":
        from transformers import SiglipTextConfig, SiglipVisionConfig

        model = SiglipModel(
            SiglipConfig(
                text_config=SiglipTextConfig(**text, projection_size=a.projection_dim).to_dict(),
                vision_config=SiglipVisionConfig(**vision).to_dict(),
            )
        )
        if a.projection_dim != a.hidden_size:
            raise CraftError("siglip evaluators need projection_dim == hidden_size")
        # SigLIP's initialisation (Zhai et al. 2023, sec. 3.3): t' = log 10; its b = -10 suits
        # batches of thousands of negatives per positive; here a few texts per image are true,
        # so b starts at about their log-odds.
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-2.0)
        return model
    raise CraftError(f"cannot train an evaluator of family '{family}' (clip or siglip)")


def _image_processor(family: str, resolution: int):
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    if family == "siglip":
        return SiglipImageProcessor(size={"height": resolution, "width": resolution})
    return CLIPImageProcessor(
        size={"shortest_edge": resolution}, crop_size={"height": resolution, "width": resolution}
    )


def contrastive_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Multi-positive InfoNCE in both directions (CLIP, Radford et al. 2021, with a truth mask).

    logits (B, T); positives (B, T) bool. Rows (images) and columns (texts) without any
    positive are left out of their direction.
    """
    neg_inf = torch.finfo(logits.dtype).min
    pos = logits.masked_fill(~positives, neg_inf)
    rows, cols = positives.any(1), positives.any(0)
    i2t = (torch.logsumexp(logits, 1) - torch.logsumexp(pos, 1))[rows]
    t2i = (torch.logsumexp(logits, 0) - torch.logsumexp(pos, 0))[cols]
    return 0.5 * (i2t.mean() + t2i.mean())


def pair_loss(
    logits: torch.Tensor, truth: torch.Tensor, known: torch.Tensor, pairs: torch.Tensor
) -> torch.Tensor:
    """Each checklist item as a 2-way softmax over [statement, negation] (how CAS reads it).

    logits (B, T); truth, known (B, T) bool; pairs (K, 2) text ids of (statement, negation).
    """
    margin = logits[:, pairs[:, 0]] - logits[:, pairs[:, 1]]  # (B, K)
    mask = known[:, pairs[:, 0]].float()
    bce = F.binary_cross_entropy_with_logits(
        margin, truth[:, pairs[:, 0]].float(), reduction="none"
    )
    return (bce * mask).sum() / mask.sum().clamp_min(1.0)


def sigmoid_loss(
    logits: torch.Tensor, positives: torch.Tensor, known: torch.Tensor
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023, eq. 1) with the truth matrix as labels,
    pairs whose truth is unknown left out. Each text's positive and negative pairs weigh the
    same in total (a label prompt is true for a quarter of a batch, a statement for most)."""
    z = positives.float() * 2.0 - 1.0
    k = known.float()
    pos, neg = (positives.float() * k), ((~positives).float() * k)
    w = pos / pos.sum(0).clamp_min(1.0) + neg / neg.sum(0).clamp_min(1.0)
    return -(F.logsigmoid(z * logits) * w).sum() / logits.shape[1]


class EvaluatorRecipe:
    """Train, evaluate and save one phantom evaluator (torchtune-style life cycle)."""

    def __init__(
        self,
        phantom: str,
        label_names: list[str],
        description: str,
        resolution: int,
        family: str,
        settings: EvaluatorTraining,
        knowledge: Any,
        name: str | None = None,
    ):
        spec = get_spec(phantom)
        unknown = sorted(set(label_names) - set(spec.labels))
        if unknown:
            raise CraftError(f"labels {unknown} are not labels of {phantom}")
        if family not in ("clip", "siglip"):
            raise CraftError(f"cannot train an evaluator of family '{family}' (clip or siglip)")
        self.phantom, self.labels, self.description = phantom, list(label_names), description
        self.resolution, self.family, self.settings = resolution, family, settings
        self.knowledge = knowledge
        self.name = name or family
        self.steps_done = 0
        self.seconds = 0.0
        self.losses: list[float] = []

    def setup(self) -> None:
        """Data first (the vocabulary comes from its texts), then tokenizer, then the model."""
        from craft.models.tokenizer import build_tokenizer

        s = self.settings
        t0 = time.monotonic()
        self.data = build_training_set(
            self.phantom,
            self.labels,
            self.description,
            self.knowledge,
            self.resolution,
            s.n_images,
            s.hybrid_fraction,
            s.data_seed,
            s.degraded_fraction,
        )
        words = self.data.texts + all_texts(self.knowledge, self.labels)
        self.tokenizer = canonical_ids(
            build_tokenizer(words, model_max_length=s.architecture.text_max_length)
        )
        model = tiny_dual_encoder(self.family, len(self.tokenizer), s, self.resolution)
        proc = _image_processor(self.family, self.resolution)
        self.processor = proc
        size, mean, std, interp, mode = _hf_preprocessing(proc, self.family, self.resolution)
        self.evaluator = HFClipEvaluator(
            self.name, "train", model, self.tokenizer, size, mean, std, interp, mode
        )
        self.pixels = to_model_range(self.data.images)
        self._pairs = torch.tensor(self.data.item_ids, dtype=torch.long).view(-1, 2)
        self._prompt_cols = torch.tensor(self.data.prompt_ids, dtype=torch.long)
        n_params = sum(p.numel() for p in model.parameters())
        log(
            f"evaluator {self.name} ({self.family}, {n_params / 1e3:.0f}k parameters): "
            f"{len(self.data.images)} phantoms, {len(self.data.texts)} texts, "
            f"set up in {time.monotonic() - t0:.1f} s"
        )

    def _loss(self, logits: torch.Tensor, truth: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """Every text of the catalogue against every image of the batch, each step.

        SigLIP: the sigmoid loss over all pairs. CLIP: multi-positive InfoNCE over the label
        prompts (zero-shot labels) plus each checklist item's statement-vs-negation softmax.
        """
        if self.family == "siglip":
            return sigmoid_loss(logits, truth, known)
        prompts = self._prompt_cols
        return contrastive_loss(logits[:, prompts], truth[:, prompts]) + pair_loss(
            logits, truth, known, self._pairs
        )

    def train(self) -> None:
        s = self.settings
        model = self.evaluator.model
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.01)
        warmup = max(1, s.steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda k: (
                min(1.0, (k + 1) / warmup)
                * 0.5
                * (1 + math.cos(math.pi * min(1.0, k / max(1, s.steps))))
            ),
        )
        rng = np.random.default_rng(s.seed)  # the data order differs per evaluator seed
        order = rng.permutation(len(self.pixels))
        pos = 0
        t0 = time.monotonic()
        for step in range(s.steps):
            if pos + s.batch_size > len(order):
                order, pos = rng.permutation(len(self.pixels)), 0
            idx = order[pos : pos + s.batch_size]
            pos += s.batch_size
            truth = torch.from_numpy(self.data.truth[idx])
            known = torch.from_numpy(self.data.known[idx])
            img = self.evaluator.encode_images(self.pixels[idx])
            txt = F.normalize(self.evaluator._text_features(self.data.texts), dim=-1)
            logits = self.evaluator.similarity_logits(img, txt)
            loss = self._loss(logits, truth, known)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():  # CLIP clips its temperature at 100
                model.logit_scale.clamp_(max=math.log(100.0))
            self.losses.append(loss.item())
            self.steps_done = step + 1
            self.seconds = time.monotonic() - t0
            if step % 100 == 0 or step == s.steps - 1:
                log(
                    f"step {step + 1}/{s.steps}: loss {np.mean(self.losses[-50:]):.4f}, "
                    f"{self.steps_done * s.batch_size / self.seconds:.0f} images/s"
                )
            if s.time_limit_s is not None and self.seconds > s.time_limit_s:
                log(f"time limit {s.time_limit_s:.0f} s reached after {step + 1} steps")
                break
        model.eval()
        log(
            f"trained {self.steps_done} steps in {self.seconds:.1f} s "
            f"({self.steps_done * s.batch_size / max(self.seconds, 1e-9):.0f} images/s)"
        )

    def save(self, out: Path, accuracy: dict[str, float] | None = None) -> Path:
        """Weights, tokenizer and image processor in HF format, and the training card."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.evaluator.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        self.processor.save_pretrained(out)
        card = {
            "name": self.name,
            "family": self.family,
            "phantom": self.phantom,
            "labels": self.labels,
            "resolution": self.resolution,
            "settings": self.settings.model_dump(mode="json"),
            "steps_done": self.steps_done,
            "train_seconds": round(self.seconds, 2),
            "images_per_second": round(
                self.steps_done * self.settings.batch_size / max(self.seconds, 1e-9), 1
            ),
            "torch_threads": torch.get_num_threads(),
            "final_loss": float(np.mean(self.losses[-50:])) if self.losses else None,
            "accuracy": accuracy or {},
        }
        (out / CARD).write_text(json.dumps(card, indent=2))
        return out


@torch.no_grad()
def phantom_accuracy(
    evaluator,
    phantom: str,
    label_names: list[str],
    knowledge: Any,
    resolution: int,
    n_per_label: int = 50,
    seed: int = 777,
) -> dict[str, Any]:
    """Zero-shot label accuracy (prompt ensembles) and checklist accuracy on fresh phantoms,
    and on fresh hybrids (``HYBRIDS``) the checklist accuracy and its weakest (kind, item):
    an item the evaluator gets wrong on one kind of contradictory phantom hides in the mean.
    """
    labels = [lab for lab in label_names for _ in range(n_per_label)]
    images, _ = draw_batch(phantom, labels, seed, resolution)
    res = oracle.measure(phantom, images)
    emb = evaluator.encode_images(to_model_range(images))
    items = [
        (item, evaluator.encode_texts([item.statement]), evaluator.encode_texts([item.negation]))
        for item in knowledge.checklist
    ]

    def item_accuracy(emb, criteria):
        for item, statement, negation in items:
            holds = statement_holds(item, criteria)
            if holds is not None:
                p = evaluator.statement_probability(emb, statement, negation)[:, 0].numpy()
                yield item, (p > 0.5) == holds

    label_emb = torch.stack(
        [
            F.normalize(evaluator.encode_texts(prompt_texts(knowledge, lab)).mean(0), dim=-1)
            for lab in label_names
        ]
    )
    pred = (emb @ label_emb.T).argmax(1).numpy()
    truth = np.array([label_names.index(lab) for lab in labels])
    right = [r for _, r in item_accuracy(emb, res.criteria)]
    out: dict[str, Any] = {
        "label_accuracy": float((pred == truth).mean()),
        "checklist_accuracy": float(np.concatenate(right).mean()) if right else 0.0,
    }
    hybrid_right, weakest = [], (2.0, "")
    for j, (lab, ov) in enumerate(h for h in HYBRIDS.get(phantom, []) if h[0] in label_names):
        images, _ = draw_batch(phantom, [lab] * n_per_label, seed + 1 + j, resolution, overrides=ov)
        emb = evaluator.encode_images(to_model_range(images))
        for item, r in item_accuracy(emb, oracle.measure(phantom, images).criteria):
            hybrid_right.append(r)
            if r.mean() < weakest[0]:
                weakest = (float(r.mean()), f"{lab} {ov}: {item.statement}")
    if hybrid_right:
        out["hybrid_checklist_accuracy"] = float(np.concatenate(hybrid_right).mean())
        out["weakest_hybrid_item"] = {"accuracy": weakest[0], "kind_and_item": weakest[1]}
    return out


def train_evaluator(
    phantom: str,
    label_names: list[str],
    description: str,
    resolution: int,
    family: str,
    settings: EvaluatorTraining,
    knowledge: Any,
    out: Path,
    name: str | None = None,
) -> dict[str, Any]:
    """Train one phantom evaluator, save it to ``out``, check it loads, return its accuracy."""
    recipe = EvaluatorRecipe(
        phantom, label_names, description, resolution, family, settings, knowledge, name
    )
    recipe.setup()
    recipe.train()
    recipe.save(out)
    loaded = load_evaluator(out, name=recipe.name)  # the path every consumer takes
    acc = phantom_accuracy(loaded, phantom, label_names, knowledge, resolution)
    recipe.save(out, acc)
    log(
        f"evaluator {recipe.name}: label accuracy {acc['label_accuracy']:.3f}, checklist "
        f"accuracy {acc['checklist_accuracy']:.3f} on fresh phantoms"
    )
    if "weakest_hybrid_item" in acc:
        weakest = acc["weakest_hybrid_item"]
        log(
            f"evaluator {recipe.name}: checklist accuracy {acc['hybrid_checklist_accuracy']:.3f}"
            f" on fresh hybrids; weakest {weakest['accuracy']:.2f} on {weakest['kind_and_item']}"
        )
    return {**acc, "train_seconds": recipe.seconds, "steps": recipe.steps_done}
