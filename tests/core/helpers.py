"""Helpers for the core model tests."""

from __future__ import annotations

import torch

from egovlpv2_edge.model import EgoVLPv2


def random_inputs(model: EgoVLPv2, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frames (B, F, 3, H, W), token ids (B, L) and a padding mask whose second row is padded."""
    g = torch.Generator().manual_seed(seed)
    v, t = model.cfg.video, model.cfg.text
    frames = torch.randn(batch, v.num_frames, 3, v.img_size, v.img_size, generator=g)
    L = t.max_length
    ids = torch.randint(5, t.vocab_size, (batch, L), generator=g)
    mask = torch.ones(batch, L, dtype=torch.long)
    if batch > 1:
        mask[1, L // 2 :] = 0
        ids[1, L // 2 :] = t.pad_id
    return frames, ids, mask


def randomize_gates(model: EgoVLPv2, scale: float = 0.5) -> None:
    """Give every gate a distinct non-zero value."""
    with torch.no_grad():
        for i, gate in enumerate(model.gates()):
            gate.fill_(scale * (1 + i) / len(model.gates()))
