"""Export specs of the ONNX graphs that together implement the gate switch (optimum-exporters style).

One :class:`GraphSpec` per graph names its inputs and outputs, their dtypes and shapes (``"batch"`` is the only
dynamic axis; every other size is fixed by the model config), the opset and the tolerance an export must meet
against PyTorch. The exporter (``egovlpv2_edge.compress``) and the runtime (``egovlpv2_edge.runtime``) read the
same specs, so a graph and its caller cannot drift apart. This module imports no torch.

The graphs (arXiv 2307.05463, Sec. 3; the split is this project's):

``video_lower``   frames -> tokens entering the first fused video block (cached on the device)
``video_upper``   those tokens -> L2-normalised dual video embedding (gates off)
``text_lower``    token ids + mask -> hidden states entering the first fused text layer
``text_upper``    those states + mask -> L2-normalised dual text embedding (gates off)
``fused_upper``   video tokens + text states + mask -> VTM logits and fused CLS features (gates on), plus the
                  answer logits ``qa_logits`` when the model was exported with a QA head (EgoTaskQA head on the
                  fused video CLS, reference Sec. 3 downstream usage)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from egovlpv2_edge.config import ModelConfig

OPSET = 18
GRAPH_NAMES = ("video_lower", "video_upper", "text_lower", "text_upper", "fused_upper")
QA_OUTPUT = "qa_logits"  # the optional fused_upper output of a QA head: (batch, num_answers)
QA_VOCAB = "qa"  # the package's answer vocabulary of that head (index = class id)

Dim = int | str  # a fixed size, or the name of a dynamic axis


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    Attributes:
        name: ONNX value name.
        dtype: ``"float32"`` or ``"int64"`` (graphs in FP16 keep float32 at their boundary).
        shape: Sizes; a string names a dynamic axis (``"batch"``).
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def concrete(self, batch: int) -> tuple[int, ...]:
        """The shape with every dynamic axis set to ``batch``."""
        return tuple(batch if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class GraphSpec:
    """What one exported graph takes and returns, and how closely it must match PyTorch.

    Attributes:
        name: One of :data:`GRAPH_NAMES`.
        inputs: Input tensors in call order.
        outputs: Output tensors in return order.
        opset: ONNX opset (>= 17 so LayerNorm stays one op for TensorRT).
        atol: Absolute tolerance of an FP32 export against PyTorch.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int = OPSET
    atol: float = 1e-4

    @property
    def input_names(self) -> list[str]:
        """Input names in call order."""
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """Output names in return order."""
        return [t.name for t in self.outputs]


class _Named(Protocol):
    name: str
    shape: tuple[Dim, ...]


def qa_answer_count(outputs: Iterable[_Named]) -> int | None:
    """The answer count of the :data:`QA_OUTPUT` among a fused graph's outputs, or None when it has none.

    Works on :class:`TensorSpec` and on the manifest's ``TensorInfo`` alike.

    Raises:
        ValueError: The output is there but not ``(batch, A)`` with a fixed ``A >= 2``.
    """
    for t in outputs:
        if t.name == QA_OUTPUT:
            shape = tuple(t.shape)
            if len(shape) != 2 or not isinstance(shape[0], str) or isinstance(shape[1], str) or shape[1] < 2:
                raise ValueError(f"{QA_OUTPUT} must have shape ('batch', num_answers >= 2), got {shape}")
            return int(shape[1])
    return None


def graph_specs(cfg: ModelConfig, qa_answers: int | None = None) -> dict[str, GraphSpec]:
    """The specs of every graph for a model config.

    Args:
        cfg: The model's architecture.
        qa_answers: Answer count of a QA head exported with the fused graph: ``fused_upper`` then also returns
            :data:`QA_OUTPUT` ``(batch, qa_answers)``. None: no QA head.

    Returns:
        Specs keyed by graph name, in :data:`GRAPH_NAMES` order.

    Raises:
        ValueError: ``qa_answers`` is below 2.
    """
    if qa_answers is not None and (isinstance(qa_answers, bool) or qa_answers < 2):
        raise ValueError(f"qa_answers={qa_answers!r}; a QA head needs at least 2 answers (None: no QA head)")
    v, t, h = cfg.video, cfg.text, cfg.heads
    T = 1 + v.num_frames * v.num_patches
    L = t.max_length
    frames = TensorSpec("frames", "float32", ("batch", v.num_frames, 3, v.img_size, v.img_size))
    video_tokens = TensorSpec("video_tokens", "float32", ("batch", T, v.width))
    input_ids = TensorSpec("input_ids", "int64", ("batch", L))
    mask = TensorSpec("attention_mask", "int64", ("batch", L))
    text_tokens = TensorSpec("text_tokens", "float32", ("batch", L, t.width))
    lower_out = [video_tokens]
    if cfg.fusion.separate_cls:  # the fused stream starts from its own CLS: its lower tokens differ
        lower_out.append(TensorSpec("fusion_video_tokens", "float32", ("batch", T, v.width)))
    upper_in = [video_tokens]
    if v.motion_branch:  # the motion branch's share of the dual embedding travels from the lower graph to the upper
        motion = TensorSpec("video_motion", "float32", ("batch", h.embed_dim))
        lower_out.append(motion)
        upper_in.append(motion)
    fused_name = "fusion_video_tokens" if cfg.fusion.separate_cls else "video_tokens"
    fused_video = TensorSpec(fused_name, "float32", video_tokens.shape)
    fused_out = [
        TensorSpec("vtm_logits", "float32", ("batch", 2)),
        TensorSpec("fused_video_cls", "float32", ("batch", v.width)),
        TensorSpec("fused_text_cls", "float32", ("batch", t.width)),
    ]
    if qa_answers is not None:
        fused_out.append(TensorSpec(QA_OUTPUT, "float32", ("batch", int(qa_answers))))
    specs = [
        GraphSpec("video_lower", (frames,), tuple(lower_out)),
        GraphSpec("video_upper", tuple(upper_in), (TensorSpec("video_embedding", "float32", ("batch", h.embed_dim)),)),
        GraphSpec("text_lower", (input_ids, mask), (text_tokens,)),
        GraphSpec(
            "text_upper", (text_tokens, mask), (TensorSpec("text_embedding", "float32", ("batch", h.embed_dim)),)
        ),
        GraphSpec("fused_upper", (fused_video, text_tokens, mask), tuple(fused_out)),
    ]
    return {s.name: s for s in specs}
