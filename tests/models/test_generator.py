"""The model contract: tokenizer, save/load in the Stable Diffusion layout, seeded sampling, LoRA.

The LoRA file must load outside craft with diffusers' own ``pipe.load_lora_weights(dir)`` and
give exactly the UNet that was trained.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from craft.config import MethodConfig, TinyUNet
from craft.errors import CraftError
from craft.models.generator import load_generator, save_generator
from craft.models.lora import LORA_FILE, add_lora, load_lora, save_lora
from craft.models.sampling import initial_noise, sample, to_model_input, to_uint8
from craft.models.tiny import build_tiny_generator
from craft.models.tokenizer import build_tokenizer

TINY = TinyUNet(
    block_out_channels=[8, 16, 16],
    attention_levels=[False, False, True],
    cross_attention_dim=16,
    text_layers=1,
    text_max_length=16,
)
PROMPTS = ["a chest radiograph showing effusion", "a dermoscopy image", ""]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pixel_built(tmp_path_factory):
    """(dir, generator): a pixel-space generator (16 px, grayscale) and where it was saved."""
    out = tmp_path_factory.mktemp("pixel") / "generator"
    gen = build_tiny_generator(TINY, 16, 1, seed=3)
    save_generator(gen, out, provenance={"by": "test"})
    return out, gen


@pytest.fixture(scope="module")
def vae_built(tmp_path_factory):
    """(dir, generator): a latent generator (32 px RGB through a tiny AutoencoderKL), as SD is."""
    out = tmp_path_factory.mktemp("latent") / "generator"
    gen = build_tiny_generator(TINY, 32, 3, with_vae=True, seed=4)
    save_generator(gen, out)
    return out, gen


@pytest.fixture(scope="module")
def pixel_dir(pixel_built):
    return pixel_built[0]


@pytest.fixture(scope="module")
def vae_dir(vae_built):
    return vae_built[0]


def unet_out(gen, seed: int = 0) -> torch.Tensor:
    """The UNet's noise prediction on fixed inputs (no grad)."""
    g = torch.Generator().manual_seed(seed)
    c = gen.unet.config
    x = torch.randn((2, c.in_channels, c.sample_size, c.sample_size), generator=g)
    with torch.no_grad():
        cond = gen.encode_prompts(PROMPTS[:2])
        return gen.unet(x, torch.tensor([10, 700]), encoder_hidden_states=cond).sample


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_keeps_known_words_whole_and_falls_back_to_characters(tmp_path):
    tok = build_tokenizer(["pneumothorax", "Atelectasis"], model_max_length=16)

    def pieces(text):
        return tok.convert_ids_to_tokens(tok(text, add_special_tokens=False).input_ids)

    assert pieces("cardiomegaly") == ["cardiomegaly</w>"]  # a base word
    assert pieces("pneumothorax") == ["pneumothorax</w>"]  # an added word
    assert pieces("atelectasis") == ["atelectasis</w>"]  # added words are lower-cased
    assert pieces("Cardiomegaly effusion.") == ["cardiomegaly</w>", "effusion</w>", ".</w>"]
    unknown = pieces("zqxj")
    assert len(unknown) > 1 and "".join(unknown).replace("</w>", "") == "zqxj"
    ids = tok("zqxj ~ 7", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids or tok.unk_token == tok.pad_token
    assert all(t != tok.unk_token for t in tok.convert_ids_to_tokens(ids))

    padded = tok("a lung nodule", padding="max_length", max_length=16, truncation=True).input_ids
    assert len(padded) == 16
    assert tok("a lung nodule").input_ids == tok("A  lung NODULE").input_ids
    tok.save_pretrained(tmp_path)
    again = type(tok).from_pretrained(tmp_path)
    assert again("a lung nodule zqxj").input_ids == tok("a lung nodule zqxj").input_ids


def test_tokenizer_is_deterministic():
    vocabs = [build_tokenizer(["pneumothorax"]).get_vocab() for _ in range(3)]
    assert vocabs[0] == vocabs[1] == vocabs[2]


# ----------------------------------------------------------------------------- save / load


def test_pixel_generator_round_trip(pixel_built):
    pixel_dir, built = pixel_built
    loaded = load_generator(pixel_dir)
    assert loaded.vae is None and loaded.latent_scale == 1 and loaded.image_channels == 1
    assert torch.equal(unet_out(built), unet_out(loaded))
    with torch.no_grad():
        assert torch.equal(built.encode_prompts(PROMPTS), loaded.encode_prompts(PROMPTS))
    assert loaded.scheduler.config.clip_sample is True  # pixel space keeps x0 in [-1, 1]
    assert not any(p.requires_grad for p in loaded.text_encoder.parameters())
    index = json.loads((pixel_dir / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert "vae" not in index and index["craft_provenance"] == {"by": "test"}

    other = load_generator(pixel_dir)
    torch.nn.init.normal_(other.unet.conv_out.weight)
    assert not torch.allclose(unet_out(other), unet_out(loaded))  # the comparison can fail

    spaced = load_generator(pixel_dir, timestep_spacing="leading")
    assert spaced.scheduler.config.timestep_spacing == "leading"


def test_latent_generator_saves_sd_layout_and_loads_vae(vae_built):
    vae_dir, built = vae_built
    for part, cls in [
        ("unet", "UNet2DConditionModel"),
        ("vae", "AutoencoderKL"),
        ("text_encoder", "CLIPTextModel"),
        ("scheduler", "DDIMScheduler"),
    ]:
        cfg = json.loads(next((vae_dir / part).glob("*config.json")).read_text())
        assert cfg.get("_class_name", cls) == cls or cls in cfg.get("architectures", [])
    assert json.loads((vae_dir / "model_index.json").read_text())["vae"] == [
        "diffusers",
        "AutoencoderKL",
    ]

    gen = load_generator(vae_dir)
    assert gen.vae is not None
    assert gen.latent_scale == 4 and gen.image_channels == 3
    assert gen.unet.config.in_channels == gen.vae.config.latent_channels
    assert gen.scheduler.config.clip_sample is False  # latents have no fixed range
    for a, b in zip(built.vae.state_dict().values(), gen.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(unet_out(built), unet_out(gen))

    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = gen.to_model_space(images, torch.Generator().manual_seed(0))
        assert latents.shape == (2, 4, 8, 8)
        back = gen.to_image_space(latents, 1)  # RGB model, grayscale modality
    assert back.shape == (2, 1, 32, 32) and back.abs().max() <= 1


def test_load_generator_errors_are_craft_errors(tmp_path):
    with pytest.raises(CraftError, match="neither a local dir nor a hub id"):
        load_generator(tmp_path / "absent")
    # a relative dir that is not there (from another working directory): no hub lookup
    with pytest.raises(CraftError, match=r"relative dirs are taken from /"):
        load_generator("assets/phantom-foundation/no-such-modality")
    with pytest.raises(CraftError, match=r"has no unet/, text_encoder/.*pipeline folder"):
        load_generator(tmp_path)  # exists, but holds no model


def test_a_pipelines_unet_subfolder_is_refused_naming_the_pipeline_folder(vae_dir):
    with pytest.raises(CraftError) as err:
        load_generator(vae_dir / "unet")
    assert str(err.value) == (
        f"generator '{vae_dir / 'unet'}' is the 'unet' subfolder of a pipeline; set "
        f"models.generator to the pipeline folder '{vae_dir}'"
    )


# ----------------------------------------------------------------------------- sampling


def test_sampling_is_deterministic_per_image_seed(pixel_dir):
    gen = load_generator(pixel_dir)
    one = sample(gen, [PROMPTS[0]], [7], 16, 1, steps=3, guidance=3.0)
    again = sample(gen, [PROMPTS[0]], [7], 16, 1, steps=3, guidance=3.0)
    assert torch.equal(one, again)
    assert one.shape == (1, 1, 16, 16) and one.abs().max() <= 1

    batch = sample(gen, [PROMPTS[1], PROMPTS[0], PROMPTS[0]], [5, 7, 9], 16, 1, 3, 3.0)
    # The same (prompt, seed) drawn in another batch: the same image (CPU kernels may round
    # differently per batch size, so not bitwise).
    torch.testing.assert_close(batch[1], one[0], atol=1e-4, rtol=0)
    assert np.abs(to_uint8(batch[1:2]).astype(int) - to_uint8(one).astype(int)).max() <= 1
    assert (batch[2] - batch[1]).abs().max() > 0.05  # another seed, another image

    noise = initial_noise(gen, [7, 9], 16)
    assert torch.equal(noise[0], initial_noise(gen, [7], 16)[0])


def test_latent_sampling_is_deterministic(vae_dir):
    gen = load_generator(vae_dir)
    a = sample(gen, [PROMPTS[0]], [11], 32, 3, steps=2, guidance=2.0)
    b = sample(gen, [PROMPTS[1], PROMPTS[0]], [3, 11], 32, 3, steps=2, guidance=2.0)
    assert a.shape == (1, 3, 32, 32)
    torch.testing.assert_close(b[1], a[0], atol=1e-4, rtol=0)


def test_uint8_conversion_round_trip():
    arr = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3) * 2
    x = to_model_input(arr)
    assert x.shape == (2, 3, 4, 4) and x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(to_uint8(x), arr)


# ----------------------------------------------------------------------------- LoRA


def trained_lora_unet(source, rank=2, alpha=4.0, steps=3):
    """A loaded generator whose UNet got LoRA layers and a few optimizer steps."""
    gen = load_generator(source)
    targets = MethodConfig(kind="lora").target_modules  # the config default: attention + convs
    params = add_lora(gen.unet, rank, alpha, list(targets), seed=0)
    assert params and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in gen.unet.named_parameters() if "lora" not in n)
    opt = torch.optim.AdamW(params, lr=1e-2)
    c = gen.unet.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn((2, c.in_channels, c.sample_size, c.sample_size), generator=g)
    with torch.no_grad():
        cond = gen.encode_prompts(PROMPTS[:2])
    for _ in range(steps):
        loss = (
            gen.unet(x, torch.tensor([100, 500]), encoder_hidden_states=cond).sample.pow(2).mean()
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    gen.unet.eval()
    return gen


def diffusers_pipeline(source):
    """A plain diffusers StableDiffusionPipeline built from a saved generator's parts."""
    from diffusers import StableDiffusionPipeline

    gen = load_generator(source)
    return StableDiffusionPipeline(
        unet=gen.unet,
        vae=gen.vae,
        text_encoder=gen.text_encoder,
        tokenizer=gen.tokenizer,
        scheduler=gen.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ), gen


def test_lora_loads_in_diffusers_pipeline_and_in_craft(vae_dir, tmp_path):
    trained = trained_lora_unet(vae_dir)
    y_trained = unet_out(trained)
    path = save_lora(trained.unet, tmp_path / "lora")
    assert path == tmp_path / "lora" / LORA_FILE
    saved = load_file(path)
    n_lora = sum(1 for n, _ in trained.unet.named_parameters() if "lora" in n)
    assert len(saved) == n_lora and all(k.startswith("unet.") for k in saved)
    assert any(".attn2.to_k." in k for k in saved) and any(".conv1." in k for k in saved)

    pipe, base = diffusers_pipeline(vae_dir)
    y_base = unet_out(base)
    pipe.load_lora_weights(tmp_path / "lora")  # diffusers' own loader, outside craft
    y_pipe = unet_out(base)
    assert (y_pipe - y_base).abs().max() > 1e-3, "the LoRA changed nothing"
    torch.testing.assert_close(y_pipe, y_trained, atol=1e-6, rtol=0)

    ours = load_generator(vae_dir)
    load_lora(ours.unet, tmp_path / "lora")
    torch.testing.assert_close(unet_out(ours), y_pipe, atol=1e-6, rtol=0)

    off = load_generator(vae_dir)
    load_lora(off.unet, tmp_path / "lora", scale=0.0)
    torch.testing.assert_close(unet_out(off), y_base, atol=1e-6, rtol=0)


def test_lora_errors(pixel_dir, tmp_path):
    gen = load_generator(pixel_dir)
    with pytest.raises(CraftError, match="target_modules"):
        add_lora(gen.unet, 2, None, ["no_such_layer"])
    with pytest.raises(CraftError, match=LORA_FILE):
        load_lora(gen.unet, tmp_path)


def test_bf16_frozen_parts_keep_latents_noise_and_lora_in_float32():
    """A GPU's reward finetuning set-up (frozen parts bf16): the chain's noise, the encoded
    latents of the diffusion loss and the LoRA stay float32, so the noising of the smallest
    timesteps is not rounded away."""
    gen = build_tiny_generator(TINY, 32, 3, ["chest"], with_vae=True, seed=0)
    gen.to("cpu", torch.bfloat16, unet_too=True)
    assert gen.unet.dtype == gen.vae.dtype == gen.text_encoder.dtype == torch.bfloat16
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = gen.to_model_space(images, generator=torch.Generator().manual_seed(1))
    assert z.dtype == torch.float32 and z.shape == (2, 4, 8, 8)
    assert initial_noise(gen, [1, 2], 32).dtype == torch.float32
    params = add_lora(gen.unet, 2, 2.0, ["to_q", "to_v"], seed=0)
    assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    assert all(
        p.dtype == torch.bfloat16 for n, p in gen.unet.named_parameters() if "lora_" not in n
    )
    # the noising at t=1 survives in float32 (on bf16 latents it rounds to 0 here)
    t = torch.tensor([1, 1])
    noisy = gen.scheduler.add_noise(z, torch.randn_like(z), t)
    assert (noisy - z).abs().max() > 0


def test_compute_dtype_is_bf16_on_a_gpu_unless_float32_is_asked_for():
    from craft.models.generator import compute_dtype

    assert compute_dtype(torch.device("cuda", 0)) == torch.bfloat16
    assert compute_dtype(torch.device("cuda"), "float32") is None
    assert compute_dtype(torch.device("cpu")) is None


def test_latent_sampling_in_bf16_returns_float32_images_near_float32_ones(caplog):
    """craft generate on a GPU: every part bf16, computing under autocast (``Generator.mixed``,
    set by the cast and unset by a float32 one); the images come back float32. The cast gives
    no warning (diffusers warns on casting a model with no module to keep in float32)."""
    gens = [build_tiny_generator(TINY, 32, 3, ["chest"], with_vae=True, seed=0) for _ in "ab"]
    with caplog.at_level("WARNING"):
        gens[0].to("cpu", None, unet_too=True)
        gens[1].to("cpu", torch.bfloat16, unet_too=True)
    assert "float32" not in caplog.text, caplog.text
    assert gens[1].mixed and not gens[0].mixed
    f32, bf16 = (sample(g, ["chest", ""], [3, 4], 32, 3, steps=3) for g in gens)
    assert bf16.dtype == torch.float32 and bf16.shape == f32.shape == (2, 3, 32, 32)
    err = (bf16 - f32).abs().mean().item()
    assert 0 < err < 0.05, err
    gens[1].to("cpu", torch.float32, unet_too=True)
    assert not gens[1].mixed
