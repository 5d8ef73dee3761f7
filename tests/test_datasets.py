"""Generated paraphrase pairs and their CSV file (fastsim.datasets)."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import math
import os
import pathlib
import re
import stat
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

# The module imports nothing else from fastsim: test this checkout's source
# file (the installed package may hold an older copy, or none).
_SOURCE = pathlib.Path(__file__).resolve().parents[1] / "python" / "fastsim" / "datasets.py"
if _SOURCE.is_file():
    _spec = importlib.util.spec_from_file_location("fastsim_datasets_src", _SOURCE)
    assert _spec is not None and _spec.loader is not None
    datasets = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(datasets)
else:  # pragma: no cover - tests run against an installed package only
    from fastsim import datasets

_WORD_RE = re.compile(r"\w+")
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")  # as the model's vocabulary splits a text
_HARD = ("slot_swap", "twin")


def _words(text):
    return set(_WORD_RE.findall(text.lower()))


def _jaccard(a, b):
    x, y = _words(a), _words(b)
    return len(x & y) / len(x | y)


def _meta_rows(n, **kw):
    return datasets._paraphrase_pairs_with_meta(n, **kw)


@pytest.fixture(scope="module", params=datasets.TEMPLATE_SETS)
def big(request):
    """20000 rows of one template set, with what they mean."""
    return request.param, _meta_rows(20000, seed=0, templates=request.param)


# --------------------------------------------------------------------------- counts, labels, determinism


@given(n=st.integers(1, 300), seed=st.integers(0, 2**63), dup=st.floats(0, 1), hard=st.floats(0, 1),
       templates=st.sampled_from(datasets.TEMPLATE_SETS))
def test_counts_labels_and_determinism(n, seed, dup, hard, templates):
    kw = dict(seed=seed, templates=templates, duplicate_fraction=dup, hard_negative_fraction=hard)
    rows = datasets.paraphrase_pairs(n, **kw)
    assert len(rows) == n
    assert all(isinstance(q1, str) and isinstance(q2, str) and type(y) is int and y in (0, 1) for q1, q2, y in rows)
    n_dup = int(round(n * dup))
    assert sum(y for _, _, y in rows) == n_dup
    assert all(q1 != q2 for q1, q2, y in rows if y == 1)
    assert rows == datasets.paraphrase_pairs(n, **kw)
    kinds = Counter(m.kind for *_, m in _meta_rows(n, **kw))
    assert kinds["duplicate"] == n_dup
    assert kinds["slot_swap"] + kinds["twin"] == int(round((n - n_dup) * hard))
    assert kinds["easy"] == n - n_dup - int(round((n - n_dup) * hard))


def test_seeds_and_sets_give_other_rows_and_numpy_ints_are_accepted():
    a = datasets.paraphrase_pairs(300, seed=1)
    assert a != datasets.paraphrase_pairs(300, seed=2)
    assert a != datasets.paraphrase_pairs(300, seed=1, templates="alt")
    assert a == datasets.paraphrase_pairs(np.int64(300), seed=np.int32(1))
    assert datasets.paraphrase_pairs(1, duplicate_fraction=1.0)[0][2] == 1
    assert datasets.paraphrase_pairs(1, duplicate_fraction=0.0)[0][2] == 0


def test_same_rows_in_every_process():
    """Nothing depends on the process's string hashing (PYTHONHASHSEED)."""
    script = ("import hashlib, importlib.util, sys; "
              "spec = importlib.util.spec_from_file_location('d', sys.argv[1]); "
              "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
              "rows = m.paraphrase_pairs(2000, seed=11, templates=sys.argv[2]); "
              "print(hashlib.sha256(repr(rows).encode()).hexdigest())")
    for name in datasets.TEMPLATE_SETS:
        digests = {subprocess.run([sys.executable, "-c", script, datasets.__file__, name], check=True, text=True,
                                  capture_output=True, env={**os.environ, "PYTHONHASHSEED": h}).stdout
                   for h in ("1", "2")}
        assert len(digests) == 1
        assert digests.pop().strip() == _sha(repr(datasets.paraphrase_pairs(2000, seed=11, templates=name)))


def _sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def test_rows_are_shuffled_and_meta_matches_rows():
    rows = datasets.paraphrase_pairs(400, seed=3)
    meta = _meta_rows(400, seed=3)
    assert rows == [r[:3] for r in meta]
    labels = [y for *_, y in rows]
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)
    assert all(y == (m.kind == "duplicate") for *_, y, m in meta)


# --------------------------------------------------------------------------- what the pairs mean


