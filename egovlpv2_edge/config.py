"""Architecture configs for EgoVLPv2 (arXiv 2307.05463, Sec. 3) as frozen dataclasses backed by JSON presets.

A preset is a JSON file in ``egovlpv2_edge/presets/`` named by its stem (``egovlpv2_base.json`` is the preset
``egovlpv2_base``). This module imports no torch: the runtime reads the same configs from a model package.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class VideoConfig:
    """TimeSformer video backbone with divided space-time attention (Frozen-in-Time layout)."""

    img_size: int = 224  # square input resolution
    patch_size: int = 16  # pixels per patch side; N = (img_size // patch_size) ** 2 patches per frame
    num_frames: int = 4  # F, frames per clip the temporal embedding is built for
    width: int = 768  # Dv, token width
    depth: int = 12  # number of space-time blocks
    heads: int = 12  # attention heads (head dim = width // heads)
    mlp_ratio: float = 4.0  # MLP hidden = width * mlp_ratio
    qkv_bias: bool = True  # bias on the qkv projections
    ln_eps: float = 1e-5  # LayerNorm eps of every video norm (reference Sec. 8)
    drop_path: float = 0.0  # stochastic depth rate at the last block (linear ramp)
    dense_attention_max_tokens: int = 256  # up to this many tokens, divided attention runs as one masked attention
    motion_stem: bool = False  # patch embedding also sees each frame minus the previous one (6 input channels)
    # channels of a small 3D CNN beside the patch embedding (three layers of time kernel 2, pooled over the clip)
    # whose output is added to the CLS token before the first block; 0: none (as in the paper)
    motion_branch: int = 0
    # time-attention init. "reference": qkv 0, proj weight 1 (outputs 0; the LayerNorm after it cancels the
    # constant shift, so from scratch the branch gets no gradient); "zero_proj": qkv N(0, 0.02), proj weight 0
    # (outputs 0 and trains). Only matters without pretrained weights.
    time_init: Literal["reference", "zero_proj"] = "reference"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB normalisation mean
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # RGB normalisation std

    @property
    def grid(self) -> int:
        """Patches per side of a frame."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per frame (N)."""
        return self.grid**2


@dataclass(frozen=True)
class TextConfig:
    """BERT-family post-LayerNorm text encoder (RoBERTa or BERT variant)."""

    variant: Literal["roberta", "bert"] = "roberta"  # roberta: position offset and pad id 1; bert: plain positions
    vocab_size: int = 50265  # word-embedding rows
    width: int = 768  # Dt, token width
    depth: int = 12  # number of layers
    heads: int = 12  # attention heads
    intermediate: int = 3072  # FFN hidden size
    max_positions: int = 514  # position-embedding rows (RoBERTa reserves pad_id + 1 of them)
    type_vocab_size: int = 1  # token-type rows (only type 0 is used)
    pad_id: int = 1  # padding token id (RoBERTa 1, BERT 0)
    ln_eps: float = 1e-5  # LayerNorm eps (RoBERTa 1e-5, BERT/MiniLM 1e-12)
    dropout: float = 0.1  # hidden and attention dropout while training
    max_length: int = 15  # tokens per text after padding/truncation (pre-training uses 15)
    pooling: Literal["first", "mean"] = "first"  # dual text embedding: first token (paper) or masked mean (MiniLM)


@dataclass(frozen=True)
class FusionConfig:
    """Gated cross-attention inside the top ``num_layers`` layers of both backbones."""

    num_layers: int = 6  # M, fused layers at the top of each encoder
    norm_eps: float = 1e-6  # eps of the fusion stream's own final LayerNorm
    separate_cls: bool = True  # fused video stream starts from its own CLS token (official); False shares it
    # Initial value of every gate. The paper starts them at 0; the CPU presets start them open (0.5), since from
    # 0 neither a gate nor its cross-attention gets a useful gradient (each is scaled by the other) and short
    # schedules never leave that point. Dual mode skips the cross-attention whatever the gates hold.
    gate_init: float = 0.0


