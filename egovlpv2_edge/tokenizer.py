"""Text tokenizer shared by training and the torch-free on-device runtime.

EgoVLPv2's text backbone is RoBERTa-base, so narrations are tokenised with RoBERTa's byte-level BPE and
wrapped as ``<s> ... </s>`` (reference, "Text backbone"). Pre-training pads/truncates every narration to
exactly 15 tokens; EgoMCQ evaluation pads to the longest narration in the batch; Charades, EK-100 and
EgoTaskQA use length 30 (reference, "Tokenisation"). BERT-style WordPiece directories (e.g. MiniLM) are
supported too, for small distillation students.

The module imports only numpy, ``tokenizers`` and the standard library: the runtime on a Jetson has neither
torch nor transformers. Encodings match ``transformers`` tokenizers called with ``truncation=True`` and
``padding="max_length"`` (or ``padding=True``): truncation drops content tokens, never the end token.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as _Backend

logger = logging.getLogger(__name__)

Padding = Literal["max_length", "longest"]
Kind = Literal["bpe", "wordpiece"]
PADDING_MODES: tuple[str, ...] = get_args(Padding)
# Pre-training text length of EgoVLPv2 (reference, "Tokenisation").
DEFAULT_MAX_LENGTH = 15
# RoBERTa's special tokens in RoBERTa's id order: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4.
ROBERTA_SPECIALS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
_BPE_ROLE_ORDER = ("cls", "pad", "sep", "unk", "mask")
# Byte-level BPE needs its 256-byte alphabet plus the specials before any merge fits.
MIN_BPE_VOCAB_SIZE = 256 + len(ROBERTA_SPECIALS)

_ROLES = ("cls", "sep", "pad", "mask", "unk")
_DEFAULT_NAMES: dict[str, dict[str, str]] = {
    "bpe": {"cls": "<s>", "sep": "</s>", "pad": "<pad>", "mask": "<mask>", "unk": "<unk>"},
    "wordpiece": {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]", "unk": "[UNK]"},
}
_MODEL_KINDS: dict[str, Kind] = {"BPE": "bpe", "WordPiece": "wordpiece"}
_HF_DIR_LAYOUTS = "tokenizer.json, or vocab.json + merges.txt (RoBERTa/GPT-2 BPE), or vocab.txt (BERT WordPiece)"


@dataclass(frozen=True)
class TokenBatch:
    """A batch of encoded texts, ready for the text encoder.

    Attributes:
        input_ids: Token ids, int64 of shape (B, L); padding positions hold the pad id.
        attention_mask: 1 for real tokens (specials included), 0 for padding; int64 of shape (B, L).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with fixed-length batch encoding and named special tokens.

    Build one with :meth:`from_file`, :meth:`from_pretrained_dir` or :meth:`train_bpe`; :meth:`save` writes a
    single ``tokenizer.json`` that restores everything, including the default ``max_length``.

    Args:
        backend: The wrapped tokenizer; it is copied, so later changes to it have no effect here.
        max_length: Default encoded length; when None, the backend's truncation length, else 15.
        special_tokens: Optional role -> token overrides for roles ``cls``, ``sep``, ``pad``, ``mask``, ``unk``
            (e.g. from ``special_tokens_map.json``); the post-processor and padding config win over them.
    """

    def __init__(
        self, backend: _Backend, max_length: int | None = None, special_tokens: Mapping[str, str] | None = None
    ) -> None:
        model_type = type(backend.model).__name__
        if model_type not in _MODEL_KINDS:
            raise ValueError(f"unsupported tokenizer model {model_type!r}; valid models: {', '.join(_MODEL_KINDS)}")
        self._kind: Kind = _MODEL_KINDS[model_type]
        if max_length is None:
            max_length = backend.truncation["max_length"] if backend.truncation else DEFAULT_MAX_LENGTH
        self._ids = _resolve_special_ids(backend, self._kind, special_tokens or {})
        self._backend = _Backend.from_str(backend.to_str())
        # Padding and truncation are applied per call in encode(); the wrapped copy stays stateless.
        self._backend.no_truncation()
        self._backend.no_padding()
        self._n_special = self._backend.num_special_tokens_to_add(is_pair=False)
        self._max_length = self._check_max_length(max_length)

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_file(cls, path: str | Path, max_length: int | None = None) -> Tokenizer:
        """Load a single ``tokenizer.json`` (as written by :meth:`save` or by Hugging Face).

        Args:
            path: The ``tokenizer.json`` file.
            max_length: Overrides the default length stored in the file.

        Returns:
            The loaded tokenizer.

        Raises:
            FileNotFoundError: ``path`` is not a file.
            ValueError: The file is not a valid tokenizer.json, or its model or specials are unsupported.
        """
        path = Path(path)
        if not path.is_file():
            hint = "; for a Hugging Face directory use Tokenizer.from_pretrained_dir" if path.is_dir() else ""
            raise FileNotFoundError(f"tokenizer file {str(path)!r} not found; expected a tokenizer.json file{hint}")
        return cls(_load_backend(path), max_length=max_length)

    @classmethod
    def from_pretrained_dir(cls, path: str | Path, max_length: int | None = None) -> Tokenizer:
        """Load a local Hugging Face tokenizer directory.

        Uses ``tokenizer.json`` when present; otherwise builds a RoBERTa byte-level BPE from ``vocab.json`` +
        ``merges.txt`` or a BERT WordPiece from ``vocab.txt``. ``tokenizer_config.json`` and
        ``special_tokens_map.json`` are read when present for special tokens, ``do_lower_case``,
        ``add_prefix_space``, ``trim_offsets``, ``strip_accents`` and ``tokenize_chinese_chars``.

        Args:
            path: The directory.
            max_length: Default encoded length; when None, the length stored in ``tokenizer.json``, else 15.

        Returns:
            The loaded tokenizer.

        Raises:
            FileNotFoundError: ``path`` is not a directory or holds none of the expected files.
        """
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"tokenizer directory {str(path)!r} not found; expected a directory with {_HF_DIR_LAYOUTS}"
            )
        config = _read_hf_config(path)
        names = _special_names(config)
        if (path / "tokenizer.json").is_file():
            backend = _load_backend(path / "tokenizer.json")
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            backend = _build_byte_level_bpe(path / "vocab.json", path / "merges.txt", names, config)
        elif (path / "vocab.txt").is_file():
            backend = _build_wordpiece(path / "vocab.txt", names, config)
        else:
            found = sorted(p.name for p in path.iterdir())
            raise FileNotFoundError(f"tokenizer directory {str(path)!r} has none of {_HF_DIR_LAYOUTS}; found {found}")
        return cls(backend, max_length=max_length, special_tokens=names)

    @classmethod
    def train_bpe(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        min_frequency: int = 2,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> Tokenizer:
        """Train a RoBERTa-style byte-level BPE tokenizer.

        Specials get RoBERTa's ids (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=4) and texts
        are wrapped as ``<s> ... </s>``.

        Args:
            texts: Training sentences; any iterable, consumed once.
            vocab_size: Target vocabulary size, specials and the 256-byte alphabet included.
            min_frequency: Minimum pair count for a merge.
            max_length: Default encoded length stored with the tokenizer.

        Returns:
            The trained tokenizer.

        Raises:
            TypeError: ``texts`` is a single string.
            ValueError: ``texts`` is empty, or ``vocab_size``/``min_frequency`` are too small.
        """
        if isinstance(texts, str):
            raise TypeError("train_bpe expects an iterable of sentences, got a single str; wrap it in a list")
        if vocab_size < MIN_BPE_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size={vocab_size} is too small; byte-level BPE needs at least "
                f"{MIN_BPE_VOCAB_SIZE} (256 bytes + {len(ROBERTA_SPECIALS)} specials)"
            )
        if min_frequency < 1:
            raise ValueError(f"min_frequency={min_frequency} must be >= 1")
        iterator = iter(texts)
        first = next(iterator, None)
        if first is None:
            raise ValueError("train_bpe got an empty text list; pass at least one sentence")
        counted = _Counted(itertools.chain([first], iterator))
        backend = _train_byte_level_bpe(counted, vocab_size, min_frequency)
        logger.info(
            "trained byte-level BPE on %d texts: vocab size %d",
            counted.count,
            backend.get_vocab_size(with_added_tokens=True),
        )
        return cls(backend, max_length=max_length)

    def save(self, path: str | Path) -> Path:
        """Write one ``tokenizer.json`` that :meth:`from_file` restores exactly.

        The default ``max_length`` is stored as the file's truncation and fixed-length padding settings.

        Args:
            path: Output file, or an existing directory to write ``tokenizer.json`` into.

        Returns:
            The path written.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = _Backend.from_str(self._backend.to_str())
        backend.enable_truncation(max_length=self._max_length)
        backend.enable_padding(
            pad_id=self.pad_id, pad_token=self._backend.id_to_token(self.pad_id), length=self._max_length
        )
        backend.save(str(path))
        logger.info(
            "saved %s tokenizer (vocab %d, max_length %d) to %s", self._kind, self.vocab_size, self._max_length, path
        )
        return path

    # ---------------------------------------------------------------------------------------- encoding
    def encode(
        self,
        texts: str | Sequence[str],
        max_length: int | None = None,
        padding: Padding = "max_length",
    ) -> TokenBatch:
        """Encode texts to fixed-shape id and mask arrays.

        Each text becomes ``start + tokens + end``; texts longer than ``max_length`` lose content tokens
        from the right, never the end token (as Hugging Face's ``truncation=True``).

        Args:
            texts: One text or a non-empty sequence of texts; an empty string encodes to just the specials.
            max_length: Truncation length, and the padded length for ``"max_length"``; defaults to
                :attr:`max_length`.
            padding: ``"max_length"`` pads every row to ``max_length``; ``"longest"`` pads to the longest row.

        Returns:
            The batch; ``input_ids`` and ``attention_mask`` have shape (B, L).

        Raises:
            TypeError: A text is not a str.
            ValueError: The text list is empty, ``max_length`` is too small, or ``padding`` is unknown.
        """
        batch = _check_texts(texts)
        length = self._max_length if max_length is None else self._check_max_length(max_length)
        if padding not in PADDING_MODES:
            raise ValueError(f"unknown padding mode {padding!r}; valid choices: {', '.join(PADDING_MODES)}")
        rows = []
        for encoding in self._backend.encode_batch(batch, add_special_tokens=False):
            encoding.truncate(length - self._n_special)
            rows.append(self._backend.post_process(encoding).ids)
        width = length if padding == "max_length" else max(len(row) for row in rows)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)  # (B, L)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)  # (B, L)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            attention_mask[i, : len(row)] = 1
        return TokenBatch(input_ids=input_ids, attention_mask=attention_mask)

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Decode one row of ids back to text (for debugging).

        Args:
            ids: A 1-D sequence of token ids.
            skip_special_tokens: Drop specials (start, end, pad, ...) from the text.

        Returns:
            The decoded text.

        Raises:
            ValueError: ``ids`` is not 1-D.
        """
        array = np.asarray(ids)
        if array.ndim != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got shape {array.shape}; decode rows one by one")
        return self._backend.decode([int(i) for i in array], skip_special_tokens=skip_special_tokens)

    # -------------------------------------------------------------------------------------- properties
    @property
    def kind(self) -> Kind:
        """``"bpe"`` (byte-level BPE, RoBERTa) or ``"wordpiece"`` (BERT)."""
        return self._kind

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def max_length(self) -> int:
        """Default encoded length, used when :meth:`encode` gets no ``max_length``."""
        return self._max_length

    @property
    def pad_id(self) -> int:
        """Id of the padding token (``<pad>`` or ``[PAD]``)."""
        return self._ids["pad"]

    @property
    def mask_id(self) -> int:
        """Id of the MLM mask token (``<mask>`` or ``[MASK]``)."""
        return self._ids["mask"]

    @property
    def cls_id(self) -> int:
        """Id of the start token (``<s>`` or ``[CLS]``), whose hidden state is the text embedding."""
        return self._ids["cls"]

    @property
    def sep_id(self) -> int:
        """Id of the end token (``</s>`` or ``[SEP]``)."""
        return self._ids["sep"]

    @property
    def special_ids(self) -> set[int]:
        """Ids of all special tokens (never masked or predicted by MLM)."""
        specials = {i for i, token in self._backend.get_added_tokens_decoder().items() if token.special}
        return specials | set(self._ids.values())

    @property
    def backend(self) -> _Backend:
        """The wrapped ``tokenizers.Tokenizer`` (truncation and padding disabled); do not modify it."""
        return self._backend

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self._kind!r}, vocab_size={self.vocab_size}, max_length={self._max_length})"

    def _check_max_length(self, max_length: int) -> int:
        minimum = max(2, self._n_special)
        if isinstance(max_length, bool) or not isinstance(max_length, int | np.integer):
            raise TypeError(f"max_length must be an int, got {type(max_length).__name__}")
        if max_length < minimum:
            raise ValueError(
                f"max_length={max_length} is too small; it must be >= {minimum} to hold the start and end tokens"
            )
        return int(max_length)


# ------------------------------------------------------------------------------------------------ helpers
def _added_token(name: str, lstrip: bool = False) -> AddedToken:
    return AddedToken(name, special=True, normalized=False, lstrip=lstrip)


def _bpe_specials(names: Mapping[str, str]) -> list[AddedToken]:
    """RoBERTa's specials in id order; ``<mask>`` swallows the space before it, so "a <mask>" predicts " word"."""
    return [_added_token(names[role], lstrip=role == "mask") for role in _BPE_ROLE_ORDER]


