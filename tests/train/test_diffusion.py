"""The diffusion finetuning recipe: exact resume, refused foreign checkpoints, SIGTERM.

Every run starts from one tiny pixel-space generator saved once (a rebuilt one would differ:
see test_tokenizer_is_deterministic), trains with one CPU thread, and compares trainable
weights bitwise with an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from craft.config import TinyUNet
from craft.models.generator import load_generator, save_generator
from craft.models.lora import load_lora
from craft.models.tiny import build_tiny_generator
from craft.train.diffusion import DiffusionFinetune, FinetuneSettings, Interrupted, TrainingData
from tests.interrupt import sigterm_after_checkpoint

TINY = TinyUNet(
    block_out_channels=[8, 16, 16],
    attention_levels=[False, False, True],
    cross_attention_dim=16,
    text_layers=1,
    text_max_length=16,
)
RES, CH = 16, 1
LABELS = ["normal", "effusion"]
STEPS = 8


def training_data() -> TrainingData:
    """Eight random 16 px grayscale images with two labels, the same on every call."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, RES, RES, CH), dtype=np.uint8)
    labels = np.arange(8) % 2

    def caption(idx: np.ndarray, rng: np.random.Generator) -> list[str]:
        return [f"chest radiograph, {LABELS[i]}" for i in idx]

    return TrainingData(images, labels, caption)


def settings(
    mode: str, digest: str = "d1", steps: int = STEPS, every: int = 3, spec: dict | None = None
) -> FinetuneSettings:
    return FinetuneSettings(
        job_spec=spec,
        mode=mode,
        steps=steps,
        batch_size=4,
        lr=1e-2 if mode == "lora" else 1e-3,
        seed=7,
        config_digest=digest,
        rank=2,
        alpha=4.0,
        target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"],
        checkpoint_every=every,
    )


def recipe(base: Path, s: FinetuneSettings, ckpt: Path) -> DiffusionFinetune:
    """A new recipe on a freshly loaded generator, set up (and resumed if ``ckpt`` matches)."""
    r = DiffusionFinetune(s, ckpt)
    r.setup(load_generator(base), training_data(), CH)
    return r


def weights(r: DiffusionFinetune) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in r._trainable_state().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


class Crash(Exception):
    pass


def crash_at(r: DiffusionFinetune, step: int) -> None:
    """Make ``r`` die inside step ``step`` (before its update), like a killed job."""
    loss = r.loss

    def dying(i: int) -> torch.Tensor:
        if i == step:
            raise Crash(f"killed in step {i}")
        return loss(i)

    r.loss = dying