def test_duplicates_share_intent_and_slot_with_other_templates(big):
    _, rows = big
    dups = [r for r in rows if r[3].kind == "duplicate"]
    assert dups
    for q1, q2, _, m in dups:
        assert q1 != q2
        assert m.intent1 == m.intent2 and m.slot1 == m.slot2 and m.template1 != m.template2
        if m.slot1 is not None:
            assert m.slot1.lower() in q1.lower() and m.slot1.lower() in q2.lower()


def test_hard_negatives_share_most_words_but_not_the_meaning(big):
    name, rows = big
    tset = datasets._SETS[name]
    hard = [r for r in rows if r[3].kind in _HARD]
    easy = [r for r in rows if r[3].kind == "easy"]
    assert {r[3].kind for r in hard} == set(_HARD)
    for q1, q2, _, m in hard:
        assert _jaccard(q1, q2) >= 0.5, (q1, q2)
        assert _TOKEN_RE.findall(q1.lower()) != _TOKEN_RE.findall(q2.lower())
        assert m.template1 == m.template2
        if m.kind == "slot_swap":
            assert m.intent1 == m.intent2 and m.slot1 != m.slot2
            assert tset.intents[m.intent1].kind is not None
        else:
            assert tset.intents[m.intent1].twin == m.intent2 and m.slot1 == m.slot2
    for *_, m in easy:
        assert m.intent1 != m.intent2 and tset.intents[m.intent1].twin != m.intent2
        assert m.slot1 != m.slot2 or m.slot1 is None
    assert np.mean([_jaccard(q1, q2) for q1, q2, *_ in easy]) < 0.25
    assert np.mean([_jaccard(q1, q2) >= 0.5 for q1, q2, *_ in easy]) < 0.05


def test_every_question_has_one_meaning(big):
    """No string is written for two (intent, slot) meanings, so the labels never contradict each other."""
    _, rows = big
    meanings = defaultdict(set)
    for q1, q2, _, m in rows:
        meanings[_norm(q1)].add((m.intent1, m.slot1))
        meanings[_norm(q2)].add((m.intent2, m.slot2))
    assert {q: s for q, s in meanings.items() if len(s) > 1} == {}


def _norm(q):
    return " ".join(_TOKEN_RE.findall(q.lower()))


def test_hard_negative_fraction_zero_and_one():
    assert {m.kind for *_, m in _meta_rows(500, hard_negative_fraction=0.0)} == {"duplicate", "easy"}
    assert {m.kind for *_, m in _meta_rows(500, hard_negative_fraction=1.0)} == {"duplicate", *_HARD}
    assert {m.kind for *_, m in _meta_rows(500, duplicate_fraction=0.0, hard_negative_fraction=1.0)} == set(_HARD)


# --------------------------------------------------------------------------- variety and surface


def test_many_distinct_questions_of_moderate_length(big):
    _, rows = big
    questions = [q for r in rows for q in r[:2]]
    assert len(set(questions)) > 5000
    lengths = [len(_TOKEN_RE.findall(q.lower())) for q in questions]
    assert 3 <= min(lengths) and max(lengths) <= 15


def test_surface_varies(big):
    _, rows = big
    questions = [q for r in rows for q in r[:2]]
    assert 0.6 < np.mean([q.endswith("?") for q in questions]) < 0.95
    assert 0.6 < np.mean([q[0].isupper() for q in questions]) < 0.95
    assert any(", " in q and not q.lower().startswith(("honestly", "please", "i wonder", "so,")) for q in questions)
    # one meaning in one template gives several strings
    forms = defaultdict(set)
    for q1, _, _, m in rows:
        forms[(m.intent1, m.slot1, m.template1)].add(q1)
    assert max(len(v) for v in forms.values()) >= 6
    assert np.mean([len(v) for v in forms.values()]) > 1.5


def test_synonyms_replace_template_words():
    questions = [q.lower() for r in datasets.paraphrase_pairs(3000, seed=4) for q in r[:2]]
    assert any("how do i learn" in q and q.endswith(("quickly?", "quickly")) for q in questions)
    assert any("how do i learn" in q and q.endswith(("rapidly?", "rapidly")) for q in questions)
    assert any("how do i study" in q for q in questions)


def test_casual_questions_are_lower_case_careful_ones_capitalised():
    questions = [q for r in datasets.paraphrase_pairs(2000, seed=6, templates="alt") for q in r[:2]]
    cities = datasets._SETS["alt"].slots["city"]
    for q in questions:
        if q[0].isupper():
            assert " i " not in f" {q} "
        else:
            assert q == q.lower()
    assert any(c in q for q in questions for c in cities)


