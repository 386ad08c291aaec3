"""Measuring a graph variant against FP32 (latency side by side, output drift) and the precision selection rule.

A lower precision is only worth shipping when it is measurably faster on the target and stays close to FP32. The
rule here (:func:`select_precision`) takes the measurements as data, so it can be tested with injected numbers,
and writes down, for every candidate, why it was accepted or rejected; the package keeps those records.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from egovlpv2_edge.graphs import GraphSpec
from egovlpv2_edge.package import PrecisionCandidate

Feeds = dict[str, np.ndarray]
REFERENCE = "fp32"


@dataclass(frozen=True)
class SelectionRule:
    """When a lower precision replaces FP32.

    Attributes:
        min_cosine: Lowest allowed cosine similarity to FP32 of any output row on held-out inputs.
        max_logit_diff: Largest allowed max abs difference of logits (outputs named ``*_logits``).
        max_accuracy_drop: Largest allowed task-accuracy drop (absolute), when an eval function is given.
        min_speedup: Least speedup over FP32 at ``decide_batch``; also, no measured batch may be slower than FP32.
        decide_batch: The latency key that decides (``"batch1"`` for streaming, one clip at a time).
    """

    min_cosine: float = 0.99
    max_logit_diff: float = 0.25
    max_accuracy_drop: float = 0.01
    min_speedup: float = 1.05
    decide_batch: str = "batch1"


def machine_description(threads: int) -> str:
    """ONNX Runtime version, provider, threads and CPU: where the latencies were measured."""
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"onnxruntime {ort.__version__} CPUExecutionProvider, {threads} thread(s), {cpu} ({os.cpu_count()} cores)"


def _session(path: Path, threads: int, profile_prefix: str | None = None) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # As the runtime runs them: without spinning, the idle threads of the variant timed just before do not keep
    # the cores busy while the next one is timed (interleaved rounds would otherwise charge it for them).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def measure_latency(
    paths: Mapping[str, Path],
    feeds: Mapping[str, Feeds],
    *,
    threads: int = 2,
    rounds: int = 7,
    min_seconds: float = 0.05,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Median latency per variant and batch, measured side by side (interleaved rounds, same threads).

    Interleaving the variants round by round makes a noisy, shared CPU hit each of them alike.

    Args:
        paths: Variant name -> ONNX file.
        feeds: Batch key (``"batch1"``) -> inputs.
        threads: Intra-op threads of every session.
        rounds: Timed rounds; the median is reported.
        min_seconds: Least time of one timed round (repeats runs inside it), so tiny graphs time well.
        progress: Called with a short status per batch key.

    Returns:
        Variant -> batch key -> median milliseconds per run. A variant that fails to load or run is left out.
    """
    sessions = {}
    for name, path in paths.items():
        try:
            sessions[name] = _session(path, threads)
        except Exception:  # noqa: BLE001 - onnxruntime raises its own types; the caller records the failure
            continue
    out: dict[str, dict[str, float]] = {name: {} for name in sessions}
    for key, feed in feeds.items():
        if progress:
            progress(key)
        reps: dict[str, int] = {}
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for name, s in list(sessions.items()):
            try:
                s.run(None, feed)  # type: ignore[attr-defined]  # cold run: allocations, thread pool start-up
                start = time.perf_counter()
                s.run(None, feed)  # type: ignore[attr-defined]  # warm run: the repeat count from its time
                reps[name] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
            except Exception:  # noqa: BLE001
                del sessions[name]
                out.pop(name, None)
        for _ in range(rounds):
            for name, s in sessions.items():
                start = time.perf_counter()
                for _ in range(reps[name]):
                    s.run(None, feed)  # type: ignore[attr-defined]
                times[name].append((time.perf_counter() - start) / reps[name] * 1e3)
        for name in sessions:
            out[name][key] = float(np.median(times[name]))
    return out


