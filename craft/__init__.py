"""craft: Clinical Reward-Aligned Finetuning of diffusion models for medical images."""

__version__ = "0.2.0"