def _check_texts(texts: str | Sequence[str]) -> list[str]:
    batch = [texts] if isinstance(texts, str) else list(texts)
    if not batch:
        raise ValueError("encode got an empty text list; pass a str or a non-empty sequence of str")
    for i, text in enumerate(batch):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    return batch


def _read_hf_config(directory: Path) -> dict[str, Any]:
    """Merge ``tokenizer_config.json`` and ``special_tokens_map.json`` (the latter wins on specials)."""
    config: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = directory / name
        if file.is_file():
            try:
                config.update(json.loads(file.read_text(encoding="utf-8")))
            except json.JSONDecodeError as err:
                raise ValueError(f"{str(file)!r} is not valid JSON: {err}") from err
    return config


def _special_names(config: Mapping[str, Any]) -> dict[str, str]:
    names = {}
    for role in _ROLES:
        value = config.get(f"{role}_token")
        if isinstance(value, dict):  # serialised AddedToken
            value = value.get("content")
        if isinstance(value, str):
            names[role] = value
    return names


def _build_byte_level_bpe(vocab: Path, merges: Path, names: Mapping[str, str], config: Mapping[str, Any]) -> _Backend:
    """RoBERTa tokenizer from ``vocab.json`` + ``merges.txt``, as ``transformers.RobertaTokenizer`` builds it."""
    names = {**_DEFAULT_NAMES["bpe"], **names}
    add_prefix_space = bool(config.get("add_prefix_space", False))
    model = models.BPE.from_file(
        str(vocab), str(merges), dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
    )
    backend = _Backend(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(_bpe_specials(names))
    backend.post_processor = processors.RobertaProcessing(
        (names["sep"], backend.token_to_id(names["sep"])),
        (names["cls"], backend.token_to_id(names["cls"])),
        trim_offsets=bool(config.get("trim_offsets", True)),
        add_prefix_space=add_prefix_space,
    )
    return backend


def _train_byte_level_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int) -> _Backend:
    """Train RoBERTa's pipeline (byte-level pre-tokenizer, no prefix space) with specials at ids 0-4."""
    backend = _Backend(models.BPE(dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        # The trainer gives specials the first ids, in list order.
        special_tokens=_bpe_specials(dict(zip(_BPE_ROLE_ORDER, ROBERTA_SPECIALS, strict=True))),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.post_processor = processors.RobertaProcessing(
        ("</s>", ROBERTA_SPECIALS.index("</s>")),
        ("<s>", ROBERTA_SPECIALS.index("<s>")),
        trim_offsets=True,
        add_prefix_space=False,
    )
    return backend


def _build_wordpiece(vocab: Path, names: Mapping[str, str], config: Mapping[str, Any]) -> _Backend:
    """BERT tokenizer from ``vocab.txt``, as ``transformers.BertTokenizer`` builds it."""
    names = {**_DEFAULT_NAMES["wordpiece"], **names}
    backend = _Backend(models.WordPiece.from_file(str(vocab), unk_token=names["unk"], max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=config.get("strip_accents"),
        lowercase=bool(config.get("do_lower_case", True)),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens([_added_token(names[role]) for role in ("pad", "unk", "cls", "sep", "mask")])
    cls_token, sep_token = names["cls"], names["sep"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep_token}:0",
        pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
        special_tokens=[(cls_token, backend.token_to_id(cls_token)), (sep_token, backend.token_to_id(sep_token))],
    )
    return backend


def _names_from_state(state: Mapping[str, Any]) -> dict[str, str]:
    """Special-token names that a tokenizer.json fixes: start/end from the post-processor, pad from padding."""
    names: dict[str, str] = {}
    stack = [state.get("post_processor")]
    while stack:
        proc = stack.pop()
        if not proc:
            continue
        if proc.get("type") == "Sequence":
            stack.extend(proc.get("processors", []))
        elif proc.get("type") in ("RobertaProcessing", "BertProcessing"):
            names["cls"], names["sep"] = proc["cls"][0], proc["sep"][0]
        elif proc.get("type") == "TemplateProcessing":
            names.update(_template_names(proc))
    if state.get("padding"):
        names["pad"] = state["padding"]["pad_token"]
    unk = (state.get("model") or {}).get("unk_token")
    if unk:
        names["unk"] = unk
    return names


def _template_names(proc: Mapping[str, Any]) -> dict[str, str]:
    single = proc.get("single", [])
    specials = proc.get("special_tokens", {})

    def token(piece: Mapping[str, Any]) -> str | None:
        if "SpecialToken" not in piece:
            return None
        key = piece["SpecialToken"]["id"]
        return specials.get(key, {}).get("tokens", [key])[0]

    names = {}
    if single and token(single[0]):
        names["cls"] = token(single[0])
    if single and token(single[-1]):
        names["sep"] = token(single[-1])
    return names


def _resolve_special_ids(backend: _Backend, kind: Kind, overrides: Mapping[str, str]) -> dict[str, int]:
    """Map each role (cls, sep, pad, mask) to an id; unk is optional (byte-level BPE never emits it)."""
    state = json.loads(backend.to_str())
    names = {**_DEFAULT_NAMES[kind], **overrides, **_names_from_state(state)}
    if backend.token_to_id(names["mask"]) is None:  # a custom mask name survives save() only as a special
        specials = [t.content for t in backend.get_added_tokens_decoder().values() if t.special]
        names["mask"] = next((t for t in specials if "mask" in t.lower()), names["mask"])
    ids = {}
    for role in _ROLES:
        token_id = backend.token_to_id(names[role])
        if token_id is None and role != "unk":
            raise ValueError(
                f"tokenizer has no {role} token {names[role]!r}; a {kind} tokenizer needs "
                f"{', '.join(repr(names[r]) for r in _ROLES if r != 'unk')} in its vocabulary"
            )
        if token_id is not None:
            ids[role] = token_id
    return ids


class _Counted:
    """Iterates ``items`` once, counting them (the BPE trainer consumes a generator we cannot measure)."""

    def __init__(self, items: Iterable[str]) -> None:
        self._items = items
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        for item in self._items:
            self.count += 1
            yield item


def _load_backend(path: Path) -> _Backend:
    try:
        return _Backend.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"{str(path)!r} is not a valid tokenizer.json: {err}") from err
