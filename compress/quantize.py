"""Post-training quantization of the package graphs, with the precision of each graph chosen by measurement.

Variants of each FP32 graph (:data:`METHODS`):

``nncf``            NNCF PTQ, INT8 QDQ, ``model_type=TRANSFORMER``, MIXED preset (symmetric weights, asymmetric
                    activations), calibrated on real clips/texts; the 2-D heads (Gemm: projections, VTM) ignored
``nncf_sym``        the same with the PERFORMANCE preset (symmetric activations too): what TensorRT needs
``nncf_noattn``     MIXED, also leaving the attention matmuls (activation x activation) in float
``ort_dynamic``     ONNX Runtime dynamic quantization (int8 weights, uint8 activations at run time)
``ort_dynamic_pc``  the same, per-channel weights
``ort_dynamic_mm``  the same, MatMul only (heads and Gemm untouched)
``ort_qdq``         ONNX Runtime static quantization, QDQ format, per-channel, calibrated like NNCF
``ort_qop``         ONNX Runtime static quantization, QOperator format (QLinearMatMul ...), per-channel
``fp16``            FP16 weights and compute with float32 inputs/outputs (``keep_io_types``), for GPUs

For each graph, every variant is timed side by side with FP32 (ONNX Runtime CPU, same threads, batch 1 and 8)
and its outputs compared with FP32 on held-out inputs; :func:`~._measure.select_precision` keeps FP32 when a
variant is slower or drifts more than allowed. The package records the choice, the reason and every measurement.
On a CPU without VNNI, INT8 is often slower than FP32: that is recorded as measured.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from egovlpv2_edge.compress._measure import (
    REFERENCE,
    SelectionRule,
    machine_description,
    measure_drift,
    measure_latency,
    run_outputs,
    select_precision,
)
from egovlpv2_edge.compress.calibration import Feeds, graph_samples, load_calibration, stack
from egovlpv2_edge.graphs import GRAPH_NAMES, GraphSpec
from egovlpv2_edge.package import PrecisionCandidate, build_package, open_package

logger = logging.getLogger(__name__)

EvalFn = Callable[[str, Path], float]  # (graph, ONNX file swapped in for it) -> task accuracy


class QuantizationError(ValueError):
    """A quantization method or argument is invalid (the message lists the valid choices)."""


@dataclass(frozen=True)
class Method:
    """One way of making a lower-precision variant.

    Attributes:
        precision: Package precision name of its files.
        description: One line for tables and records.
        calibrated: Whether it needs calibration samples.
    """

    precision: str
    description: str
    calibrated: bool


METHODS: dict[str, Method] = {
    "nncf": Method("int8", "NNCF PTQ INT8 QDQ, transformer, mixed preset, heads ignored", True),
    "nncf_sym": Method("int8_sym", "NNCF PTQ INT8 QDQ, transformer, performance (symmetric) preset", True),
    "nncf_noattn": Method("int8_noattn", "NNCF PTQ INT8 QDQ, mixed, attention matmuls in float", True),
    "ort_dynamic": Method("int8_dyn", "ORT dynamic INT8 (MatMul+Gemm), per-tensor", False),
    "ort_dynamic_pc": Method("int8_dyn_pc", "ORT dynamic INT8, per-channel weights", False),
    "ort_dynamic_mm": Method("int8_dyn_mm", "ORT dynamic INT8, MatMul only", False),
    "ort_qdq": Method("int8_qdq", "ORT static INT8 QDQ S8S8, per-channel", True),
    "ort_qop": Method("int8_qop", "ORT static INT8 QOperator U8S8, per-channel", True),
    "fp16": Method("fp16", "FP16 compute, float32 I/O", False),
}
DEFAULT_METHODS = ("nncf", "ort_dynamic", "fp16")


@dataclass(frozen=True)
class GraphChoice:
    """The precision chosen for one graph and what it was chosen from.

    Attributes:
        graph: Graph name.
        selected: The chosen precision.
        reason: Why.
        candidates: Every measurement, FP32 first, with accepted/note filled.
        files: Precision -> the variant's ONNX file (the ones that were built).
    """

    graph: str
    selected: str
    reason: str
    candidates: list[PrecisionCandidate]
    files: dict[str, Path] = field(default_factory=dict)


# ----- variants ----------------------------------------------------------------------------------------------------
def head_nodes(model: object) -> list[str]:
    """Names of the 2-D head layers (``Gemm``: projections and the VTM head): small and error-sensitive."""
    return [n.name for n in model.graph.node if n.op_type == "Gemm"]  # type: ignore[attr-defined]


def attention_matmuls(model: object) -> list[str]:
    """Names of the MatMuls with no weight input: attention scores and context (activation x activation)."""
    weights = {t.name for t in model.graph.initializer}  # type: ignore[attr-defined]
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}  # type: ignore[attr-defined]
    return [
        n.name
        for n in model.graph.node  # type: ignore[attr-defined]
        if n.op_type == "MatMul" and not any(i in weights or i in consts for i in n.input)
    ]


def make_variant(method: str, src: Path, dst: Path, calibration: Sequence[Feeds], ignore: Sequence[str] = ()) -> Path:
    """Write one variant of an FP32 graph.

    Args:
        method: One of :data:`METHODS`.
        src: The FP32 ONNX file.
        dst: The variant's file.
        calibration: Batch-1 input dicts (used by calibrated methods).
        ignore: Regexes of node names to keep in float (added to each method's own exclusions).

    Raises:
        QuantizationError: Unknown method; the message lists the valid ones.
    """
    import onnx

    if method not in METHODS:
        raise QuantizationError(f"unknown quantization method {method!r}; valid: {', '.join(METHODS)}")
    model = onnx.load(str(src))
    keep = [n.name for n in model.graph.node if any(re.search(p, n.name) for p in ignore)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    if method.startswith("nncf"):
        keep += head_nodes(model) + (attention_matmuls(model) if method == "nncf_noattn" else [])
        onnx.save(_nncf(model, calibration, keep, symmetric=method == "nncf_sym"), str(dst))
    elif method.startswith("ort_dynamic"):
        _ort_dynamic(src, dst, keep, per_channel=method == "ort_dynamic_pc", matmul_only=method == "ort_dynamic_mm")
    elif method in ("ort_qdq", "ort_qop"):
        _ort_static(src, dst, calibration, keep + head_nodes(model), qdq=method == "ort_qdq")
    else:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # ORT's converter, not onnxconverter-common's: the latter leaves torch's Cast(to=float) typed float16
        onnx.save(convert_float_to_float16(model, keep_io_types=True, node_block_list=keep), str(dst))
    return dst


def _nncf(model: object, calibration: Sequence[Feeds], ignore: list[str], symmetric: bool) -> object:
    import nncf

    return nncf.quantize(
        model,
        nncf.Dataset(list(calibration)),
        preset=nncf.QuantizationPreset.PERFORMANCE if symmetric else nncf.QuantizationPreset.MIXED,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
        ignored_scope=nncf.IgnoredScope(names=ignore, validate=False),
    )


def _ort_dynamic(src: Path, dst: Path, exclude: list[str], *, per_channel: bool, matmul_only: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=["MatMul"] if matmul_only else ["MatMul", "Gemm"],
        per_channel=per_channel,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
    )


class _Reader:
    """``CalibrationDataReader`` over batch-1 samples."""

    def __init__(self, samples: Sequence[Feeds]) -> None:
        self._it = iter(samples)

    def get_next(self) -> Feeds | None:
        return next(self._it, None)


def _ort_static(src: Path, dst: Path, calibration: Sequence[Feeds], exclude: list[str], *, qdq: bool) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src),
        str(dst),
        _Reader(calibration),  # type: ignore[arg-type]
        quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
        per_channel=True,
        activation_type=QuantType.QInt8 if qdq else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
    )


# ----- one graph ---------------------------------------------------------------------------------------------------
def choose_graph_precision(
    spec: GraphSpec,
    fp32: Path,
    samples: Sequence[Feeds],
    work_dir: Path,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    rule: SelectionRule | None = None,
    threads: int = 2,
    batches: Sequence[int] = (1, 8),
    holdout: float = 0.25,
    ignore: Sequence[str] = (),
    eval_fn: EvalFn | None = None,
) -> GraphChoice:
    """Build every variant of one graph, measure it against FP32 and choose the precision.

    Args:
        spec: The graph's spec.
        fp32: Its FP32 ONNX file.
        samples: Batch-1 inputs; the last ``holdout`` fraction is held out for the drift measurement.
        work_dir: Where variants are written as ``<graph>.<precision>.onnx``.
        methods: Names from :data:`METHODS`.
        rule: The selection thresholds.
        threads: ONNX Runtime threads for the latency measurement.
        batches: Batch sizes timed (keys ``"batch<N>"``).
        holdout: Fraction of ``samples`` kept out of calibration (at least one sample).
        ignore: Node-name regexes kept in float by every method.
        eval_fn: Task accuracy with one graph file swapped in; adds ``accuracy_drop`` to the drift.

    Returns:
        The choice, with every candidate's record and file.
    """
    rule = rule or SelectionRule()
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise QuantizationError(f"unknown quantization method(s) {unknown}; valid: {', '.join(METHODS)}")
    n_held = max(1, int(round(len(samples) * holdout)))
    calib, held = list(samples[:-n_held]) or list(samples), list(samples[-n_held:])
    files, errors = {REFERENCE: fp32}, {}
    for m in methods:
        precision = METHODS[m].precision
        try:
            files[precision] = make_variant(m, fp32, work_dir / f"{spec.name}.{precision}.onnx", calib, ignore)
        except Exception as err:  # noqa: BLE001 - any library failure becomes a rejected candidate
            logger.warning("%s: %s failed: %s", spec.name, m, err)
            errors[precision] = f"failed to build: {type(err).__name__}: {str(err)[:200]}"
    feeds = {f"batch{b}": stack(held, b) for b in batches}
    latency = measure_latency(files, feeds, threads=threads)
    reference = run_outputs(fp32, spec, held, threads)
    ref_acc = eval_fn(spec.name, fp32) if eval_fn else None
    candidates = []
    for m in methods:
        precision = METHODS[m].precision
        record = PrecisionCandidate(precision, m, note=errors.get(precision, ""))
        if precision in latency:
            drift = measure_drift(spec, reference, run_outputs(files[precision], spec, held, threads))
            if eval_fn is not None and ref_acc is not None:
                drift["accuracy_drop"] = ref_acc - eval_fn(spec.name, files[precision])
            record = PrecisionCandidate(precision, m, latency[precision], drift)
        elif precision not in errors:
            record = PrecisionCandidate(precision, m, note="built but does not load or run in ONNX Runtime CPU")
        candidates.append(record)
    ref = PrecisionCandidate(REFERENCE, "export", latency.get(REFERENCE, {}))
    selected, reason, records = select_precision(ref, candidates, rule)
    built = {p: f for p, f in files.items() if p == REFERENCE or p in latency}
    return GraphChoice(spec.name, selected, reason, records, built)


# ----- a package ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_package` did.

    Attributes:
        package: The new package directory.
        choices: Graph -> its choice.
        measured_on: Where latencies were measured.
        calibration: Where the calibration clips/texts came from.
    """

    package: Path
    choices: dict[str, GraphChoice]
    measured_on: str
    calibration: str


def quantize_package(
    package: str | Path,
    calibration: str | Path,
    out_dir: str | Path,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    rule: SelectionRule | None = None,
    graphs: Sequence[str] | None = None,
    threads: int = 2,
    batches: Sequence[int] = (1, 8),
    max_clips: int = 48,
    keep: str = "selected",
    ignore: Mapping[str, Sequence[str]] | None = None,
    texts: Sequence[str] | None = None,
    eval_fn: EvalFn | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> QuantizeReport:
    """Quantize an FP32 package's graphs, choose each graph's precision by measurement, write a new package.

    Args:
        package: The FP32 package (directory or ``.egopkg``); its FP32 files are the reference.
        calibration: EgoClip dataset folder/csv or a folder of videos (see :func:`~.calibration.load_calibration`).
        out_dir: The new package directory (its name is the package name).
        methods: Names from :data:`METHODS`.
        rule: Selection thresholds.
        graphs: Graphs to try lower precisions on (others stay FP32); all when None.
        threads: ONNX Runtime threads for latency.
        batches: Batch sizes timed.
        max_clips: Clips and texts decoded for calibration plus held-out measurement.
        keep: ``"selected"`` (FP32 + the chosen precision) or ``"all"`` (every variant that ran).
        ignore: Graph -> node-name regexes kept in float.
        texts: Calibration texts instead of the dataset's narrations.
        eval_fn: Task accuracy with one graph swapped in (see :data:`EvalFn`).
        overwrite: Replace an existing package in ``out_dir``.
        progress: Called with a status line per graph.

    Raises:
        QuantizationError: A bad argument; the message lists the valid choices.
        PackageError: The source package does not verify, or the new one cannot be built.
    """
    if keep not in ("selected", "all"):
        raise QuantizationError(f"keep={keep!r}; valid: selected, all")
    unknown = [g for g in (graphs or ()) if g not in GRAPH_NAMES]
    if unknown:
        raise QuantizationError(f"unknown graph(s) {unknown}; valid graphs: {', '.join(GRAPH_NAMES)}")
    src = open_package(package)
    specs = src.specs  # with qa_logits when the fused graph has a QA head: its drift is gated like the VTM logits
    fp32 = {g: src.graph_path(g, REFERENCE) for g in GRAPH_NAMES}
    data = load_calibration(calibration, src.preprocessing, src.tokenizer(), texts=texts, max_clips=max_clips)
    samples = graph_samples(data, fp32, specs, threads=threads)
    measured_on = machine_description(threads)
    choices: dict[str, GraphChoice] = {}
    with tempfile.TemporaryDirectory(prefix="egovlp-quantize-") as tmp:
        for name in GRAPH_NAMES:
            if graphs is not None and name not in graphs:
                choices[name] = GraphChoice(
                    name, REFERENCE, f"{REFERENCE}: not tried (--graphs)", [], {REFERENCE: fp32[name]}
                )
                continue
            if progress:
                progress(name)
            choices[name] = choose_graph_precision(
                specs[name], fp32[name], samples[name], Path(tmp),
                methods=methods, rule=rule, threads=threads, batches=batches,
                ignore=(ignore or {}).get(name, ()), eval_fn=eval_fn,
            )  # fmt: skip
        out = _build(src, choices, Path(out_dir), keep, measured_on, overwrite)
    return QuantizeReport(out, choices, measured_on, data.source)


def _build(
    src: object, choices: Mapping[str, GraphChoice], out: Path, keep: str, measured_on: str, overwrite: bool
) -> Path:
    m = src.manifest  # type: ignore[attr-defined]
    root = src.root  # type: ignore[attr-defined]
    graphs = {}
    for name, c in choices.items():
        kept = c.files if keep == "all" else {p: f for p, f in c.files.items() if p in (REFERENCE, c.selected)}
        graphs[name] = {
            p: f if p != REFERENCE else root / m.graphs[name].files[REFERENCE].file for p, f in kept.items()
        }
    metrics = {s: dict(v) for s, v in m.metrics.items()}
    metrics["quantize"] = _metrics(choices)
    return build_package(
        out,
        config=src.config,  # type: ignore[attr-defined]
        graphs=graphs,
        selected={n: (c.selected, c.reason) for n, c in choices.items()},
        tokenizer=root / m.tokenizer.file,
        preprocessing=m.preprocessing,
        answer_vocabs=m.answer_vocabs,
        heads={n: root / e.file for n, e in m.heads.items()},
        providers={n: root / e.file for n, e in m.providers.items()},
        candidates={n: c.candidates for n, c in choices.items() if c.candidates},
        measured_on=measured_on,
        source_checkpoint=m.source_checkpoint_sha256,
        metrics=metrics,
        version=m.version,
        overwrite=overwrite,
    )


def _metrics(choices: Mapping[str, GraphChoice]) -> dict[str, float]:
    """Per graph: the chosen variant's speedup at batch 1 and its min cosine to FP32."""
    out = {}
    for name, c in choices.items():
        chosen = next((r for r in c.candidates if r.precision == c.selected), None)
        ref = next((r for r in c.candidates if r.precision == REFERENCE), None)
        if chosen is None or ref is None or "batch1" not in chosen.latency_ms:
            continue
        out[f"{name}_speedup_batch1"] = ref.latency_ms["batch1"] / chosen.latency_ms["batch1"]
        out[f"{name}_min_cosine"] = chosen.drift.get("min_cosine", 1.0)
    return out


def copy_graphs(choice: GraphChoice, dest: Path) -> dict[str, Path]:
    """Copy a choice's variant files to ``dest`` as ``<graph>.<precision>.onnx`` (for ``egovlp package build``)."""
    dest.mkdir(parents=True, exist_ok=True)
    return {p: Path(shutil.copyfile(f, dest / f"{choice.graph}.{p}.onnx")) for p, f in choice.files.items()}


__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "GraphChoice",
    "Method",
    "QuantizationError",
    "QuantizeReport",
    "SelectionRule",
    "attention_matmuls",
    "choose_graph_precision",
    "copy_graphs",
    "head_nodes",
    "make_variant",
    "quantize_package",
]