GEMM_OPS = frozenset({"MatMul", "FusedMatMul", "Gemm", "Conv", "FusedConv", "MatMulInteger", "ConvInteger",
                      "QLinearMatMul", "QLinearConv", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "Attention",
                      "MultiHeadAttention"})  # fmt: skip


@dataclass(frozen=True)
class OpTimeShares:
    """Where a graph spends its kernel time, by operator type (ONNX Runtime profiler).

    Attributes:
        shares: Operator type -> fraction of the summed kernel time, largest first.
        gemm_share: Fraction in matrix products and convolutions (:data:`GEMM_OPS`), what lower precision speeds up.
        runs: Profiled runs.
        kernel_ms: Summed kernel time per run (milliseconds; below the wall time, which adds scheduling).
        linear_share: Fraction in the linear layers, products by a constant weight and their bias adds: what
            dynamic INT8 replaces (a fused quantized product that also adds the bias).
        weight_gemms: ``(M, K, N)`` of each product by a constant weight -> how many such products one run computes.
    """

    shares: dict[str, float]
    gemm_share: float
    runs: int
    kernel_ms: float
    linear_share: float = 0.0
    weight_gemms: dict[tuple[int, int, int], float] = field(default_factory=dict)


def _is_bias_add(op: str, args: Mapping[str, object]) -> bool:
    """An ``Add`` of a 1-D tensor along the last axis: the bias of a linear layer."""
    inputs = args.get("input_type_shape")
    if op != "Add" or not isinstance(inputs, list) or len(inputs) != 2:
        return False
    a, b = (next(iter(x.values())) for x in inputs)
    return len(b) == 1 and len(a) >= 2 and b[0] == a[-1]


def _weight_gemm(op: str, args: Mapping[str, object]) -> tuple[int, int, int] | None:
    """``(M, K, N)`` of a profiled matrix product by a constant weight (the profiler lists activations only)."""
    if op not in ("MatMul", "FusedMatMul", "Gemm"):
        return None
    inputs, outputs = args.get("input_type_shape"), args.get("output_type_shape")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != 1 or len(outputs) != 1:
        return None
    a, y = next(iter(inputs[0].values())), next(iter(outputs[0].values()))
    if len(a) < 2 or not y:
        return None
    return int(np.prod(a[:-1])), int(a[-1]), int(y[-1])