@dataclass(frozen=True)
class HeadConfig:
    """Projection heads (dual mode) and the VTM / MLM heads (fused mode)."""

    projection: Literal["mlp", "linear"] = "mlp"  # mlp: 768-4096-4096-4096; linear: the EgoVLP 256-d heads
    embed_dim: int = 4096  # E, joint embedding width
    proj_hidden: int = 4096  # hidden width of the mlp projection
    temperature: float = 0.05  # fixed contrastive temperature
    vtm: bool = True  # video-text matching head
    mlm: bool = True  # masked language modelling head
    mlm_ln_eps: float = 1e-12  # eps of the MLM transform's LayerNorm


@dataclass(frozen=True)
class ModelConfig:
    """A whole EgoVLPv2 model: two backbones, fusion layers and heads."""

    name: str = "custom"
    video: VideoConfig = field(default_factory=VideoConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    heads: HeadConfig = field(default_factory=HeadConfig)
    description: str = ""

    def __post_init__(self) -> None:
        _check(self.video.width % self.video.heads == 0, f"video.width {self.video.width} % heads {self.video.heads}")
        _check(self.text.width % self.text.heads == 0, f"text.width {self.text.width} % heads {self.text.heads}")
        _check(
            self.video.img_size % self.video.patch_size == 0,
            f"video.img_size {self.video.img_size} is not a multiple of patch_size {self.video.patch_size}",
        )
        _check(
            self.video.motion_branch >= 0,
            f"video.motion_branch {self.video.motion_branch} must be >= 0 (its channels; 0 for none)",
        )
        top = min(self.video.depth, self.text.depth)
        _check(
            0 <= self.fusion.num_layers <= top,
            f"fusion.num_layers {self.fusion.num_layers} must be in [0, {top}] (the shallower encoder's depth)",
        )
        _check(math.isfinite(self.fusion.gate_init), f"fusion.gate_init {self.fusion.gate_init} must be finite")
        _check(self.text.variant in ("roberta", "bert"), f"text.variant {self.text.variant!r}; valid: roberta, bert")
        _check(self.text.pooling in ("first", "mean"), f"text.pooling {self.text.pooling!r}; valid: first, mean")
        _check(
            self.heads.projection in ("mlp", "linear"),
            f"heads.projection {self.heads.projection!r}; valid: mlp, linear",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build a config from a (possibly partial) nested dict; unknown keys raise ``ValueError``."""
        return _from_dict(cls, data, path="")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"invalid model config: {message}")


_SECTIONS: dict[str, type] = {"video": VideoConfig, "text": TextConfig, "fusion": FusionConfig, "heads": HeadConfig}


def _from_dict(cls: type, data: dict[str, Any], path: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in {path or 'model'}; valid keys: {sorted(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if cls is ModelConfig and key in _SECTIONS:
            value = _from_dict(_SECTIONS[key], dict(value), path=key)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``overrides`` over ``base`` (override-only config files, dinov2 style).

    Args:
        base: The defaults.
        overrides: Values to replace; nested dicts merge key by key.

    Returns:
        A new dict.
    """
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _preset_dir() -> Any:
    return resources.files("egovlpv2_edge").joinpath("presets")


def list_models() -> list[str]:
    """Names of the shipped presets, sorted."""
    files = _preset_dir().iterdir()
    return sorted(Path(f.name).stem for f in files if f.name.endswith(".json"))


def load_preset(name: str) -> dict[str, Any]:
    """The raw JSON dict of a preset.

    Args:
        name: A preset name from :func:`list_models`.

    Raises:
        ValueError: The preset does not exist; the message lists the valid names.
    """
    names = list_models()
    if name not in names:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(names)}")
    text = _preset_dir().joinpath(f"{name}.json").read_text()
    return json.loads(text)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """Resolve a preset plus overrides into a :class:`ModelConfig`.

    Args:
        name: A preset name from :func:`list_models`.
        **overrides: Top-level fields or whole sections as dicts, merged over the preset, e.g.
            ``video={"num_frames": 16}``.

    Returns:
        The frozen config.
    """
    data = merge(load_preset(name), overrides)
    data.setdefault("name", name)
    return ModelConfig.from_dict(data)
