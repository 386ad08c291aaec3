"""The SDK: ``egovlpv2_edge.open(package, source=..., index=...)`` streams a camera into a searchable memory.

One :class:`EdgeRuntime` holds the package's ONNX Runtime sessions (:class:`~.encoder.PackageEncoder`), the clip
index (:class:`~.index.ClipIndex`) and, with a source, the streaming pipeline (:mod:`.pipeline`). Queries are
safe from any number of threads while it streams, and switch between EgoVLPv2's two modes without reloading
anything (arXiv 2307.05463, Sec. 3):

* ``search`` runs with the gates off: one cached text embedding against the stored clip embeddings;
* ``ask(head="fused")`` runs with the gates on: the fused top layers over the cached tokens of the best-matching
  (or, with ``window``, the most recent) clips. With ``choices`` each choice is scored by the fused VTM head on
  "question choice"; without, the package needs a QA head (an answer vocabulary ``"qa"`` and a fused graph with
  a ``qa_logits`` output, exported from a fine-tuned or distilled checkpoint), else :class:`NoQAHeadError` says
  to pass choices. The QA head's answer distributions of the evidence clips are averaged, each clip weighted by
  how well it matches the question (softmax over the clips' VTM log-odds), so clips that show what is asked
  about decide the answer and an unrelated clip among the ``k`` counts for little.
* ``ask`` with the package's gates-off QA head (``heads/qa_dual.json``, ``head="dual"``, the default when the
  package has one) answers from the index alone: the head reads each evidence clip's stored embedding with the
  question's text embedding, and the clips are weighted by ``softmax(cosine / temperature)``; choices that are
  all among its answers are scored by its distribution restricted to them. No fused pass runs and every indexed
  clip can be evidence (not only those whose tokens are still cached).

The index remembers which package wrote it (``package.json`` beside the index files): embeddings of different
models are not comparable, so opening an index with another package raises :class:`PackageMismatchError`.
Times are seconds: the file position for files, Unix time for live sources (see :mod:`.pipeline`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from egovlpv2_edge._package_qa import DUAL_QA_HEAD, DualQAHead
from egovlpv2_edge.graphs import QA_OUTPUT, QA_VOCAB
from egovlpv2_edge.package import ModelPackage, PackageError, open_package
from egovlpv2_edge.runtime._fileio import atomic_write_bytes
from egovlpv2_edge.runtime._metrics import LatencyRecorder, LatencyStats, rss_bytes
from egovlpv2_edge.runtime.encoder import PackageEncoder, QueryError, check_query
from egovlpv2_edge.runtime.index import ClipIndex, Hit, IndexFormatError, IndexStats
from egovlpv2_edge.runtime.pipeline import IndexedClip, PipelineStats, Retention, StreamPipeline
from egovlpv2_edge.runtime.sources import CaptureFactory, ReconnectPolicy, open_source

log = logging.getLogger(__name__)

_PACKAGE_FILE = "package.json"


class PackageMismatchError(PackageError):
    """The index was written by another model package; its embeddings do not compare with this one's."""


class NotReadyError(RuntimeError):
    """A question came before any usable clip was indexed."""


class NoQAHeadError(ValueError):
    """``ask`` without choices on a package that has no QA head (or not the one asked for)."""


QA_HEADS = ("auto", "fused", "dual")  # ask(head=...): auto = the gates-off head when the package has one


@dataclass(frozen=True)
class Moment:
    """A retrieved stretch of video."""

    id: int  # clip id in the index
    start: float  # seconds: file position, or Unix time for live sources
    end: float
    score: float  # search and gates-off ask evidence: cosine similarity; fused ask evidence: match probability
    source: str
    thumbnail: bytes | None = field(repr=False)  # JPEG, if stored


@dataclass(frozen=True)
class Answer:
    """What ``ask`` returns."""

    answer: str
    confidence: float  # probability of ``answer`` among the choices (or the QA vocabulary)
    evidence: tuple[Moment, ...]  # the clips the answer was read from, best support first
    scores: tuple[tuple[str, float], ...]  # (choice, probability) best first (QA head: the top 5)
    head: str = ""  # what answered: "vtm" (choices), "fused" (qa_logits, gates on) or "dual" (gates-off head)


