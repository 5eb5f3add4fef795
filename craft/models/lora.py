"""LoRA on the UNet with peft, saved in diffusers' format.

``save_lora`` writes ``pytorch_lora_weights.safetensors`` (keys ``unet.*``, rank/alpha in the
safetensors metadata), so ``StableDiffusionPipeline.load_lora_weights(dir)`` works outside craft
and ``load_lora`` reads it back into a bare UNet.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from craft.errors import CraftError

LORA_FILE = "pytorch_lora_weights.safetensors"
ADAPTER = "craft"


def add_lora(
    unet: UNet2DConditionModel,
    rank: int,
    alpha: float | None,
    target_modules: list[str],
    seed: int = 0,
) -> list[torch.nn.Parameter]:
    """Freeze the UNet, add LoRA layers, and return the trainable LoRA parameters."""
    unet.requires_grad_(False)
    present = {name.split(".")[-1] for name, _ in unet.named_modules()}
    leaf = {t.split(".")[-1] for t in target_modules}
    if not leaf & present:
        raise CraftError(
            f"LoRA target_modules {target_modules} match no UNet module; "
            "fix methods.<name>.target_modules (e.g. to_q, to_k, to_v, to_out.0)"
        )
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        init_lora_weights="gaussian",
        target_modules=target_modules,
    )
    torch.manual_seed(seed)
    unet.add_adapter(config, adapter_name=ADAPTER)
    return [p for p in unet.parameters() if p.requires_grad]


def lora_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The LoRA weights in peft keys (lora_A/B, no ``unet.`` prefix), which diffusers loads whole.

    Not ``convert_state_dict_to_diffusers``: it renames only attention keys (lora.down/up), and
    diffusers then silently drops those from a file that also holds conv lora_A/B keys.
    """
    return get_peft_model_state_dict(unet, adapter_name=ADAPTER)


def save_lora(unet: UNet2DConditionModel, out_dir: Path) -> Path:
    """Write ``out_dir/pytorch_lora_weights.safetensors`` in diffusers' format."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = unet.peft_config[ADAPTER]
    metadata = {
        "r": cfg.r,
        "lora_alpha": cfg.lora_alpha,
        "target_modules": sorted(cfg.target_modules),
    }
    state = {k: v.detach().float().cpu().contiguous() for k, v in lora_state_dict(unet).items()}
    StableDiffusionPipeline.save_lora_weights(
        out_dir, unet_lora_layers=state, unet_lora_adapter_metadata=metadata
    )
    return out_dir / LORA_FILE


def load_lora(unet: UNet2DConditionModel, lora_dir: Path, scale: float = 1.0) -> None:
    """Load a diffusers-format LoRA into a bare UNet, at ``scale`` (0 = the base model)."""
    lora_dir = Path(lora_dir)
    if not (lora_dir / LORA_FILE).is_file():
        raise CraftError(f"{lora_dir} holds no {LORA_FILE}: run the stage that trains it")
    unet.load_lora_adapter(lora_dir, prefix="unet", adapter_name=ADAPTER, weight_name=LORA_FILE)
    unet.set_adapters([ADAPTER], weights=[scale])
