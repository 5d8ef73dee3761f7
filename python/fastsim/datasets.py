"""Generated question pairs to train the duplicate-question model offline, and their CSV file.

This room owns :func:`paraphrase_pairs` (duplicates, hard negatives, easy
negatives from templates) and :func:`write_pairs_csv`.  It may call the
standard library and NumPy only.

A pair is built from *intents* (a meaning, written by several templates with
other words and word order) and *slots* (the topic a template is about):

* a duplicate is two different templates of one intent with one slot
  ("How do I learn python quickly?" / "What is the fastest way to learn python?");
* a hard negative shares most words but not the meaning: one template with
  another slot, or the twin intent that differs in a word or two ("Where are
  you from?" / "Where are you going?");
* an easy negative is another intent with another slot.

Synonyms, an optional leading word and the question mark vary the surface.
Two disjoint template sets (``"default"``, ``"alt"``) share no template and
no slot, so a model tuned on one can be checked on the other.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["TEMPLATE_SETS", "paraphrase_pairs", "write_pairs_csv"]

# intent name -> templates; "{x}" is the slot.  Intents listed in _TWINS differ
# from their twin by a word or two.
_DEFAULT = {
    "learn_fast": ["how do i learn {x} quickly", "what is the fastest way to learn {x}",
                   "how can i pick up {x} fast", "quickest way to get good at {x}"],
    "learn_slow": ["why do i learn {x} slowly", "what makes learning {x} so slow",
                   "why is {x} taking me so long to learn", "why am i slow at picking up {x}"],
    "best_book": ["what is the best book about {x}", "which book on {x} should i read",
                  "recommend a good book on {x}", "what book teaches {x} well"],
    "worst_book": ["what is the worst book about {x}", "which book on {x} should i avoid",
                   "what is a bad book on {x}", "which {x} book is the least useful"],
    "cost": ["how much does {x} cost", "what is the price of {x}", "how expensive is {x}",
             "what would i pay for {x}"],
    "worth": ["is {x} worth the money", "is paying for {x} worth it", "should i spend money on {x}",
              "is {x} good value"],
    "start": ["how do i get started with {x}", "where should a beginner start with {x}",
              "what is the first step to learn {x}", "how to begin with {x}"],
    "history": ["what is the history of {x}", "where does {x} come from", "how did {x} begin",
                "what are the origins of {x}"],
    "future": ["what is the future of {x}", "where is {x} going", "how will {x} change",
               "what will {x} look like in ten years"],
    "kids": ["is {x} good for kids", "should children learn {x}", "can kids take up {x}",
             "is {x} suitable for a child"],
    "adults": ["is {x} good for adults", "should grown ups learn {x}", "can adults take up {x}",
               "is {x} suitable for an adult"],
    "job": ["can i get a job with {x}", "are there jobs in {x}", "does {x} lead to a career",
            "what jobs need {x}"],
    "hard": ["why is {x} so hard", "what makes {x} difficult", "is {x} hard to master",
             "why do people struggle with {x}"],
    "easy": ["why is {x} so easy", "what makes {x} simple", "is {x} easy to master",
             "why do people find {x} effortless"],
    "online": ["where can i learn {x} online", "what is a good website for {x}",
               "which online course teaches {x}", "best place on the internet to study {x}"],
    "tips": ["what are some tips for {x}", "give me advice on {x}", "how can i get better at {x}",
             "what helps to improve at {x}"],
}
_DEFAULT_TWINS = [("learn_fast", "learn_slow"), ("best_book", "worst_book"), ("cost", "worth"),
                  ("history", "future"), ("kids", "adults"), ("hard", "easy")]
_DEFAULT_SLOTS = ["python", "guitar", "french", "chess", "cooking", "piano", "swimming", "drawing", "java",
                  "spanish", "yoga", "photography", "calculus", "painting", "tennis", "german", "knitting",
                  "golf", "physics", "singing", "boxing", "surfing", "baking", "chemistry", "poker", "dancing",
                  "rust", "latin", "skiing", "gardening", "economics", "violin"]

_ALT = {
    "visit_best": ["when is the best time to visit {x}", "what month should i go to {x}",
                   "which season is ideal for a trip to {x}", "best time of year to travel to {x}"],
    "visit_worst": ["when is the worst time to visit {x}", "what month should i avoid {x}",
                    "which season is bad for a trip to {x}", "worst time of year to travel to {x}"],
    "live": ["is {x} a good place to live", "would you recommend living in {x}", "how is life in {x}",
             "should i move to {x}"],
    "work": ["is {x} a good place to work", "would you recommend working in {x}", "how are jobs in {x}",
             "should i look for work in {x}"],
    "food": ["what food is {x} known for", "what should i eat in {x}", "which dishes come from {x}",
             "what is the famous food of {x}"],
    "safe": ["is {x} safe for tourists", "how safe is {x}", "is it dangerous to travel to {x}",
             "should tourists worry about safety in {x}"],
    "cheap": ["is {x} cheap to visit", "how affordable is a trip to {x}", "can i travel to {x} on a budget",
              "is {x} inexpensive for travellers"],
    "pricey": ["is {x} expensive to visit", "how costly is a trip to {x}", "does travel to {x} cost a lot",
               "is {x} pricey for travellers"],
    "language": ["what language do people speak in {x}", "which language is spoken in {x}",
                 "what do they speak in {x}", "do i need to know a language for {x}"],
    "weather": ["what is the weather like in {x}", "how hot does {x} get", "what is the climate of {x}",
                "does it rain a lot in {x}"],
    "see": ["what should i see in {x}", "what are the sights of {x}", "which places in {x} are a must",
            "top attractions to visit in {x}"],
    "fly": ["how long is the flight to {x}", "how many hours to fly to {x}", "what is the flight time to {x}",
            "how far by plane is {x}"],
    "arrive": ["how do i get to {x} from the airport", "what is the way from the airport to {x}",
               "airport transfer options for {x}", "how to reach {x} after landing"],
    "leave": ["how do i get to the airport from {x}", "what is the way from {x} to the airport",
              "how to reach the airport when leaving {x}", "transport from {x} to the airport"],
}
_ALT_TWINS = [("visit_best", "visit_worst"), ("live", "work"), ("cheap", "pricey"), ("arrive", "leave")]
_ALT_SLOTS = ["paris", "tokyo", "berlin", "lisbon", "cairo", "lima", "oslo", "rome", "seoul", "dublin",
              "vienna", "madrid", "sydney", "toronto", "mumbai", "nairobi", "prague", "athens", "hanoi",
              "bogota", "havana", "zurich", "warsaw", "istanbul", "bangkok", "santiago", "helsinki", "quebec",
              "marrakesh", "reykjavik", "budapest", "kyoto"]

_SETS = {"default": (_DEFAULT, _DEFAULT_TWINS, _DEFAULT_SLOTS), "alt": (_ALT, _ALT_TWINS, _ALT_SLOTS)}
TEMPLATE_SETS = tuple(_SETS)

_SYNONYMS = {"quickly": ["fast", "rapidly"], "good": ["decent", "nice"], "best": ["ideal", "top"],
             "learn": ["study"], "book": ["textbook"], "hard": ["tough"], "kids": ["children"],
             "should": ["ought to"], "tips": ["hints"], "cheap": ["affordable"], "famous": ["well known"],
             "safe": ["secure"], "expensive": ["costly"]}
_LEADS = ["", "", "", "honestly, ", "quick question: ", "please tell me, "]


def _surface(text: str, rng: np.random.Generator) -> str:
    words = []
    for w in text.split():
        alts = _SYNONYMS.get(w)
        words.append(alts[int(rng.integers(len(alts)))] if alts and rng.random() < 0.3 else w)
    s = _LEADS[int(rng.integers(len(_LEADS)))] + " ".join(words)
    s = s[0].upper() + s[1:] if rng.random() < 0.8 else s
    return s + "?" if rng.random() < 0.85 else s


def _check_fraction(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        msg = f"{name} must be a number within [0, 1]; got {value!r}"
        raise ValueError(msg)
    return float(value)


def paraphrase_pairs(n: int, *, seed: int = 0, templates: str = "default", duplicate_fraction: float = 0.5,
                     hard_negative_fraction: float = 0.6) -> list[tuple[str, str, int]]:
    """``n`` generated rows ``(question1, question2, is_duplicate)``, deterministic for (n, seed, templates).

    Parameters
    ----------
    n : int
        Rows, at least 1.
    seed : int
    templates : {"default", "alt"}
        Disjoint template sets (see the module's notes).
    duplicate_fraction : float
        Share of rows with label 1 (rounded).
    hard_negative_fraction : float
        Share of the non-duplicates that are hard negatives.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        msg = f"n must be a positive int; got {n!r}"
        raise ValueError(msg)
    if templates not in _SETS:
        msg = f"templates must be one of {TEMPLATE_SETS}; got {templates!r}"
        raise ValueError(msg)
    dup_frac = _check_fraction(duplicate_fraction, "duplicate_fraction")
    hard_frac = _check_fraction(hard_negative_fraction, "hard_negative_fraction")
    intents, twins, slots = _SETS[templates]
    names = list(intents)
    twin_of = {a: b for a, b in twins} | {b: a for a, b in twins}
    rng = np.random.default_rng([int(seed), 7])
    n_dup = int(round(n * dup_frac))
    n_hard = int(round((n - n_dup) * hard_frac))
    rows: list[tuple[str, str, int]] = []

    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    for k in range(n):
        intent, slot = pick(names), pick(slots)
        forms = intents[intent]
        if k < n_dup:
            i, j = rng.choice(len(forms), 2, replace=False)
            a, b = forms[i].format(x=slot), forms[j].format(x=slot)
            label = 1
        elif k < n_dup + n_hard:
            if intent in twin_of and rng.random() < 0.5:
                i = int(rng.integers(len(forms)))
                a, b = forms[i].format(x=slot), intents[twin_of[intent]][i].format(x=slot)
            else:
                other = pick([s for s in slots if s != slot])
                i = int(rng.integers(len(forms)))
                a, b = forms[i].format(x=slot), forms[i].format(x=other)
            label = 0
        else:
            other_intent = pick([m for m in names if m != intent and m != twin_of.get(intent)])
            other = pick([s for s in slots if s != slot])
            a, b = pick(forms).format(x=slot), pick(intents[other_intent]).format(x=other)
            label = 0
        qa, qb = _surface(a, rng), _surface(b, rng)
        while label == 1 and qa == qb:
            qb = _surface(b, rng)
        rows.append((qa, qb, label) if rng.random() < 0.5 else (qb, qa, label))
    order = rng.permutation(n)
    return [rows[i] for i in order]


def write_pairs_csv(path: str | os.PathLike[str], pairs: Iterable[Sequence], *,
                    columns: tuple[str, str, str] = ("question1", "question2", "is_duplicate")) -> None:
    """Write ``pairs`` as a CSV with the header ``columns``; under a temporary name, renamed when complete."""
    if len(columns) != 3 or not all(isinstance(c, str) and c for c in columns):
        msg = f"columns must be three non-empty names; got {columns!r}"
        raise ValueError(msg)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for i, row in enumerate(pairs):
                if len(row) != 3 or not isinstance(row[0], str) or not isinstance(row[1], str) or \
                        isinstance(row[2], bool) or row[2] not in (0, 1):
                    msg = f"pairs[{i}] must be (str, str, 0 or 1); got {tuple(row)!r}"
                    raise ValueError(msg)
                writer.writerow([row[0], row[1], int(row[2])])
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
