"""Export the five gate-switch graphs of EgoVLPv2 to ONNX and validate each against PyTorch (optimum style).

The graphs and their boundaries are fixed by :func:`egovlpv2_edge.graphs.graph_specs` (arXiv 2307.05463, Sec. 3;
the split is this project's): the lower layers of each encoder, their unfused top layers with the projection
heads (gates off, dual mode), and the fused top layers with the VTM head (gates on) and, when a QA head is passed
(``qa_head=``, e.g. from a fine-tuned checkpoint, see :func:`~._qa_head.checkpoint_qa_head`), its answer logits
``qa_logits`` over the fused video CLS, as ``training.tasks.qa.QATask`` computes them. One ``nn.Module`` wrapper
per graph takes exactly the spec's inputs in order and returns its outputs in order, so the exporter, this
validator and the on-device runtime agree on every name, dtype and static size.

Every export is checked in ONNX Runtime (CPU) on fresh random inputs with another batch size than the export's,
including a fully padded text row; a difference beyond the spec's tolerance raises :class:`ExportMismatchError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from egovlpv2_edge.compress._qa_head import (
    CheckpointDualQAHead,
    CheckpointQAHead,
    check_qa_head,
    check_spec_head,
    checkpoint_dual_qa_head,
    checkpoint_qa_head,
    model_specs,
    write_answer_vocabs,
    write_dual_qa_head_file,
    write_qa_files,
)
from egovlpv2_edge.graphs import GRAPH_NAMES, GraphSpec, TensorSpec
from egovlpv2_edge.model import EgoVLPv2

__all__ = [
    "CheckpointDualQAHead",
    "CheckpointQAHead",
    "ExportMismatchError",
    "ExportedGraph",
    "FusedUpperGraph",
    "TextLowerGraph",
    "TextUpperGraph",
    "ValidationResult",
    "VideoLowerGraph",
    "VideoUpperGraph",
    "check_graph_io",
    "check_qa_head",
    "checkpoint_dual_qa_head",
    "checkpoint_qa_head",
    "export_all",
    "export_graph",
    "export_one",
    "file_sha256",
    "graph_module",
    "model_specs",
    "sample_inputs",
    "validate_graph",
    "write_answer_vocabs",
    "write_dual_qa_head_file",
    "write_qa_files",
]

logger = logging.getLogger(__name__)

_ONNX_DTYPES = {1: "float32", 7: "int64", 10: "float16", 6: "int32", 9: "bool"}  # onnx.TensorProto codes
_NOISY_LOGGERS = ("onnxscript", "onnx_ir")


class ExportMismatchError(ValueError):
    """An exported graph disagrees with its spec or with PyTorch (wrong name, dtype, shape or values)."""


@dataclass(frozen=True)
class ValidationResult:
    """How closely one ONNX graph matches PyTorch on fresh inputs.

    Attributes:
        graph: Graph name.
        batch: Batch size of the validation inputs.
        atol: The tolerance every output met.
        diffs: Max absolute difference per output name.
    """

    graph: str
    batch: int
    atol: float
    diffs: dict[str, float] = field(default_factory=dict)

    @property
    def max_abs_diff(self) -> float:
        """The largest difference over all outputs."""
        return max(self.diffs.values(), default=0.0)


@dataclass(frozen=True)
class ExportedGraph:
    """One exported graph file.

    Attributes:
        path: The ``.onnx`` file.
        sha256: Hex digest of the file's bytes.
        max_abs_diff: Largest difference to PyTorch over all outputs, or None when not validated.
        seconds: Wall-clock seconds spent exporting and validating it.
    """

    path: Path
    sha256: str
    max_abs_diff: float | None
    seconds: float


# ----- graph wrappers ----------------------------------------------------------------------------------------------
class VideoLowerGraph(nn.Module):
    """``frames -> video_tokens[, fusion_video_tokens][, video_motion]``: the tokens entering the first fused video
    block.

    The fusion-stream tokens are returned only when ``fusion.separate_cls`` is true: the fused stream then starts
    from its own CLS token, so its lower tokens differ from the dual stream's. ``video_motion`` (the motion
    branch's share of the dual embedding, ``EgoVLPv2.video_motion``) only when the model has the branch.
    """

    def __init__(self, model: EgoVLPv2) -> None:
        super().__init__()
        self.model = model
        self.separate_cls = model.cfg.fusion.separate_cls

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Frames ``(B, F, 3, H, W)`` to one or two ``(B, 1 + F*N, Dv)`` token tensors[, and ``(B, E)``]."""
        motion = self.model.video_motion(frames)
        extra = () if motion is None else (motion,)
        if not self.separate_cls:
            return (self.model.video_lower(frames, "dual"), *extra)
        # the same as video_lower(frames, "dual") and (frames, "fusion"), with both streams in one batch so the
        # lower blocks appear once in the graph
        B = frames.shape[0]
        video = self.model.video
        dual = video.embed(frames, video.cls_token)  # (B, T, Dv)
        fusion = video.embed(frames, self.model.fusion_cls_token)  # (B, T, Dv)
        x = video.run_blocks(torch.cat([dual, fusion]), 0, video.first_fused)  # (2B, T, Dv)
        return x[:B], x[B:], *extra


