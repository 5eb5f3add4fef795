"""The Clinical Alignment Score (CAS): evaluators, the real-image reference, scoring, the tail.

docs/design.md, "The four CAS dimensions". Modules:

- :mod:`craft.cas.evaluators`: one :class:`~craft.cas.evaluators.Evaluator` interface over
  Hugging Face CLIP/SigLIP models and open_clip models (BiomedCLIP), by hub id or dir;
- :mod:`craft.cas.train_evaluator`: the tiny phantom evaluators the default workflow trains;
- :mod:`craft.cas.reference`: CAS of held-out REAL images, the calibration and the tail threshold;
- :mod:`craft.cas.score`: the four dimensions, calibrated CAS (differentiable: the CRAFT reward,
  :func:`craft.cas.score.cas_reward`) and the scoring of generated samples;
- :mod:`craft.cas.judge`: an optional MLLM judge of the checklist (VQAScore, P("yes"));
- :mod:`craft.cas.settings`: the ``cas:`` config nodes (pydantic only);
- :mod:`craft.cas.stages`: the typed functions behind ``craft evaluator train``,
  ``craft reference`` and ``craft score``.

Importing this package imports no torch (the Snakefile may import craft modules at parse time).
"""

DIMENSIONS = ("label_fidelity", "prompt_alignment", "checklist_adherence", "plausibility")