# --------------------------------------------------------------------------- the template sets


def _plain_templates(name):
    return {datasets._plain(t) for i in datasets._SETS[name].intents.values() for t in i.templates}


def test_template_sets_are_disjoint():
    assert datasets.TEMPLATE_SETS[:2] == ("default", "alt")
    default, alt = datasets._SETS["default"], datasets._SETS["alt"]
    assert not set(default.intents) & set(alt.intents)
    assert not _plain_templates("default") & _plain_templates("alt")
    slots = [{s.lower() for v in t.slots.values() for s in v} for t in (default, alt)]
    assert not slots[0] & slots[1]
    q_default = {_norm(q) for r in datasets.paraphrase_pairs(3000, seed=1) for q in r[:2]}
    q_alt = {_norm(q) for r in datasets.paraphrase_pairs(3000, seed=1, templates="alt") for q in r[:2]}
    assert not q_default & q_alt


@pytest.mark.parametrize("name", datasets.TEMPLATE_SETS)
def test_template_tables_are_well_formed(name):
    tset = datasets._SETS[name]
    assert len(tset.intents) >= 20
    assert len({s for v in tset.slots.values() for s in v}) >= 30
    assert all(len(v) >= 10 and len(set(v)) == len(v) for v in tset.slots.values())
    for intent in tset.intents.values():
        plain = [datasets._plain(t) for t in intent.templates]
        assert len(plain) >= 4 and len(set(plain)) == len(plain), intent.name
        assert all(("{x}" in t) == (intent.kind is not None) for t in plain), intent.name
        assert all("[" not in t and "|" not in t and t == t.lower() for t in plain), intent.name
        assert intent.kind is None or intent.kind in tset.slots
        if intent.kind is None:
            assert intent.twin is not None, f"{intent.name} has no slot, so its hard negatives need a twin"
        if intent.twin is not None:
            twin = tset.intents[intent.twin]
            assert twin.twin == intent.name and twin.kind == intent.kind
            assert len(twin.templates) == len(intent.templates)
            for a, b in zip(plain, (datasets._plain(t) for t in twin.templates)):
                assert a != b and _jaccard(a, b) >= 0.5, (a, b)
    twins = sum(i.twin is not None for i in tset.intents.values())
    assert twins >= 10
    # templates of one set are not shared between its intents either
    every = [datasets._plain(t) for i in tset.intents.values() for t in i.templates]
    assert len(every) == len(set(every))


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("kw,exc,match", [
    ({"n": 0}, ValueError, "n must be at least 1"),
    ({"n": -3}, ValueError, "n must be at least 1"),
    ({"n": True}, TypeError, "n must be an int"),
    ({"n": 2.0}, TypeError, "n must be an int; got float"),
    ({"n": "10"}, TypeError, "n must be an int; got str"),
    ({"seed": -1}, ValueError, "seed must be at least 0"),
    ({"seed": 1.5}, TypeError, "seed must be an int"),
    ({"seed": False}, TypeError, "seed must be an int"),
    ({"templates": "other"}, ValueError, "templates must be one of default, alt.*'other'"),
    ({"templates": None}, TypeError, "templates must be a str"),
    ({"duplicate_fraction": 1.5}, ValueError, r"duplicate_fraction must be within \[0, 1\]"),
    ({"duplicate_fraction": -0.01}, ValueError, "duplicate_fraction"),
    ({"duplicate_fraction": math.nan}, ValueError, "duplicate_fraction"),
    ({"duplicate_fraction": "0.5"}, TypeError, "duplicate_fraction must be a number"),
    ({"duplicate_fraction": True}, TypeError, "duplicate_fraction must be a number"),
    ({"hard_negative_fraction": -0.1}, ValueError, "hard_negative_fraction"),
    ({"hard_negative_fraction": math.inf}, ValueError, "hard_negative_fraction"),
    ({"hard_negative_fraction": None}, TypeError, "hard_negative_fraction"),
])
def test_bad_arguments(kw, exc, match):
    kw = {"n": 5, **kw}
    n = kw.pop("n")
    with pytest.raises(exc, match=match):
        datasets.paraphrase_pairs(n, **kw)


# --------------------------------------------------------------------------- the CSV file


def _read(path, columns=("question1", "question2", "is_duplicate")):
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == tuple(columns)
        return [(r[columns[0]], r[columns[1]], int(r[columns[2]])) for r in reader]


