"""The QA heads of a model package, checked against the ``"qa"`` answer vocabulary.

A fused graph exported with a QA head (the EgoTaskQA head on the fused video CLS) has one more output,
``qa_logits`` ``(batch, A)`` (:data:`~egovlpv2_edge.graphs.QA_OUTPUT`); the package must then carry the answer
strings as ``answer_vocabs["qa"]`` with exactly ``A`` entries, or the runtime could not name its answers. A ``"qa"``
vocabulary without the output is allowed (the runtime answers only with choices then).

A package may also carry a gates-off QA head, ``heads/qa_dual.json`` (:data:`DUAL_QA_HEAD`): the same
``Linear -> ReLU -> Linear`` answer classifier over ``[video embedding; text embedding]``, the two L2-normalised
dual embeddings the runtime already keeps in its index and computes for every query. It answers from cached
embeddings alone (no fused pass) over the same ``"qa"`` vocabulary. It is read and run with NumPy here, so the
runtime needs nothing else for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from egovlpv2_edge._interfaces import read_interface
from egovlpv2_edge._package_errors import REBUILD as _REBUILD
from egovlpv2_edge._package_errors import AnswerVocabError, GraphMismatchError
from egovlpv2_edge.graphs import QA_OUTPUT, QA_VOCAB, qa_answer_count

ANSWER_VOCABS_FILE = "answer_vocabs.json"  # written beside exported graphs: head name -> answer strings
DUAL_QA_HEAD = "qa_dual"  # heads/<name>.json: the QA head over the dual embeddings (gates off)
DUAL_QA_FILE = f"{DUAL_QA_HEAD}.json"  # written beside exported graphs by the exporter
DUAL_QA_FORMAT = 1


def read_answer_vocabs(path: str | Path) -> dict[str, list[str]]:
    """Read an ``answer_vocabs.json`` (head name -> answer strings).

    Raises:
        AnswerVocabError: Not JSON, or not an object of string lists.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AnswerVocabError(f"answer vocabularies {str(path)!r} do not read as JSON ({err})") from err
    ok = isinstance(data, dict) and all(
        isinstance(v, list) and all(isinstance(w, str) for w in v) for v in data.values()
    )
    if not ok:
        raise AnswerVocabError(f"answer vocabularies {str(path)!r} must be a JSON object of string lists")
    return {str(k): list(v) for k, v in data.items()}


def qa_answers_in_files(paths: Iterable[str | Path]) -> int | None:
    """The answer count of the ``qa_logits`` output the fused graph files share, or None when they have none.

    Every precision of the graph must agree; None too when no ONNX reader is installed (nothing can be read).

    Raises:
        GraphMismatchError: The files disagree, or the output is not ``(batch, A)`` with a fixed ``A``.
    """
    found: dict[str, int | None] = {}
    for path in paths:
        read = read_interface(Path(path), f"graph 'fused_upper' ({path})")
        if read is None:
            return None
        _, outputs, _ = read
        if QA_OUTPUT not in outputs:
            found[str(path)] = None
            continue
        _, shape = outputs[QA_OUTPUT]
        try:
            found[str(path)] = qa_answer_count([SimpleNamespace(name=QA_OUTPUT, shape=tuple(shape or ()))])
        except ValueError as err:
            raise GraphMismatchError(
                f"graph 'fused_upper' ({path}): {err}; re-export the graph with its QA head"
            ) from err
    if len(set(found.values())) > 1:
        raise GraphMismatchError(
            f"the precisions of graph 'fused_upper' disagree on the QA head ({QA_OUTPUT} answers per file: {found}); "
            "make every precision from the same export"
        )
    return next(iter(found.values()), None)


def check_qa_vocab(qa_answers: int | None, vocabs: Mapping[str, Sequence[str]]) -> None:
    """Check that a fused graph's QA head has a ``"qa"`` answer vocabulary of its size.

    Args:
        qa_answers: Answer count of the graph's ``qa_logits`` output; None when it has none (nothing to check).
        vocabs: The package's answer vocabularies by head name.

    Raises:
        AnswerVocabError: No ``"qa"`` vocabulary, or one of another size; the message names both sizes.
    """
    if qa_answers is None:
        return
    if QA_VOCAB not in vocabs:
        raise AnswerVocabError(
            f"the fused graph has a QA head ({QA_OUTPUT}: {qa_answers} answers) but the package has no answer "
            f"vocabulary {QA_VOCAB!r} (vocabularies: {', '.join(vocabs) or 'none'}); {_REBUILD} passing the "
            f"checkpoint's answers as answer_vocabs={{'qa': [...]}} (`--answer-vocabs`)"
        )
    size = len(vocabs[QA_VOCAB])
    if size != qa_answers:
        raise AnswerVocabError(
            f"answer vocabulary {QA_VOCAB!r} has {size} answers but the fused graph's {QA_OUTPUT} has {qa_answers}; "
            f"the vocabulary belongs to another checkpoint: {_REBUILD} with the answers of the exported checkpoint"
        )


