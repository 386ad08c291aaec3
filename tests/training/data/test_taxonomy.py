"""The verb/noun taxonomy: sizes, order pairs, compatibility, CSV files, multi-hot vectors."""

from __future__ import annotations

import numpy as np
import pytest

from egovlpv2_edge.training.data._motion import PROGRAMS
from egovlpv2_edge.training.data.taxonomy import (
    NOUNS,
    ORDER_PAIRS,
    VERBS,
    compatible,
    compatible_nouns,
    multi_hot,
    noun_by_key,
    read_nouns,
    read_verbs,
    verb_by_key,
    write_taxonomy,
)


def test_sizes_and_ids() -> None:
    assert len(VERBS) >= 20
    assert len([n for n in NOUNS if not n.is_tool]) >= 30
    assert [v.id for v in VERBS] == list(range(len(VERBS)))
    assert [n.id for n in NOUNS] == list(range(len(NOUNS)))
    assert len({n.key for n in NOUNS}) == len(NOUNS) and len({n.name for n in NOUNS}) == len(NOUNS)


def test_order_pairs_present_and_symmetric() -> None:
    pairs = {frozenset(p) for p in ORDER_PAIRS}
    for a, b in [("pick_up", "put_down"), ("open", "close"), ("push", "pull")]:
        assert frozenset((a, b)) in pairs
    for a, b in ORDER_PAIRS:
        assert verb_by_key(a).reverse == b and verb_by_key(b).reverse == a


def test_every_verb_has_a_motion_program_and_objects() -> None:
    for v in VERBS:
        assert v.program in PROGRAMS
        assert compatible_nouns(v), v.key


def test_openable_verbs_restrict_nouns() -> None:
    opened = compatible_nouns(verb_by_key("open"))
    assert opened and all("openable" in n.props for n in opened)
    assert not compatible(verb_by_key("open"), noun_by_key("red_ball"))
    assert not compatible(verb_by_key("pick_up"), noun_by_key("knife"))  # tools are never acted on


def test_unknown_keys_list_the_choices() -> None:
    with pytest.raises(ValueError, match="valid verbs: pick_up"):
        verb_by_key("levitate")
    with pytest.raises(ValueError, match="valid nouns: red_cup"):
        noun_by_key("unicorn")


def test_multi_hot() -> None:
    v = multi_hot([1, 3], 5)
    assert v.dtype == np.float32 and v.tolist() == [0, 1, 0, 1, 0]
    with pytest.raises(ValueError, match="outside"):
        multi_hot([5], 5)


def test_csv_round_trip(tmp_path) -> None:
    vp, np_ = write_taxonomy(tmp_path)
    verbs, nouns = read_verbs(vp), read_nouns(np_)
    assert [r["key"] for r in verbs] == [v.key for v in VERBS]
    assert [r["key"] for r in nouns] == [n.key for n in NOUNS]
    assert verbs[0]["id"] == "0" and "text" in verbs[0]
