"""The run tokenizer: only the main process writes it, every process reads the same file."""

from __future__ import annotations

import pytest

from egovlpv2_edge import get_config
from egovlpv2_edge.training.text import load_or_train_tokenizer


def test_only_the_main_process_writes_the_tokenizer(tmp_path):
    text = get_config("egovlpv2_edge").text  # MiniLM layout: copied from the installed weights
    out = tmp_path / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="not written by the main process"):
        load_or_train_tokenizer(text, tmp_path / "egoclip.csv", out, is_main=False)
    assert not out.exists()
    main = load_or_train_tokenizer(text, tmp_path / "egoclip.csv", out, is_main=True)
    other = load_or_train_tokenizer(text, tmp_path / "egoclip.csv", out, is_main=False)
    assert out.is_file()
    assert (
        main.encode("#C C picks up the red cup").input_ids.tolist()
        == other.encode("#C C picks up the red cup").input_ids.tolist()
    )
