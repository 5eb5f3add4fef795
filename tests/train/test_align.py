"""The align stage: reward finetuning through the sampler (craft.train.reward, craft.train.align).

Everything is tiny and local: a 24 px pixel-space generator saved once, a CLIP-family phantom
evaluator trained for a few steps (weak, but a real differentiable CAS), its real-image
reference, and a results tree on which ``craft.train.align.align`` runs end to end. One CPU
thread; the whole file takes well under a minute.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from craft.config import AlignSettings, TinyUNet, validate_config
from craft.errors import CraftError
from craft.models.generator import load_generator, save_generator
from craft.models.tiny import build_tiny_generator
from craft.train.diffusion import FinetuneSettings, TrainingData
from craft.train.reward import Evaluation, RewardFinetune, Rollout, _Best
from tests.interrupt import sigterm_after_checkpoint

REPO = Path(__file__).resolve().parents[2]
PHANTOM = "phantom-cxr"
LABELS = ["normal", "cardiomegaly", "effusion", "nodule"]
RES, CH = 24, 1
TINY = TinyUNet(
    block_out_channels=[8, 16, 16],
    attention_levels=[False, False, True],
    cross_attention_dim=16,
    text_layers=1,
    text_max_length=24,
)
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]
STEPS = 6
WORDS = "chest radiograph normal cardiomegaly effusion nodule heart lung".split()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one_thread(fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A results tree: data, knowledge, two tiny evaluators with references, a base generator."""
    return _one_thread(lambda: build_world(tmp_path_factory.mktemp("world")))


def build_world(root: Path) -> Path:
    from craft.cas.reference import build_reference
    from craft.cas.settings import EvaluatorArchitecture, EvaluatorTraining
    from craft.cas.train_evaluator import train_evaluator
    from craft.knowledge.schema import save_knowledge
    from craft.paths import Layout
    from tests.cas.knowledge_standin import phantom_knowledge
    from tests.cas.phantom_sets import write_phantom_data

    lay = Layout(root / "results")
    save_generator(build_tiny_generator(TINY, RES, CH, WORDS, seed=0), root / "base")
    knowledge = phantom_knowledge(PHANTOM, use_real_schema=True)
    save_knowledge(knowledge, lay.knowledge(PHANTOM))
    write_phantom_data(lay.data(PHANTOM), PHANTOM, LABELS, 15, RES)
    arch = EvaluatorArchitecture(hidden_size=32, layers=1, projection_dim=32, patch_size=4)
    for name, family, seed in (("clip", "clip", 0), ("siglip", "siglip", 1)):
        settings = EvaluatorTraining(
            steps=15, n_images=128, batch_size=32, seed=seed, architecture=arch
        )
        out = lay.evaluator(PHANTOM, name)
        train_evaluator(
            PHANTOM, LABELS, "chest radiograph", RES, family, settings, knowledge, out, name
        )
        from craft.cas.evaluators import load_evaluator

        ref = build_reference(
            load_evaluator(out, name=name),
            lay.data(PHANTOM),
            knowledge,
            knn_k=5,
            description="chest radiograph",
        )
        ref.save(lay.reference(PHANTOM, name), "test")
    return root


def loaded(world: Path, name: str = "clip"):
    """(evaluator, reference, knowledge) of the world."""
    from craft.cas.evaluators import load_evaluator
    from craft.cas.reference import load_reference
    from craft.knowledge.schema import load_knowledge
    from craft.paths import Layout

    lay = Layout(world / "results")
    return (
        load_evaluator(lay.evaluator(PHANTOM, name), name=name),
        load_reference(lay.reference(PHANTOM, name)),
        load_knowledge(lay.knowledge(PHANTOM)),
    )


def prompts_by_label() -> dict[int, list[str]]:
    from tests.cas.knowledge_standin import CXR_PROMPTS

    return {i: CXR_PROMPTS[lab] for i, lab in enumerate(LABELS)}


def real_data(world: Path) -> TrainingData:
    from craft.paths import Layout
    from craft.store import read_split

    d = read_split(Layout(world / "results").data(PHANTOM), "train")
    bank = prompts_by_label()

    def caption(idx, rng):
        return [str(rng.choice(bank[int(i)])) for i in idx]

    return TrainingData(d.images, d.labels, caption)


def settings(steps: int = STEPS, lr: float = 5e-3, batch: int = 4, every: int = 3):
    return FinetuneSettings(
        mode="lora",
        steps=steps,
        batch_size=batch,
        lr=lr,
        seed=3,
        config_digest="d1",
        rank=2,
        alpha=2.0,
        target_modules=TARGETS,
        checkpoint_every=every,
    )


def make_recipe(
    world: Path,
    align: AlignSettings,
    ckpt: Path,
    s=None,
    evaluation=False,
    parallel=None,
    weights=None,
    dtype=None,
    realism=None,
    evaluator=None,
):
    """A set-up recipe on a freshly loaded base generator with the CAS reward (its frozen
    parts cast to ``dtype`` if given, as align does on a GPU; ``evaluator``: the reward's
    evaluator in place of the world's)."""
    from craft.train.align import cas_reward_fn

    own, reference, knowledge = loaded(world)
    evaluator = evaluator or own
    reward = cas_reward_fn(evaluator, knowledge, reference, LABELS)
    ev = None
    if evaluation:
        oof = loaded(world, "siglip")
        prompts = [p[-1] for p in prompts_by_label().values()]
        ev = Evaluation(
            prompts,
            np.arange(len(LABELS)),
            [11, 12, 13, 14],
            {
                "clip": cas_reward_fn(evaluator, knowledge, reference, LABELS, False),
                "siglip": cas_reward_fn(oof[0], oof[2], oof[1], LABELS, False),
            },
            stop_on="siglip",
        )
    r = RewardFinetune(s or settings(), align, Rollout(4, 2.0, RES, CH), ckpt, parallel)
    gen = load_generator(world / "base")
    gen.to("cpu", dtype, unet_too=True)
    r.setup(gen, real_data(world), prompts_by_label(), reward, ev, weights, realism)
    return r


def _realism(world: Path, n_real: int = 16):
    """The realism term of the world's reward evaluator over its real training images, and
    the data's splits."""
    from craft.paths import Layout
    from craft.store import read_split
    from craft.train.align import embedding_mmd_fn

    evaluator = loaded(world)[0]
    data = Layout(world / "results").data(PHANTOM)
    train, held = read_split(data, "train"), read_split(data, "test")
    realism = embedding_mmd_fn(evaluator, train.images, train.labels, LABELS, n_real)
    return realism, evaluator, held


def test_realism_term_scores_copies_of_one_image_far_from_real_images(world):
    from craft.cas.evaluators import to_model_range

    realism, _, held = _realism(world, n_real=8)
    # held-out real images of each label against the same number of copies of one of them
    pick = np.concatenate([np.flatnonzero(held.labels == y)[:3] for y in range(len(LABELS))])
    real = to_model_range(held.images[pick])
    labels = held.labels[pick]
    copies = real.clone()
    for y in range(len(LABELS)):
        rows = np.flatnonzero(labels == y)
        copies[rows] = real[rows[0]]
    rng = lambda: np.random.default_rng(0)  # noqa: E731  the same real draws for both
    one_each = np.arange(len(labels))  # every row its own sample
    varied = realism(real, labels, one_each, rng())
    collapsed = realism(copies, labels, one_each, rng())
    assert collapsed > varied + 0.05, (float(collapsed), float(varied))
    # the self term pushes near-copies apart: one gradient step away from the collapse
    # lowers the term (and finite: no square root of a zero distance)
    x = copies + 0.01 * torch.randn(copies.shape, generator=torch.Generator().manual_seed(1))
    x = x.clamp(-1, 1).requires_grad_()
    before = realism(x, labels, one_each, rng())
    (grad,) = torch.autograd.grad(before, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    after = realism((x - 0.02 * grad / grad.abs().max()).detach(), labels, one_each, rng())
    assert after < before


class _FlatEvaluator:
    """Embeds an image as its unit-length pixel vector."""

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x.flatten(1).double(), dim=-1)