def checkpoint_step(ckpt: Path) -> int:
    return int(torch.load(ckpt / "state.pt", weights_only=False)["step"])


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("base") / "generator"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    save_generator(build_tiny_generator(TINY, RES, CH, seed=0), out)
    torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory) -> dict:
    """Uninterrupted runs of both modes: final trainable weights, losses, UNet output."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    for mode in ("lora", "full"):
        ckpt = tmp_path_factory.mktemp(f"ref-{mode}") / "checkpoint"
        r = recipe(base, settings(mode), ckpt)
        before = weights(r)
        losses = r.train()
        assert len(losses) == STEPS and all(np.isfinite(losses))
        after = weights(r)
        assert any(not torch.equal(before[k], after[k]) for k in before), "training changed nothing"
        assert checkpoint_step(ckpt) == 6  # kept until the final weights are saved
        r.cleanup()
        assert not ckpt.exists()
        out[mode] = {"weights": after, "losses": losses, "recipe": r}
    torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_resume_is_bit_exact(mode, base, reference, tmp_path):
    ckpt = tmp_path / "checkpoint"
    first = recipe(base, settings(mode), ckpt)
    crash_at(first, 4)  # checkpoint at step 3, step 3 done, killed in step 4
    with pytest.raises(Crash):
        first.train()
    assert checkpoint_step(ckpt) == 3
    assert sorted(os.listdir(tmp_path)) == ["checkpoint"]  # no .tmp / .old left behind
    assert sorted(os.listdir(ckpt)) == ["state.pt", "trainable.safetensors"]

    second = recipe(base, settings(mode), ckpt)  # a new object, a fresh generator
    assert second.step == 3
    losses = second.train()
    assert losses == reference[mode]["losses"][3:]
    assert_same_weights(weights(second), reference[mode]["weights"])
    second.cleanup()
    assert not ckpt.exists()


def test_checkpoint_of_other_settings_is_ignored(base, reference, tmp_path, capsys):
    ckpt = tmp_path / "checkpoint"
    old_spec = {"method": {"training": {"lr": 0.02, "steps": STEPS}}}
    first = recipe(base, settings("lora", digest="other", spec=old_spec), ckpt)
    crash_at(first, 4)
    with pytest.raises(Crash):
        first.train()
    assert checkpoint_step(ckpt) == 3
    capsys.readouterr()

    new_spec = {"method": {"training": {"lr": 0.01, "steps": STEPS}}}
    second = recipe(base, settings("lora", digest="d1", spec=new_spec), ckpt)
    assert second.step == 0
    # one line naming the setting that differs and its two values
    err = [line for line in capsys.readouterr().err.splitlines() if "not resuming" in line]
    assert len(err) == 1 and "method.training.lr: 0.02 -> 0.01" in err[0], err
    second.train()
    # Started over from the base weights, not from the foreign checkpoint's.
    assert_same_weights(weights(second), reference["lora"]["weights"])


def test_saved_weights_reload_the_trained_unet(base, reference, tmp_path):
    def out(unet):
        g = torch.Generator().manual_seed(0)
        x = torch.randn((2, CH, RES, RES), generator=g)
        cond = torch.randn((2, TINY.text_max_length, TINY.cross_attention_dim), generator=g)
        with torch.no_grad():
            return unet(x, torch.tensor([5, 900]), encoder_hidden_states=cond).sample

    r = reference["lora"]["recipe"]
    assert r.save_weights(tmp_path) == "lora"
    gen = load_generator(base)
    untrained = out(gen.unet)
    load_lora(gen.unet, tmp_path / "lora")
    torch.testing.assert_close(out(gen.unet), out(r.gen.unet), atol=1e-6, rtol=0)
    assert (out(gen.unet) - untrained).abs().max() > 1e-4

    from diffusers import UNet2DConditionModel

    r = reference["full"]["recipe"]
    assert r.save_weights(tmp_path) == "unet"
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert torch.equal(out(unet), out(r.gen.unet))


# ----------------------------------------------------------------------------- SIGTERM

SCRIPT = """
import sys, time
import torch
torch.set_num_threads(1)
from pathlib import Path
from tests.train.test_diffusion import recipe, settings
from craft.train.diffusion import DiffusionFinetune

slow_loss = DiffusionFinetune.loss
def loss(self, step):  # the same numbers, slowly, so the test can signal mid-run
    time.sleep(0.4)
    return slow_loss(self, step)
DiffusionFinetune.loss = loss

r = recipe(Path(sys.argv[1]), settings("lora"), Path(sys.argv[2]))
print("training", flush=True)
r.train()
"""


def test_sigterm_saves_a_checkpoint_that_resumes_exactly(base, reference, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "checkpoint"
    returncode, err = sigterm_after_checkpoint(script, [str(base), str(ckpt)], ckpt)
    assert returncode not in (0, -signal.SIGTERM), (returncode, err[-2000:])
    assert "Interrupted" in err and "SIGTERM" in err
    saved = checkpoint_step(ckpt)
    assert 3 <= saved < STEPS
    assert f"at step {saved}" in err  # the checkpoint is the one SIGTERM asked for
    assert sorted(os.listdir(ckpt)) == ["state.pt", "trainable.safetensors"]
    assert set(load_file(ckpt / "trainable.safetensors")) == set(reference["lora"]["weights"])

    resumed = recipe(base, settings("lora"), ckpt)
    assert resumed.step == saved
    resumed.train()
    assert_same_weights(weights(resumed), reference["lora"]["weights"])


def test_sigterm_in_process_raises_interrupted(base, tmp_path):
    r = recipe(base, settings("lora", steps=4, every=100), tmp_path / "checkpoint")
    loss = r.loss

    def signalling(i: int) -> torch.Tensor:
        if i == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss(i)

    r.loss = signalling
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted, match="step 2"):
        r.train()
    assert checkpoint_step(tmp_path / "checkpoint") == 2
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is restored


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_diffusion_loss_target_follows_the_prediction_type(kind, tmp_path):
    """The loss is zero exactly when the UNet predicts the scheduler's own target: the noise,
    the velocity sqrt(a)*noise - sqrt(1-a)*x0 (checked against the formula) or x0."""
    from craft.errors import CraftError
    from craft.train.diffusion import diffusion_target

    gen = build_tiny_generator(TINY.model_copy(update={"prediction_type": "epsilon"}), RES, CH)
    gen.scheduler.register_to_config(prediction_type=kind)
    save_generator(gen, tmp_path / "base")
    r = recipe(tmp_path / "base", settings("lora", steps=1), tmp_path / "ckpt")
    x0, _, noise, t = r._batch(0)
    target = diffusion_target(r.gen.scheduler, x0, noise, t)
    ab = r.gen.scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    expected = {
        "epsilon": noise,
        "v_prediction": ab.sqrt() * noise - (1 - ab).sqrt() * x0,
        "sample": x0,
    }[kind]
    torch.testing.assert_close(target, expected.to(target.dtype), rtol=1e-5, atol=1e-6)

    # a UNet that always predicts the right target: zero loss; the noise instead: not zero
    out = type("Out", (), {})
    out.sample = target
    r.gen.unet.forward = lambda *a, **k: out
    assert r.loss(0).item() == 0.0
    out.sample = noise + 0.5
    assert r.loss(0).item() > 0.1
    gen.scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(CraftError, match="predicts 'flow'"):
        diffusion_target(gen.scheduler, x0, noise, t)


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_bf16_frozen_parts_train_float32_weights(base, tmp_path, mode):
    """adapt's GPU set-up, here on the CPU: the frozen parts in bf16 (the UNet too under a
    LoRA), forward passes under bf16 autocast; the trained weights and their optimizer state
    stay float32, and the loss is the float32 recipe's within rounding."""
    f32 = recipe(base, settings(mode, steps=2), tmp_path / "f32")
    r = DiffusionFinetune(settings(mode, steps=2), tmp_path / "bf16")
    gen = load_generator(base).to("cpu", torch.bfloat16, unet_too=mode == "lora")
    assert gen.mixed and gen.text_encoder.dtype == torch.bfloat16
    r.setup(gen, training_data(), CH)
    with torch.no_grad():
        a, b = r.loss(0).item(), f32.loss(0).item()
    assert a != b and abs(a - b) < 0.05 * abs(b), (a, b)
    assert np.all(np.isfinite(r.train()))
    assert r.params and all(p.dtype == p.grad.dtype == torch.float32 for p in r.params)
    moments = [s["exp_avg"] for s in r.optimizer.state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)
    frozen = [p for n, p in gen.unet.named_parameters() if mode == "lora" and "lora_" not in n]
    assert all(p.dtype == torch.bfloat16 for p in frozen)