def test_csv_round_trip_with_awkward_questions(tmp_path):
    rows = [('Say "hi", please?', "a, b and c", 1), ("line\nbreak", 'only "quotes"', 0),
            ("  spaced  ", "naïve café, ¿qué?", np.int64(1)), ("x", "y", 0)]
    path = tmp_path / "p.csv"
    datasets.write_pairs_csv(path, rows)
    assert _read(path) == [(a, b, int(y)) for a, b, y in rows]
    datasets.write_pairs_csv(str(path), iter(rows[:1]))  # a str path, a generator; replaces the file
    assert _read(path) == rows[:1]
    assert os.listdir(tmp_path) == ["p.csv"]


def test_csv_of_generated_pairs_and_custom_columns(tmp_path):
    rows = datasets.paraphrase_pairs(300, seed=5, templates="alt")
    datasets.write_pairs_csv(tmp_path / "a.csv", rows, columns=("q_a", "q_b", "dup"))
    assert _read(tmp_path / "a.csv", ("q_a", "q_b", "dup")) == rows
    assert (tmp_path / "a.csv").read_text(encoding="utf-8").splitlines()[0] == "q_a,q_b,dup"
    datasets.write_pairs_csv(tmp_path / "b.csv", [])
    assert _read(tmp_path / "b.csv") == []


def test_csv_file_gets_the_umask_permissions(tmp_path):
    mask = os.umask(0o027)
    try:
        datasets.write_pairs_csv(tmp_path / "p.csv", [("a", "b", 1)])
    finally:
        os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "p.csv").st_mode) == 0o640


@pytest.mark.parametrize("existing", [True, False])
def test_failed_write_leaves_the_target_alone_and_no_temporary(tmp_path, existing):
    path = tmp_path / "p.csv"
    if existing:
        path.write_text("old content")
    good = [(f"question {i}, with a comma", f"other {i}", i % 2) for i in range(2000)]  # more than one buffer
    with pytest.raises(ValueError, match=r"pairs\[2000\]: is_duplicate must be 0 or 1; got 2"):
        datasets.write_pairs_csv(path, [*good, ("a", "b", 2)])
    assert (path.read_text() == "old content") if existing else not path.exists()
    assert os.listdir(tmp_path) == (["p.csv"] if existing else [])

    def interrupted():
        yield from good
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        datasets.write_pairs_csv(path, interrupted())
    assert (path.read_text() == "old content") if existing else not path.exists()
    assert os.listdir(tmp_path) == (["p.csv"] if existing else [])


def test_write_over_a_directory_fails_cleanly(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError):
        datasets.write_pairs_csv(tmp_path / "d", [("a", "b", 1)])
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == []
    with pytest.raises(FileNotFoundError):
        datasets.write_pairs_csv(tmp_path / "missing" / "p.csv", [("a", "b", 1)])


@pytest.mark.parametrize("row,exc,match", [
    (("a", "b"), ValueError, r"pairs\[1\] must have 3 items"),
    (("a", "b", 1, "extra"), ValueError, r"pairs\[1\] must have 3 items"),
    ("abc", TypeError, r"pairs\[1\] must be a \(question1, question2, is_duplicate\) sequence; got str"),
    (None, TypeError, r"pairs\[1\] must be a"),
    ((1, "b", 0), TypeError, r"pairs\[1\]: question1 must be a str; got int"),
    (("a", b"b", 0), TypeError, r"pairs\[1\]: question2 must be a str; got bytes"),
    (("a", "   ", 0), ValueError, r"pairs\[1\]: question2 is empty"),
    (("a", "b", True), TypeError, r"pairs\[1\]: is_duplicate must be the int 0 or 1; got bool"),
    (("a", "b", "1"), TypeError, r"pairs\[1\]: is_duplicate must be the int 0 or 1; got str"),
    (("a", "b", 1.0), TypeError, r"pairs\[1\]: is_duplicate must be the int 0 or 1; got float"),
    (("a", "b", -1), ValueError, r"pairs\[1\]: is_duplicate must be 0 or 1; got -1"),
])
def test_bad_rows_name_the_row(tmp_path, row, exc, match):
    with pytest.raises(exc, match=match):
        datasets.write_pairs_csv(tmp_path / "p.csv", [("ok", "fine", 1), row])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("columns,exc,match", [
    (("a", "b"), TypeError, "three column names"),
    ("abc", TypeError, "three column names"),
    (("a", "", "c"), ValueError, "non-empty"),
    (("a", 2, "c"), ValueError, "non-empty"),
    (("a", "a", "c"), ValueError, "different"),
])
def test_bad_columns(tmp_path, columns, exc, match):
    with pytest.raises(exc, match=match):
        datasets.write_pairs_csv(tmp_path / "p.csv", [("a", "b", 1)], columns=columns)
    assert os.listdir(tmp_path) == []
