"""Run every benchmark in ``benchmarks/`` and regenerate ``BENCHMARKS.md`` from the tables they print.

    python benchmarks/run_all.py                 # default settings (about 15 minutes on a 2-core CPU)
    python benchmarks/run_all.py --quick         # tiny settings, a smoke run (writes outputs/benchmarks/quick.md)

Each benchmark runs as its own process (``sys.executable benchmarks/<name>.py ...``), one after the other, with
its stdout (the tables) kept and its stderr (progress) passed through. The inputs they need are made first and
reused: a synthetic dataset (``egovlp data synth``), a tokenizer fitting the quantized preset and a 600-s
first-person "day" video. After ``egovlp demo`` the quantization and runtime benchmarks measure the demo's
distilled student (``outputs/demo/student/student.pt`` and its package ``outputs/demo/packages/student_edge``);
without it, a randomly initialised student of the same preset. The runtime benchmark runs with 2 and with 1
BLAS thread. The file starts with the machine (``/proc/cpuinfo`` model name and flags of interest, ``nproc``), the
date and every command.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bench:
    """One benchmark: its section title, script, arguments, extra environment and what its table means."""

    title: str
    script: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    notes: str = ""


NOTES = {
    "pretrain": "Clips count the scene negatives (each item brings a same-video, same-minute clip). With the paper's "
    "settings training runs three passes per clip (dual, fused MLM, fused VTM), forward and backward; the CPU "
    "teacher recipe (`egovlp train pretrain --recipe cpu_teacher`) runs its first 75% of steps in the dual-only "
    "phase (EgoNCE, time-reversal and direction terms, the text encoder locked) and the rest in the fused one. "
    "The slower side is the bound: one "
    "loader worker keeps up when data loading is several times faster than training.",
    "quantize": "Each variant is timed beside FP32 in the same process (batch 1 and 8) and its drift measured on "
    "held-out clips and texts; `egovlp compress quantize` keeps a variant only when it is faster by the margin and "
    "within the drift bound, and the package records why for each graph. NNCF's QDQ INT8 runs slower than FP32 on "
    "these small graphs (measured with and without VNNI); ORT's dynamic INT8 pays on the larger matmuls. The second "
    "table is where FP32 spends its kernel time: INT8 replaces only the matrix products (ORT's dynamic INT8 "
    "kernels also take in their bias adds); "
    "transposes, reshapes, adds, normalisations and softmax stay float, which caps what INT8 can give a small graph. "
    "The third table measures that cap: the video encoder's own linear layers (product + bias), each alone in FP32 "
    "and in dynamic INT8, and the largest 2048^3 product for reference; with the linear layers' share of the FP32 "
    "kernel time, Amdahl's law gives what INT8 can make of the whole encoder, and what it could even if those layers "
    "took no time at all.",
    "runtime": "Streaming decodes, samples and encodes as fast as it can (the share of the video's duration is the "
    "real-time cost). Search scores fp16-stored vectors from a float32 copy made once per committed row. `ask` runs "
    "the text lower layers once for all (question, choice) pairs and the fused graph once over all pairs; "
    "ONNX Runtime's intra-op spinning is off so that consecutive sessions do not fight for the cores. The streaming "
    "runs in a fresh interpreter that imports only the runtime, as on the device; its peak memory (VmHWM) covers "
    "the package's ONNX Runtime sessions, the decoder, the clip queue and the index.",
}


def machine() -> str:
    """CPU model, core count and SIMD flags of interest, memory, Python and library versions."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_bf16") if f in flags]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # nproc honours it
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, env=env).stdout.strip() or str(os.cpu_count())
    mem = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kb = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    return f"{model}, nproc {nproc} ({', '.join(simd) or 'no AVX2'}){mem}; Python {platform.python_version()}"


def day_video(work: Path, actions: int) -> Path:
    """A long first-person video (one synthetic video of ``actions`` actions, its first chunk), reused when present."""
    from egovlpv2_edge.training.data.cli import main as data_main

    root = work / f"day_{actions}"
    if not (root / "meta.json").is_file():
        args = ["synth", "--out", str(root), "--videos", "1", "--min-actions", str(actions)]
        if data_main([*args, "--max-actions", str(actions), "--seed", "7"]) != 0:
            raise RuntimeError("egovlp data synth failed")
    return _short(sorted((root / "videos").glob("*/0.mp4"))[0])


def prepare(work: Path, videos: int, preset: str) -> tuple[Path, Path]:
    """A synthetic dataset and a tokenizer fitting ``preset`` under ``work`` (reused when present)."""
    from egovlpv2_edge.config import get_config
    from egovlpv2_edge.training.data.cli import main as data_main
    from egovlpv2_edge.training.text import load_or_train_tokenizer

    data = work / f"data_{videos}"
    if not (data / "meta.json").is_file():
        if data_main(["synth", "--out", str(data), "--videos", str(videos)]) != 0:
            raise RuntimeError("egovlp data synth failed")
    tokenizer = work / f"tokenizer_{preset}.json"
    load_or_train_tokenizer(get_config(preset).text, data / "egoclip.csv", tokenizer)
    return _short(data), _short(tokenizer)


