"""Build a real model package of the tiny ``egovlpv2_test`` preset (needs torch; tests and benchmarks only)."""

from __future__ import annotations

from pathlib import Path

SENTENCES = [f"#C C {v} the {c} {n}" for v in ("picks up", "puts down", "opens", "wipes") for c in ("red", "blue")
             for n in ("cup", "box", "bowl")]  # fmt: skip


def export_test_graphs(root: Path) -> tuple[object, object]:
    """Export the five graphs of a tiny model with non-zero gates and train a small tokenizer under ``root``.

    Returns:
        The PyTorch model and the tokenizer (``root/graphs/<graph>.onnx``, ``root/tokenizer.json``).
    """
    import torch

    from egovlpv2_edge import create_model
    from egovlpv2_edge.compress.export import export_all
    from egovlpv2_edge.tokenizer import Tokenizer

    torch.manual_seed(0)  # the same weights whichever test first asks for the session's package
    model = create_model("egovlpv2_test")
    with torch.no_grad():
        for i, gate in enumerate(model.gates()):
            gate.fill_(0.5 + i)
    export_all(model, root / "graphs")
    tok = Tokenizer.train_bpe(SENTENCES * 4, vocab_size=400, max_length=model.cfg.text.max_length)
    tok.save(root / "tokenizer.json")
    return model, tok


def export_qa_graph(root: Path, model: object, answers: list[str]) -> object:
    """Export ``fused_upper`` with a QA head (weights large enough that answers depend on the clip) into
    ``root/graphs_qa`` beside its ``answer_vocabs.json``; returns the head (eval mode)."""
    import torch

    from egovlpv2_edge.compress.export import export_all, write_answer_vocabs
    from egovlpv2_edge.training.tasks.heads import QAHead

    head = QAHead(model.cfg.video.width, len(answers))  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    export_all(model, root / "graphs_qa", graphs=["fused_upper"], qa_head=head)  # type: ignore[arg-type]
    write_answer_vocabs(root / "graphs_qa", answers)
    return head.eval()


def export_dual_qa_head(root: Path, model: object, answers: list[str]) -> object:
    """Write a gates-off QA head over ``[video; text]`` embeddings as ``root/graphs_qa/qa_dual.json`` (through the
    exporter's checkpoint path); returns the PyTorch head (eval mode)."""
    import torch

    from egovlpv2_edge.compress.export import checkpoint_dual_qa_head, write_dual_qa_head_file
    from egovlpv2_edge.training.tasks.heads import QAHead

    E = model.cfg.heads.embed_dim  # type: ignore[attr-defined]
    head = QAHead(2 * E, len(answers))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(4 * torch.randn(p.shape, generator=g))
    entry = {"config": head.config(), "state": head.state_dict(), "answers": list(answers)}
    found = checkpoint_dual_qa_head({"task": {"dual_head": entry}}, E)
    write_dual_qa_head_file(root / "graphs_qa", found.head)  # type: ignore[union-attr]
    return head.eval()


def build_test_package(
    root: Path,
    out: Path,
    *,
    clip_seconds: float = 2.0,
    stride_seconds: float = 1.0,
    qa: bool = False,
    dual: bool = False,
) -> Path:
    """Package the graphs :func:`export_test_graphs` wrote under ``root`` with the given clip window; with ``qa``,
    the fused graph and answers of :func:`export_qa_graph` (the same video graphs: it opens the same indexes); with
    ``dual`` also the gates-off QA head of :func:`export_dual_qa_head`."""
    import json

    from egovlpv2_edge.config import get_config
    from egovlpv2_edge.graphs import GRAPH_NAMES
    from egovlpv2_edge.package import Preprocessing, build_package

    cfg = get_config("egovlpv2_test")
    graphs = {g: {"fp32": root / "graphs" / f"{g}.onnx"} for g in GRAPH_NAMES}
    if qa:
        graphs["fused_upper"] = {"fp32": root / "graphs_qa" / "fused_upper.onnx"}
    return build_package(
        out,
        config=cfg,
        graphs=graphs,
        selected={g: ("fp32", "test") for g in GRAPH_NAMES},
        tokenizer=root / "tokenizer.json",
        preprocessing=Preprocessing.from_config(cfg, clip_seconds=clip_seconds, stride_seconds=stride_seconds),
        answer_vocabs=json.loads((root / "graphs_qa" / "answer_vocabs.json").read_text()) if qa else None,
        heads={"qa_dual": root / "graphs_qa" / "qa_dual.json"} if dual else None,
    )
