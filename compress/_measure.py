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
from dataclasses import dataclass, replace
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
    """

    shares: dict[str, float]
    gemm_share: float
    runs: int
    kernel_ms: float


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
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e.get("ts", 0) >= after:
            op = e.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + float(e.get("dur", 0))
    total = sum(totals.values())
    if total <= 0:
        raise ValueError(f"the profile of {path} holds no node timings")
    shares = {k: v / total for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    gemm = sum(v for k, v in shares.items() if k in GEMM_OPS)
    return OpTimeShares(shares, gemm, runs, total / runs / 1000.0)


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