def test_realism_term_is_the_unbiased_mmd_with_pairs_of_one_sample_left_out():
    from craft.train.align import embedding_mmd_fn

    rng = np.random.default_rng(5)
    real = rng.integers(0, 256, (30, 2, 2, 1), dtype=np.uint8)
    real_labels = np.repeat([0, 1], 15)
    realism = embedding_mmd_fn(_FlatEvaluator(), real, real_labels, ["a", "b"], n_real=6)
    # by hand: the same embeddings, bandwidth and real draws
    emb = _FlatEvaluator().encode_images(torch.as_tensor(real).permute(0, 3, 1, 2) / 127.5 - 1)
    emb = emb.numpy()
    gen = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gen_labels, sources = np.array([0, 0, 0, 1, 1]), np.array([0, 1, 0, 2, 2])
    g = _FlatEvaluator().encode_images(gen).numpy()
    draws = np.random.default_rng(9)
    expected = []
    for y in (0, 1):
        e = emb[real_labels == y]
        sq = 2 - 2 * e @ e.T
        s = np.sqrt(np.median(sq[~np.eye(15, dtype=bool)]))
        k = lambda a, b, s=s: np.exp(-(2 - 2 * a @ b.T).clip(0) / (2 * s * s))  # noqa: E731
        r = e[draws.choice(15, 6, replace=False)]
        gy, src = g[gen_labels == y], sources[gen_labels == y]
        mmd = (k(r, r).sum() - 6) / 30 - 2 * k(gy, r).mean()
        apart = src[:, None] != src[None, :]
        if apart.any():  # label 0: rows 0 and 2 are draws of one sample, only 0-1 and 1-2 pair
            mmd += k(gy, gy)[apart].mean()
        expected.append(mmd)
    got = realism(gen, gen_labels, sources, np.random.default_rng(9))
    assert float(got) == pytest.approx(np.mean(expected), rel=1e-9)
    # pairing the draws of one sample would change it
    every = realism(gen, gen_labels, np.arange(5), np.random.default_rng(9))
    assert abs(float(every) - float(got)) > 1e-3


def test_realism_term_needs_two_different_real_images_of_every_label(world):
    from craft.train.align import embedding_mmd_fn

    evaluator = loaded(world)[0]
    same = np.zeros((3, RES, RES, CH), np.uint8)
    with pytest.raises(CraftError, match="all of 'normal' look the same to the reward evaluator"):
        embedding_mmd_fn(evaluator, same, np.array([0, 0, 1]), LABELS, 4)
    varied = np.random.default_rng(0).integers(0, 256, (4, RES, RES, CH), dtype=np.uint8)
    with pytest.raises(CraftError, match="and 'effusion' has 0: give the modality more"):
        embedding_mmd_fn(evaluator, varied, np.array([0, 0, 1, 1]), LABELS, 4)


def test_reward_power_is_cas_to_that_power_with_more_gradient_for_failures(world):
    from craft.train.align import cas_reward_fn

    evaluator, reference, knowledge = loaded(world)
    images = torch.rand(4, CH, RES, RES, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels, prompts = np.arange(4) % len(LABELS), [p[0] for p in prompts_by_label().values()]
    cas = cas_reward_fn(evaluator, knowledge, reference, LABELS, False)
    half = cas_reward_fn(evaluator, knowledge, reference, LABELS, False, power=0.5)
    x = images.clone().requires_grad_()
    r1 = cas(x, labels, prompts)
    torch.testing.assert_close(half(images, labels, prompts), r1.detach().sqrt())
    # d sqrt(c)/dx = dc/dx / (2 sqrt(c)): the lowest-CAS image gains the most gradient
    (g1,) = torch.autograd.grad(r1.sum(), x)
    x2 = images.clone().requires_grad_()
    (g2,) = torch.autograd.grad(half(x2, labels, prompts).sum(), x2)
    gain = g2.flatten(1).norm(dim=1) / g1.flatten(1).norm(dim=1)
    torch.testing.assert_close(gain, 0.5 / r1.detach().sqrt(), rtol=1e-3, atol=0)


def test_label_prompt_share_weights_the_plain_prompt():
    from craft.prompts import plain_prompt_weights

    np.testing.assert_allclose(
        plain_prompt_weights(["a, x", "a", "a, y"], "a", 0.5), [0.25, 0.5, 0.25]
    )
    np.testing.assert_allclose(plain_prompt_weights(["b"], "b", 0.5), [1.0])  # alone: always
    np.testing.assert_allclose(plain_prompt_weights(["a, x", "a", "a, y"], "a", 0.0), [0.5, 0, 0.5])


def test_adapt_captions_draw_the_plain_prompt_at_its_share(world):
    from craft.paths import Layout
    from craft.prompts import enriched_prompts, label_prompt
    from craft.train.adapt import training_captions

    data = stage_config(world)
    data["methods"]["lora"].update(prompts="enriched")
    labels = np.arange(400) % len(LABELS)
    bank = enriched_prompts(Layout(world / "results").knowledge(PHANTOM), PHANTOM, LABELS)
    uniform = training_captions(validate_config(data), PHANTOM, "lora", LABELS)
    ref = np.random.default_rng(1)  # as before the share existed: uniform over the bank
    assert uniform(labels, np.random.default_rng(1)) == [
        str(ref.choice(bank[LABELS[i]])) for i in labels
    ]
    data["methods"]["lora"].update(label_prompt_share=0.5)
    shared = training_captions(validate_config(data), PHANTOM, "lora", LABELS)
    drawn = shared(labels, np.random.default_rng(2))
    plain = [
        c == label_prompt("chest radiograph", LABELS[i]) for c, i in zip(drawn, labels, strict=True)
    ]
    assert abs(np.mean(plain) - 0.5) < 0.07
    assert all(c in bank[LABELS[i]] or p for c, i, p in zip(drawn, labels, plain, strict=True))
    assert {
        c for c, p in zip(drawn, plain, strict=True) if not p
    }  # the enriched ones are drawn too


def test_reward_batches_draw_prompts_with_the_weights(world, tmp_path):
    bank = prompts_by_label()
    a = AlignSettings()
    uniform = make_recipe(world, a, tmp_path / "u")
    # without weights: the draws of a uniform index per image (as before weights existed)
    rng, ref = np.random.default_rng(5), np.random.default_rng(5)
    labels, prompts, _ = uniform._reward_batch(rng)
    ref.integers(len(LABELS))
    assert list(prompts) == [bank[int(y)][int(ref.integers(len(bank[int(y)])))] for y in labels]
    # with weights: each label's first prompt half the time, never its last
    weights = {i: np.r_[0.5, np.full(len(p) - 2, 0.5 / (len(p) - 2)), 0.0] for i, p in bank.items()}
    weighted = make_recipe(world, a, tmp_path / "w", weights=weights)
    rng = np.random.default_rng(0)
    drawn = [weighted._reward_batch(rng) for _ in range(200)]
    firsts = [p == bank[int(y)][0] for ys, ps, _ in drawn for y, p in zip(ys, ps, strict=True)]
    lasts = [p == bank[int(y)][-1] for ys, ps, _ in drawn for y, p in zip(ys, ps, strict=True)]
    assert abs(np.mean(firsts) - 0.5) < 0.05 and not any(lasts)


def unet_state(r: RewardFinetune) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in r.gen.unet.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


# ----------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    "align",
    [
        AlignSettings(window="draft", k=2),
        AlignSettings(window="alignprop", gradient_checkpointing=True),
        AlignSettings(window="refl"),
        AlignSettings(window="draft-lv", lv_draws=2, kl_weight=1.0, diffusion_weight=0.5),
    ],
    ids=lambda a: a.window,
)
def test_each_window_trains_only_the_lora(world, tmp_path, align):
    r = make_recipe(world, align, tmp_path / "ckpt", settings(steps=2))
    before = unet_state(r)
    losses = r.train()
    after = unet_state(r)
    assert len(losses) == 2 and all(np.isfinite(losses))
    lora = [k for k in before if "lora_" in k]
    assert lora and all(r.history[-1][t] == r.history[-1][t] for t in ("reward", "loss"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "training changed nothing"
    assert all("lora_" in k for k in changed), [k for k in changed if "lora_" not in k][:3]
    assert any("lora_B" in k for k in changed)
    if align.kl_weight:
        assert r.history[-1]["kl"] >= 0 and "diffusion_loss" in r.history[-1]


def test_the_realism_term_joins_the_loss_of_every_draw(world, tmp_path):
    term = _realism(world, n_real=4)[0]
    seen = []

    def realism(images, labels, sources, rng):
        seen.append((len(images), labels, sources))
        return term(images, labels, sources, rng)

    with_term = AlignSettings(window="draft-lv", lv_draws=2, realism_weight=5.0, realism_real=4)
    r = make_recipe(world, with_term, tmp_path / "a", settings(steps=2, batch=8), realism=realism)
    r.train()
    assert np.isfinite(r.history[-1]["realism_mmd"])
    # both draws of each of the 8 samples, each draw pair under one source
    n, labels, sources = seen[-1]
    assert n == 16 and np.array_equal(sources, np.tile(np.arange(8), 2))
    assert np.bincount(labels).tolist() == [4, 4, 4, 4]
    plain = make_recipe(
        world, AlignSettings(window="draft-lv"), tmp_path / "b", settings(steps=2, batch=8)
    )
    plain.train()
    assert "realism_mmd" not in plain.history[-1]
    a, b = unet_state(r), unet_state(plain)
    assert any(not torch.equal(a[k], b[k]) for k in a if "lora_B" in k), "the term did nothing"
    with pytest.raises(ValueError, match="realism_weight needs a realism function"):
        make_recipe(world, with_term, tmp_path / "c", settings(steps=2, batch=8))
    # one image of a label per step: the self term would never run
    with pytest.raises(CraftError, match="batch of 4 over 1 process.*multiple of 8"):
        make_recipe(world, with_term, tmp_path / "d", settings(steps=2), realism=realism)


class _Counting:
    """An evaluator that counts its image embeddings."""

    def __init__(self, evaluator):
        self.evaluator, self.calls = evaluator, 0

    def __getattr__(self, name):
        return getattr(self.evaluator, name)

    def encode_images(self, x):
        self.calls += 1
        return self.evaluator.encode_images(x)


def test_shared_embeddings_return_the_last_ones_for_the_same_unchanged_tensor(world):
    from craft.train.align import SharedImageEmbeddings

    counting = _Counting(loaded(world)[0])
    shared = SharedImageEmbeddings(counting)
    x = torch.rand(3, CH, RES, RES) * 2 - 1
    first = shared.encode_images(x)
    assert shared.encode_images(x) is first and counting.calls == 1
    assert shared.name == counting.evaluator.name  # the rest is the evaluator's
    assert torch.equal(shared.encode_images(x.clone()), first) and counting.calls == 2
    x.mul_(0.5)  # changed in place: embedded again
    assert not torch.equal(shared.encode_images(x), first) and counting.calls == 3
    with torch.no_grad():  # another grad mode: embedded again, without a graph
        assert shared.encode_images(x).grad_fn is None and counting.calls == 4


def test_reward_and_realism_term_embed_each_step_once_and_train_as_apart(world, tmp_path):
    from craft.train.align import SharedImageEmbeddings, embedding_mmd_fn

    def run(shared: bool, name: str, steps: int = 2, half: bool = False):
        from craft.paths import Layout
        from craft.store import read_split

        counting = _Counting(loaded(world)[0])
        ev = SharedImageEmbeddings(counting) if shared else counting
        train = read_split(Layout(world / "results").data(PHANTOM), "train")
        term = embedding_mmd_fn(ev, train.images, train.labels, LABELS, 4)
        a = AlignSettings(realism_weight=2.0, realism_real=4)
        s = settings(steps=steps, batch=8)
        r = make_recipe(world, a, tmp_path / name, s, realism=term, evaluator=ev)
        rollout = r._rollout

        def half_precision(*args):  # as a bf16 generator on a GPU returns its images
            images, draws, kl = rollout(*args)
            return images.bfloat16(), draws, kl

        if half:
            r._rollout = half_precision
        counting.calls = 0
        r.train()
        return r, counting.calls

    r_shared, calls_shared = run(True, "shared")
    r_apart, calls_apart = run(False, "apart")
    assert (calls_shared, calls_apart) == (2, 4)  # one embedding per step, not one per term
    assert run(True, "half", steps=1, half=True)[1] == 1  # bf16 images: one float32 copy
    a, b = unet_state(r_shared), unet_state(r_apart)
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k), "nothing trained"
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=2e-5)  # adam: ~5e-3 a step
    assert r_shared.history[-1]["realism_mmd"] == pytest.approx(
        r_apart.history[-1]["realism_mmd"], rel=1e-5
    )


