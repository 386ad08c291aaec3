"""The QA head of a model package: its answer count, read from the fused graph, against the ``"qa"`` vocabulary.

A fused graph exported with a QA head (the EgoTaskQA head on the fused video CLS) has one more output,
``qa_logits`` ``(batch, A)`` (:data:`~egovlpv2_edge.graphs.QA_OUTPUT`); the package must then carry the answer
strings as ``answer_vocabs["qa"]`` with exactly ``A`` entries, or the runtime could not name its answers. A ``"qa"``
vocabulary without the output is allowed (the runtime answers only with choices then).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

from egovlpv2_edge._interfaces import read_interface
from egovlpv2_edge._package_errors import REBUILD as _REBUILD
from egovlpv2_edge._package_errors import AnswerVocabError, GraphMismatchError
from egovlpv2_edge.graphs import QA_OUTPUT, QA_VOCAB, qa_answer_count

ANSWER_VOCABS_FILE = "answer_vocabs.json"  # written beside exported graphs: head name -> answer strings


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
