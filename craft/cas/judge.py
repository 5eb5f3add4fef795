"""An MLLM judge of checklist items: P("yes") to each item's question (VQAScore style).

VQAScore (Lin et al. 2024, "Evaluating text-to-visual generation with image-to-text
generation") scores an image-text pair by a multimodal LLM's probability of answering "Yes"
to a question about the image. Here each checklist item's ``question`` is asked about each
image and P(item holds) = P("yes") renormalised over {"yes", "no"} (so it is comparable to the
VLM's statement-vs-negation probability), batched over images per question.

Any Hugging Face image-text-to-text model with a processor loads (LLaVA, LLaVA-Med,
Qwen2-VL, MedGemma; by hub id or dir). When the processor gives fixed-size pixel tensors
(N, 3, H, W), as LLaVA's does, the judge feeds its own differentiable preprocessing of the
sampler's images instead (same size, mean and std), so the judge can serve in the reward too;
otherwise (dynamic-resolution models) it goes through the processor without gradients.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from craft.cas.evaluators import model_pixels, to_model_range
from craft.errors import CraftError

DEFAULT_PROMPT = "{question} Answer yes or no."


class MLLMJudge(nn.Module):
    """P("yes") of a multimodal LLM to each checklist question, per image."""

    def __init__(
        self,
        model,
        processor,
        source: str = "",
        prompt: str = DEFAULT_PROMPT,
        yes: str = "yes",
        no: str = "no",
    ):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.processor = processor
        self.source = source
        self.prompt = prompt
        tok = processor.tokenizer
        self.yes_id, self.no_id = (self._token_id(tok, w) for w in (yes, no))
        ip = processor.image_processor
        crop = getattr(ip, "crop_size", None) if getattr(ip, "do_center_crop", False) else None
        size = crop if crop is not None and crop.get("height") else ip.size
        side = size.get("height") or size.get("shortest_edge")
        self.image_size = (int(side), int(size.get("width") or side)) if side else None
        self.resize_mode = "shortest" if size.get("shortest_edge") else "squash"
        self.register_buffer("mean", torch.tensor(list(ip.image_mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(ip.image_std)).view(1, -1, 1, 1))
        self._inputs: dict[str, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _token_id(tokenizer, word: str) -> int:
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise CraftError(f"the judge's tokenizer splits '{word}' into {len(ids)} tokens")
        return int(ids[0])

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        revision: str | None = None,
        device: str | torch.device = "cpu",
        prompt: str = DEFAULT_PROMPT,
        yes: str = "yes",
        no: str = "no",
    ) -> MLLMJudge:
        """Load an image-text-to-text model and its processor (hub id or dir)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        kw = {"revision": revision} if revision else {}
        try:
            model = AutoModelForImageTextToText.from_pretrained(source, **kw)
            processor = AutoProcessor.from_pretrained(source, **kw)
        except (OSError, ValueError) as err:
            raise CraftError(f"cannot load MLLM judge '{source}': {err}") from None
        return cls(model, processor, source, prompt, yes, no).to(device)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def _text(self, question: str) -> str:
        text = self.prompt.format(question=question)
        if getattr(self.processor, "chat_template", None):
            messages = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
            ]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        token = getattr(self.processor, "image_token", "<image>")
        return f"{token}\n{text}"

    def _processor_inputs(self, images: np.ndarray, question: str) -> dict[str, torch.Tensor]:
        from PIL import Image

        pil = [Image.fromarray(im if im.shape[-1] == 3 else np.repeat(im, 3, -1)) for im in images]
        text = [self._text(question)] * len(pil)
        out = self.processor(text=text, images=pil, return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in out.items()}

    def item_probabilities(
        self, x: torch.Tensor, img_emb=None, items=None, questions: list[str] | None = None
    ) -> torch.Tensor:
        """(N, K) P("yes") for float NCHW images in [-1, 1] and the items' questions."""
        return torch.sigmoid(self.item_log_odds(x, img_emb, items, questions))

    def item_log_odds(
        self, x: torch.Tensor, img_emb=None, items=None, questions: list[str] | None = None
    ) -> torch.Tensor:
        """(N, K) log P("yes") - log P("no"): the checklist-judge interface of CAS."""
        questions = questions if questions is not None else items.questions
        x = to_model_range(x).to(self.device)
        uint8 = ((x.detach().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1)
        uint8 = uint8.cpu().numpy()
        cols = []
        for q in questions:
            if q not in self._inputs:  # token ids and the pixel layout depend only on the text
                self._inputs[q] = self._processor_inputs(uint8[:1], q)
            probe = self._inputs[q]
            fixed = probe["pixel_values"].ndim == 4 and self.image_size is not None
            if fixed:
                n = len(x)
                inputs = {
                    k: v.expand(n, *v.shape[1:]) for k, v in probe.items() if k != "pixel_values"
                }
                inputs["pixel_values"] = model_pixels(
                    x, self.image_size, self.mean, self.std, "bicubic", self.resize_mode
                ).to(self.model.dtype)
            else:
                inputs = self._processor_inputs(uint8, q)
            with torch.set_grad_enabled(fixed and torch.is_grad_enabled()):
                logits = self.model(**inputs).logits[:, -1].float()
            cols.append(logits[:, self.yes_id] - logits[:, self.no_id])
        return torch.stack(cols, dim=1)
