"""Task fine-tuning and evaluation on EgoVLPv2 (reference §3, downstream usage).

* ``qa``: EgoTaskQA-style answering with the answer head on the fused video CLS (and multiple choice by VTM);
* ``retrieval``: EK-100 MIR-style dual-mode fine-tuning with a multi-instance max-margin loss;
* ``nlq``: EgoNLQ-style grounding with a span head over fused per-window features;
* ``zeroshot``: Charades-Ego-style zero-shot recognition with class names as text.

Entry points: :func:`finetune` (``egovlp train finetune``), the ``evaluate_*`` functions (``egovlp eval --task``)
and :func:`load_finetuned` for checkpoints that carry their head and vocabularies.
"""

from egovlpv2_edge.training.tasks.checkpoint import load_finetuned
from egovlpv2_edge.training.tasks.finetune import FinetuneConfig, finetune

__all__ = ["FinetuneConfig", "finetune", "load_finetuned"]
