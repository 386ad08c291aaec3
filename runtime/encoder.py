"""ONNX Runtime encoders over a model package: the gate switch without reloading anything.

One :class:`PackageEncoder` holds a session per graph of a verified package (``egovlpv2_edge.package``):

* ``encode_clips``: frames -> ``video_lower`` -> tokens entering the fused layers (kept for QA) -> ``video_upper``
  -> L2-normalised clip embeddings (gates off);
* ``encode_texts``: texts -> ``text_lower`` -> ``text_upper`` -> embeddings, cached per text;
* ``match``: cached clip tokens + a text -> ``fused_upper`` -> the VTM match probability (gates on), running only
  the top layers (``fused`` gives the graph's raw outputs, ``qa_logits`` among them when the package has a QA
  head).

Query texts: longer than :data:`MAX_QUERY_CHARS` characters is rejected with :class:`QueryError` (a 1 MB paste
is a mistake, not a query); a text with more tokens than the package's ``text_max_length`` is truncated to its
first tokens, as in training, with a logged warning. Encoders are safe to share between threads.

Execution providers are tried in the order TensorRT, CUDA, CPU (those the installed onnxruntime has); the ones a
session really uses are logged and reported by :attr:`PackageEncoder.providers`. No torch anywhere.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from egovlpv2_edge.package import ModelPackage

log = logging.getLogger(__name__)

PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
MAX_QUERY_CHARS = 2000  # longer query texts are rejected before tokenizing


class QueryError(ValueError):
    """A query text is unusable (empty, not a string, or far too long); the message says what to change."""


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The requested providers (default: TensorRT, CUDA, CPU) that this onnxruntime build offers, in order."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    wanted = list(requested or PREFERRED_PROVIDERS)
    unknown = [p for p in wanted if p not in have and p not in PREFERRED_PROVIDERS]
    if unknown:
        raise ValueError(f"unknown execution provider(s) {unknown}; this onnxruntime offers {sorted(have)}")
    chosen = [p for p in wanted if p in have]
    return chosen or ["CPUExecutionProvider"]


@dataclass(frozen=True)
class ClipEncoding:
    """What encoding a batch of clips gives.

    Attributes:
        embeddings: L2-normalised dual embeddings ``(B, E)`` float32.
        tokens: Tokens entering the fused layers ``(B, T, Dv)`` float32 (the fused stream's when it has its own).
    """

    embeddings: np.ndarray
    tokens: np.ndarray


class PackageEncoder:
    """ONNX Runtime sessions for every graph of a package.

    Args:
        package: An opened (verified) :class:`~egovlpv2_edge.package.ModelPackage`.
        providers: Execution providers to try, in order; default TensorRT, CUDA, CPU.
        threads: Intra-op threads per session (0 = onnxruntime's default).
        text_cache: How many text encodings to keep.
    """

    def __init__(
        self,
        package: ModelPackage,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        text_cache: int = 256,
    ) -> None:
        import onnxruntime as ort

        self.package = package
        self.specs = package.specs  # fused_upper lists qa_logits when the package has a QA head
        self.tokenizer = package.tokenizer()
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        # Five sessions run one after another (text lower -> fused upper ...): threads left spinning by the last
        # one would steal the cores the next one needs, so idle pool threads sleep instead.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        wanted = choose_providers(providers)
        self.sessions = {
            name: ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
            for name, path in package.graph_paths.items()
        }
        self.providers = {name: s.get_providers()[0] for name, s in self.sessions.items()}
        log.info("graph sessions on %s", self.providers)
        self._text_cache: OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._text_cache_size = text_cache
        self._text_lock = threading.Lock()  # the LRU is shared by query threads
        max_length = package.config.text.max_length
        specials = int(self.tokenizer.encode([""], max_length=max_length).attention_mask.sum())
        self.text_capacity = max_length - specials  # content tokens a text keeps; the rest is truncated

    def _run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.specs[graph]
        outs = self.sessions[graph].run(spec.output_names, {k: feeds[k] for k in spec.input_names})
        return dict(zip(spec.output_names, outs, strict=True))

    def encode_clips(self, frames: np.ndarray) -> ClipEncoding:
        """Preprocessed frames ``(B, F, 3, H, W)`` float32 to embeddings and cached tokens."""
        lower = self._run("video_lower", {"frames": np.ascontiguousarray(frames, dtype=np.float32)})
        emb = self._run("video_upper", lower)["video_embedding"]  # video_tokens (and the branch's video_motion)
        tokens = lower.get("fusion_video_tokens", lower["video_tokens"])
        return ClipEncoding(emb, tokens)

    def _text(self, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        check_query(text)
        with self._text_lock:
            hit = self._text_cache.get(text)
            if hit is not None:
                self._text_cache.move_to_end(text)
                return hit
        batch = self.tokenizer.encode([text], max_length=self.package.config.text.max_length)
        if batch.attention_mask[0, -1] and (tokens := self.count_tokens(text)) > self.text_capacity:
            log.warning("query %r has %d tokens; the model reads the first %d (truncated)", text[:60], tokens,
                        self.text_capacity)  # fmt: skip
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        states = self._run("text_lower", feeds)["text_tokens"]
        emb = self._run("text_upper", {"text_tokens": states, "attention_mask": batch.attention_mask})
        entry = (emb["text_embedding"][0], states, batch.input_ids, batch.attention_mask)
        with self._text_lock:
            self._text_cache[text] = entry
            if len(self._text_cache) > self._text_cache_size:
                self._text_cache.popitem(last=False)
        return entry

    def count_tokens(self, text: str) -> int:
        """Content tokens of ``text`` (specials not counted) before truncation."""
        return len(self.tokenizer.backend.encode(text, add_special_tokens=False).ids)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised dual text embeddings ``(N, E)`` (cached per text)."""
        return np.stack([self._text(t)[0] for t in texts])

    def fused(self, tokens: np.ndarray, text: str) -> dict[str, np.ndarray]:
        """Outputs of the fused top layers (gates on) for each clip ``tokens`` ``(B, T, Dv)`` with ``text``."""
        _, states, _, mask = self._text(text)
        return self._fuse(tokens, states, mask)

    def fused_pairs(self, tokens: np.ndarray, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Fused outputs for every (text, clip) pair in one batch: row ``c * B + b`` pairs ``texts[c]`` with clip b.

        The texts run through the lower text layers together (their dual embeddings are not needed), then all
        ``C * B`` pairs through the fused graph once: one call per graph instead of two or three per text.
        """
        for text in texts:
            check_query(text)
        batch = self.tokenizer.encode(list(texts), max_length=self.package.config.text.max_length)
        states = self._run("text_lower", {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})
        return self._fuse(tokens, states["text_tokens"], batch.attention_mask)

    def _fuse(self, tokens: np.ndarray, states: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
        """``fused_upper`` over every (text, clip) pair, text-major: clips ``(B, T, Dv)``, texts ``(C, L, Dt)``."""
        tokens = np.ascontiguousarray(tokens, dtype=np.float32)  # the index may keep them as float16
        B, C = tokens.shape[0], states.shape[0]
        name = self.specs["fused_upper"].input_names[0]
        feeds = {
            name: tokens if C == 1 else np.tile(tokens, (C, 1, 1)),
            "text_tokens": np.repeat(states, B, 0),
            "attention_mask": np.repeat(mask, B, 0),
        }
        return self._run("fused_upper", feeds)

    def match(self, tokens: np.ndarray, text: str) -> np.ndarray:
        """VTM match probability of each clip ``tokens`` ``(B, T, Dv)`` with ``text``, fused top layers only."""
        logits = self.fused(tokens, text)["vtm_logits"].astype(np.float64)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (p[:, 1] / p.sum(axis=1)).astype(np.float32)

    def info(self) -> dict[str, Any]:
        """Providers per graph and the package's preprocessing."""
        return {"providers": dict(self.providers), "preprocessing": self.package.preprocessing.to_dict()}


def check_query(text: object) -> None:
    """Raise :class:`QueryError` unless ``text`` is a non-empty string of at most :data:`MAX_QUERY_CHARS`."""
    if not isinstance(text, str):
        raise QueryError(f"a query text must be a non-empty string, got {type(text).__name__}")
    if not text.strip():
        raise QueryError("a query text must be a non-empty string; describe the moment, e.g. 'C opens the fridge'")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(
            f"query is {len(text):,} characters; the limit is {MAX_QUERY_CHARS:,} (the model reads only its first "
            "tokens anyway): pass a short description of the moment"
        )
