"""``egovlp tokenizer``: train, convert and try out the text tokenizer (one ``tokenizer.json``).

Subcommands:
    train     Train a RoBERTa-style byte-level BPE on narrations (plain text, or a column of a CSV/TSV such
              as EgoClip's ``clip_text``).
    from-dir  Convert a local Hugging Face tokenizer directory into one ``tokenizer.json``.
    encode    Print the ids of texts, one line per text.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from egovlpv2_edge.tokenizer import DEFAULT_MAX_LENGTH, PADDING_MODES, Tokenizer

logger = logging.getLogger(__name__)

_TABLE_SUFFIXES = (".csv", ".tsv")
_PROGRESS_EVERY = 100_000  # sentences between progress log lines


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egovlp tokenizer", description="Train, convert and try out the text tokenizer (one tokenizer.json)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,from-dir,encode}")

    train = sub.add_parser("train", help="train a byte-level BPE tokenizer on a corpus")
    train.add_argument(
        "--corpus",
        type=Path,
        nargs="+",
        required=True,
        metavar="FILE",
        help="text files (one sentence per line) or CSV/TSV files (with --column)",
    )
    train.add_argument("--column", help="CSV/TSV column holding the text, e.g. clip_text (delimiter from the header)")
    train.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, specials included")
    train.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge")
    train.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help="default encoded length to store")
    train.add_argument("--out", type=Path, required=True, help="output tokenizer.json")

    convert = sub.add_parser("from-dir", help="convert a Hugging Face tokenizer directory to one tokenizer.json")
    convert.add_argument(
        "directory", type=Path, help="directory with tokenizer.json, vocab.json+merges.txt or vocab.txt"
    )
    convert.add_argument(
        "--max-length", type=int, help="default encoded length to store (default: the directory's, else 15)"
    )
    convert.add_argument("--out", type=Path, required=True, help="output tokenizer.json")

    encode = sub.add_parser("encode", help="print token ids of texts, one line per text")
    encode.add_argument("--tokenizer", type=Path, required=True, help="tokenizer.json to use")
    encode.add_argument("--max-length", type=int, help="encoded length (default: the one stored in the tokenizer)")
    encode.add_argument("--padding", choices=PADDING_MODES, default="max_length", help="pad to max length or longest")
    encode.add_argument(
        "--attention-mask",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also print each attention mask, on the line after its ids",
    )
    encode.add_argument("texts", nargs="+", metavar="TEXT", help="texts to encode")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``egovlp tokenizer <train|from-dir|encode> ...``.

    Args:
        argv: Arguments after ``tokenizer``; ``sys.argv[1:]`` when None.

    Returns:
        0 on success, 2 on a bad argument or input file.
    """
    args = _build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "from-dir":
            return _from_dir(args)
        return _encode(args)
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"egovlp tokenizer {args.command}: error: {err}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    for path in args.corpus:
        _check_corpus_file(path, args.column)
    tokenizer = Tokenizer.train_bpe(
        _read_corpus(args.corpus, args.column), args.vocab_size, args.min_frequency, max_length=args.max_length
    )
    out = tokenizer.save(args.out)
    print(f"wrote {out}: {tokenizer.kind}, vocab size {tokenizer.vocab_size}, max length {tokenizer.max_length}")
    return 0


def _from_dir(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.from_pretrained_dir(args.directory, max_length=args.max_length)
    out = tokenizer.save(args.out)
    print(f"wrote {out}: {tokenizer.kind}, vocab size {tokenizer.vocab_size}, max length {tokenizer.max_length}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    tokenizer = Tokenizer.from_file(args.tokenizer)
    batch = tokenizer.encode(args.texts, max_length=args.max_length, padding=args.padding)
    for ids, mask in zip(batch.input_ids, batch.attention_mask, strict=True):
        print(" ".join(str(i) for i in ids))
        if args.attention_mask:
            print(" ".join(str(m) for m in mask))
    return 0


def _is_table(path: Path) -> bool:
    return path.suffix.lower() in _TABLE_SUFFIXES


def _delimiter(header: str) -> str:
    # EgoClip's egoclip.csv is tab-separated despite its suffix, so trust the header over the suffix.
    return "\t" if "\t" in header else ","


def _check_corpus_file(path: Path, column: str | None) -> None:
    """Fail before training, not midway through it, on a missing file or column."""
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {str(path)!r} not found; expected a text, CSV or TSV file")
    if not _is_table(path):
        return
    with path.open(encoding="utf-8", newline="") as file:
        header = file.readline().rstrip("\r\n")
    columns = next(csv.reader([header], delimiter=_delimiter(header)), [])
    if column is None or column not in columns:
        problem = "needs --column" if column is None else f"has no column {column!r}"
        raise ValueError(f"CSV/TSV corpus {str(path)!r} {problem}; valid columns: {', '.join(columns)}")


def _read_corpus(paths: Sequence[Path], column: str | None) -> Iterator[str]:
    """Yield non-empty sentences from every file, logging progress."""
    total = 0
    for path in paths:
        count = 0
        for text in _read_table(path, column) if _is_table(path) else _read_lines(path):
            text = text.strip()
            if not text:
                continue
            count += 1
            if (total + count) % _PROGRESS_EVERY == 0:
                logger.info("read %d sentences", total + count)
            yield text
        total += count
        logger.info("read %d sentences from %s", count, path)


def _read_lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as file:
        yield from file


def _read_table(path: Path, column: str | None) -> Iterator[str]:
    with path.open(encoding="utf-8", newline="") as file:
        header = file.readline()
        file.seek(0)
        for row in csv.DictReader(file, delimiter=_delimiter(header)):
            yield row[column] or ""


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
