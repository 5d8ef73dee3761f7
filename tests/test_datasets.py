"""Generated paraphrase pairs and their CSV file (fastsim.datasets)."""

from __future__ import annotations

import csv
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastsim import datasets


@given(n=st.integers(1, 400), seed=st.integers(0, 2**31), frac=st.floats(0, 1))
def test_counts_labels_and_determinism(n, seed, frac):
    rows = datasets.paraphrase_pairs(n, seed=seed, duplicate_fraction=frac)
    assert len(rows) == n
    assert sum(r[2] for r in rows) == int(round(n * frac))
    assert all(r[2] in (0, 1) and isinstance(r[0], str) and isinstance(r[1], str) for r in rows)
    assert all(r[0] != r[1] for r in rows if r[2] == 1)
    assert rows == datasets.paraphrase_pairs(n, seed=seed, duplicate_fraction=frac)


def test_seeds_and_template_sets_differ():
    a = datasets.paraphrase_pairs(500, seed=1)
    assert a != datasets.paraphrase_pairs(500, seed=2)
    alt = datasets.paraphrase_pairs(2000, seed=1, templates="alt")
    words = {w for q, _, _ in datasets.paraphrase_pairs(2000, seed=1) for w in q.lower().split()}
    alt_slots = {w.strip("?") for q, _, _ in alt for w in q.lower().split()} - words
    assert alt_slots  # the alt set brings its own words (its slots)
    assert set(datasets._DEFAULT).isdisjoint(datasets._ALT)
    assert not {t for ts in datasets._DEFAULT.values() for t in ts} & {t for ts in datasets._ALT.values() for t in ts}
    assert set(datasets._DEFAULT_SLOTS).isdisjoint(datasets._ALT_SLOTS)


def test_many_distinct_questions_and_hard_negatives_share_words():
    rows = datasets.paraphrase_pairs(20000, seed=0)
    assert len({q for r in rows for q in r[:2]}) > 5000

    def close_share(hard):
        negatives = [r for r in datasets.paraphrase_pairs(5000, seed=0, hard_negative_fraction=hard) if r[2] == 0]
        return sum(_jaccard(a, b) >= 0.5 for a, b, _ in negatives) / len(negatives)

    # near misses (at least half the words in common, synonyms and leading words aside) come from the hard ones
    assert close_share(0.0) < 0.02
    assert close_share(1.0) > 0.45
    assert 0.2 < close_share(0.6) < close_share(1.0)


def _jaccard(a, b):
    x, y = set(a.lower().strip("?").split()), set(b.lower().strip("?").split())
    return len(x & y) / len(x | y)


@pytest.mark.parametrize("kw,match", [
    ({"n": 0}, "n must be a positive int"), ({"n": True}, "n must be a positive int"),
    ({"n": 5, "templates": "other"}, "templates must be one of"),
    ({"n": 5, "duplicate_fraction": 1.5}, "duplicate_fraction"),
    ({"n": 5, "hard_negative_fraction": -0.1}, "hard_negative_fraction"),
])
def test_bad_arguments(kw, match):
    n = kw.pop("n")
    with pytest.raises(ValueError, match=match):
        datasets.paraphrase_pairs(n, **kw)


def test_csv_round_trip_and_atomic_write(tmp_path):
    rows = [('Say "hi", please?', "a, b and c", 1), ("x", "y", 0)]
    path = tmp_path / "p.csv"
    datasets.write_pairs_csv(path, rows, columns=("a", "b", "label"))
    with open(path, newline="") as fh:
        back = [(r["a"], r["b"], int(r["label"])) for r in csv.DictReader(fh)]
    assert back == rows
    path.write_text("old")
    with pytest.raises(ValueError, match=r"pairs\[1\]"):
        datasets.write_pairs_csv(path, [("a", "b", 1), ("a", "b", 2)])
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["p.csv"]
