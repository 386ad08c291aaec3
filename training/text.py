"""The tokenizer a training run uses: MiniLM's WordPiece for MiniLM presets, else a byte-level BPE trained on
the dataset's narrations and saved with the run."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from egovlpv2_edge.config import TextConfig
from egovlpv2_edge.tokenizer import Tokenizer
from egovlpv2_edge.training.data.egoclip import read_egoclip
from egovlpv2_edge.training.distributed import barrier

log = logging.getLogger(__name__)


def is_minilm(text: TextConfig) -> bool:
    """True for the MiniLM-L6 layout (BERT, 30522 words, width 384)."""
    return text.variant == "bert" and text.vocab_size == 30522 and text.width == 384


def load_or_train_tokenizer(text: TextConfig, egoclip_csv: Path, out: Path, is_main: bool = True,
                            texts: Sequence[str] | None = None) -> Tokenizer:  # fmt: skip
    """Load (or make) the run's tokenizer and save it as ``out`` (one ``tokenizer.json``).

    Args:
        text: The model's text config (vocabulary size and padding id must fit the tokenizer).
        egoclip_csv: Narrations to train a BPE on when the preset has no pretrained tokenizer.
        out: Where the run keeps its tokenizer; reused when it exists.
        is_main: Only the main process writes; the others wait and read.
        texts: The narrations to train the BPE on instead of every row of ``egoclip_csv`` (pre-training passes its
            training clips', already read, so bad rows it was told to skip are not read again).
    """
    # Only the main process decides and writes; every process then meets at the barrier and reads the same file.
    # (Deciding per process would race: a late process could see the file and skip the barrier.)
    if is_main and not out.is_file():
        if is_minilm(text):
            from egovlpv2_edge.checkpoint import minilm_path

            Tokenizer.from_pretrained_dir(minilm_path(), max_length=text.max_length).save(out)
        else:
            texts = [r.clip_text for r in read_egoclip(egoclip_csv)] if texts is None else list(texts)
            log.info("training a %d-word byte-level BPE on %d narrations", text.vocab_size, len(texts))
            Tokenizer.train_bpe(texts, vocab_size=text.vocab_size, max_length=text.max_length).save(out)
    barrier()
    if not out.is_file():
        raise FileNotFoundError(f"tokenizer {out} was not written by the main process; is `out` on a shared disk?")
    tok = Tokenizer.from_file(out, max_length=text.max_length)
    if tok.vocab_size > text.vocab_size or tok.pad_id != text.pad_id:
        raise ValueError(
            f"tokenizer {out} (vocab {tok.vocab_size}, pad {tok.pad_id}) does not fit the text encoder "
            f"(vocab {text.vocab_size}, pad {text.pad_id}); delete it to train a new one"
        )
    return tok