def test_the_realism_batch_check_sees_every_process_share(tmp_path):
    from craft.train.distributed import Parallel

    def check(batch: int, world: int) -> None:
        a = AlignSettings(realism_weight=1.0)
        for rank in range(world):  # every rank fails alike
            r = RewardFinetune(
                settings(batch=batch), a, Rollout(4, 2.0, RES, CH), tmp_path, Parallel(rank, world)
            )
            r._check_realism_batch(len(LABELS))

    check(8, 1)
    check(16, 2)
    # 8 over 2 processes: each process draws two labels, each twice: enough
    check(8, 2)
    with pytest.raises(CraftError, match="batch of 4 over 2 process.*gives 1 .*multiple of 16"):
        check(4, 2)
    with pytest.raises(CraftError, match="batch of 6 over 2 process.*gives 1"):
        check(6, 2)
    # three of each label in the batch, but one per process
    with pytest.raises(CraftError, match="batch of 12 over 3 process.*gives 1 .*multiple of 24"):
        check(12, 3)


def test_gradient_checkpointing_keeps_the_gradients_and_saves_activation_memory(tmp_path):
    """Per-block recomputation in the window's UNet call and in the VAE decode: the LoRA gets
    the gradients it gets without it, and far fewer bytes are kept for the backward pass."""
    from tests.conftest import backward_of

    def run(on: bool) -> tuple[dict[str, torch.Tensor], int]:
        gen = build_tiny_generator(TINY, 32, 3, WORDS, with_vae=True, seed=0)
        align = AlignSettings(window="draft", k=1, gradient_checkpointing=on)
        r = RewardFinetune(settings(batch=2), align, Rollout(3, 2.0, 32, 3), tmp_path / str(on))
        data = TrainingData(np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, int), None)
        reward = lambda x, y, p: torch.tanh(2 * x).pow(2).mean(dim=(1, 2, 3))  # noqa: E731
        r.setup(gen, data, {0: ["chest normal"], 1: ["chest nodule"]}, reward)
        return backward_of(lambda: r.loss(0), gen.unet)

    plain, plain_bytes = run(False)
    ckpt, ckpt_bytes = run(True)
    assert plain and plain.keys() == ckpt.keys() and all("lora_" in n for n in plain)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in plain.values())
    print(f"bytes kept for backward: {plain_bytes} -> {ckpt_bytes}")
    assert ckpt_bytes < 0.5 * plain_bytes, (plain_bytes, ckpt_bytes)