def _short(path: Path) -> Path:
    """``path`` relative to the repository root when inside it (the benchmarks run there)."""
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def benches(data: Path, tokenizer: Path, quick: bool, demo: Path, video: Path | None = None) -> list[Bench]:
    """The benchmarks with their default (or, with ``quick``, tiny) settings.

    Args:
        data: Synthetic dataset for calibration and data loading.
        tokenizer: Tokenizer of the quantized preset.
        quick: Tiny settings.
        demo: An ``egovlp demo`` output folder; its student and package are measured when present.
        video: The long video the runtime benchmark streams (None: it renders a short one).
    """
    if quick:
        return [
            Bench("Pre-training throughput", "bench_pretrain.py",
                  ["--data", str(data), "--preset", "egovlpv2_test", "--batch-size", "4"]),
            Bench("Quantization: latency and drift per graph", "bench_quantize.py",
                  ["--preset", "egovlpv2_test", "--data", str(data), "--tokenizer", str(tokenizer), "--methods",
                   "ort_dynamic", "--max-clips", "8"]),
            Bench("On-device runtime", "bench_runtime.py",
                  ["--actions", "6", "--clips", "2000", "--queries", "20", "--asks", "5"]),
        ]  # fmt: skip
    student, package = demo / "student" / "student.pt", demo / "packages" / "student_edge"
    quant = ["--data", str(data), "--tokenizer", str(tokenizer)]
    if student.is_file() and (student.parent / "tokenizer.json").is_file():
        quant = ["--data", str(data), "--checkpoint", str(_short(student)),
                 "--tokenizer", str(_short(student.parent / "tokenizer.json"))]  # fmt: skip
    runtime = ["--video", str(video)] if video else []
    if (package / "manifest.json").is_file():
        runtime += ["--package", str(_short(package))]
    return [
        Bench("Pre-training throughput", "bench_pretrain.py", ["--data", str(data)], notes=NOTES["pretrain"]),
        Bench("Quantization: latency and drift per graph", "bench_quantize.py", quant, notes=NOTES["quantize"]),
        Bench("On-device runtime, 2 threads", "bench_runtime.py", runtime, {"OMP_NUM_THREADS": "2"}),
        Bench("On-device runtime, 1 thread", "bench_runtime.py", runtime, {"OMP_NUM_THREADS": "1"}, NOTES["runtime"]),
    ]


def run(bench: Bench) -> tuple[str, float, int]:
    """Run one benchmark; returns its stdout, seconds and exit status."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / bench.script), *bench.args]
    print(f"[run_all] {bench.title}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=os.environ | bench.env)
    return proc.stdout, time.perf_counter() - t0, proc.returncode


def section(bench: Bench, stdout: str, seconds: float, status: int) -> str:
    """A markdown section: the command, then the printed tables (markdown tables kept, other text fenced)."""
    env = " ".join(f"{k}={v}" for k, v in bench.env.items())
    command = " ".join([*([env] if env else []), "python", f"benchmarks/{bench.script}", *bench.args])
    lines = [f"## {bench.title}", "", f"Command: `{command}` ({seconds:.0f} s, exit status {status})", ""]
    body = stdout.strip()
    lines += [body] if body.lstrip().startswith("|") or "\n|" in body else ["```text", body, "```"]
    if bench.notes:
        lines += ["", bench.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and write the markdown file; returns 1 when any benchmark failed."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action=argparse.BooleanOptionalAction, default=False, help="tiny settings (smoke run)")
    p.add_argument("--out", type=Path, default=None, help="markdown to write (BENCHMARKS.md; quick: outputs/...)")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "benchmarks", help="inputs made for the benchmarks")
    p.add_argument("--demo", type=Path, default=ROOT / "outputs" / "demo", help="egovlp demo outputs to measure")
    args = p.parse_args(argv)
    out = args.out or (args.work / "quick.md" if args.quick else ROOT / "BENCHMARKS.md")
    args.work.mkdir(parents=True, exist_ok=True)
    data, tokenizer = prepare(args.work, 4 if args.quick else 40, "egovlpv2_test" if args.quick else "egovlpv2_edge")
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sections, failed = [], 0
    video = None if args.quick else day_video(args.work, 190)  # 190 actions fill the first 600-s chunk
    for bench in benches(data, tokenizer, args.quick, args.demo, video):
        stdout, seconds, status = run(bench)
        failed += status != 0
        sections.append(section(bench, stdout, seconds, status))
    head = [
        "# Benchmarks",
        "",
        "Generated by `python benchmarks/run_all.py" + (" --quick" if args.quick else "") + "`: every number comes "
        "from a script in `benchmarks/` that prints a table, run one after the other on one machine.",
        "",
        f"Machine: {machine()}. Date: {started}. `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}` "
        "unless a command sets it.",
        f"Inputs: synthetic data `{data}`, tokenizer `{tokenizer}`" + (f", video `{video}`." if video else "."),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(head) + "\n\n" + "\n\n".join(sections) + "\n")
    print(f"wrote {out}" + (f" ({failed} benchmark(s) failed)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