def op_time_shares(path: Path, feed: Feeds, threads: int = 2, runs: int = 30) -> OpTimeShares:
    """Profile ``runs`` runs of one graph on ``feed`` and split the kernel time by operator type.

    Raises:
        ValueError: If the profile holds no node timings (``runs`` < 1).
    """
    import json
    import tempfile

    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        session = _session(path, threads, profile_prefix=os.path.join(tmp, "profile"))  # as timed
        for _ in range(runs + 1):  # the first run (allocations, thread start-up) is left out below
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    run_starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    after = run_starts[1] if len(run_starts) > 1 else 0
    totals: dict[str, float] = {}
    gemms: dict[tuple[int, int, int], float] = {}
    linear = 0.0
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e.get("ts", 0) >= after:
            args = e.get("args", {})
            op, dur = args.get("op_name", "?"), float(e.get("dur", 0))
            totals[op] = totals.get(op, 0.0) + dur
            if (shape := _weight_gemm(op, args)) is not None:
                gemms[shape] = gemms.get(shape, 0.0) + 1.0 / runs
                linear += dur
            elif _is_bias_add(op, args):
                linear += dur
    total = sum(totals.values())
    if total <= 0:
        raise ValueError(f"the profile of {path} holds no node timings")
    shares = {k: v / total for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    gemm = sum(v for k, v in shares.items() if k in GEMM_OPS)
    return OpTimeShares(shares, gemm, runs, total / runs / 1000.0, linear / total, gemms)


@dataclass(frozen=True)
class GemmTiming:
    """One linear layer, ``(M, K) x (K, N)`` by a constant weight plus a bias, timed in FP32 and ORT dynamic INT8."""

    shape: tuple[int, int, int]
    fp32_ms: float
    int8_ms: float

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms


def int8_gemm_timings(shapes: Sequence[tuple[int, int, int]], threads: int = 2, rounds: int = 7) -> list[GemmTiming]:
    """Time each linear layer alone (product + bias add), FP32 beside its ORT dynamic INT8 form (as
    ``ort_dynamic_mm`` quantizes a graph: int8 weights, uint8 activations quantized at run time, the bias added by the
    fused quantized product), in sessions built as the runtime's. What INT8 can give a graph's linear layers on this
    CPU; every other operator stays float.
    """
    import tempfile

    import onnx
    from onnx import TensorProto, helper

    from egovlpv2_edge.compress.quantize import _ort_dynamic

    rng = np.random.default_rng(0)
    out = []
    with tempfile.TemporaryDirectory(prefix="gemm-") as tmp:
        for m, k, n in shapes:
            w = rng.standard_normal((k, n)).astype(np.float32) / np.sqrt(k)
            bias = rng.standard_normal(n).astype(np.float32)
            graph = helper.make_graph(
                [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])], "linear",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, m, k])],  # 3-D, as in the graphs
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, n])],
                initializer=[helper.make_tensor("w", TensorProto.FLOAT, [k, n], w.ravel()),
                             helper.make_tensor("b", TensorProto.FLOAT, [n], bias)],
            )  # fmt: skip
            fp32, int8 = Path(tmp) / f"{m}_{k}_{n}.onnx", Path(tmp) / f"{m}_{k}_{n}.int8.onnx"
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
            _ort_dynamic(fp32, int8, [], per_channel=False, matmul_only=True)
            feed = {"x": rng.standard_normal((1, m, k)).astype(np.float32)}
            ms = measure_latency({"fp32": fp32, "int8": int8}, {"b": feed}, threads=threads, rounds=rounds)
            out.append(GemmTiming((m, k, n), ms["fp32"]["b"], ms["int8"]["b"]))
    return out


def amdahl_speedup(gemm_share: float, gemm_speedup: float) -> float:
    """Whole-graph speedup when only the share ``gemm_share`` of its time gets ``gemm_speedup`` times faster."""
    if not 0.0 <= gemm_share <= 1.0 or gemm_speedup <= 0:
        raise ValueError(f"gemm_share must be in [0, 1] and gemm_speedup > 0, got {gemm_share}, {gemm_speedup}")
    return 1.0 / ((1.0 - gemm_share) + gemm_share / gemm_speedup)


def run_outputs(path: Path, spec: GraphSpec, samples: Sequence[Feeds], threads: int = 2) -> list[list[np.ndarray]]:
    """A graph's outputs on each held-out sample (batch 1), in spec order."""
    session = _session(path, threads)
    return [session.run(spec.output_names, s) for s in samples]  # type: ignore[attr-defined]


def measure_drift(
    spec: GraphSpec, reference: Sequence[Sequence[np.ndarray]], outputs: Sequence[Sequence[np.ndarray]]
) -> dict[str, float]:
    """How far a variant's outputs are from FP32 over held-out samples.

    Returns:
        ``min_cosine``: the lowest cosine similarity of any output row (an embedding, a token vector, a logit pair)
        to FP32; ``max_abs_diff``: the largest absolute difference over all outputs; ``max_logit_diff``: the same
        over ``*_logits`` outputs (absent when the graph has none).
    """
    cos, diff, logit = 1.0, 0.0, None
    for ref_row, out_row in zip(reference, outputs, strict=True):
        for tensor, want, have in zip(spec.outputs, ref_row, out_row, strict=True):
            a = want.reshape(-1, want.shape[-1]).astype(np.float64)
            b = have.reshape(-1, have.shape[-1]).astype(np.float64)
            if not np.isfinite(b).all():
                return {"min_cosine": -1.0, "max_abs_diff": float(np.finfo(np.float32).max)}
            num = (a * b).sum(-1)
            den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
            cos = min(cos, float(np.min(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0))))
            d = float(np.abs(a - b).max()) if a.size else 0.0
            diff = max(diff, d)
            if tensor.name.endswith("_logits"):
                logit = max(logit or 0.0, d)
    out = {"min_cosine": cos, "max_abs_diff": diff}
    if logit is not None:
        out["max_logit_diff"] = logit
    return out