def test_a_bf16_frozen_unet_trains_a_float32_lora_under_autocast(world, tmp_path):
    """align's GPU set-up, here on the CPU: frozen weights in bf16, computed under bf16
    autocast, the evaluators in float32; the LoRA and its optimizer state stay float32, the
    base weights untouched, and the step's reward is the float32 recipe's within rounding."""
    align = AlignSettings(window="draft", k=1, eval_every=1)
    full = make_recipe(world, align, tmp_path / "f32", settings(steps=2), evaluation=True)
    r = make_recipe(
        world, align, tmp_path / "bf16", settings(steps=2), evaluation=True, dtype=torch.bfloat16
    )
    assert r.gen.mixed and not full.gen.mixed
    assert r.params and all(p.dtype == torch.float32 for p in r.params)
    base = {k: v.clone() for k, v in r.gen.unet.state_dict().items() if "lora_" not in k}
    with torch.no_grad():
        assert abs(r.loss(0).item() - full.loss(0).item()) < 0.05
    r.train()
    state = r.gen.unet.state_dict()
    assert all(state[k].dtype == torch.bfloat16 and torch.equal(state[k], base[k]) for k in base)
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in r.params)
    moments = [s["exp_avg"] for s in r.optimizer.state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    evals = [h for h in r.history if "eval_cas__siglip" in h]
    assert len(evals) >= 2 and all(np.isfinite(h["eval_cas__siglip"]) for h in evals)
    assert all(np.isfinite(h["loss"]) for h in r.history if "loss" in h)


def test_compile_wraps_the_unet_in_place_so_checkpoints_keep_their_names(world, tmp_path):
    """align.compile compiles lazily (at the first call, which this test does not make: that
    takes minutes on a CPU; bench/gpu.sh times it and compares its first loss with eager's)."""
    from torch._dynamo import config as dynamo

    eager = make_recipe(world, AlignSettings(), tmp_path / "e")
    compiled = make_recipe(world, AlignSettings(compile="default"), tmp_path / "c")
    assert getattr(eager.gen.unet, "_compiled_call_impl", None) is None
    assert compiled.gen.unet._compiled_call_impl is not None
    assert eager.gen.unet.state_dict().keys() == compiled.gen.unet.state_dict().keys()
    assert dynamo.recompile_limit >= 32


def test_a_compiled_recipe_trains_the_lora_that_eager_trains(world, tmp_path, monkeypatch):
    """align.compile end to end: two steps and three evaluations (rollout with gradients, KL
    with the adapter off, diffusion loss, no-grad evaluation at LoRA scale 0.5) with the UNet
    and the VAE decoder run by dynamo graphs, then the same LoRA as eager, in few enough
    graphs that dynamo never hits align's recompile limit (past it, it runs eager, silently).
    Dynamo's capture only (backend eager: AOT autograd doubles this test's minute and
    inductor's code generation takes minutes more here; bench/gpu.sh times inductor on a
    GPU)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    module_compile = torch.nn.Module.compile

    def capture_only(self, *args, mode=None, **kwargs):
        assert mode == "default"  # what align.compile asked for
        module_compile(self, backend="eager")

    monkeypatch.setattr(torch.nn.Module, "compile", capture_only)
    align = AlignSettings(
        window="draft", k=2, kl_weight=0.5, diffusion_weight=0.5, lora_scale=0.5, eval_every=1
    )
    trained = {}
    for name, a in (
        ("eager", align),
        ("compiled", align.model_copy(update={"compile": "default"})),
    ):
        torch._dynamo.reset()
        counters.clear()
        r = make_recipe(world, a, tmp_path / name, settings(steps=2), evaluation=True)
        r.train()
        trained[name] = (r._trainable_state(), r.history, dict(counters["stats"]))
    (eager, h_eager, _), (compiled, h_compiled, stats) = trained["eager"], trained["compiled"]
    # the UNet and the decoder ran as graphs: per grad mode, LoRA scale, adapter state (KL)
    # and batch shape; 6 here, and every one under the limit align sets
    assert 2 <= stats.get("unique_graphs", 0) < torch._dynamo.config.recompile_limit, stats
    assert eager.keys() == compiled.keys()
    moved = max(float((compiled[k] - eager[k]).abs().max()) for k in eager)
    step = max(float(v.abs().max()) for k, v in eager.items() if "lora_B" in k)
    print(f"compiled vs eager: max |difference| {moved:.2e}, largest lora_B {step:.2e}")
    assert step > 0 and moved < 1e-3 * step
    losses = [
        (a["loss"], b["loss"]) for a, b in zip(h_eager, h_compiled, strict=True) if "loss" in a
    ]
    assert len(losses) == 2 and all(a == pytest.approx(b, rel=1e-4) for a, b in losses)


def test_gradients_flow_only_through_the_window(world, tmp_path):
    """DRaFT-1 keeps the graph of exactly one UNet call (two with CFG batched into one)."""
    r = make_recipe(world, AlignSettings(window="draft", k=1), tmp_path / "ckpt")
    calls = []
    forward = r.gen.unet.forward

    def counting(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    r.gen.unet.forward = counting
    r.loss(0).backward()
    assert calls == [False, False, False, True]  # 4 denoising steps, CFG in one batch


def test_reward_goes_up(world, tmp_path):
    """The mean CAS reward on fixed images rises after a few DRaFT-1 steps (a broken gradient,
    sign or optimizer leaves it flat or lowers it)."""
    r = make_recipe(
        world,
        AlignSettings(window="draft", k=1),
        tmp_path / "ckpt",
        settings(steps=6, lr=3e-2, batch=8, every=100),
    )
    rng_state = [np.random.default_rng([99, i, 1]) for i in range(2)]

    def fixed_reward() -> float:
        vals = []
        with torch.no_grad():
            for i, _ in enumerate(rng_state):
                rng = np.random.default_rng([99, i, 1])
                labels, prompts, seeds = r._reward_batch(rng)
                images, _, _ = r._rollout(prompts, seeds, rng)
                vals.append(r.reward_fn(images, labels, prompts).mean().item())
        return float(np.mean(vals))

    before = fixed_reward()
    r.train()
    after = fixed_reward()
    print(f"fixed-batch reward {before:.4f} -> {after:.4f}")
    assert after > before + 0.05, (before, after)


# ----------------------------------------------------------------------------- early stopping


def scripted(r: RewardFinetune, per_step: list[np.ndarray], seen: dict) -> None:
    """Make ``r.evaluate`` return these out-of-family per-image scores, one array an
    evaluation, and record the weights each evaluation saw in ``seen``."""
    it = iter(per_step)

    def evaluate():
        seen[r.step] = {k: v.clone() for k, v in r._trainable_state().items()}
        x = next(it)
        return {"clip": np.full_like(x, 0.5), "siglip": x}

    r.evaluate = evaluate


def test_early_stopping_keeps_the_best_weights_and_logs_curves(world, tmp_path):
    align = AlignSettings(window="draft", eval_every=1, patience=1)
    r = make_recipe(world, align, tmp_path / "ckpt", settings(steps=4, lr=0.3), evaluation=True)
    r.train()
    evals = [h for h in r.history if "eval_cas__siglip" in h]
    assert evals[0]["step"] == 0  # the starting model is evaluated first
    assert {"eval_cas__clip", "eval_cas__siglip"} <= evals[-1].keys()
    best = max(evals, key=lambda h: h["eval_cas__siglip"])
    assert r.best.step == best["step"]
    stopped = r.step < 4
    assert stopped or r.best.bad_evals < 1
    kept = r.keep_best()
    assert kept == best["step"]
    if kept == 0:  # the starting model won: the LoRA is back to its initial (zero) update
        assert all(
            torch.count_nonzero(p) == 0 for n, p in r.gen.unet.named_parameters() if "lora_B" in n
        )
    curves = r.write_curves(tmp_path / "curves.csv").read_text().splitlines()
    assert curves[0] == "step,metric,value"
    assert any(",reward," in c for c in curves) and any("eval_cas__siglip" in c for c in curves)


def test_early_stopping_restores_the_weights_of_the_best_step(world, tmp_path):
    """The kept weights are those of the best evaluation, not the last step's (a snapshot
    that aliased the live parameters once kept the last weights, on CPU)."""
    align = AlignSettings(window="draft", eval_every=1, patience=1)
    r = make_recipe(world, align, tmp_path / "ckpt", settings(steps=4, lr=0.3), evaluation=True)
    seen = {}  # the out-of-family CAS peaks at step 1
    scripted(r, [np.full(4, v) for v in (0.1, 0.9, 0.2, 0.3, 0.4)], seen)
    r.train()
    assert r.step == 2 and r.best.step == 1  # stopped after one evaluation without improvement
    assert r.keep_best() == 1
    kept = r._trainable_state()
    assert_same(kept, seen[1])
    assert any(not torch.equal(kept[k], seen[2][k]) for k in kept)


# held-out scores of 8 images: the start, a best step, one as good within its noise (mean 0.02
# lower, per-image differences of sd 0.1: a paired SE of 0.035), one clearly worse (0.3 lower)
NOISE = np.array([0.1, -0.1, 0.15, -0.05, 0.0, -0.15, 0.05, 0.0]) - 0.02
START = np.linspace(0.1, 0.3, 8)
EVALS = [START, START + 0.5, START + 0.5 + NOISE, START + 0.2 + NOISE / 2, START + 0.1]


def test_tolerance_keeps_the_latest_weights_within_the_evaluation_noise(world, tmp_path, capsys):
    align = AlignSettings(window="draft", eval_every=1, patience=1, tolerance_se=1.0)
    r = make_recipe(world, align, tmp_path / "ckpt", settings(steps=4, lr=0.3), evaluation=True)
    seen = {}
    scripted(r, EVALS, seen)
    capsys.readouterr()
    r.train()
    logged = capsys.readouterr().err
    best = "below the best 0.7000 at step 1"
    assert f"step 2: CAS clip 0.5000, siglip 0.6800 (0.0200 {best}, 0.6 paired SE: kept)" in logged
    assert f"(0.3100 {best}, 17.5 paired SE; kept step 2, 1 without improvement)" in logged
    # step 2 is 0.02 below the best with a paired SE of 0.035: kept, and patience restarts,
    # so training goes on to step 3 (0.3 below: one evaluation without improvement, stop)
    assert r.step == 3
    b = r.best
    assert (b.step, b.best_step, b.bad_evals) == (2, 1, 1)
    assert b.score == pytest.approx(EVALS[1].mean())
    assert_same(r._trainable_state(), seen[3])
    assert r.keep_best() == 2
    assert_same(r._trainable_state(), seen[2])
    # without the tolerance the same scores stop at step 2 and keep step 1
    align = align.model_copy(update={"tolerance_se": None})
    r = make_recipe(world, align, tmp_path / "ckpt2", settings(steps=4, lr=0.3), evaluation=True)
    scripted(r, EVALS, seen := {})
    r.train()
    assert (r.step, r.best.step) == (2, 1)
    assert r.keep_best() == 1


def test_tolerance_is_counted_in_paired_standard_errors():
    b = _Best(score=float(EVALS[1].mean()), scores=EVALS[1])
    d = NOISE  # the per-image differences of EVALS[2] from the best
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert b.gap(EVALS[2]) == (pytest.approx(0.02), pytest.approx(se))
    assert b.within(EVALS[2], 1.0)
    assert 0.02 / se == pytest.approx(0.57, abs=0.01)
    assert not b.within(EVALS[2], 0.5)  # 0.57 SE below the best: outside half an SE
    assert not b.within(EVALS[3], 5.0)  # 17.5 SE below
    assert not b.within(EVALS[1] - 0.3, 5.0)  # the same shift on every image: SE 0
    assert b.within(EVALS[1], 0.0)  # equal scores
    assert not b.within(EVALS[2], None) and not _Best().within(EVALS[2], 1.0)


def test_the_kept_and_the_best_evaluation_survive_a_checkpoint(world, tmp_path):
    align = AlignSettings(window="draft", eval_every=1, patience=2, tolerance_se=1.0)
    r = make_recipe(world, align, tmp_path / "ckpt", settings(steps=4, lr=0.3), evaluation=True)
    r.best = _Best(0.7, 2, 1, r._trainable_state(), 1, EVALS[1])
    state = r.extra_state(tmp_path)
    fresh = make_recipe(world, align, tmp_path / "c2", settings(steps=4, lr=0.3), evaluation=True)
    fresh.load_extra_state(state, tmp_path)
    f = fresh.best
    assert (f.score, f.step, f.bad_evals, f.best_step) == (0.7, 2, 1, 1)
    np.testing.assert_array_equal(f.scores, EVALS[1])
    assert_same(f.weights, r.best.weights)
    # a checkpoint written before tolerance_se (no per-image scores) still loads
    old = {"history": [], "best": {"score": 0.7, "step": 2, "bad": 1}}
    fresh.load_extra_state(old, tmp_path)
    assert (fresh.best.best_step, fresh.best.scores) == (2, None)
    below, se = fresh.best.gap(EVALS[2])  # logged without a standard error, never within
    assert below == pytest.approx(0.7 - EVALS[2].mean()) and np.isnan(se)
    assert not fresh.best.within(EVALS[2], 1.0)


# ----------------------------------------------------------------------------- resume


RESUMED = AlignSettings(window="draft", kl_weight=0.5, diffusion_weight=0.5)


@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory) -> RewardFinetune:
    def run():
        r = make_recipe(world, RESUMED, tmp_path_factory.mktemp("ref") / "ckpt")
        r.train()
        return r

    return _one_thread(run)


def test_crash_then_resume_is_bit_exact(world, uninterrupted, tmp_path):
    ref = uninterrupted
    ref_losses = [h["loss"] for h in ref.history]
    expected = ref._trainable_state()
    align = RESUMED

    first = make_recipe(world, align, tmp_path / "ckpt")
    loss = first.loss

    def dying(i):
        if i == 4:
            raise KeyboardInterrupt("killed")
        return loss(i)

    first.loss = dying
    with pytest.raises(KeyboardInterrupt):
        first.train()
    second = make_recipe(world, align, tmp_path / "ckpt")
    assert second.step == 3
    assert second.train() == ref_losses[3:]  # losses of the resumed steps
    assert_same(second._trainable_state(), expected)
    assert [h["loss"] for h in second.history] == [h["loss"] for h in ref.history]


SCRIPT = """
import sys, time
import torch
torch.set_num_threads(1)
from pathlib import Path
from craft.train.reward import RewardFinetune
from tests.train.test_align import RESUMED, make_recipe

