"""Zero-shot action recognition (Charades-Ego style, reference §3): class names as text, dual mode, mAP.

Each class becomes a prompt in the narration style the model was pre-trained on: ``"#C C picks up the red
cup"`` for verb-object classes (``classes="action"``) or ``"#C C picks up the object"`` for verb-only classes
(``classes="verb"``). A clip's score for a class is the cosine of their dual embeddings; the metric is the
class-wise mAP over the clips of a split, against chance (the mAP of random scores, averaged over draws).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from egovlpv2_edge.model import EgoVLPv2
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.data.taxonomy import NOUNS, VERBS
from egovlpv2_edge.training.tasks.metrics import class_map

__all__ = ["ZeroShotResult", "class_prompts", "evaluate_zeroshot"]

ClassKind = Literal["action", "verb"]


@dataclass(frozen=True)
class ZeroShotResult:
    """mAP (percent) of the model and of chance, with the class and clip counts."""

    map: float
    chance: float
    classes: int
    clips: int
    kind: str


def class_prompts(keys: list[tuple[int, ...]], kind: ClassKind) -> list[str]:
    """Prompts for class keys: ``(verb_id, noun_id)`` for actions, ``(verb_id,)`` for verbs."""
    if kind == "action":
        return ["#C C " + VERBS[v].templates[0].format(n=NOUNS[n].name) for v, n in keys]
    if kind == "verb":
        return ["#C C " + VERBS[v].templates[0].format(n="object") for (v,) in keys]
    raise ValueError(f"classes={kind!r}; valid: action, verb")


@torch.no_grad()
def evaluate_zeroshot(model: EgoVLPv2, tokenizer: Tokenizer, data: str | Path, split: str = "test",
                      classes: ClassKind = "action", batch_size: int = 16, chance_draws: int = 20,
                      seed: int = 0) -> ZeroShotResult:  # fmt: skip
    """Class-wise mAP of zero-shot recognition over the clips of ``split`` of a synthetic dataset.

    Args:
        model: Any pre-trained or fine-tuned model (dual mode is used).
        tokenizer: Its tokenizer.
        data: Dataset root (``egoclip.csv``, ``videos/``, ``meta.json``).
        split: Split whose clips are classified.
        classes: ``"action"`` (verb-object pairs seen in the split) or ``"verb"``.
        batch_size: Clips per forward pass.
        chance_draws: Random-score draws averaged for the chance level.
        seed: Seed of those draws.
    """
    from egovlpv2_edge.training.data.dataset import EgoClipDataset
    from egovlpv2_edge.training.evaluate import _collate_eval

    model.eval()
    root = Path(data)
    v = model.cfg.video
    ds = EgoClipDataset(root / "egoclip.csv", root / "videos", v.num_frames, v.img_size, split=split, mode="eval")
    keyed = [(r.tag_verb[0], r.tag_noun[0]) if classes == "action" else (r.tag_verb[0],) for r in ds.records]
    keys = sorted(set(keyed))
    prompts = class_prompts(keys, classes)
    tok = tokenizer.encode(prompts, max_length=model.cfg.text.max_length)
    T = model.encode_text(torch.from_numpy(tok.input_ids), torch.from_numpy(tok.attention_mask), normalize=True)
    loader = DataLoader(ds, batch_size, collate_fn=_collate_eval)
    V = torch.cat([model.encode_video(frames, normalize=True) for frames, _ in loader])  # (clips, E)
    scores = (V @ T.T).numpy()  # (clips, classes)
    labels = np.zeros_like(scores, dtype=bool)
    index = {k: i for i, k in enumerate(keys)}
    labels[np.arange(len(keyed)), [index[k] for k in keyed]] = True
    rng = np.random.default_rng(seed)
    chance = float(np.mean([class_map(rng.random(scores.shape), labels) for _ in range(chance_draws)]))
    return ZeroShotResult(100.0 * class_map(scores, labels), 100.0 * chance, len(keys), len(keyed), classes)