class VideoUpperGraph(nn.Module):
    """``video_tokens[, video_motion] -> video_embedding``: unfused top blocks and projection (plus the motion
    branch's share when the model has one), L2-normalised (gates off)."""

    def __init__(self, model: EgoVLPv2) -> None:
        super().__init__()
        self.model = model

    def forward(self, video_tokens: torch.Tensor, video_motion: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        """Tokens ``(B, T, Dv)`` [and the branch's ``(B, E)``] to the unit-norm embedding ``(B, E)``."""
        return (self.model.video_upper(video_tokens, normalize=True, motion=video_motion),)


class TextLowerGraph(nn.Module):
    """``input_ids, attention_mask -> text_tokens``: the states entering the first fused text layer."""

    def __init__(self, model: EgoVLPv2) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        """Ids and 1/0 mask ``(B, L)`` to hidden states ``(B, L, Dt)``."""
        return (self.model.text_lower(input_ids, attention_mask),)


class TextUpperGraph(nn.Module):
    """``text_tokens, attention_mask -> text_embedding``: unfused top layers and projection, L2-normalised."""

    def __init__(self, model: EgoVLPv2) -> None:
        super().__init__()
        self.model = model

    def forward(self, text_tokens: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor]:
        """States ``(B, L, Dt)`` and mask ``(B, L)`` to the unit-norm embedding ``(B, E)``."""
        return (self.model.text_upper(text_tokens, attention_mask, normalize=True),)


class FusedUpperGraph(nn.Module):
    """``video tokens, text_tokens, attention_mask -> vtm_logits, fused_video_cls, fused_text_cls[, qa_logits]``.

    Gates on. With a QA head, ``qa_logits`` is the head over ``fused_video_cls`` (the fusion-normed video CLS,
    what ``QATask`` feeds it in fusion mode).

    Raises:
        ValueError: The model has no VTM head, or the QA head does not read the model's fused video CLS.
    """

    def __init__(self, model: EgoVLPv2, qa_head: nn.Module | None = None) -> None:
        super().__init__()
        if model.heads.vtm is None:
            raise ValueError(
                f"fused_upper needs a VTM head but model {model.cfg.name!r} has heads.vtm=false; "
                "enable heads.vtm or export only the dual graphs"
            )
        if qa_head is not None:
            check_qa_head(model, qa_head)
        self.model = model
        self.qa_head = qa_head

    def forward(
        self, video_tokens: torch.Tensor, text_tokens: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Run the top layers fused, the VTM head and the QA head if there is one.

        Args:
            video_tokens: Fused-stream video tokens entering the first fused block ``(B, T, Dv)``.
            text_tokens: Text states entering the first fused layer ``(B, L, Dt)``.
            attention_mask: Text padding mask ``(B, L)`` (1 keep, 0 pad).

        Returns:
            VTM logits ``(B, 2)``, the fusion-normed video CLS ``(B, Dv)``, the fused text CLS ``(B, Dt)`` and,
            with a QA head, the answer logits ``(B, A)``.
        """
        v, t = self.model.fuse_upper(video_tokens, text_tokens, attention_mask)
        out = self.model.fusion_heads(v, t)
        assert out.vtm_logits is not None  # checked in __init__
        if self.qa_head is None:
            return out.vtm_logits, out.video_cls, out.text_cls
        return out.vtm_logits, out.video_cls, out.text_cls, self.qa_head(out.video_cls)


_WRAPPERS: dict[str, type[nn.Module]] = {
    "video_lower": VideoLowerGraph,
    "video_upper": VideoUpperGraph,
    "text_lower": TextLowerGraph,
    "text_upper": TextUpperGraph,
    "fused_upper": FusedUpperGraph,
}


def graph_module(model: EgoVLPv2, name: str, qa_head: nn.Module | None = None) -> nn.Module:
    """The wrapper module of one graph.

    Args:
        model: The model whose weights the graph uses.
        name: One of :data:`egovlpv2_edge.graphs.GRAPH_NAMES`.
        qa_head: A QA head over the fused video CLS; ``fused_upper`` then also returns ``qa_logits`` (the other
            graphs ignore it).

    Raises:
        ValueError: Unknown graph name; the message lists the valid ones.
    """
    if name not in _WRAPPERS:
        raise ValueError(f"unknown graph {name!r}; valid graphs: {', '.join(GRAPH_NAMES)}")
    if name == "fused_upper":
        return FusedUpperGraph(model, qa_head)
    return _WRAPPERS[name](model)


@contextlib.contextmanager
def _eval_mode(model: nn.Module | None) -> Iterator[None]:
    """Put a model (if any) in eval mode for a block and restore its previous mode afterwards."""
    if model is None:
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ----- inputs ------------------------------------------------------------------------------------------------------
def sample_inputs(model: EgoVLPv2, spec: GraphSpec, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs of a graph, keyed by input name, in the spec's order.

    Frames are standard normal; token ids are random non-special ids with padded tails of varied length (the
    first row unpadded, with ``batch >= 3`` the last row fully padded). Intermediate tokens are computed from
    such frames and ids by the model's lower layers, so they have realistic statistics.

    Args:
        model: The model (its config fixes every static size; it runs in eval mode here).
        spec: The graph's spec.
        batch: Batch size.
        seed: Seed of the random draws.

    Raises:
        ValueError: An input name this function does not know.
    """
    v = model.cfg.video
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(batch, v.num_frames, 3, v.img_size, v.img_size, generator=g)  # (B, F, 3, H, W)
    ids, mask = _random_text(model, batch, g)
    with _eval_mode(model), torch.no_grad():
        makers = {
            "frames": lambda: frames,
            "input_ids": lambda: ids,
            "attention_mask": lambda: mask,
            "video_tokens": lambda: model.video_lower(frames, "dual"),
            "fusion_video_tokens": lambda: model.video_lower(frames, "fusion"),
            "video_motion": lambda: model.video_motion(frames),
            "text_tokens": lambda: model.text_lower(ids, mask),
        }
        unknown = [name for name in spec.input_names if name not in makers]
        if unknown:
            raise ValueError(f"graph {spec.name!r}: no sampler for input(s) {unknown}; known: {sorted(makers)}")
        return {name: makers[name]() for name in spec.input_names}


def _random_text(model: EgoVLPv2, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    t = model.cfg.text
    L = t.max_length
    low = min(5, t.vocab_size - 1)  # above the pad id and the first special ids of both vocabularies
    ids = torch.randint(low, t.vocab_size, (batch, L), generator=g)  # (B, L)
    lengths = torch.randint(1, L + 1, (batch,), generator=g)
    lengths[0] = L
    if batch >= 3:
        lengths[-1] = 0  # a fully padded row must stay finite
    mask = (torch.arange(L)[None, :] < lengths[:, None]).long()  # (B, L)
    ids = ids.masked_fill(mask == 0, t.pad_id)
    return ids, mask


# ----- export ------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the per-rewrite INFO logs of the ONNX optimizer while exporting; restore the levels after."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _dynamic_shapes(spec: GraphSpec) -> tuple[dict[int, Any], ...]:
    """One ``{axis: Dim}`` dict per input; inputs sharing an axis name share the ``Dim``."""
    dims: dict[str, Any] = {}
    out = []
    for tensor in spec.inputs:
        axes = {}
        for i, d in enumerate(tensor.shape):
            if isinstance(d, str):
                axes[i] = dims.setdefault(d, torch.export.Dim(d, min=1))
        out.append(axes)
    return tuple(out)


def export_graph(
    model: EgoVLPv2, spec: GraphSpec, path: str | Path, *, batch: int = 2, qa_head: nn.Module | None = None
) -> Path:
    """Export one graph with ``torch.onnx.export`` (dynamo) and check its inputs and outputs against the spec.

    The export runs the model in eval mode (its previous mode is restored), with the spec's input/output names
    and opset and the spec's named axes (``"batch"``) dynamic.

    Args:
        model: The model whose weights the graph uses.
        spec: The graph's spec, from :func:`egovlpv2_edge.graphs.graph_specs` of the model's config.
        path: The ``.onnx`` file to write; parent folders are created.
        batch: Batch size of the example inputs; at least 2, as ``torch.export`` specialises a size of 1.
        qa_head: The QA head ``fused_upper`` carries (its spec must then have ``qa_logits``).

    Returns:
        The written path.

    Raises:
        ValueError: ``batch < 2``, an unknown graph name, or a QA head the spec does not expect (or the reverse).
        ExportMismatchError: The written graph's inputs or outputs differ from the spec.
    """
    if batch < 2:
        raise ValueError(f"export batch {batch} is too small; use batch >= 2 (torch.export specialises a size of 1)")
    check_spec_head(spec, qa_head)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _eval_mode(model), _eval_mode(qa_head), _quiet_exporter(), warnings.catch_warnings():
        module = graph_module(model, spec.name, qa_head).eval()
        args = tuple(sample_inputs(model, spec, batch, seed=0).values())
        # every input's batch axis shares one Dim; torch.onnx warns that it keeps only one of the equal names
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*")
        program = torch.onnx.export(
            module,
            args,
            input_names=spec.input_names,
            output_names=spec.output_names,
            opset_version=spec.opset,
            dynamic_shapes=_dynamic_shapes(spec),
            dynamo=True,
            verbose=False,
        )
    program.save(str(path))
    check_graph_io(path, spec)
    return path


# ----- validation --------------------------------------------------------------------------------------------------
def check_graph_io(path: str | Path, spec: GraphSpec) -> None:
    """Check that an ONNX file's inputs and outputs have the spec's names, order, dtypes and static sizes.

    Args:
        path: The ``.onnx`` file.
        spec: The graph's spec.

    Raises:
        ExportMismatchError: The first difference found, naming the graph and the value.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for kind, values, wanted in (("input", graph.input, spec.inputs), ("output", graph.output, spec.outputs)):
        got_names = [v.name for v in values]
        want_names = [t.name for t in wanted]
        if got_names != want_names:
            raise ExportMismatchError(
                f"graph {spec.name!r} ({path}): {kind}s are {got_names} but the spec wants {want_names}; "
                "re-export the graph from a model whose config matches the spec"
            )
        for value, tensor in zip(values, wanted, strict=True):
            _check_value(spec.name, kind, value, tensor)


def _check_value(graph: str, kind: str, value: Any, tensor: TensorSpec) -> None:
    ttype = value.type.tensor_type
    dtype = _ONNX_DTYPES.get(ttype.elem_type, f"onnx type {ttype.elem_type}")
    dims: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in ttype.shape.dim]
    ok = dtype == tensor.dtype and tuple(dims) == tuple(tensor.shape)
    if not ok:
        raise ExportMismatchError(
            f"graph {graph!r}: {kind} {tensor.name!r} is {dtype} {tuple(dims)} in the ONNX file but the spec wants "
            f"{tensor.dtype} {tensor.shape} (strings name dynamic axes); re-export the graph with the current spec"
        )


def validate_graph(
    model: EgoVLPv2,
    spec: GraphSpec,
    path: str | Path,
    *,
    batch: int = 3,
    seed: int = 1,
    atol: float | None = None,
    qa_head: nn.Module | None = None,
) -> ValidationResult:
    """Run an exported graph in ONNX Runtime (CPU) on fresh random inputs and compare it with PyTorch.

    The inputs come from :func:`sample_inputs` with ``seed`` (another draw than the export's) and, by default,
    another batch size than the export's, so a batch axis frozen at export time fails here.

    Args:
        model: The model the graph was exported from.
        spec: The graph's spec.
        path: The ``.onnx`` file.
        batch: Batch size of the validation inputs (3 includes a fully padded text row).
        seed: Seed of the random inputs.
        atol: Absolute tolerance; the spec's ``atol`` when None.
        qa_head: The QA head the graph was exported with (its ``qa_logits`` are compared like every output).

    Returns:
        The max absolute difference per output.

    Raises:
        ExportMismatchError: A name, dtype or size differs from the spec, an output is not finite where PyTorch's
            is, or an output differs by more than ``atol``.
    """
    import onnxruntime as ort

    atol = spec.atol if atol is None else atol
    check_spec_head(spec, qa_head)
    check_graph_io(path, spec)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with _eval_mode(model), _eval_mode(qa_head), torch.no_grad():
        inputs = sample_inputs(model, spec, batch, seed)
        expected = graph_module(model, spec.name, qa_head).eval()(*inputs.values())
    got = session.run(spec.output_names, {name: x.numpy() for name, x in inputs.items()})
    diffs = {}
    for tensor, want, have in zip(spec.outputs, expected, got, strict=True):
        diffs[tensor.name] = _compare(spec.name, tensor, want.numpy(), have, batch, atol)
    return ValidationResult(spec.name, batch, atol, diffs)


def _compare(graph: str, tensor: TensorSpec, want: np.ndarray, have: np.ndarray, batch: int, atol: float) -> float:
    if have.shape != tensor.concrete(batch) or want.shape != have.shape:
        raise ExportMismatchError(
            f"graph {graph!r}: output {tensor.name!r} has shape {have.shape} in ONNX Runtime, PyTorch gives "
            f"{want.shape} and the spec wants {tensor.concrete(batch)} at batch {batch}; re-export the graph"
        )
    if not np.isfinite(have).all() and np.isfinite(want).all():
        raise ExportMismatchError(
            f"graph {graph!r}: output {tensor.name!r} has non-finite values in ONNX Runtime but not in PyTorch "
            f"(max abs diff inf, tolerance {atol:.1e}); check that every mask is finite, never -inf"
        )
    diff = float(np.abs(have.astype(np.float64) - want.astype(np.float64)).max()) if have.size else 0.0
    if not diff <= atol:
        raise ExportMismatchError(
            f"graph {graph!r}: output {tensor.name!r} differs from PyTorch by max abs {diff:.3e} > tolerance "
            f"{atol:.1e} (batch {batch}); re-export the graph from this model or check the ONNX file is its own"
        )
    return diff


# ----- all graphs --------------------------------------------------------------------------------------------------
def export_one(
    model: EgoVLPv2, name: str, out_dir: str | Path, *, validate: bool = True, qa_head: nn.Module | None = None
) -> ExportedGraph:
    """Export one graph into ``out_dir/<name>.onnx`` and, unless told not to, validate it.

    Args:
        model: The model.
        name: One of :data:`egovlpv2_edge.graphs.GRAPH_NAMES`.
        out_dir: Output folder; created if missing.
        validate: Run :func:`validate_graph` on the export.
        qa_head: A QA head over the fused video CLS, exported as ``fused_upper``'s ``qa_logits``.

    Raises:
        ValueError: An unknown graph name (the message lists the valid ones) or a QA head that does not fit.
        ExportMismatchError: The graph failed its checks.
    """
    specs = model_specs(model, qa_head)
    if name not in specs:
        raise ValueError(f"unknown graph {name!r}; valid graphs: {', '.join(GRAPH_NAMES)}")
    start = time.perf_counter()
    path = export_graph(model, specs[name], Path(out_dir) / f"{name}.onnx", qa_head=qa_head)
    diff = validate_graph(model, specs[name], path, qa_head=qa_head).max_abs_diff if validate else None
    return ExportedGraph(path, file_sha256(path), diff, time.perf_counter() - start)


def export_all(
    model: EgoVLPv2,
    out_dir: str | Path,
    *,
    validate: bool = True,
    graphs: Sequence[str] | None = None,
    qa_head: nn.Module | None = None,
) -> dict[str, ExportedGraph]:
    """Export (and validate) the graphs of a model into ``out_dir/<graph>.onnx``, logging progress per graph.

    Args:
        model: The model.
        out_dir: Output folder; created if missing.
        validate: Run :func:`validate_graph` on each export.
        graphs: Graph names to export, in :data:`egovlpv2_edge.graphs.GRAPH_NAMES` order when None.
        qa_head: A QA head over the fused video CLS (``QAHead`` of a fusion-mode fine-tuned checkpoint or of a
            distilled student), exported as ``fused_upper``'s ``qa_logits``; write its answers beside the graphs
            with :func:`write_answer_vocabs` so ``egovlp package build`` packages them.

    Returns:
        One :class:`ExportedGraph` per graph, in the order exported.

    Raises:
        ValueError: An unknown graph name (checked before any export; the message lists the valid ones) or a QA
            head that does not read the model's fused video CLS.
        ExportMismatchError: A graph failed its checks.
    """
    names = list(GRAPH_NAMES if graphs is None else graphs)
    unknown = [n for n in names if n not in GRAPH_NAMES]
    if unknown:
        raise ValueError(f"unknown graph(s) {unknown}; valid graphs: {', '.join(GRAPH_NAMES)}")
    if qa_head is not None:
        check_qa_head(model, qa_head)
    out: dict[str, ExportedGraph] = {}
    for i, name in enumerate(names, 1):
        out[name] = graph = export_one(model, name, out_dir, validate=validate, qa_head=qa_head)
        logger.info(
            "[%d/%d] %s: %.2f MB, max abs diff %s, %.1f s",
            *(i, len(names), name, graph.path.stat().st_size / 1e6),
            *("not validated" if graph.max_abs_diff is None else f"{graph.max_abs_diff:.2e}", graph.seconds),
        )
    return out


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
