"""The QA answer head on its way to ONNX: found in a checkpoint, checked against the model, its answers written.

The head is the EgoTaskQA head of ``training.tasks.heads.QAHead`` over the fused video CLS (reference Sec. 3,
downstream usage). Fine-tuned checkpoints (``training.tasks.checkpoint.save_finetuned``) and distilled students
(``compress.distill``) store it as ``ckpt["task"]`` with its answer vocabulary; :func:`checkpoint_qa_head` reads it
back so the exporter can append ``qa_logits`` to the fused graph, and :func:`write_answer_vocabs` leaves the answers
beside the graphs for ``egovlp package build``. Dual-mode heads read unfused ``[video CLS; text]`` features that no
exported graph computes; they are not exported.

The gates-off QA head (``task["dual_head"]``, :func:`~egovlpv2_edge.training.tasks.qa.fit_dual_qa_head`) reads
the two dual embeddings the ``video_upper`` and ``text_upper`` graphs return; :func:`write_dual_qa_head_file` writes
it beside the graphs as ``qa_dual.json``, which ``egovlp package build`` stores as ``heads/qa_dual.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from egovlpv2_edge._package_qa import ANSWER_VOCABS_FILE, DUAL_QA_FILE, DualQAHead, write_dual_qa_head
from egovlpv2_edge.graphs import QA_OUTPUT, QA_VOCAB, GraphSpec, graph_specs
from egovlpv2_edge.model import EgoVLPv2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointQAHead:
    """A QA head read from a checkpoint (eval mode) and its answers (index = class id)."""

    head: nn.Module
    answers: tuple[str, ...]


def _linears(head: nn.Module) -> list[nn.Linear]:
    return [m for m in head.modules() if isinstance(m, nn.Linear)]


def qa_answers(head: nn.Module) -> int:
    """How many answers a QA head scores: its ``num_answers``, else its last linear layer's width.

    Raises:
        ValueError: Neither is there.
    """
    count = getattr(head, "num_answers", None)
    if count is None and _linears(head):
        count = _linears(head)[-1].out_features
    if not isinstance(count, int):
        raise ValueError(f"cannot tell how many answers {type(head).__name__} scores: give it a num_answers attribute")
    return count


def check_qa_head(model: EgoVLPv2, head: nn.Module) -> None:
    """Check that ``head`` reads the model's fused video CLS ``(B, Dv)`` and scores at least two answers.

    Raises:
        ValueError: Another input width (e.g. a dual-mode head over ``[video CLS; text]``) or fewer than 2 answers.
    """
    in_dim = getattr(head, "in_dim", None)
    if in_dim is None and _linears(head):
        in_dim = _linears(head)[0].in_features
    width = model.cfg.video.width
    if in_dim != width:
        raise ValueError(
            f"QA head reads features of width {in_dim} but the fused video CLS of {model.cfg.name!r} has width "
            f"{width}; only fusion-mode QA heads (on the fused video CLS) export with fused_upper"
        )
    if qa_answers(head) < 2:
        raise ValueError(f"QA head scores {qa_answers(head)} answer(s); it needs at least 2")


def model_specs(model: EgoVLPv2, qa_head: nn.Module | None = None) -> dict[str, GraphSpec]:
    """The graph specs of a model exported with (or without) a QA head."""
    return graph_specs(model.cfg, None if qa_head is None else qa_answers(qa_head))


def check_spec_head(spec: GraphSpec, qa_head: nn.Module | None) -> None:
    """Check that a QA head is passed exactly when the (fused) graph's spec has ``qa_logits``.

    Raises:
        ValueError: One without the other.
    """
    want = QA_OUTPUT in spec.output_names
    if spec.name == "fused_upper" and want != (qa_head is not None):
        raise ValueError(
            f"graph 'fused_upper': the spec {'has' if want else 'has no'} {QA_OUTPUT!r} output but "
            f"{'no' if qa_head is None else 'a'} QA head was passed; make the spec with model_specs(model, qa_head)"
        )


def checkpoint_qa_head(checkpoint: str | Path | Mapping[str, Any]) -> CheckpointQAHead | None:
    """The fusion-mode QA head a checkpoint carries (``ckpt["task"]``), with its answers; None without one.

    Args:
        checkpoint: A checkpoint file or its loaded dict (fine-tuned, or a distilled student).

    Returns:
        The head in eval mode and its answers, or None when the checkpoint has no QA head or only a dual-mode one
        (logged).

    Raises:
        ValueError: The head is there but its answer vocabulary is missing or of another size.
    """
    ckpt = checkpoint
    if not isinstance(ckpt, Mapping):
        ckpt = torch.load(ckpt, map_location="cpu", weights_only=True)
    from egovlpv2_edge.training.tasks.checkpoint import qa_task_head

    task = ckpt.get("task")
    found = qa_task_head(task)
    if found is None:
        return None
    head, mode = found
    if mode != "fusion":
        log.warning("the checkpoint's QA head is %r-mode (unfused features): not exported", mode)
        return None
    answers = tuple((task.get("vocab") or {}).get("answers") or ())
    if len(answers) != qa_answers(head):
        raise ValueError(
            f"the checkpoint's QA head scores {qa_answers(head)} answers but its vocab['answers'] lists "
            f"{len(answers)}; the checkpoint is damaged: fine-tune (or distil) it again"
        )
    return CheckpointQAHead(head.eval(), answers)


def write_answer_vocabs(out_dir: str | Path, answers: Sequence[str]) -> Path:
    """Write ``{"qa": answers}`` as ``out_dir/answer_vocabs.json``, where ``egovlp package build`` looks for it."""
    path = Path(out_dir) / ANSWER_VOCABS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({QA_VOCAB: list(answers)}, indent=2) + "\n")
    return path


@dataclass(frozen=True)
class CheckpointDualQAHead:
    """A gates-off QA head read from a checkpoint (NumPy, as the runtime runs it) and its answers."""

    head: DualQAHead
    answers: tuple[str, ...]


def checkpoint_dual_qa_head(checkpoint: str | Path | Mapping[str, Any], embed_dim: int) -> CheckpointDualQAHead | None:
    """The gates-off QA head a checkpoint carries (``task["dual_head"]``) as the package's NumPy head; None without.

    Raises:
        ValueError: Its answers are missing or of another size than the head scores, or it does not read
            ``[video; text]`` embeddings of width ``embed_dim``.
    """
    ckpt = checkpoint
    if not isinstance(ckpt, Mapping):
        ckpt = torch.load(ckpt, map_location="cpu", weights_only=True)
    from egovlpv2_edge.training.tasks.checkpoint import dual_qa_head

    found = dual_qa_head(ckpt.get("task"))
    if found is None:
        return None
    head, answers, info = found
    layers = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in _linears(head)]
    if not layers or layers[0][0].shape[1] != 2 * embed_dim:
        width = layers[0][0].shape[1] if layers else None
        raise ValueError(f"the checkpoint's dual QA head reads {width} features, not [video; text] embeddings of "
                         f"width {embed_dim} each; fit it again (`egovlp train finetune --task qa`)")  # fmt: skip
    if len(answers) != layers[-1][0].shape[0]:
        raise ValueError(
            f"the checkpoint's dual QA head scores {layers[-1][0].shape[0]} answers but lists {len(answers)}; "
            "the checkpoint is damaged: fine-tune (or distil) it again"
        )
    return CheckpointDualQAHead(DualQAHead(layers, embed_dim, info), tuple(answers))


def write_dual_qa_head_file(out_dir: str | Path, head: DualQAHead) -> Path:
    """Write ``out_dir/qa_dual.json``, where ``egovlp package build`` looks for the gates-off QA head."""
    return write_dual_qa_head(Path(out_dir) / DUAL_QA_FILE, head)


def write_qa_files(out_dir: str | Path, qa: CheckpointQAHead | None, dual: CheckpointDualQAHead | None) -> list[Path]:
    """Write what ``egovlp package build`` reads beside the graphs: the ``"qa"`` answers (``answer_vocabs.json``)
    of the fused QA head or, without one, of the gates-off head, and the gates-off head (``qa_dual.json``).

    Raises:
        ValueError: Both heads are there with different answer lists (they share the ``"qa"`` vocabulary).
    """
    if qa is not None and dual is not None and qa.answers != dual.answers:
        raise ValueError(
            f"the checkpoint's fused QA head ({len(qa.answers)} answers) and its dual QA head ({len(dual.answers)}) "
            "list different answers; fit the dual head again with the fused head's answers"
        )
    answers = qa.answers if qa is not None else dual.answers if dual is not None else None
    written = [] if answers is None else [write_answer_vocabs(out_dir, answers)]
    if dual is not None:
        written.append(write_dual_qa_head_file(out_dir, dual.head))
    return written