def _problems(c: PrecisionCandidate, ref: PrecisionCandidate, rule: SelectionRule) -> tuple[list[str], float]:
    """Why a candidate fails the rule (empty: it passes) and its speedup at the deciding batch."""
    if not c.latency_ms:
        return [c.note or "did not run"], 0.0
    problems = []
    key = rule.decide_batch
    speedup = ref.latency_ms.get(key, 0.0) / c.latency_ms[key] if c.latency_ms.get(key) else 0.0
    if speedup < rule.min_speedup:
        verdict = "slower" if speedup < 1 else "not faster enough"
        problems.append(
            f"{verdict} at {key} ({c.latency_ms.get(key, float('nan')):.3g} vs {ref.latency_ms.get(key, 0):.3g} ms, "
            f"{speedup:.2f}x < {rule.min_speedup:.2f}x)"
        )
    slower = [k for k, v in c.latency_ms.items() if k != key and k in ref.latency_ms and v > ref.latency_ms[k]]
    problems += [f"slower at {k} ({c.latency_ms[k]:.3g} vs {ref.latency_ms[k]:.3g} ms)" for k in slower]
    d = c.drift
    if d.get("min_cosine", 1.0) < rule.min_cosine:
        problems.append(f"min cosine {d['min_cosine']:.4f} < {rule.min_cosine}")
    if d.get("max_logit_diff", 0.0) > rule.max_logit_diff:
        problems.append(f"logit max abs diff {d['max_logit_diff']:.3g} > {rule.max_logit_diff}")
    if d.get("accuracy_drop", 0.0) > rule.max_accuracy_drop:
        problems.append(f"accuracy drop {d['accuracy_drop']:.4f} > {rule.max_accuracy_drop}")
    return problems, speedup


def select_precision(
    reference: PrecisionCandidate, candidates: Sequence[PrecisionCandidate], rule: SelectionRule
) -> tuple[str, str, list[PrecisionCandidate]]:
    """Choose a graph's precision: the fastest candidate that passes ``rule``, else FP32.

    Args:
        reference: The FP32 measurement (latency only; no drift).
        candidates: The lower-precision measurements; one without latency failed to build or run.
        rule: The thresholds.

    Returns:
        ``(selected precision, reason, every record with accepted/note filled, reference first)``.
    """
    key = rule.decide_batch
    records = [replace(reference, accepted=True, note="reference")]
    passed: list[tuple[float, PrecisionCandidate]] = []
    rejected: list[str] = []
    for c in candidates:
        problems, speedup = _problems(c, reference, rule)
        if problems:
            records.append(replace(c, accepted=False, note="; ".join(problems)))
            rejected.append(f"{c.precision} {problems[0]}")
        else:
            note = f"{speedup:.2f}x faster at {key}, min cosine {c.drift.get('min_cosine', 1.0):.4f}"
            if "accuracy_drop" in c.drift:
                note += f", accuracy drop {c.drift['accuracy_drop']:.4f}"
            records.append(replace(c, accepted=True, note=note))
            passed.append((speedup, records[-1]))
    if not passed:
        reason = f"{REFERENCE} kept: " + ("; ".join(rejected) if rejected else "no lower precision measured")
        return REFERENCE, reason, records
    _, best = max(passed, key=lambda p: p[0])
    return best.precision, f"{best.precision} ({best.method}): {best.note}", records