def test_trainable_parameters_in_bf16_are_refused(base, tmp_path):
    gen = load_generator(base).to("cpu", torch.bfloat16, unet_too=True)
    with pytest.raises(ValueError, match=r"trainable parameters in \['torch.bfloat16'\]"):
        DiffusionFinetune(settings("full"), tmp_path / "c").setup(gen, training_data(), CH)


def test_gradient_checkpointing_of_a_full_finetune_keeps_the_gradients_in_less_memory(
    base, tmp_path
):
    """methods.X.gradient_checkpointing: the UNet's blocks are recomputed in the backward pass;
    the full UNet gets the gradients it gets without it, and far fewer bytes are kept."""
    import dataclasses

    from tests.conftest import backward_of

    def run(on: bool) -> tuple[dict[str, torch.Tensor], int]:
        s = dataclasses.replace(settings("full"), gradient_checkpointing=on)
        r = recipe(base, s, tmp_path / str(on))
        r.gen.unet.train()
        return backward_of(lambda: r.loss(0), r.gen.unet)

    plain, plain_bytes = run(False)
    ckpt, ckpt_bytes = run(True)
    assert plain and plain.keys() == ckpt.keys()
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7)
    assert ckpt_bytes < 0.5 * plain_bytes, (plain_bytes, ckpt_bytes)


def test_training_from_the_data_file_is_training_from_memory(base, reference, tmp_path):
    """adapt's images come from the data file a batch at a time (craft.store.SplitImages,
    reads capped at one batch): the same losses and weights as from the array in memory."""
    from craft.store import STR, SplitImages, atomic_h5, image_dataset, read_split

    data = training_data()
    with atomic_h5(tmp_path / "d.h5", "data", "d", attrs={"labels": LABELS}) as f:
        g = f.create_group("train")
        image_dataset(g, "images", data.images)
        g.create_dataset("labels", data=data.labels)
        g.create_dataset("paths", data=[str(i) for i in range(8)], dtype=STR)
    split = read_split(tmp_path / "d.h5", "train")
    assert isinstance(split.images, SplitImages)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = DiffusionFinetune(settings("lora"), tmp_path / "checkpoint")
        r.setup(load_generator(base), TrainingData(split.images, split.labels, data.caption), CH)
        SplitImages.max_rows_per_read = 4  # a batch
        losses = r.train()
    finally:
        SplitImages.max_rows_per_read = None
        torch.set_num_threads(threads)
    assert losses == reference["lora"]["losses"]
    assert_same_weights(weights(r), reference["lora"]["weights"])
