"""The ``egovlp`` command: one entry point whose subcommands live beside the code they drive.

Each subcommand is a module exposing ``main(argv) -> int`` (or ``module:function`` for another entry point); it
is imported only when called, so ``egovlp run`` on a torch-free device never imports the training stack.
"""

from __future__ import annotations

import importlib
import logging
import sys

# name -> (module or "module:function", one-line help). Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("egovlpv2_edge._demo", "run the end-to-end pipeline on synthetic footage (reuses finished stages)"),
    "model": ("egovlpv2_edge._cli_model", "list presets, show a preset's config, parameters and MACs"),
    "tokenizer": ("egovlpv2_edge._cli_tokenizer", "train or inspect a tokenizer (tokenizer.json)"),
    "data": ("egovlpv2_edge.training.data.cli", "generate the synthetic egocentric dataset, inspect data"),
    "package": ("egovlpv2_edge._cli_package", "build, verify or inspect a model package (.egopkg)"),
    "compress": (
        "egovlpv2_edge.compress.cli",
        "distill, export ONNX (validated), quantize per graph by measurement, TensorRT settings",
    ),
    "eval": (
        "egovlpv2_edge.training.eval_cli",
        "EgoMCQ (dual / fusion / ensemble), text-to-video recall; --task qa|retrieval|nlq|zeroshot",
    ),
    "train": (
        "egovlpv2_edge.training.cli",
        "pre-train the teacher (EgoNCE + MLM + VTM, torchrun) or fine-tune it (finetune --task qa|retrieval|nlq)",
    ),
    "run": ("egovlpv2_edge._cli_runtime:main_run", "stream a camera, file or URL into a clip index (no torch)"),
    "search": ("egovlpv2_edge._cli_runtime:main_search", "find moments in a clip index by text (gates off)"),
    "ask": ("egovlpv2_edge._cli_runtime:main_ask", "answer a question from recent clips (fused layers, gates on)"),
    "stats": ("egovlpv2_edge._cli_runtime:main_stats", "size, time span and cached tokens of a clip index"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: egovlp <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'egovlp <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``egovlp <command> ...`` to the command's own ``main``.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"egovlp: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module_name, _, function = COMMANDS[name][0].partition(":")
    module = importlib.import_module(module_name)
    return int(getattr(module, function or "main")(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
