"""LoRA on the UNet with peft, saved in diffusers' format.

``save_lora`` writes ``pytorch_lora_weights.safetensors`` (keys ``unet.*``, rank/alpha in the
safetensors metadata), so ``StableDiffusionPipeline.load_lora_weights(dir)`` works outside craft
and ``load_lora`` reads it back into a bare UNet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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
    """Freeze the UNet, add LoRA layers, and return the trainable LoRA parameters.

    The LoRA is float32 whatever the UNet's dtype (peft computes it in its own dtype and casts
    the result back), so a bf16 frozen UNet still trains float32 weights and optimizer state."""
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
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


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


# ----------------------------------------------------------------------------- combining LoRAs


@dataclass
class LoraWeights:
    """A diffusers LoRA file's content: peft keys (no ``unet.`` prefix), rank and alpha."""

    state: dict[str, torch.Tensor]
    r: int
    alpha: float
    target_modules: list[str]

    @property
    def scaling(self) -> float:
        """alpha / r: the factor peft applies to B @ A (no rsLoRA)."""
        return self.alpha / self.r


def read_lora(lora_dir: Path) -> LoraWeights:
    """Read ``pytorch_lora_weights.safetensors`` written by :func:`save_lora` (or diffusers)."""
    from safetensors import safe_open

    path = Path(lora_dir) / LORA_FILE
    if not path.is_file():
        raise CraftError(f"{lora_dir} holds no {LORA_FILE}: run the stage that trains it")
    with safe_open(path, "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
        state = {k.removeprefix("unet."): f.get_tensor(k) for k in f.keys()}
    ranks = {v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight")}
    r = int(meta.get("unet.r", max(ranks, default=0)))
    if len(ranks) != 1 or r not in ranks:
        raise CraftError(
            f"{path}: LoRA with ranks {sorted(ranks)} (metadata r={r}) is not supported"
        )
    alpha = float(meta.get("unet.lora_alpha", r))
    targets = list(meta.get("unet.target_modules", []))
    return LoraWeights(state, r, alpha, targets)


def combine_loras(parts: list[tuple[LoraWeights, float]]) -> LoraWeights:
    """One LoRA whose update is exactly sum_i w_i * (alpha_i / r_i) B_i A_i.

    Stacks the ranks (A_i along rows, w_i * scaling_i * B_i along columns) with alpha = the
    total rank (scaling 1), so a starting model's LoRA and a reward LoRA on top of it at a
    chosen scale become one diffusers file that ``pipe.load_lora_weights`` loads. A module one
    part does not adapt gets zeros in that part's rows.
    """
    modules = sorted(
        {k.removesuffix(".lora_A.weight") for w, _ in parts for k in w.state if "lora_A" in k}
    )
    state: dict[str, torch.Tensor] = {}
    for mod in modules:
        a_key, b_key = f"{mod}.lora_A.weight", f"{mod}.lora_B.weight"
        like = next(w for w, _ in parts if a_key in w.state)
        a_shape, b_shape = like.state[a_key].shape, like.state[b_key].shape
        a_rows, b_cols = [], []
        for w, scale in parts:
            if a_key in w.state:
                a_rows.append(w.state[a_key].float())
                b_cols.append(w.state[b_key].float() * (scale * w.scaling))
            else:
                a_rows.append(torch.zeros((w.r, *a_shape[1:])))
                b_cols.append(torch.zeros((b_shape[0], w.r, *b_shape[2:])))
        state[a_key] = torch.cat(a_rows, dim=0).contiguous()
        state[b_key] = torch.cat(b_cols, dim=1).contiguous()
    r = sum(w.r for w, _ in parts)
    targets = sorted({t for w, _ in parts for t in w.target_modules})
    return LoraWeights(state, r, float(r), targets)


def write_lora(weights: LoraWeights, out_dir: Path) -> Path:
    """Write a :class:`LoraWeights` as ``out_dir/pytorch_lora_weights.safetensors``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {
        "r": weights.r,
        "lora_alpha": weights.alpha,
        "target_modules": weights.target_modules,
    }
    StableDiffusionPipeline.save_lora_weights(
        out_dir, unet_lora_layers=weights.state, unet_lora_adapter_metadata=metadata
    )
    return out_dir / LORA_FILE


def fuse_lora(unet: UNet2DConditionModel) -> None:
    """Merge the loaded LoRA into the UNet's weights and drop the adapter (a plain UNet again)."""
    unet.fuse_lora(lora_scale=1.0)
    unet.unload_lora()
    unet.requires_grad_(False)