class DualQAHead:
    """A gates-off QA head: ``Linear -> ReLU -> ... -> Linear`` over ``[video embedding; text embedding]``.

    Args:
        layers: ``(weight (out, in), bias (out,))`` per linear layer, ReLU between them.
        embed_dim: Width E of each dual embedding (the first layer reads ``2 * E``).
        info: What the file says about how the head was fitted (questions, train accuracy, ...).
    """

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray]], embed_dim: int,
                 info: Mapping[str, Any] | None = None) -> None:  # fmt: skip
        self.layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in layers]
        self.embed_dim = int(embed_dim)
        self.info = dict(info or {})

    @property
    def num_answers(self) -> int:
        """Answers scored (the last layer's width)."""
        return int(self.layers[-1][0].shape[0])

    def logits(self, video: np.ndarray, text: np.ndarray) -> np.ndarray:
        """Answer logits ``(B, A)`` for video embeddings ``(B, E)`` and text embeddings ``(B, E)`` (or ``(E,)``,
        shared by every row)."""
        video = np.asarray(video, np.float32)
        text = np.broadcast_to(np.asarray(text, np.float32), video.shape)
        x = np.concatenate([video, text], axis=-1)
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return x

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``heads/qa_dual.json``."""
        return {
            "kind": DUAL_QA_HEAD,
            "format": DUAL_QA_FORMAT,
            "inputs": ["video_embedding", "text_embedding"],
            "vocab": QA_VOCAB,
            "embed_dim": self.embed_dim,
            "activation": "relu",
            "layers": [{"weight": w.tolist(), "bias": b.tolist()} for w, b in self.layers],
            "info": self.info,
        }


def write_dual_qa_head(path: str | Path, head: DualQAHead) -> Path:
    """Write a :class:`DualQAHead` as JSON (float32 values written with 8 significant digits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = head.to_dict()
    for layer in data["layers"]:
        layer["weight"] = [[float(f"{v:.8g}") for v in row] for row in layer["weight"]]
        layer["bias"] = [float(f"{v:.8g}") for v in layer["bias"]]
    path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    return path


def read_dual_qa_head(path: str | Path, embed_dim: int, num_answers: int | None) -> DualQAHead:
    """Read and check ``heads/qa_dual.json`` against the package's embedding width and ``"qa"`` vocabulary.

    Args:
        path: The head file.
        embed_dim: The package's dual embedding width E.
        num_answers: Size of the package's ``"qa"`` vocabulary, or None when it has none.

    Raises:
        AnswerVocabError: Not a dual QA head file, layers that do not chain from ``2 * E`` inputs, or an answer count
            other than the ``"qa"`` vocabulary's (or no such vocabulary); the message names the fix.
    """
    where = f"dual QA head {str(path)!r}"
    fix = f"export the checkpoint again (`egovlp compress export` writes {DUAL_QA_FILE}) and {_REBUILD}"
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AnswerVocabError(f"{where} does not read as JSON ({err}); {fix}") from err
    if not isinstance(data, dict) or data.get("kind") != DUAL_QA_HEAD or data.get("format") != DUAL_QA_FORMAT:
        raise AnswerVocabError(f"{where} is not a {DUAL_QA_HEAD!r} head of format {DUAL_QA_FORMAT}; {fix}")
    try:
        layers = [(np.asarray(e["weight"], np.float32), np.asarray(e["bias"], np.float32)) for e in data["layers"]]
    except (KeyError, TypeError, ValueError) as err:
        raise AnswerVocabError(f"{where} has malformed layers ({err}); {fix}") from err
    width = 2 * int(embed_dim)
    for i, (w, b) in enumerate(layers):
        if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],) or not np.all(np.isfinite(w)):
            raise AnswerVocabError(
                f"{where}: layer {i} has weight {w.shape} and bias {b.shape} but must read {width} inputs "
                f"([video; text] embeddings of width {embed_dim}) with finite weights; {fix}"
            )
        width = w.shape[0]
    if not layers:
        raise AnswerVocabError(f"{where} has no layers; {fix}")
    head = DualQAHead(layers, embed_dim, data.get("info") if isinstance(data.get("info"), dict) else None)
    if num_answers is None or head.num_answers != num_answers:
        raise AnswerVocabError(
            f"{where} scores {head.num_answers} answers but the package's {QA_VOCAB!r} vocabulary has "
            f"{'none' if num_answers is None else num_answers}; {fix}"
        )
    return head