@dataclass(frozen=True)
class RuntimeStats:
    """A snapshot of a runtime's health."""

    stream: PipelineStats | None  # None without a source
    index: IndexStats
    latency: dict[str, LatencyStats]  # stage -> percentiles: sample, encode, index, end_to_end, search, ask
    rss_bytes: int  # resident memory of this process
    providers: dict[str, str]  # graph -> execution provider in use


class EdgeRuntime:
    """Package + index (+ a streaming source); create with :func:`open_runtime` (``egovlpv2_edge.open``)."""

    def __init__(
        self,
        package: ModelPackage,
        encoder: PackageEncoder,
        index: ClipIndex,
        make_pipeline: Callable[[LatencyRecorder], StreamPipeline] | None = None,
    ) -> None:
        """Assemble a runtime from its parts; ``make_pipeline(latency)`` builds the stream when there is a source."""
        self.package = package
        self.encoder = encoder
        self.index = index
        self.latency = LatencyRecorder()
        self.pipeline = make_pipeline(self.latency) if make_pipeline is not None else None
        self._dual = package.dual_qa_head()  # the gates-off QA head, or None
        self._closed = False

    # ------------------------------------------------------------------ streaming
    def start(self) -> EdgeRuntime:
        """Start streaming the source into the index (returns self)."""
        if self.pipeline is None:
            raise RuntimeError("this runtime has no source; pass source=... to egovlpv2_edge.open to stream")
        self.pipeline.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop capture and index what is buffered (idempotent)."""
        if self.pipeline is not None:
            self.pipeline.stop(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until a file source is fully indexed (or the stream stopped); False on timeout."""
        return True if self.pipeline is None else self.pipeline.wait(timeout)

    # ------------------------------------------------------------------ queries
    def search(
        self, text: str, k: int = 5, since: float | None = None, until: float | None = None, source: str | None = None
    ) -> list[Moment]:
        """Moments matching ``text`` with the gates off, best first.

        Args:
            text: What happened, e.g. ``"C picks up the red cup"``.
            k: Most moments to return.
            since: Only clips ending at or after this time (source clock).
            until: Only clips starting at or before this time.
            source: Only clips of this source.

        Raises:
            QueryError: Empty, non-string or over-long text.
        """
        t0 = time.perf_counter()
        hits = self.index.search(self.encoder.encode_texts([text])[0], k, since, until, source)[0]
        self.latency.record("search", time.perf_counter() - t0)
        return [_moment(h, h.score) for h in hits]

    def ask(
        self,
        question: str,
        choices: Sequence[str] | None = None,
        *,
        k: int = 5,
        window: float | None = None,
        head: str = "auto",
    ) -> Answer:
        """Answer ``question`` from the clips that match it best.

        Args:
            question: The question, e.g. ``"what did I pick up?"``.
            choices: Candidate answers. The gates-off QA head scores them when the package has one and every choice
                is one of its ``"qa"`` answers (its answer distribution restricted to the choices); otherwise each
                is scored by the fused VTM head on ``"question choice"`` (words at the start of the question give
                way when the pair is longer than the model reads), gates on, over the cached tokens of the
                best-matching clips. Required unless the package has a QA head; without them a head answers from
                the ``"qa"`` vocabulary (``confidence`` is the top probability of the evidence clips' mixed answer
                distributions, ``scores`` the top 5, ``evidence`` the clips by match).
            k: How many clips the answer is read from.
            window: Only clips ending in the last ``window`` seconds before the newest clip.
            head: Which head answers: ``"dual"`` the gates-off QA head over the stored clip embeddings and the
                question's embedding (clips weighted by ``softmax(cosine / temperature)``), ``"fused"`` the fused
                layers over cached tokens, gates on (without choices the graph's ``qa_logits``, clips weighted by
                ``softmax`` of their VTM log-odds; with choices VTM); ``"auto"`` the gates-off head when the
                package has one (and, with choices, every choice is among its answers), else the fused layers.

        Raises:
            QueryError: Empty or over-long question or choice, fewer than two choices, or ``head="dual"`` with
                a choice that is not one of the gates-off head's answers.
            NoQAHeadError: No choices and no QA head in the package (or not the ``head`` asked for).
            NotReadyError: No usable clip is indexed (in the window) yet.
            ValueError: ``head`` is not one of ``auto``, ``fused``, ``dual``.
        """
        t0 = time.perf_counter()
        check_query(question)
        choices = _check_choices(choices)
        if head not in QA_HEADS:
            raise ValueError(f"head={head!r}; valid: {', '.join(QA_HEADS)}")
        which = self._qa_head(head) if choices is None else self._choice_head(head, choices)
        if which == "dual":
            vocab = list(self.package.manifest.answer_vocabs[QA_VOCAB])
            hits, vectors, query = self._dual_evidence(question, k, window)
            weights = _cosine_weights(hits, self._temperature)
            logits = cast(DualQAHead, self._dual).logits(vectors, query)  # (B, A); the head is there (checked)
            if choices is None:
                answer = _mixed_answer(vocab, hits, logits, weights, "dual")
            else:  # the head's distribution restricted to the choices
                index = {a: i for i, a in enumerate(vocab)}
                picked = logits[:, [index[c] for c in choices]]
                answer = _mixed_answer(choices, hits, picked, weights, "dual", top=len(choices))
        else:
            hits, tokens = self._evidence(question, k, window)
            if choices is not None:
                answer = self._ask_choices(question, choices, hits, tokens)
            else:
                answer = self._ask_head(question, list(self.package.manifest.answer_vocabs[QA_VOCAB]), hits, tokens)
        self.latency.record("ask", time.perf_counter() - t0)
        return answer

    def _qa_head(self, head: str) -> str:
        """``"fused"`` or ``"dual"``: the QA head that answers a question without choices."""
        vocabs = self.package.manifest.answer_vocabs
        have = {
            "fused": QA_OUTPUT in self.encoder.specs["fused_upper"].output_names and QA_VOCAB in vocabs,
            "dual": self._dual is not None,
        }
        which = ("dual" if have["dual"] else "fused") if head == "auto" else head
        if not have[which]:
            what = {"fused": f"fused graph with {QA_OUTPUT!r} and answer vocabulary {QA_VOCAB!r}",
                    "dual": f"gates-off QA head {DUAL_QA_HEAD!r}"}  # fmt: skip
            name = self.package.manifest.name
            if head == "auto":
                raise NoQAHeadError(
                    f"package {name!r} has no QA head (a {what['fused']}, or a {what['dual']}); pass choices=[...] to "
                    "score candidate answers with the VTM head"
                )
            present = [h for h in ("fused", "dual") if have[h]]
            raise NoQAHeadError(
                f"package {name!r} has no {what[which]} (its QA heads: {', '.join(present) or 'none'}); "
                "pass head='auto' or choices=[...]"
            )
        return which

    def _choice_head(self, head: str, choices: list[str]) -> str:
        """``"dual"`` (the gates-off head scores the choices) or ``"fused"`` (VTM) for a question with choices."""
        if head == "fused":
            return "fused"
        vocab = set(self.package.manifest.answer_vocabs.get(QA_VOCAB, ())) if self._dual is not None else set()
        unknown = [c for c in choices if c not in vocab]
        if head == "dual" and self._dual is None:
            raise NoQAHeadError(
                f"package {self.package.manifest.name!r} has no gates-off QA head {DUAL_QA_HEAD!r}; "
                "pass head='auto' or head='fused' to score the choices with the VTM head"
            )
        if head == "dual" and unknown:
            raise QueryError(
                f"choices {unknown[:5]} are not answers of the gates-off QA head ({len(vocab)} answers in the "
                f"package's {QA_VOCAB!r} vocabulary); pass head='fused' to score free-text choices with the VTM head"
            )
        return "dual" if self._dual is not None and not unknown else "fused"

    @property
    def _temperature(self) -> float:
        return float(self.package.config.heads.temperature)

    def _since(self, window: float | None) -> float | None:
        if window is not None and not window > 0:
            raise ValueError(f"window must be a positive number of seconds or None, got {window!r}")
        if len(self.index) == 0:
            raise NotReadyError(
                "no clip is indexed yet: start() the stream and wait for the first clip (on_clip, or stats().index), "
                "or open an index that has clips"
            )
        return None if window is None else (self.index.stats().newest_ts or 0.0) - window

    def _dual_evidence(self, question: str, k: int, window: float | None) -> tuple[list[Hit], np.ndarray, np.ndarray]:
        """The ``k`` best-matching clips (gates off), their stored embeddings ``(B, E)`` and the question's ``(E,)``."""
        since = self._since(window)
        query = self.encoder.encode_texts([question])[0]
        hits = self.index.search(query, k, since=since)[0]
        vectors = self.index.get_vectors([h.id for h in hits])
        hits = [h for h in hits if h.id in vectors]  # a retention may have run in between
        if not hits:
            where = f" in the last {window} s" if window is not None else ""
            raise NotReadyError(f"no clip is indexed{where} yet; wait for new clips or widen the window")
        return hits, np.stack([vectors[h.id] for h in hits]), query

    def _evidence(self, question: str, k: int, window: float | None) -> tuple[list[Hit], np.ndarray]:
        since = self._since(window)
        query = self.encoder.encode_texts([question])[0]
        hits = self.index.search(query, k, since=since, tokens_only=True)[0]
        cached = self.index.get_tokens([h.id for h in hits])
        hits = [h for h in hits if h.id in cached]  # a retention may have run in between
        if not hits:
            where = f" in the last {window} s" if window is not None else ""
            raise NotReadyError(
                f"no indexed clip{where} has cached tokens for the fused layers (the index keeps them for the newest "
                f"{self.index.max_token_clips} clips); wait for new clips or widen the window"
            )
        return hits, np.stack([cached[h.id] for h in hits]).astype(np.float32)  # (B, T, Dv)

    def _ask_choices(self, question: str, choices: list[str], hits: list[Hit], tokens: np.ndarray) -> Answer:
        pairs = [self._pair(question, c) for c in choices]
        vtm = self.encoder.fused_pairs(tokens, pairs)["vtm_logits"]  # (C * B, 2), choice-major
        logits = _log_odds(vtm).reshape(len(choices), tokens.shape[0])  # (C, B) log-odds of each choice per clip
        best_per_choice = logits.max(axis=1)  # (C,) the best supporting clip decides
        probs = _softmax(best_per_choice)
        best = int(probs.argmax())
        order = np.argsort(-logits[best], kind="stable")
        evidence = tuple(_moment(hits[i], _sigmoid(logits[best, i])) for i in order)
        ranked = sorted(zip(choices, probs.tolist(), strict=True), key=lambda cp: -cp[1])
        return Answer(choices[best], float(probs[best]), evidence, tuple(ranked), "vtm")

    def _pair(self, question: str, choice: str) -> str:
        """``"question choice"``, dropping leading question words until the choice fits whole."""
        words = question.split()
        while words and self.encoder.count_tokens(" ".join([*words, choice])) > self.encoder.text_capacity:
            words.pop(0)
        return " ".join([*words, choice])

    def _ask_head(self, question: str, vocab: list[str], hits: list[Hit], tokens: np.ndarray) -> Answer:
        """The fused QA head's answer: per-clip answer distributions mixed by how well each clip matches the
        question (softmax of the VTM log-odds)."""
        out = self.encoder.fused(tokens, question)
        match = _log_odds(out["vtm_logits"])  # (B,)
        evidence = [dataclasses.replace(h, score=_sigmoid(m)) for h, m in zip(hits, match, strict=True)]
        return _mixed_answer(vocab, evidence, out[QA_OUTPUT], _softmax(match), "fused")

    # ------------------------------------------------------------------ health and lifetime
    def stats(self) -> RuntimeStats:
        """Stream counters, index size, stage latencies, memory and providers."""
        return RuntimeStats(
            stream=None if self.pipeline is None else self.pipeline.stats(),
            index=self.index.stats(),
            latency=self.latency.summary(),
            rss_bytes=rss_bytes(),
            providers=dict(self.encoder.providers),
        )

    def close(self) -> None:
        """Stop streaming and close the index (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            self.index.close()
            self.package.close()

    def __enter__(self) -> EdgeRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EdgeRuntime({self.package.manifest.name!r}, index='{self.index.path}', clips={len(self.index)})"


def open_runtime(
    package: str | Path | ModelPackage,
    source: str | int | Path | None = None,
    index: str | Path = "egovlp_index",
    *,
    source_name: str | None = None,
    realtime: bool | None = None,
    reconnect: ReconnectPolicy | None = None,
    capture_factory: CaptureFactory | None = None,
    providers: Sequence[str] | None = None,
    threads: int = 0,
    batch_size: int = 4,
    ring_frames: int = 64,
    clip_queue: int = 8,
    thumbnails: bool = True,
    max_token_clips: int = 64,
    retention: Retention | None = None,
    on_clip: Callable[[IndexedClip], None] | None = None,
    text_cache: int = 256,
) -> EdgeRuntime:
    """Open a model package, a clip index and optionally a video source; ``start()`` streams.

    Args:
        package: Package directory, ``.egopkg`` archive or an opened package (verified on open).
        source: Device index, file, RTSP/HTTP URL or GStreamer pipeline (see ``runtime.sources``); None for a
            query-only runtime over an existing index.
        index: Index directory; created when streaming, required to exist without a source.
        source_name: Name stored with each clip (default: the source spec, passwords hidden).
        realtime: Files: play at the file's frame rate (True) or as fast as possible (default).
        reconnect: Backoff of live sources.
        capture_factory: ``(target, api) -> capture`` instead of ``cv2.VideoCapture`` (tests).
        providers: ONNX Runtime execution providers in order (default TensorRT, CUDA, CPU).
        threads: Intra-op threads per ONNX Runtime session (0 = its default).
        batch_size: Most clips per encoder call.
        ring_frames: Frame ring capacity (frames beyond it drop the oldest).
        clip_queue: Clip ring capacity (clips beyond it drop the oldest).
        thumbnails: Store a JPEG thumbnail per clip.
        max_token_clips: How many of the newest clips keep their fused-layer tokens (what ``ask`` can use).
        retention: Age/size retention applied while streaming.
        on_clip: Called with each committed clip (in the encoder thread).
        text_cache: Text encodings kept (LRU).

    Returns:
        The runtime; use it as a context manager or call ``close()``.

    Raises:
        PackageError: The package is missing, corrupt, or not the one that wrote the index.
        SourceOpenError: The source does not open (``FileNotFoundError`` for a missing file).
        FileNotFoundError: No source and no index at ``index``.
    """
    pkg = package if isinstance(package, ModelPackage) else open_package(package)
    encoder = PackageEncoder(pkg, providers=providers, threads=threads, text_cache=text_cache)
    # the source opens first: one that does not open leaves no new, empty index behind
    src = None if source is None else open_source(source, realtime=realtime, reconnect=reconnect,
                                                      capture_factory=capture_factory)  # fmt: skip
    clip_index = None
    try:
        clip_index = _open_index(pkg, Path(index), create=src is not None, max_token_clips=max_token_clips)
        if src is None:
            runtime = EdgeRuntime(pkg, encoder, clip_index)
        else:
            options = dict(ring_frames=ring_frames, clip_queue=clip_queue, batch_size=batch_size)
            options |= dict(thumbnails=thumbnails, on_clip=on_clip, retention=retention)

            def make_pipeline(latency: LatencyRecorder) -> StreamPipeline:
                name = source_name or src.name
                return StreamPipeline(src, encoder, clip_index, source_name=name, latency=latency, **options)

            runtime = EdgeRuntime(pkg, encoder, clip_index, make_pipeline)
    except BaseException:
        if clip_index is not None:
            clip_index.close()
        if src is not None:
            src.close()
        raise
    log.info("runtime ready: package %s, index %s (%d clips), providers %s", pkg.manifest.name, index,
             len(clip_index), sorted(set(encoder.providers.values())))  # fmt: skip
    return runtime


def _open_index(pkg: ModelPackage, path: Path, *, create: bool, max_token_clips: int) -> ClipIndex:
    """Open the index, checking (or, for a new one, recording) which package wrote it."""
    identity = _package_identity(pkg)
    try:
        index = ClipIndex.open(path, pkg.config.heads.embed_dim, create=create, max_token_clips=max_token_clips)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err}; run `egovlp run` (or open with a source) to build it first") from err
    except IndexFormatError as err:
        raise PackageMismatchError(f"package {pkg.manifest.name!r} cannot use this index: {err}") from err
    try:
        stored_path = path / _PACKAGE_FILE
        if stored_path.exists():
            stored = json.loads(stored_path.read_text())
            if stored.get("graphs") != identity["graphs"]:
                raise PackageMismatchError(
                    f"index '{path}' was written by package {stored.get('name')!r} {stored.get('version')!r}, not "
                    f"by {identity['name']!r} {identity['version']!r} (other video graphs: their embeddings do not "
                    "compare); open it with that package or index into another directory"
                )
        else:
            atomic_write_bytes(stored_path, json.dumps(identity, indent=2).encode())
    except BaseException:
        index.close()
        raise
    return index


def _package_identity(pkg: ModelPackage) -> dict[str, Any]:
    selected = pkg.manifest.selected()
    graphs = {g: selected[g].sha256 for g in ("video_lower", "video_upper")}  # what the stored vectors depend on
    return {"name": pkg.manifest.name, "version": pkg.manifest.version, "graphs": graphs}


def _check_choices(choices: Sequence[str] | None) -> list[str] | None:
    if choices is None:
        return None
    if isinstance(choices, str):
        raise QueryError(f"choices must be a list of answers, got the string {choices[:40]!r}; wrap it in a list")
    choices = list(choices)
    if len(choices) < 2:
        raise QueryError(f"give at least two choices to pick from, got {choices!r}")
    for c in choices:
        check_query(c)
    return choices


def _moment(hit: Hit, score: float) -> Moment:
    return Moment(hit.id, hit.start, hit.end, float(score), hit.source, hit.thumbnail)


def _mixed_answer(vocab: list[str], hits: Sequence[Hit], logits: np.ndarray, weights: np.ndarray, head: str,
                  top: int = 5) -> Answer:  # fmt: skip
    """Per-clip answer distributions ``softmax(logits)`` ``(B, A)`` mixed with clip ``weights`` ``(B,)``; evidence
    by weight, each with its hit's score; ``top`` answers in ``scores``."""
    probs = (weights[:, None] * np.apply_along_axis(_softmax, 1, logits.astype(np.float64))).sum(axis=0)  # (A,)
    best = int(probs.argmax())
    evidence = tuple(_moment(hits[i], hits[i].score) for i in np.argsort(-weights, kind="stable"))
    ranked = np.argsort(-probs, kind="stable")[:top]
    return Answer(vocab[best], float(probs[best]), evidence, tuple((vocab[i], float(probs[i])) for i in ranked), head)


def _cosine_weights(hits: Sequence[Hit], temperature: float) -> np.ndarray:
    """``softmax(cosine / temperature)`` over the evidence clips (the contrastive temperature the model trained at)."""
    return _softmax(np.array([h.score for h in hits], np.float64) / temperature)


def _log_odds(vtm_logits: np.ndarray) -> np.ndarray:
    """(B, 2) VTM logits -> (B,) log-odds that clip and text match."""
    logits = vtm_logits.astype(np.float64)
    return logits[:, 1] - logits[:, 0]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


__all__ = [
    "Answer",
    "EdgeRuntime",
    "IndexedClip",
    "Moment",
    "NoQAHeadError",
    "NotReadyError",
    "PackageMismatchError",
    "QueryError",
    "Retention",
    "RuntimeStats",
    "open_runtime",
]
