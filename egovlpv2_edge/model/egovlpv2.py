"""EgoVLPv2: video and text backbones with fusion in the top layers and a gate switch (arXiv 2307.05463).

Two modes over one set of weights:

* **dual** (gates off): ``encode_video`` / ``encode_text`` run the encoders independently; no cross-attention
  branch is executed. Embeddings can be cached for fast retrieval.
* **fused** (gates on): ``forward_fusion`` runs the lower layers of both encoders independently, then the top M
  layers in lockstep, each side reading the other's layer input, and returns VTM logits, MLM logits and the
  fused CLS features.

The split entry points (``video_lower``/``video_upper``/``text_lower``/``text_upper``/``fuse_upper``) let a
caller run the lower layers once, keep the tokens entering the first fused layer, and later run only the top
layers, unfused or fused with a text: the runtime's gate switch is built on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from egovlpv2_edge.config import ModelConfig, get_config
from egovlpv2_edge.model.heads import FusionHeads, build_projection
from egovlpv2_edge.model.layers import additive_mask, init_weights
from egovlpv2_edge.model.text import TextEncoder
from egovlpv2_edge.model.video import VideoEncoder

Stream = Literal["dual", "fusion"]


@dataclass(frozen=True)
class FusionOutput:
    """What a fused forward pass returns.

    Attributes:
        video_tokens: Fused video tokens after the last block, before the fusion norm ``(B, T, Dv)``.
        text_tokens: Fused text tokens after the last layer ``(B, L, Dt)``.
        video_cls: Fusion-normed video CLS ``(B, Dv)``.
        text_cls: Fused first text token ``(B, Dt)``.
        vtm_logits: Video-text matching logits ``(B, 2)`` (class 1 = match), or None without a VTM head.
        mlm_logits: Masked-LM logits ``(B, L, V)`` when requested, else None.
    """

    video_tokens: torch.Tensor
    text_tokens: torch.Tensor
    video_cls: torch.Tensor
    text_cls: torch.Tensor
    vtm_logits: torch.Tensor | None
    mlm_logits: torch.Tensor | None


class EgoVLPv2(nn.Module):
    """The whole model. Build it with :func:`create_model`.

    Args:
        cfg: The resolved architecture config.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        M = cfg.fusion.num_layers
        self.video = VideoEncoder(cfg.video, text_width=cfg.text.width, num_fused=M)
        self.text = TextEncoder(cfg.text, video_width=cfg.video.width, num_fused=M)
        self.fusion_cls_token = nn.Parameter(torch.zeros(1, 1, cfg.video.width)) if cfg.fusion.separate_cls else None
        self.fusion_norm = nn.LayerNorm(cfg.video.width, eps=cfg.fusion.norm_eps)
        self.txt_proj = build_projection(cfg.heads, cfg.text.width, "text")
        self.vid_proj = build_projection(cfg.heads, cfg.video.width, "video")
        motion = self.video.motion
        # the motion branch's pooled features join the dual video embedding through this projection (from zero)
        self.motion_proj = nn.Linear(motion.out_features, cfg.heads.embed_dim) if motion is not None else None
        self.heads = FusionHeads(cfg.heads, cfg.video.width, cfg.text.width, cfg.text.vocab_size)
        self.grad_checkpointing = False
        self.apply(init_weights)
        self.video.init_weights()
        if self.motion_proj is not None:  # the branch changes nothing until it trains
            nn.init.zeros_(self.motion_proj.weight)
            nn.init.zeros_(self.motion_proj.bias)
        with torch.no_grad():
            for gate in self.gates():
                gate.fill_(cfg.fusion.gate_init)

    @property
    def temperature(self) -> float:
        """The fixed contrastive temperature."""
        return self.cfg.heads.temperature

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each unfused layer in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enabled

    # ----- video ---------------------------------------------------------------------------------------------
    def video_lower(self, frames: torch.Tensor, stream: Stream = "dual") -> torch.Tensor:
        """Frames ``(B, F, 3, H, W)`` to the tokens entering the first fused block ``(B, 1 + F*N, Dv)``.

        Args:
            frames: Normalised frames.
            stream: ``"dual"`` starts from the backbone's CLS token, ``"fusion"`` from the fusion stream's own
                CLS token (the same one when ``fusion.separate_cls`` is false).
        """
        if stream not in ("dual", "fusion"):
            raise ValueError(f"stream {stream!r}; valid: dual, fusion")
        cls = self.video.cls_token
        if stream == "fusion" and self.fusion_cls_token is not None:
            cls = self.fusion_cls_token
        x = self.video.embed(frames, cls)
        return self.video.run_blocks(x, 0, self.video.first_fused, self.grad_checkpointing)

    def video_motion(self, frames: torch.Tensor) -> torch.Tensor | None:
        """The motion branch's share of the dual video embedding ``(B, E)`` for frames ``(B, F, 3, H, W)`` (what
        :meth:`video_upper` adds), or None for a model without the branch (``video.motion_branch=0``)."""
        if self.motion_proj is None:
            return None
        return self.motion_proj(self.video.motion(frames))

    def video_upper_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the top M video blocks unfused: ``(B, T, Dv)`` to ``(B, T, Dv)``."""
        return self.video.run_blocks(tokens, self.video.first_fused, self.cfg.video.depth, self.grad_checkpointing)

    def video_upper(
        self, tokens: torch.Tensor, normalize: bool = False, motion: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Tokens entering the fused blocks to the dual video embedding ``(B, E)``.

        Args:
            tokens: Output of :meth:`video_lower`.
            normalize: L2-normalise the embedding.
            motion: :meth:`video_motion` of the same frames; required when the model has a motion branch.

        Raises:
            ValueError: The model has a motion branch and ``motion`` is None (or the other way round).
        """
        if (motion is None) != (self.motion_proj is None):
            raise ValueError(
                "this model has a motion branch: pass motion=model.video_motion(frames)"
                if motion is None
                else "motion given to a model without a motion branch (video.motion_branch=0)"
            )
        emb = self.vid_proj(self.video.features(self.video_upper_tokens(tokens)))
        if motion is not None:
            emb = emb + motion
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_video(self, frames: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Dual-mode video embedding ``(B, E)`` of frames ``(B, F, 3, H, W)``; no cross-attention runs."""
        return self.video_upper(self.video_lower(frames, "dual"), normalize, self.video_motion(frames))

    # ----- text ----------------------------------------------------------------------------------------------
    def text_lower(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, L)`` to the hidden states entering the first fused layer ``(B, L, Dt)``."""
        x = self.text.embeddings(input_ids)
        mask = additive_mask(attention_mask, x.dtype)
        return self.text.run_layers(x, mask, 0, self.text.first_fused, self.grad_checkpointing)

    def text_upper_tokens(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the top M text layers unfused: ``(B, L, Dt)`` to ``(B, L, Dt)``."""
        mask = additive_mask(attention_mask, tokens.dtype)
        return self.text.run_layers(tokens, mask, self.text.first_fused, self.cfg.text.depth, self.grad_checkpointing)

    def text_upper(self, tokens: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Tokens entering the fused layers to the dual text embedding ``(B, E)``.

        The pooled feature is the first token (``<s>``, the paper) or, with ``text.pooling="mean"``, the mean over
        real tokens, which is how MiniLM's sentence weights were trained (its first token barely varies).
        """
        return self.text_embedding(self.text_upper_tokens(tokens, attention_mask), attention_mask, normalize)

    def pool_text(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text feature ``(B, Dt)`` of final hidden states ``(B, L, Dt)``: first token or mean of real tokens."""
        if self.cfg.text.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        return hidden[:, 0]

    def text_embedding(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = False
    ) -> torch.Tensor:
        """Final hidden states ``(B, L, Dt)`` to the dual text embedding ``(B, E)`` (pooling, then projection)."""
        emb = self.txt_proj(self.pool_text(hidden, attention_mask))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, normalize: bool = False
    ) -> torch.Tensor:
        """Dual-mode text embedding ``(B, E)``; no cross-attention runs."""
        return self.text_upper(self.text_lower(input_ids, attention_mask), attention_mask, normalize)

    # ----- fusion --------------------------------------------------------------------------------------------
    def fuse_upper(
        self, video_tokens: torch.Tensor, text_tokens: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the top M layers of both encoders fused, in lockstep.

        Video block i reads the text tokens entering text layer i and text layer i reads the video tokens
        entering video block i.

        Args:
            video_tokens: Tokens entering the first fused video block ``(B, T, Dv)``.
            text_tokens: Hidden states entering the first fused text layer ``(B, L, Dt)``.
            attention_mask: Text padding mask ``(B, L)`` (1 keep, 0 pad).

        Returns:
            The fused video tokens ``(B, T, Dv)`` and text tokens ``(B, L, Dt)``.
        """
        mask = additive_mask(attention_mask, text_tokens.dtype)
        F_ = self.cfg.video.num_frames
        blocks = self.video.blocks[self.video.first_fused :]
        layers = self.text.layers[self.text.first_fused :]
        v, t = video_tokens, text_tokens
        for block, layer in zip(blocks, layers, strict=True):
            v, t = block(v, F_, t, mask), layer(t, mask, v)
        return v, t

    def fusion_heads(self, video_tokens: torch.Tensor, text_tokens: torch.Tensor, mlm: bool = False) -> FusionOutput:
        """Apply the fusion norm and the VTM (and optionally MLM) heads to fused tokens."""
        video_cls = self.fusion_norm(video_tokens)[:, 0]
        vtm = self.heads.vtm_logits(video_cls, text_tokens) if self.heads.vtm is not None else None
        mlm_logits = self.heads.mlm_logits(text_tokens) if mlm else None
        return FusionOutput(video_tokens, text_tokens, video_cls, text_tokens[:, 0], vtm, mlm_logits)

    def forward_fusion(
        self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, mlm: bool = False
    ) -> FusionOutput:
        """Fused (gates on) forward pass over frames ``(B, F, 3, H, W)`` and texts ``(B, L)``.

        Args:
            frames: Normalised frames.
            input_ids: Token ids (masked ids for MLM).
            attention_mask: Text padding mask.
            mlm: Also compute the MLM logits over every text position.
        """
        return self.forward_fusion_tokens(self.video_lower(frames, "fusion"), input_ids, attention_mask, mlm)

    def forward_fusion_tokens(
        self, video_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, mlm: bool = False
    ) -> FusionOutput:
        """:meth:`forward_fusion` from the video tokens entering the fused layers ``(B, T, Dv)`` (the fusion
        stream's :meth:`video_lower`, e.g. computed once for clips seen many times)."""
        t = self.text_lower(input_ids, attention_mask)
        v, t = self.fuse_upper(video_tokens, t, attention_mask)
        return self.fusion_heads(v, t, mlm=mlm)

    def forward(
        self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dual-mode embeddings ``(video (B, E), text (B, E))``, unnormalised."""
        return self.encode_video(frames), self.encode_text(input_ids, attention_mask)

    # ----- bookkeeping ---------------------------------------------------------------------------------------
    def cross_attention_modules(self) -> list[nn.Module]:
        """Every cross-attention branch (video i2t and text t2i), e.g. to hook them or count their parameters."""
        mods: list[nn.Module] = [b.attn.cross for b in self.video.blocks if b.attn.cross is not None]
        mods += [layer.cross for layer in self.text.layers if layer.cross is not None]
        return mods

    def gates(self) -> list[nn.Parameter]:
        """The 2M scalar gates (video side first, bottom to top)."""
        return [m.gate for m in self.cross_attention_modules()]


def create_model(name: str, pretrained: str | None = None, **overrides: Any) -> EgoVLPv2:
    """Build a model from a preset.

    Args:
        name: A preset from :func:`egovlpv2_edge.list_models`.
        pretrained: Optional local checkpoint path (this project's format or the released EgoVLPv2 layout).
        **overrides: Config overrides merged over the preset, e.g. ``video={"num_frames": 16}``.

    Returns:
        The model in eval mode.
    """
    model = EgoVLPv2(get_config(name, **overrides))
    if pretrained is not None:
        from egovlpv2_edge.checkpoint import load_checkpoint

        load_checkpoint(model, pretrained)
    return model.eval()
