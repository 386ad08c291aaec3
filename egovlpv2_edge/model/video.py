"""TimeSformer video backbone with divided space-time attention and in-backbone gated cross-attention.

Implements the video side of EgoVLPv2 (arXiv 2307.05463, Sec. 3.1-3.2): the Frozen-in-Time block
(time attention first with CLS as an extra key, its output reaching the stream only through the space
attention's input), and in the top M blocks a gated text-to-video cross-attention inside the spatial
attention (``s + alpha * proj(softmax(q k^T / sqrt(d) + mask) v)``, alpha a scalar initialised to 0, no tanh).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.utils.checkpoint
from torch import nn

from egovlpv2_edge.config import VideoConfig
from egovlpv2_edge.model.layers import DropPath, Mlp, attend, merge_heads, split_heads


class VideoCrossAttention(nn.Module):
    """Gated cross-attention from video tokens (queries) to text tokens (keys/values)."""

    def __init__(self, width: int, text_width: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width, eps=eps)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(text_width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, s: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
        """Add the gated cross-attention output to the spatial-attention output ``s``.

        Args:
            s: Spatial-attention output ``(B, T, Dv)`` before the block residual.
            text: Text hidden states entering the paired text layer ``(B, L, Dt)``, not normalised.
            text_mask: Additive padding mask ``(B, 1, 1, L)`` or None.

        Returns:
            ``(B, T, Dv)``.
        """
        q = split_heads(self.q(self.norm(s)), self.heads)  # (B, H, T, d)
        k, v = self.kv(text).chunk(2, dim=-1)
        out = attend(q, split_heads(k, self.heads), split_heads(v, self.heads), text_mask)  # (B, H, T, d)
        return s + self.gate * self.proj(merge_heads(out))


class DividedAttention(nn.Module):
    """Self-attention over time (same patch across frames) or space (within a frame), CLS attending to all.

    The CLS query attends to every token; a patch query attends within its group plus the CLS key.
    Tokens are ordered ``[CLS, f0p0, f0p1, ..., f1p0, ...]`` (frame-major). Short clips compute this as one
    attention with a block mask (fewer copies, one simple ONNX op); long ones per group (fewer FLOPs).
    """

    def __init__(self, cfg: VideoConfig, mode: Literal["time", "space"], text_width: int | None = None) -> None:
        super().__init__()
        self.mode = mode
        self.heads = cfg.heads
        self.dense_max_tokens = cfg.dense_attention_max_tokens
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.cross = None
        if text_width is not None:
            self.cross = VideoCrossAttention(cfg.width, text_width, cfg.heads, cfg.ln_eps)

    def forward(
        self,
        x: torch.Tensor,
        num_frames: int,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend; with ``text`` given (fused mode) also run the gated cross-attention.

        Args:
            x: Normalised tokens ``(B, 1 + F*N, C)``.
            num_frames: F.
            text: Text hidden states for fused mode, or None (the cross branch is then not executed at all).
            text_mask: Additive text padding mask ``(B, 1, 1, L)``.
        """
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, T, d)
        q, k, v = qkv.unbind(0)
        if T <= self.dense_max_tokens:
            out = attend(q, k, v, self.group_mask(T, num_frames, x.dtype, x.device))  # (B, H, T, d)
        else:
            out = self._grouped(q, k, v, num_frames)
        out = self.proj(merge_heads(out))  # (B, T, C)
        if text is not None and self.cross is not None:
            out = self.cross(out, text, text_mask)
        return out

    def group_mask(self, T: int, num_frames: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Additive ``(T, T)`` mask: CLS rows/columns open, a patch sees its frame (space) or its track (time)."""
        N = (T - 1) // num_frames
        idx = torch.arange(T - 1, device=device)
        group = idx // N if self.mode == "space" else idx % N
        allowed = torch.ones(T, T, dtype=torch.bool, device=device)
        allowed[1:, 1:] = group[:, None] == group[None, :]
        return torch.zeros(T, T, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)

    def _grouped(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The same attention computed per group (cheaper than the dense mask for long clips)."""
        B, H, T, d = q.shape
        F_, N = num_frames, (T - 1) // num_frames
        cls_out = attend(q[:, :, :1], k, v)  # (B, H, 1, d)
        q_, k_, v_ = (t[:, :, 1:].reshape(B, H, F_, N, d) for t in (q, k, v))  # (B, H, F, N, d)
        if self.mode == "time":
            q_, k_, v_ = (t.transpose(2, 3) for t in (q_, k_, v_))  # (B, H, N, F, d)
        G, S = q_.shape[2], q_.shape[3]
        cls_k = k[:, :, None, :1].expand(-1, -1, G, -1, -1)  # (B, H, G, 1, d)
        cls_v = v[:, :, None, :1].expand(-1, -1, G, -1, -1)
        k_, v_ = torch.cat([cls_k, k_], dim=3), torch.cat([cls_v, v_], dim=3)  # (B, H, G, 1+S, d)
        # 4-D attention (ONNX's SDPA lowering takes no more): fold heads into the batch
        out = attend(*(t.reshape(B * H, G, -1, d) for t in (q_, k_, v_)))  # (B*H, G, S, d)
        out = out.reshape(B, H, G, S, d)
        if self.mode == "time":
            out = out.transpose(2, 3)  # (B, H, F, N, d)
        return torch.cat([cls_out, out.reshape(B, H, F_ * N, d)], dim=2)  # (B, H, T, d)


class SpaceTimeBlock(nn.Module):
    """``t = x + TimeAttn(LN3(x)); x = x + SpaceAttn(LN1(t)); x = x + MLP(LN2(x))``."""

    def __init__(self, cfg: VideoConfig, drop_path: float = 0.0, text_width: int | None = None) -> None:
        super().__init__()
        eps = cfg.ln_eps
        self.norm3 = nn.LayerNorm(cfg.width, eps=eps)
        self.time_attn = DividedAttention(cfg, "time")
        self.norm1 = nn.LayerNorm(cfg.width, eps=eps)
        self.attn = DividedAttention(cfg, "space", text_width=text_width)
        self.norm2 = nn.LayerNorm(cfg.width, eps=eps)
        self.mlp = Mlp(cfg.width, int(cfg.width * cfg.mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        x: torch.Tensor,
        num_frames: int,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One block over ``(B, 1 + F*N, C)``; fused when ``text`` is given."""
        t = x + self.time_attn(self.norm3(x), num_frames)
        x = x + self.drop_path(self.attn(self.norm1(t), num_frames, text, text_mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MotionBranch(nn.Module):
    """Three 3D convolutions over consecutive frames, pooled over the clip: ``(B, F, 3, H, W)`` to ``(B, 2c)``.

    A transformer over 16-px patches learns the direction of a motion (a pick up from a put down) slowly from
    scratch; three small convolutions over consecutive frames read it within a few dozen steps
    (``benchmarks/probe_learnability.py direction``). The model adds the pooled features, through its zero-started
    ``motion_proj``, to the dual video embedding (:meth:`EgoVLPv2.video_motion`): joined there, pre-training's
    time-reversal term reads them; added to the CLS token under the top blocks, it barely did.

    ``direction`` is a linear head on the pooled features that only pre-training's direction term
    (``loss.direction_weight``) reads: which verb of its reverse pair a clip shows. Inference never runs it.
    """

    MIN_FRAMES = 4  # each convolution spans two frames and shortens the clip by one

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.convs = nn.Sequential(
            nn.Conv3d(3, c, (2, 5, 5), padding=(0, 2, 2)), nn.ReLU(), nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(c, 2 * c, (2, 3, 3), padding=(0, 1, 1)), nn.ReLU(), nn.MaxPool3d((1, 2, 2)),
            nn.Conv3d(2 * c, 2 * c, (2, 3, 3), padding=(0, 1, 1)), nn.ReLU(),
        )  # fmt: skip
        self.out_features = 2 * c
        self.direction = nn.Linear(2 * c, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Normalised frames ``(B, F, 3, H, W)`` to the pooled convolution features ``(B, 2c)``.

        The weights do not depend on F (a checkpoint moves between frame counts); a clip of fewer than 4 frames
        repeats its last one.
        """
        short = self.MIN_FRAMES - frames.shape[1]
        if short > 0:
            frames = torch.cat([frames, frames[:, -1:].expand(-1, short, -1, -1, -1)], dim=1)
        return self.convs(frames.transpose(1, 2)).mean(dim=(2, 3, 4))  # pooled over (F-3, H/4, W/4)

    def direction_logits(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B,)`` logits that each clip shows the first verb of its reverse pair (``direction``'s reading)."""
        return self.direction(self(frames)).squeeze(-1)


class VideoEncoder(nn.Module):
    """Patch, position and temporal embeddings, space-time blocks, the optional motion branch and the dual-mode
    final norm.

    Args:
        cfg: Video architecture.
        text_width: Width of the text tokens the fused blocks attend to.
        num_fused: M, the top blocks that get a cross-attention branch.
    """

    def __init__(self, cfg: VideoConfig, text_width: int, num_fused: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_fused = num_fused
        in_chans = 6 if cfg.motion_stem else 3
        self.patch_embed = nn.Conv2d(in_chans, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.motion = MotionBranch(cfg.motion_branch) if cfg.motion_branch else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, cfg.width))
        self.temporal_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, cfg.width))
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        first_fused = cfg.depth - num_fused
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(cfg, rates[i], text_width if i >= first_fused else None) for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.ln_eps)

    @property
    def first_fused(self) -> int:
        """Index of the first block with cross-attention."""
        return self.cfg.depth - self.num_fused

    def embed(self, frames: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
        """Frames ``(B, F, 3, H, W)`` to tokens ``(B, 1 + F*N, C)`` with the given CLS token ``(1, 1, C)``."""
        B, F_, C, H, W = frames.shape
        if F_ != self.cfg.num_frames:
            raise ValueError(
                f"video has {F_} frames but the model is built for num_frames={self.cfg.num_frames}; "
                "sample that many frames or create the model with video={'num_frames': F}"
            )
        if H != self.cfg.img_size or W != self.cfg.img_size:
            raise ValueError(f"frames are {H}x{W} but the model expects {self.cfg.img_size}x{self.cfg.img_size}")
        if self.cfg.motion_stem:
            prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # the first frame is its own predecessor
            frames, C = torch.cat([frames, frames - prev], dim=2), 2 * C  # (B, F, 6, H, W)
        x = self.patch_embed(frames.reshape(B * F_, C, H, W))  # (B*F, D, g, g)
        N, D = x.shape[2] * x.shape[3], x.shape[1]
        x = x.flatten(2).transpose(1, 2).reshape(B, F_ * N, D)  # (B, F*N, D)
        pos = self.pos_embed[:, 1:].repeat(1, F_, 1) + self.temporal_embed.repeat_interleave(N, dim=1)
        cls = cls_token.expand(B, -1, -1) + self.pos_embed[:, :1]  # (B, 1, D)
        return torch.cat([cls, x + pos], dim=1)  # (B, 1 + F*N, D)

    def run_blocks(self, x: torch.Tensor, start: int, end: int, checkpoint: bool = False) -> torch.Tensor:
        """Run blocks ``start..end-1`` unfused (their cross-attention branches are not executed)."""
        for block in self.blocks[start:end]:
            if checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, self.cfg.num_frames, use_reentrant=False)
            else:
                x = block(x, self.cfg.num_frames)
        return x

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Dual-mode output: the final norm's CLS ``(B, C)``."""
        return self.norm(tokens)[:, 0]

    def init_weights(self) -> None:
        """N(0, 0.02) embeddings, zero temporal embedding, time attention that outputs 0 (``cfg.time_init``)."""
        nn.init.normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.zeros_(self.temporal_embed)
        for block in self.blocks:
            reset_time_attention(block.time_attn, self.cfg.time_init)


def reset_time_attention(attn: DividedAttention, mode: str = "reference") -> None:
    """Make the time branch output 0.

    ``"reference"`` (``time_init='zeros'``): qkv weight and bias 0, proj weight 1, proj bias 0. The output is then
    a per-token constant across channels, which the next LayerNorm removes, so its gradient is 0 as well: fine on
    top of pretrained weights, dead from scratch. ``"zero_proj"``: qkv N(0, 0.02), proj weight and bias 0; the
    output is still 0 but the proj weight gets a gradient at once.
    """
    with torch.no_grad():
        if attn.qkv.bias is not None:
            attn.qkv.bias.zero_()
        attn.proj.bias.zero_()
        if mode == "zero_proj":
            nn.init.normal_(attn.qkv.weight, std=0.02)
            attn.proj.weight.zero_()
        elif mode == "reference":
            attn.qkv.weight.zero_()
            attn.proj.weight.fill_(1.0)
        else:
            raise ValueError(f"unknown time_init {mode!r}; use 'reference' or 'zero_proj'")