slow = RewardFinetune.loss
def loss(self, step):
    time.sleep(0.15)
    return slow(self, step)
RewardFinetune.loss = loss

r = make_recipe(Path(sys.argv[1]), RESUMED, Path(sys.argv[2]))
print("training", flush=True)
r.train()
"""


def test_sigterm_then_rerun_equals_uninterrupted_run(world, uninterrupted, tmp_path):
    expected = uninterrupted._trainable_state()

    script = tmp_path / "align.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "ckpt"
    _, err = sigterm_after_checkpoint(script, [str(world), str(ckpt)], ckpt)
    assert "Interrupted" in err and "SIGTERM" in err, err[-2000:]
    saved = int(torch.load(ckpt / "state.pt", weights_only=False)["step"])
    assert 3 <= saved < STEPS

    resumed = make_recipe(world, RESUMED, ckpt)
    assert resumed.step == saved
    resumed.train()
    assert_same(resumed._trainable_state(), expected)


# ----------------------------------------------------------------------------- the stage


def stage_config(world: Path, **align) -> dict:
    return {
        "results": str(world / "results"),
        "seeds": [0],
        "modalities": {
            PHANTOM: {
                "source": {"kind": "phantom", "phantom": PHANTOM, "n_per_label": 15},
                "labels": LABELS,
                "description": "chest radiograph",
                "resolution": RES,
                "channels": CH,
            }
        },
        "models": {"generator": str(world / "base")},
        "methods": {
            "zero-shot": {"kind": "zero-shot"},
            "lora": {
                "kind": "lora",
                "steps": 3,
                "batch_size": 4,
                "rank": 2,
                "target_modules": TARGETS,
            },
            "craft": {
                "kind": "craft",
                "init": "lora",
                "prompts": "enriched",
                "steps": 3,
                "batch_size": 4,
                "lr": 0.01,
                "rank": 2,
                "target_modules": TARGETS,
                "align": {
                    "sample_steps": 3,
                    "eval_every": 2,
                    "eval_per_label": 1,
                    "lora_scale": 0.5,
                    **align,
                },
            },
            "generic-reward": {
                "kind": "generic-reward",
                "init": "zero-shot",
                "steps": 2,
                "batch_size": 4,
                "rank": 2,
                "target_modules": TARGETS,
                "align": {"sample_steps": 3},
            },
        },
        "sampling": {"steps": 3, "guidance_scale": 2.0, "n_per_label": 2},
    }


def test_align_stage_writes_a_card_that_diffusers_loads(world, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from craft.models.card import ModelCard, load_card_generator
    from craft.models.tiny import tiny_vae
    from craft.paths import Layout
    from craft.store import SplitImages, read_split
    from craft.train.adapt import adapt
    from craft.train.align import align

    cfg = validate_config(stage_config(world))
    lay = Layout(cfg.results)
    with pytest.raises(CraftError, match="craft adapt -m phantom-cxr -k lora"):
        align(cfg, PHANTOM, "craft", 0, lay.card(PHANTOM, "craft", 0), threads=1)
    # adapt and align read the training split a batch (or a label's chunk) at a time, never
    # whole: with reads capped below the split's size they still train
    cap = len(LABELS) * 15 // 2
    assert len(read_split(lay.data(PHANTOM), "train")) > cap
    monkeypatch.setattr(SplitImages, "max_rows_per_read", cap)
    start_card = adapt(cfg, PHANTOM, "lora", 0, lay.card(PHANTOM, "lora", 0), threads=1)
    card = align(cfg, PHANTOM, "craft", 0, lay.card(PHANTOM, "craft", 0), threads=1)
    monkeypatch.setattr(SplitImages, "max_rows_per_read", None)
    run = lay.run(PHANTOM, "craft", 0)
    assert card.kind == "lora" and card.init == "lora" and card.lora_scale == 0.5
    # both cards name the torch build and CPU kernel level that trained them
    kernels = f"{torch.backends.cpu.get_cpu_capability()}), 1 thread"
    for trained in (start_card, card):
        assert trained.machine.startswith(f"torch {torch.__version__}, cpu ")
        assert trained.machine.endswith(kernels), trained.machine
    assert ModelCard.read(run / "model.json") == card
    assert not (run / "checkpoint").exists()
    assert "eval_cas__siglip" in (run / "curves.csv").read_text()

    # craft generate's path: the card's generator = base + init LoRA + 0.5 x reward LoRA
    _, gen = load_card_generator(run / "model.json")
    _, start = load_card_generator(lay.card(PHANTOM, "lora", 0))
    from craft.models.lora import fuse_lora, load_lora

    fuse_lora(start.unet)
    load_lora(start.unet, run / "reward-lora", scale=0.5)

    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, CH, RES, RES), generator=g)
    cond = torch.randn((2, TINY.text_max_length, TINY.cross_attention_dim), generator=g)

    def out(unet):
        with torch.no_grad():
            return unet(x, torch.tensor([5, 900]), encoder_hidden_states=cond).sample

    torch.testing.assert_close(out(gen.unet), out(start.unet), atol=1e-5, rtol=1e-4)
    base = load_generator(world / "base")
    assert (out(gen.unet) - out(base.unet)).abs().max() > 1e-4

    # outside craft: a diffusers pipeline loads the same LoRA
    pipe = StableDiffusionPipeline(
        vae=tiny_vae(CH),
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=base.unet,
        scheduler=base.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.load_lora_weights(run / "lora")
    torch.testing.assert_close(out(pipe.unet), out(gen.unet), atol=1e-6, rtol=0)

    # craft generate draws from the align run's card unchanged
    from craft.sample import generate
    from craft.store import open_h5

    samples = generate(cfg, PHANTOM, "craft", 0, run / "model.json", run / "samples.h5", 1)
    with open_h5(samples, "samples") as f:
        assert f["images"].shape == (2 * len(LABELS), RES, RES, CH)


def test_generic_reward_stage_from_zero_shot(world, tmp_path):
    from craft.paths import Layout
    from craft.train.adapt import adapt
    from craft.train.align import align

    cfg = validate_config(stage_config(world))
    lay = Layout(cfg.results)
    adapt(cfg, PHANTOM, "zero-shot", 0, lay.card(PHANTOM, "zero-shot", 0))
    card = align(cfg, PHANTOM, "generic-reward", 0, lay.card(PHANTOM, "generic-reward", 0), 1)
    assert card.lora_dir == "lora" and card.unet_dir is None and card.steps == 2


def test_the_align_stage_embeds_each_step_once_with_the_realism_term(world, monkeypatch):
    import craft.cas.stages
    from craft.paths import Layout
    from craft.train.adapt import adapt
    from craft.train.align import align

    data = stage_config(world)
    data["methods"]["generic-reward"].update(batch_size=8)  # two images of each label
    data["methods"]["generic-reward"]["align"].update(realism_weight=1.0, realism_real=4)
    cfg = validate_config(data)
    load = craft.cas.stages.load_configured_evaluator
    loaded_evaluators = []

    def counted(*args, **kwargs):
        loaded_evaluators.append(_Counting(load(*args, **kwargs)))
        return loaded_evaluators[-1]

    monkeypatch.setattr(craft.cas.stages, "load_configured_evaluator", counted)
    lay = Layout(cfg.results)
    adapt(cfg, PHANTOM, "zero-shot", 0, lay.card(PHANTOM, "zero-shot", 0))
    card = align(cfg, PHANTOM, "generic-reward", 0, lay.card(PHANTOM, "generic-reward", 0), 1)
    assert card.steps == 2 and len(loaded_evaluators) == 1  # no evaluations: the reward one
    # the real images once per label (fewer than a chunk each), then one call per step
    assert loaded_evaluators[0].calls == len(LABELS) + 2


def test_adapt_trains_with_the_methods_gradient_checkpointing(world, tmp_path, monkeypatch):
    import craft.train.adapt
    from craft.train.adapt import adapt

    seen = []
    base = craft.train.adapt.DiffusionFinetune

    class Spy(base):
        def setup(self, gen, data, channels):
            super().setup(gen, data, channels)
            seen.append(gen.unet.is_gradient_checkpointing)

    monkeypatch.setattr(craft.train.adapt, "DiffusionFinetune", Spy)
    for on in (False, True):
        data = stage_config(world)
        data["methods"]["lora"]["gradient_checkpointing"] = on
        adapt(validate_config(data), PHANTOM, "lora", 0, tmp_path / str(on) / "model.json")
    assert seen == [False, True]


def test_every_generator_stage_runs_its_gpu_precision(world, monkeypatch):
    """adapt (lora and full), align and generate as they run on a GPU (frozen parts bf16,
    bf16 autocast; models.gpu_precision), here on the CPU by making ``compute_dtype`` answer as
    it does for cuda: trained weights stay float32, and the bf16 images are the float32
    images within rounding."""
    import craft.sample
    import craft.train.adapt
    import craft.train.align
    from craft.models.card import load_card_generator
    from craft.paths import Layout
    from craft.sample import generate
    from craft.store import read_samples
    from craft.train.adapt import adapt
    from craft.train.align import align

    data = stage_config(world)
    data["methods"]["full"] = {"kind": "full", "steps": 2, "batch_size": 4}
    cfg, seed = validate_config(data), 1  # seed 1: runs apart from the other stage tests
    lay = Layout(cfg.results)
    run = lay.run(PHANTOM, "craft", seed)
    adapt(cfg, PHANTOM, "lora", seed, lay.card(PHANTOM, "lora", seed), threads=1)
    align(cfg, PHANTOM, "craft", seed, lay.card(PHANTOM, "craft", seed), threads=1)
    f32 = read_samples(generate(cfg, PHANTOM, "craft", seed, run / "model.json", run / "f32.h5"))

    asked = []

    def as_on_a_gpu(device, precision="bf16"):
        asked.append(precision)
        return torch.bfloat16

    for module in (craft.sample, craft.train.adapt, craft.train.align):
        monkeypatch.setattr(module, "compute_dtype", as_on_a_gpu)
    for method in ("lora", "full"):
        card = adapt(cfg, PHANTOM, method, seed, lay.card(PHANTOM, method, seed), threads=1)
        _, gen = load_card_generator(lay.card(PHANTOM, method, seed))
        assert gen.unet.dtype == torch.float32, method  # saved as trained: float32
        assert card.steps == data["methods"][method]["steps"]
    card = align(cfg, PHANTOM, "craft", seed, lay.card(PHANTOM, "craft", seed), threads=1)
    assert card.steps == 3 and (run / "reward-lora").is_dir()
    bf16 = read_samples(generate(cfg, PHANTOM, "craft", seed, run / "model.json", run / "b.h5"))
    assert asked == ["bf16"] * 4  # adapt lora, adapt full, align, generate

    # the bf16 run's reward LoRA differs from the float32 run's (another chain of roundings),
    # so compare the two precisions on one card: the float32 run's images against this one's
    assert bf16.images.shape == f32.images.shape and bf16.images.dtype == np.uint8
    monkeypatch.setattr(craft.sample, "compute_dtype", lambda device, precision: None)
    again = read_samples(generate(cfg, PHANTOM, "craft", seed, run / "model.json", run / "c.h5"))
    diff = np.abs(bf16.images.astype(int) - again.images.astype(int))
    assert 0 < diff.mean() < 8, diff.mean()  # bf16 did run, and rounding is all it changed


# ----------------------------------------------------------------------------- config


def _error(world, mutate) -> str:
    data = stage_config(world)
    mutate(data["methods"])
    with pytest.raises(CraftError) as info:
        validate_config(data)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_config_errors_name_the_field(tmp_path):
    w = tmp_path
    msg = _error(w, lambda m: m["craft"].pop("init"))
    assert "methods.craft.init" in msg and "init: lora-enriched" in msg
    msg = _error(w, lambda m: m["craft"].update(init="nope"))
    assert "methods.craft.init" in msg and "'nope'" in msg and "zero-shot" in msg
    msg = _error(w, lambda m: m["craft"].update(init="generic-reward"))
    assert "itself an align method" in msg
    msg = _error(w, lambda m: m["lora"].update(init="zero-shot"))
    assert "methods.lora.init" in msg
    msg = _error(w, lambda m: m["lora"].update(align={"k": 2}))
    assert "methods.lora.align" in msg
    msg = _error(w, lambda m: m["craft"]["align"].update(window="dpo"))
    assert "methods.craft.align.window" in msg and "draft" in msg
    msg = _error(w, lambda m: m["craft"]["align"].update(eval_every=0, patience=2))
    assert "methods.craft.align.patience" in msg and "eval_every" in msg
    msg = _error(w, lambda m: m["craft"]["align"].update(patience=None, tolerance_se=1.0))
    assert "methods.craft.align.tolerance_se" in msg and "patience" in msg
    msg = _error(w, lambda m: m["craft"]["align"].update(tolerance_se=-1))
    assert "methods.craft.align.tolerance_se" in msg
    msg = _error(w, lambda m: m["craft"]["align"].update(k=0))
    assert "methods.craft.align.k" in msg
    msg = _error(w, lambda m: m["craft"]["align"].update(reward="log-cas", reward_power=0.5))
    assert "methods.craft.align" in msg and "reward_power 0.5 applies to reward 'cas'" in msg
    msg = _error(w, lambda m: m["craft"]["align"].update(reward_power=2))
    assert "methods.craft.align.reward_power" in msg
    msg = _error(w, lambda m: m["generic-reward"]["align"].update(checklist_weight=1.0))
    assert "methods.generic-reward.align.checklist_weight" in msg and "kind craft" in msg
    msg = _error(w, lambda m: m["craft"]["align"].update(checklist_weight=-1))
    assert "methods.craft.align.checklist_weight" in msg
    msg = _error(w, lambda m: m["generic-reward"].update(label_prompt_share=0.5))
    assert "methods.generic-reward.label_prompt_share" in msg and "prompts: enriched" in msg
    msg = _error(w, lambda m: m["craft"].update(label_prompt_share=1.5))
    assert "methods.craft.label_prompt_share" in msg


def test_align_spec_names_its_start_and_evaluators_and_holds_only_its_variant(tmp_path):
    cfg = validate_config(stage_config(tmp_path))
    s = cfg.spec("align", PHANTOM, "craft").plain()
    # the start and the evaluators' weights arrive as files (the init card, references):
    # the spec names them, it does not nest their settings
    assert s["method"]["init"] == "lora" and "steps" not in str(s["method"]["init"])
    assert s["reward_evaluator"]["name"] == "clip"
    assert (s["out_of_family_evaluator"] or {}).get("name") in (None, "siglip")

    def digest_after(mutate) -> tuple[str, str]:
        data = stage_config(tmp_path)
        mutate(data)
        c = validate_config(data)
        return c.spec("align", PHANTOM, "craft").digest, c.spec("adapt", PHANTOM, "lora").digest

    base = digest_after(lambda d: None)
    init_changed = digest_after(lambda d: d["methods"]["lora"].update(steps=4))
    assert init_changed[0] == base[0] and init_changed[1] != base[1]
    other = digest_after(lambda d: d["methods"]["generic-reward"].update(steps=5))
    assert other == base

    # a setting that does nothing in its method's recipe reruns nothing when changed alone
    def align_of(method: str, **values):
        return lambda d: d["methods"][method].setdefault("align", {}).update(values)

    def reruns(before: dict, after: dict, method: str = "craft") -> bool:
        d0, d1 = digest_after(align_of(method, **before)), digest_after(align_of(method, **after))
        assert d0[1] == d1[1]  # never the init run
        return d0[0] != d1[0]

    assert not reruns({}, {"realism_real": 32})
    assert not reruns({}, {"gradient_checkpointing": True})  # memory, not what is learnt
    assert not reruns({}, {"compile": "default"})  # speed, not what is learnt
    assert reruns({"realism_weight": 1}, {"realism_weight": 1, "realism_real": 32})
    assert not reruns({"window": "alignprop"}, {"window": "alignprop", "k": 3})
    assert reruns({}, {"k": 3})  # window draft
    assert not reruns({}, {"lv_draws": 4})
    assert reruns({"window": "draft-lv"}, {"window": "draft-lv", "lv_draws": 4})
    quiet = {"eval_every": 0, "patience": None}
    assert not reruns(quiet, {**quiet, "eval_per_label": 8})
    assert reruns({}, {"eval_per_label": 8})
    assert not reruns({}, {"reward": "log-cas"}, "generic-reward")  # its reward is not CAS
    assert not reruns({}, {"reward_power": 0.5}, "generic-reward")
    # generic-reward trains on the plain label prompt whatever its prompts: generate reruns
    data = stage_config(tmp_path)
    data["methods"]["generic-reward"]["prompts"] = "enriched"
    cfgs = [validate_config(stage_config(tmp_path)), validate_config(data)]
    align_d = {c.spec("align", PHANTOM, "generic-reward").digest for c in cfgs}
    generate_d = {c.spec("generate", PHANTOM, "generic-reward").digest for c in cfgs}
    assert len(align_d) == 1 and len(generate_d) == 2
    assert reruns({}, {"reward_power": 0.5})
    assert reruns({}, {"checklist_weight": 1.0})  # craft's CAS reward
    # dumps (craft config show) keep what the file says
    assert AlignSettings(window="alignprop", k=3).model_dump()["k"] == 3


def test_default_config_methods():
    cfg = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    assert list(cfg.methods) == [
        "zero-shot",
        "lora",
        "lora-enriched",
        "full",
        "generic-reward",
        "craft",
    ]
    assert cfg.method("craft").init == "lora-enriched"
    assert cfg.method("generic-reward").kind == "generic-reward"


def test_gpus_need_deepspeed_and_a_batch_that_splits(tmp_path):
    data = stage_config(tmp_path)
    data["resources"] = {"align": {"gpu": 2}}
    with pytest.raises(CraftError, match=r"methods\.craft\.align\.zero_stage.*set zero_stage"):
        validate_config(data)
    for m in ("craft", "generic-reward"):
        data["methods"][m]["align"]["zero_stage"] = 2
    data["methods"]["craft"]["batch_size"] = 5
    with pytest.raises(CraftError, match=r"methods\.craft\.batch_size: 5 does not split"):
        validate_config(data)


def test_combined_lora_equals_fused_start_plus_scaled_reward(tmp_path):
    """Different target modules and ranks: stacking is exact (zeros where one is absent)."""
    from craft.models.lora import (
        add_lora,
        combine_loras,
        fuse_lora,
        load_lora,
        read_lora,
        save_lora,
        write_lora,
    )

    def lora_dir(name, rank, targets, seed):
        gen = build_tiny_generator(TINY, RES, CH, WORDS, seed=0)
        add_lora(gen.unet, rank, 2.0 * rank, targets, seed)
        with torch.no_grad():
            for n, p in gen.unet.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(seed))
        return save_lora(gen.unet, tmp_path / name).parent

    start = lora_dir("start", 2, ["to_q", "conv1"], 1)
    reward = lora_dir("reward", 3, ["to_k", "conv1", "conv2"], 2)
    write_lora(combine_loras([(read_lora(start), 1.0), (read_lora(reward), 0.7)]), tmp_path / "c")

    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, CH, RES, RES), generator=g)
    cond = torch.randn((2, TINY.text_max_length, TINY.cross_attention_dim), generator=g)

    def out(unet):
        with torch.no_grad():
            return unet(x, torch.tensor([5, 900]), encoder_hidden_states=cond).sample

    expected = build_tiny_generator(TINY, RES, CH, WORDS, seed=0).unet
    load_lora(expected, start)
    fuse_lora(expected)
    load_lora(expected, reward, scale=0.7)
    combined = build_tiny_generator(TINY, RES, CH, WORDS, seed=0).unet
    load_lora(combined, tmp_path / "c")
    torch.testing.assert_close(out(combined), out(expected), atol=1e-5, rtol=1e-4)
    plain = build_tiny_generator(TINY, RES, CH, WORDS, seed=0).unet
    assert (out(combined) - out(plain)).abs().max() > 1e-3
    assert read_lora(tmp_path / "c").r == 5


def _adapters_on(unet) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    assert layers, "the UNet holds no LoRA layer"
    return not layers[0].disable_adapters


def test_below_the_handover_the_starting_model_draws_and_the_gradient_still_reaches_the_lora(
    world, tmp_path
):
    """align.handover_t 500 on 4 trailing steps (999, 749, 499, 249): the last two UNet calls
    run with the reward LoRA off and add no KL term; the gradient of the final image reaches
    the LoRA through the two steps it drew; a draft window wholly below the handover, which
    could never train the LoRA, is refused."""
    r = make_recipe(world, AlignSettings(window="draft", k=4, kl_weight=1.0), tmp_path / "a")
    r.gen.handover_t = 500
    calls = []
    forward = r.gen.unet.forward

    def recording(x, t, *args, **kwargs):
        calls.append((int(t), _adapters_on(r.gen.unet)))
        return forward(x, t, *args, **kwargs)

    r.gen.unet.forward = recording
    rng = np.random.default_rng(0)
    _, prompts, seeds = r._reward_batch(rng)
    # a LoRA that does something, so that the start and the reward model differ
    for name, p in r.gen.unet.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    images, _, kl = r._rollout(prompts, seeds, rng)
    # each step: the guided call, then (with the LoRA on) the KL's call with adapters off
    assert [t for t, on in calls if on] == [999, 749]
    assert [t for t, on in calls if not on] == [999, 749, 499, 249]
    assert len(kl) == 2
    images.sum().backward()
    grads = [p.grad for n, p in r.gen.unet.named_parameters() if "lora_A" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert _adapters_on(r.gen.unet)  # on again after the rollout

    late = make_recipe(world, AlignSettings(window="draft", k=4), tmp_path / "b")
    late.gen.handover_t = 500
    late.a = AlignSettings(window="draft", k=2)
    with pytest.raises(CraftError, match="align.handover_t 500: the draft window"):
        late._check_handover(late.gen)


def test_a_handover_run_samples_the_start_below_and_the_reward_model_above(world, tmp_path):
    """The align stage with handover_t writes the start's LoRA beside the reward LoRA, and the
    card loads into a generator whose sampler equals a hand-written two-model loop."""
    from craft.models.card import ModelCard, load_card_generator
    from craft.models.lora import fuse_lora, load_lora
    from craft.models.sampling import guided_eps, initial_noise, sample
    from craft.paths import Layout
    from craft.train.adapt import adapt
    from craft.train.align import align

    cfg = validate_config(stage_config(world, handover_t=400, k=3))
    lay = Layout(cfg.results)
    adapt(cfg, PHANTOM, "lora", 0, lay.card(PHANTOM, "lora", 0), threads=1)
    card = align(cfg, PHANTOM, "craft", 0, lay.card(PHANTOM, "craft", 0), threads=1)
    run = lay.run(PHANTOM, "craft", 0)
    assert card.handover_t == 400 and card.start_lora_dir == "start-lora"
    assert ModelCard.read(run / "model.json") == card

    _, gen = load_card_generator(run / "model.json")
    assert gen.handover_t == 400
    _, start = load_card_generator(lay.card(PHANTOM, "lora", 0))
    _, reward = load_card_generator(lay.card(PHANTOM, "lora", 0))
    fuse_lora(reward.unet)
    load_lora(reward.unet, run / "reward-lora", scale=0.5)  # the config's lora_scale

    prompts, seeds = ["chest radiograph, nodule", "chest radiograph, normal"], [3, 4]
    got = sample(gen, prompts, seeds, RES, CH, steps=3, guidance=2.0)
    sched = start.scheduler
    sched.set_timesteps(3)
    with torch.no_grad():
        cond = start.encode_prompts(prompts)
        uncond = start.encode_prompts([""] * 2)
        x = initial_noise(start, seeds, RES) * sched.init_noise_sigma
        for t in sched.timesteps:  # 999, 666, 333: the last one the start's
            model = start if int(t) < 400 else reward
            eps = guided_eps(model, sched.scale_model_input(x, t), t, cond, uncond, 2.0)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    want = start.to_image_space(x, CH).float()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    gen.handover_t = None  # the reward model on every step draws something else
    assert (sample(gen, prompts, seeds, RES, CH, steps=3, guidance=2.0) - got).abs().max() > 1e-4


def test_the_cas_cap_flattens_the_reward_above_the_real_images_level(world):
    """align.cas_cap_quantile: each label's cap is that percentile of its real test images'
    CAS; an image whose CAS is above its cap earns the cap and no gradient, one below earns
    its CAS with its gradient."""
    from craft.cas.score import TextBank, cas_dimensions, cas_reward
    from craft.train.align import cas_cap

    evaluator, reference, knowledge = loaded(world)
    names = list(reference.label_names)
    for i, value in enumerate(cas_cap(reference, LABELS, 50)):
        real = reference.real_test_cas[reference.real_test_labels == names.index(LABELS[i])]
        assert float(value) == pytest.approx(float(np.median(real)), abs=1e-6)
    # the tail threshold is the same percentile at tail_quantile
    assert reference.tau_by_label[LABELS[1]] == pytest.approx(
        float(cas_cap(reference, LABELS, reference.tail_quantile)[1]), abs=1e-6
    )
    gone = copy.copy(reference)  # a reference without the test images of a label
    keep = reference.real_test_labels != names.index(LABELS[2])
    gone.real_test_cas = reference.real_test_cas[keep]
    gone.real_test_labels = reference.real_test_labels[keep]
    with pytest.raises(CraftError, match=f"no real test image of '{LABELS[2]}'.*cas_cap_quantile"):
        cas_cap(gone, LABELS, 75)

    g = torch.Generator().manual_seed(0)
    images = (torch.rand((8, CH, RES, RES), generator=g) * 2 - 1).requires_grad_(True)
    labels = np.zeros(8, dtype=np.int64)  # one label, so one cap: the batch's median CAS
    prompts = ["chest radiograph, normal"] * 8
    bank = TextBank.build(evaluator, knowledge, LABELS)
    cas = cas_dimensions(evaluator, images, labels, prompts, knowledge, reference, bank)["cas"]
    cap = torch.full((len(LABELS),), float(cas.detach().median()))
    r = cas_reward(evaluator, images, labels, prompts, knowledge, reference, bank, False, cap=cap)
    torch.testing.assert_close(r, torch.minimum(cas, cap[0]))
    above = cas.detach() > cap[0]
    assert 0 < int(above.sum()) < 8
    for rows, moves in ((above, False), (~above, True)):
        (grad,) = torch.autograd.grad(r[rows].sum(), images, retain_graph=True)
        assert bool(grad.abs().sum() > 0) == moves
    data = stage_config(world)
    data["methods"]["generic-reward"]["align"]["cas_cap_quantile"] = 75
    with pytest.raises(CraftError, match="cas_cap_quantile: only kind craft"):
        validate_config(data)


def test_reward_weights_mix_the_rewards_cas_and_leave_the_evaluations_cas_alone(world):
    """align.reward_weights: the reward is the CAS of the chosen dimensions alone (a zero
    weight leaves a dimension out); the reference the evaluations score with keeps
    cas.weights; a generic reward, which is no CAS, refuses the setting."""
    from craft.cas.reference import GEOMETRIC_FLOOR
    from craft.cas.score import cas_dimensions
    from craft.train.align import cas_reward_fn

    evaluator, reference, knowledge = loaded(world)
    weights = {
        "label_fidelity": 0.0,
        "prompt_alignment": 1.0,
        "checklist_adherence": 3.0,
        "plausibility": 0.0,
    }
    before = dict(reference.weights)
    reward = cas_reward_fn(evaluator, knowledge, reference, LABELS, False, weights=weights)
    assert reference.weights == before
    g = torch.Generator().manual_seed(1)
    images = torch.rand((6, CH, RES, RES), generator=g) * 2 - 1
    labels = np.array([0, 1, 2, 3, 0, 1])
    prompts = [f"chest radiograph, {LABELS[int(y)]}" for y in labels]
    s = cas_dimensions(evaluator, images, labels, prompts, knowledge, reference)
    pa, ca = (s[d].clamp(min=GEOMETRIC_FLOOR).log() for d in weights if weights[d])
    torch.testing.assert_close(reward(images, labels, prompts), torch.exp((pa + 3 * ca) / 4))
    assert not torch.allclose(reward(images, labels, prompts), s["cas"])
    data = stage_config(world)
    data["methods"]["generic-reward"]["align"]["reward_weights"] = weights
    with pytest.raises(CraftError, match="reward_weights: only kind craft"):
        validate_config(data)


def test_handover_cap_and_realism_features_rerun_align_only_where_they_are_set(world):
    """The settings are part of the align job's key when set; unset, the key is what it
    was before they existed (no site's align job reruns for a setting it does not use)."""
    plain = validate_config(stage_config(world))
    spec = plain.spec("align", PHANTOM, "craft")
    assert "handover_t" not in spec.plain()["method"]
    assert "cap_quantile" not in spec.plain()["method"]["reward"]
    assert "dimension_weights" not in spec.plain()["method"]["reward"]
    in_reward_space = validate_config(stage_config(world, realism_weight=1.0))
    realism = in_reward_space.spec("align", PHANTOM, "craft").plain()["method"]["realism"]
    assert realism == {"weight": 1.0, "real_per_label": 16}  # as before image statistics
    for extra in (
        {"handover_t": 400, "k": 3},
        {"cas_cap_quantile": 75},
        {"reward_weights": {"label_fidelity": 0.0}},
        {"realism_weight": 1.0, "realism_features": "image-statistics"},
    ):
        changed = validate_config(stage_config(world, **extra))
        assert changed.spec("align", PHANTOM, "craft").digest != spec.digest
        assert (
            changed.spec("align", PHANTOM, "generic-reward").digest
            == plain.spec("align", PHANTOM, "generic-reward").digest
        )


def test_the_align_stage_measures_realism_in_image_statistics_where_asked(world, monkeypatch):
    """align.realism_features image-statistics: the stage hands the realism term the image
    statistics fitted on the modality's training images, not the reward evaluator, and the
    term's value is in the curves."""
    import craft.train.align as align_module
    from craft.evaluate.features import ImageStatistics, to_float
    from craft.paths import Layout
    from craft.store import read_split
    from craft.train.adapt import adapt

    data = stage_config(world, realism_weight=1.0, realism_features="image-statistics")
    data["methods"]["craft"]["batch_size"] = 8  # two images of each label per step
    cfg = validate_config(data)
    lay = Layout(cfg.results)
    spaces = []
    real_fn = align_module.embedding_mmd_fn

    def spy(features, *args, **kwargs):
        spaces.append((features, kwargs.get("space"), kwargs.get("embeddings")))
        return real_fn(features, *args, **kwargs)

    monkeypatch.setattr(align_module, "embedding_mmd_fn", spy)
    adapt(cfg, PHANTOM, "lora", 0, lay.card(PHANTOM, "lora", 0), threads=1)
    align_module.align(cfg, PHANTOM, "craft", 0, lay.card(PHANTOM, "craft", 0), threads=1)
    [(space, name, real)] = spaces
    assert isinstance(space, ImageStatistics) and name == "image statistics"
    train = read_split(lay.data(PHANTOM), "train")  # fitted on the training images
    torch.testing.assert_close(space.mean, space.raw(to_float(train.images)).mean(0))
    # and the real pool is the fit's own pass over those images, row for row
    torch.testing.assert_close(real, space(to_float(train.images)))
    curves = (lay.run(PHANTOM, "craft", 0) / "curves.csv").read_text().splitlines()
    mmd = [float(line.split(",")[2]) for line in curves if ",realism_mmd," in line]
    assert len(mmd) == 3 and all(np.isfinite(mmd))


def test_draft_lv_renoises_an_image_alike_whichever_process_draws_it():
    """draft-lv's re-noising comes from each image's own noise seed, so two processes that
    split a batch (rows rank::2) draw what one process draws for those rows; draws differ."""
    from types import SimpleNamespace

    from craft.models.sampling import initial_noise
    from craft.train.reward import lv_seeds

    gen = SimpleNamespace(
        latent_scale=1, unet=SimpleNamespace(config=SimpleNamespace(in_channels=1)), device="cpu"
    )
    seeds = [11, 12, 13, 14, 15, 16]
    whole = initial_noise(gen, lv_seeds(seeds, 0), 4)
    for rank in (0, 1):
        torch.testing.assert_close(
            initial_noise(gen, lv_seeds(seeds[rank::2], 0), 4), whole[rank::2]
        )
    assert not torch.equal(initial_noise(gen, lv_seeds(seeds, 1), 4), whole)
    assert not torch.equal(whole[0], whole[1])
    # not the image's first noise either
    assert not torch.equal(initial_noise(gen, seeds, 4), whole)
