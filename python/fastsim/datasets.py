"""Offline training data for the duplicate-question model: generated paraphrase pairs and their CSV file.

This module owns :func:`paraphrase_pairs` (rows ``(question1, question2,
is_duplicate)`` generated from templates), the template sets it draws from
(:data:`TEMPLATE_SETS`) and :func:`write_pairs_csv`, which writes such rows
atomically in the Quora Question Pairs layout that
:func:`fastsim.trainer.read_pairs` reads.  It may call the standard library
and NumPy only; it imports nothing else from fastsim, so it can be used and
tested on its own.

A question is built from an *intent* (a meaning, written by several
templates with other words and word order) and, for most intents, a *slot*
(the topic the template is about, drawn from a list of its kind: a skill, a
dish, a city, ...).  The meaning is carried by the words alone (intent words
and slot words), so a small embedding -> LSTM -> mean-pooling -> cosine model
trained on the duplicates can learn it:

* a duplicate (label 1) is two different templates of one intent with one
  slot ("How do I learn python quickly?" / "What is the fastest way to learn
  python?"); the two strings always differ;
* a hard negative (label 0) shares most words but not the meaning: either
  the same template with another slot of the same kind ("How do I learn
  python quickly?" / "How do I learn guitar quickly?"), or the same template
  of the *twin* intent, which differs from it in a word or two ("How old are
  you?" / "How tall are you?", "When is the best time to visit Oslo?" / "When
  is the worst time to visit Oslo?"); twins are written together, so each
  template of one has its minimal-pair counterpart in the other;
* an easy negative (label 0) is another intent (not the twin) with another
  slot.

The surface varies independently of the meaning: synonyms for some words
(quickly/fast/rapidly, best/ideal/top, ...), a fronted phrase ("In Rome, what
should I eat?"), an optional leading phrase, the case of the first letter and
the question mark.  The two sides of a hard negative share one surface
style, so only the words that carry the meaning tell them apart.

The two template sets, ``"default"`` (skills, dishes, things to buy, the
listener) and ``"alt"`` (cities, pets, careers, the listener), share no
intent, no template and no slot, so a model tuned on one can be checked on
the other.
"""

from __future__ import annotations

import contextlib
import csv
import math
import numbers
import os
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Optional, TypeVar

import numpy as np

__all__ = ["TEMPLATE_SETS", "paraphrase_pairs", "write_pairs_csv"]

_T = TypeVar("_T")

# --------------------------------------------------------------------------- the template sets
#
# A family is (names, slot kind, templates).  "{x}" is the slot (a kind of
# None: the intent has no slot).  A family named "a/b" is a pair of twin
# intents: each of its templates holds one "[left|right]" contrast, the left
# words for intent a and the right ones for intent b.  " ^ " marks where a
# template may be split to front its tail ("what should i eat ^ in {x}" ->
# "in {x}, what should i eat").  Templates are lower case, without the
# question mark; the surface step adds the variation.

_Family = tuple[str, Optional[str], tuple[str, ...]]

_DEFAULT_FAMILIES: tuple[_Family, ...] = (
    # skills
    ("learn_quickly/teach_quickly", "skill", (
        "how do i [learn|teach] {x} quickly",
        "what is the fastest way to [learn|teach] {x}",
        "how can i [learn|teach] {x} fast",
        "quickest way to [learn|teach] {x}",
        "how to [master|teach] {x} in a short time",
    )),
    ("for_kids/for_adults", "skill", (
        "is {x} good ^ for [kids|adults]",
        "should [children|adults] learn {x}",
        "can [kids|grown ups] take up {x}",
        "is {x} suitable for [children|adults]",
        "is {x} a good hobby ^ for [kids|adults]",
    )),
    ("hard_skill/easy_skill", "skill", (
        "why is {x} so [hard|easy]",
        "what makes {x} so [difficult|simple]",
        "is {x} [hard|easy] to master",
        "why do people find {x} [difficult|easy]",
        "how [hard|easy] is it to learn {x}",
    )),
    ("best_book/worst_book", "skill", (
        "what is the [best|worst] book about {x}",
        "which book on {x} should i [read|avoid]",
        "what is a [good|bad] book on {x}",
        "which {x} book is the [most|least] useful",
        "name the [best|worst] {x} book",
    )),
    ("career_in", "skill", (
        "can i get a job ^ with {x}",
        "are there jobs that need {x}",
        "does {x} lead to a good career",
        "what careers use {x}",
        "is {x} useful for finding work",
    )),
    ("learn_online", "skill", (
        "where can i learn {x} online",
        "what is a good website for learning {x}",
        "which online course teaches {x}",
        "best place on the internet to study {x}",
    )),
    # dishes
    ("cook_well", "dish", (
        "what is the best way to cook {x}",
        "how should i cook {x}",
        "how do i prepare {x} well",
        "what is a good recipe for {x}",
        "how to cook {x} properly",
    )),
    ("healthy/unhealthy", "dish", (
        "is {x} [healthy|unhealthy]",
        "is eating {x} [good|bad] for you",
        "is {x} [good|bad] ^ for my health",
        "does {x} [help|harm] the body",
        "are there [benefits|risks] to eating {x}",
    )),
    ("freeze/reheat", "dish", (
        "can i [freeze|reheat] {x}",
        "is it safe to [freeze|reheat] {x}",
        "how do i [freeze|reheat] {x} properly",
        "what happens if i [freeze|reheat] {x}",
    )),
    ("vegan/vegetarian", "dish", (
        "is {x} [vegan|vegetarian]",
        "can [vegans|vegetarians] eat {x}",
        "is {x} suitable for [vegans|vegetarians]",
        "does {x} fit a [vegan|vegetarian] diet",
    )),
    ("serve_with", "dish", (
        "what goes well with {x}",
        "what should i serve with {x}",
        "which side dish goes with {x}",
        "what pairs nicely with {x}",
    )),
    ("breakfast/dinner", "dish", (
        "is {x} good ^ for [breakfast|dinner]",
        "can i eat {x} for [breakfast|dinner]",
        "is {x} a good [breakfast|dinner]",
        "should i have {x} for [breakfast|dinner]",
    )),
    # things to buy
    ("price", "item", (
        "how much does a {x} cost",
        "what is the price of a {x}",
        "how expensive is a {x}",
        "what would i pay for a {x}",
        "what does a {x} cost these days",
    )),
    ("buy/sell", "item", (
        "where can i [buy|sell] a {x}",
        "what is the best place to [buy|sell] a {x}",
        "which website is good for [buying|selling] a {x}",
        "how do i [buy|sell] a {x} ^ online",
    )),
    ("fix/clean", "item", (
        "how do i [fix|clean] a {x}",
        "what is the best way to [repair|clean] a {x}",
        "how can i [fix|clean] my {x} ^ at home",
        "tips for [repairing|cleaning] a {x}",
    )),
    ("worth_it", "item", (
        "is a {x} worth the money",
        "is buying a {x} worth it",
        "should i spend money on a {x}",
        "is a {x} good value",
    )),
    ("new/used", "item", (
        "should i buy a [new|used] {x}",
        "is buying a [new|used] {x} a good idea",
        "is it smart to get a [new|used] {x}",
        "would you get a [new|used] {x}",
    )),
    # the listener
    ("age/height", None, (
        "how [old|tall] are you",
        "what is your [age|height]",
        "may i ask your [age|height]",
        "tell me your [age|height]",
        "what [age|height] are you",
    )),
    ("where_from/where_going", None, (
        "where are you [from|going]",
        "which country are you [from|going to]",
        "where is your [home|destination]",
        "tell me where you are [from|going]",
    )),
    ("job/hobby", None, (
        "what do you do for [a living|fun]",
        "what is your [job|hobby]",
        "tell me about your [job|hobbies]",
        "may i ask about your [job|hobby]",
    )),
)

_DEFAULT_SLOTS: dict[str, tuple[str, ...]] = {
    "skill": ("Python", "guitar", "French", "chess", "piano", "swimming", "drawing", "Spanish", "yoga",
              "photography", "calculus", "tennis", "knitting", "physics", "singing", "boxing", "Japanese"),
    "dish": ("pasta", "rice", "salmon", "steak", "tofu", "risotto", "curry", "soup", "porridge", "bread",
             "quinoa", "hummus", "broccoli"),
    # "guitar" and "piano" are also things to buy
    "item": ("car", "laptop", "bike", "phone", "tent", "camera", "sofa", "watch", "printer", "drone", "tablet",
             "fridge", "kettle", "mattress", "guitar", "piano"),
}

_ALT_FAMILIES: tuple[_Family, ...] = (
    # cities
    ("best_season/worst_season", "city", (
        "when is the [best|worst] time to visit {x}",
        "what is the [best|worst] month to go to {x}",
        "which season is [ideal|terrible] for a trip to {x}",
        "[best|worst] time of year to travel to {x}",
    )),
    ("live_in/work_in", "city", (
        "is {x} a good place to [live|work]",
        "would you recommend [living|working] in {x}",
        "what is it like to [live|work] ^ in {x}",
        "how is [life|work] ^ in {x}",
    )),
    ("local_food", "city", (
        "what food is {x} known for",
        "what should i eat ^ in {x}",
        "which dishes come from {x}",
        "what is the famous food of {x}",
        "what local food should i try ^ in {x}",
    )),
    ("safety", "city", (
        "is {x} safe for tourists",
        "how safe is {x} for visitors",
        "is it dangerous to travel to {x}",
        "should tourists worry about safety ^ in {x}",
    )),
    ("cheap_trip/pricey_trip", "city", (
        "is {x} [cheap|expensive] to visit",
        "how [affordable|costly] is a trip to {x}",
        "is {x} [cheap|pricey] for travellers",
        "is a holiday in {x} [cheap|expensive]",
    )),
    ("language", "city", (
        "what language do people speak ^ in {x}",
        "which language is spoken ^ in {x}",
        "what do they speak ^ in {x}",
        "what is the main language of {x}",
    )),
    ("summer/winter", "city", (
        "what is the weather like in {x} in [summer|winter]",
        "how [hot|cold] does {x} get",
        "what is {x} like in [summer|winter]",
        "what should i pack for {x} ^ in [summer|winter]",
    )),
    ("sights", "city", (
        "what should i see ^ in {x}",
        "what are the sights of {x}",
        "which places in {x} are a must",
        "top attractions to visit ^ in {x}",
        "what is worth seeing ^ in {x}",
    )),
    ("by_train/by_bus", "city", (
        "how do i get to {x} by [train|bus]",
        "what is the best [train|bus] route to {x}",
        "can i reach {x} by [train|bus]",
        "how long is the [train|bus] ride to {x}",
    )),
    ("visa", "city", (
        "do i need a visa for {x}",
        "is a visa required to enter {x}",
        "can i visit {x} without a visa",
        "what are the visa rules for {x}",
    )),
    # pets
    ("pet_food", "pet", (
        "what should i feed my {x}",
        "what food is best for a {x}",
        "what does a {x} like to eat",
        "which diet suits a {x}",
        "what is the right food for a {x}",
    )),
    ("bathe/brush", "pet", (
        "how often should i [bathe|brush] my {x}",
        "how many times a month do i [bathe|brush] a {x}",
        "what is the right [bathing|brushing] routine for a {x}",
        "is it bad to [bathe|brush] my {x} ^ every day",
    )),
    ("sick/happy", "pet", (
        "how do i know if my {x} is [sick|happy]",
        "what are the signs of a [sick|happy] {x}",
        "how can i tell my {x} is [ill|content]",
        "what does a [sick|happy] {x} look like",
    )),
    ("train_pet", "pet", (
        "how do i train my {x}",
        "what is the best way to train a {x}",
        "tips for training a {x}",
        "how can i teach my {x} to obey",
    )),
    ("lifespan", "pet", (
        "how long does a {x} live",
        "what is the lifespan of a {x}",
        "how many years can a {x} live",
        "what is the life expectancy of a {x}",
    )),
    ("indoors/outdoors", "pet", (
        "should my {x} live [indoors|outdoors]",
        "is it better to keep a {x} [inside|outside]",
        "can a {x} be kept [indoors|outdoors]",
        "does a {x} need to live [inside|outside]",
    )),
    # careers
    ("become", "career", (
        "how do i become a {x}",
        "what does it take to become a {x}",
        "what training do i need to be a {x}",
        "steps to becoming a {x}",
        "what qualifications does a {x} need",
    )),
    ("salary", "career", (
        "how much does a {x} earn",
        "what is the salary of a {x}",
        "what is the average pay for a {x}",
        "how well paid is a {x}",
    )),
    ("workday", "career", (
        "what does a {x} do all day",
        "what is a typical day for a {x}",
        "what are the daily tasks of a {x}",
        "what does a {x} do ^ at work",
    )),
    ("stressful/boring", "career", (
        "is being a {x} [stressful|boring]",
        "is the life of a {x} [stressful|boring]",
        "how [stressful|boring] is the job of a {x}",
        "is working as a {x} [stressful|boring]",
    )),
    ("start_career/quit_career", "career", (
        "how do i [start|stop] working as a {x}",
        "what is the best way to [begin|quit] a career as a {x}",
        "when should i [start|stop] being a {x}",
        "how to [begin|end] a career as a {x}",
    )),
    # the listener
    ("brothers/sisters", None, (
        "how many [brothers|sisters] do you have",
        "what is the number of [brothers|sisters] you have",
        "how many [brothers|sisters] have you got",
        "do you have many [brothers|sisters]",
    )),
    ("colour/season", None, (
        "what is your favourite [colour|season]",
        "which [colour|season] do you like best",
        "which [colour|season] do you prefer",
        "do you have a favourite [colour|season]",
    )),
)

_ALT_SLOTS: dict[str, tuple[str, ...]] = {
    "city": ("Paris", "Tokyo", "Berlin", "Lisbon", "Cairo", "Lima", "Oslo", "Rome", "Seoul", "Dublin", "Vienna",
             "Madrid", "Sydney", "Toronto", "Prague", "Athens", "Hanoi", "Bangkok"),
    "pet": ("dog", "cat", "rabbit", "hamster", "parrot", "horse", "pony", "ferret", "tortoise", "puppy", "kitten",
            "goat", "donkey"),
    "career": ("nurse", "pilot", "lawyer", "teacher", "plumber", "chef", "dentist", "farmer", "baker", "vet",
               "judge", "banker", "tailor", "carpenter", "surgeon", "programmer"),
}

# Slots are written as in a careful text ("Paris", "French"), templates in
# lower case.  Words of the templates (never of the slots) that may be replaced by a word
# of the same meaning; one pass, so a replacement is not replaced again.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "quickly": ("fast", "rapidly"), "fast": ("quickly",), "fastest": ("quickest",), "quickest": ("fastest",),
    "best": ("ideal",), "kids": ("children",), "children": ("kids",),
    "adults": ("grown ups",), "hard": ("tough", "difficult"), "difficult": ("hard", "tough"), "simple": ("easy",),
    "easy": ("simple",), "learn": ("study",), "master": ("learn",), "book": ("textbook",), "fix": ("repair",),
    "repair": ("fix",), "buy": ("purchase",), "expensive": ("costly", "pricey"), "cheap": ("affordable",),
    "recipe": ("method",), "healthy": ("nutritious",), "tips": ("hints", "advice"), "tourists": ("visitors",),
    "visitors": ("tourists",), "trip": ("journey",), "travellers": ("tourists",), "sick": ("ill", "unwell"),
    "favourite": ("favorite",), "colour": ("color",), "earn": ("make",), "salary": ("pay",),
    "properly": ("correctly",), "dangerous": ("risky",), "famous": ("well known",), "nicely": ("well",),
}

# leading phrases; most questions have none
_LEADS: tuple[str, ...] = ("honestly, ", "quick question: ", "please tell me, ", "i wonder, ", "so, ")
_LEAD_P, _SYNONYM_P, _REORDER_P, _UPPER_P, _MARK_P = 0.3, 0.35, 0.5, 0.8, 0.85
# share of the hard negatives of an intent with a slot and a twin that come from the twin (the others swap the
# slot); twins are the hardest pairs for a model trained on duplicates alone, which sees them only by chance
_TWIN_P = 1 / 3
_MAX_TOKENS = 15  # a leading phrase is left out when the question would get longer

# words and single punctuation marks, as the model's vocabulary splits a text
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_PRONOUN_RE = re.compile(r"\bi\b")
_CONTRAST_RE = re.compile(r"\[([^|\]]*)\|([^|\]]*)\]")


class _Intent(NamedTuple):
    name: str
    kind: str | None  # the slot kind; None: the templates have no slot
    templates: tuple[str, ...]
    twin: str | None  # the intent that differs in a word or two, template by template


class _TemplateSet(NamedTuple):
    intents: dict[str, _Intent]
    slots: dict[str, tuple[str, ...]]


def _expand(families: Sequence[_Family], slots: dict[str, tuple[str, ...]]) -> _TemplateSet:
    """The intents of a family list: a twin family gives two intents with aligned templates."""
    intents: dict[str, _Intent] = {}
    for names, kind, templates in families:
        if "/" in names:
            a, b = names.split("/")
            intents[a] = _Intent(a, kind, tuple(_CONTRAST_RE.sub(r"\1", t) for t in templates), b)
            intents[b] = _Intent(b, kind, tuple(_CONTRAST_RE.sub(r"\2", t) for t in templates), a)
        else:
            intents[names] = _Intent(names, kind, templates, None)
    return _TemplateSet(intents, slots)


_SETS: dict[str, _TemplateSet] = {
    "default": _expand(_DEFAULT_FAMILIES, _DEFAULT_SLOTS),
    "alt": _expand(_ALT_FAMILIES, _ALT_SLOTS),
}
TEMPLATE_SETS: tuple[str, ...] = tuple(_SETS)
"""Names of the template sets :func:`paraphrase_pairs` can draw from; no two share a template or a slot."""


def _plain(template: str) -> str:
    """A template as written without its reordering mark."""
    return template.replace(" ^ ", " ")


def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text.lower())


# --------------------------------------------------------------------------- drawing


class _Draws:
    """Uniform numbers from a NumPy generator, drawn in blocks (one call per draw would be slow)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._block: list[float] = []
        self._next = 0

    def uniform(self) -> float:
        if self._next == len(self._block):
            self._block = self._rng.random(4096).tolist()
            self._next = 0
        u = self._block[self._next]
        self._next += 1
        return u

    def index(self, size: int) -> int:
        return min(int(self.uniform() * size), size - 1)

    def pick(self, items: Sequence[_T]) -> _T:
        return items[self.index(len(items))]

    def two_indices(self, size: int) -> tuple[int, int]:
        """Two different indices below ``size`` (at least 2)."""
        i = self.index(size)
        j = self.index(size - 1)
        return i, j + (j >= i)


class _Style(NamedTuple):
    lead: str
    reorder: bool
    upper: bool
    mark: bool
    swaps: dict[str, str]


def _draw_style(draws: _Draws, templates: Sequence[str]) -> _Style:
    swaps: dict[str, str] = {}
    for word in dict.fromkeys(w for t in templates for w in t.split()):  # ordered: reproducible in any process
        alternatives = _SYNONYMS.get(word)
        if alternatives and draws.uniform() < _SYNONYM_P:
            swaps[word] = draws.pick(alternatives)
    lead = draws.pick(_LEADS) if draws.uniform() < _LEAD_P else ""
    return _Style(lead, draws.uniform() < _REORDER_P, draws.uniform() < _UPPER_P, draws.uniform() < _MARK_P, swaps)


_PLAIN_STYLE = _Style("", False, False, False, {})


def _words(text: str, swaps: dict[str, str]) -> str:
    return " ".join(swaps.get(w, w) for w in text.split())


def _render(templates: Sequence[str], slots: Sequence[str | None], style: _Style) -> list[str]:
    """The questions of ``templates`` filled with ``slots``, in one surface style.

    The leading phrase is added to all of them or to none (none when one would
    get longer than :data:`_MAX_TOKENS`).
    """
    bodies = []
    for template, slot in zip(templates, slots):
        head, _, tail = template.partition(" ^ ")
        if tail and style.reorder:
            text = f"{_words(tail, style.swaps)}, {_words(head, style.swaps)}"
        else:
            text = _words(_plain(template), style.swaps)
        bodies.append(text if slot is None else text.replace("{x}", slot))
    mark = "?" if style.mark else ""
    lead = style.lead
    if lead and max(len(_tokens(lead + b + mark)) for b in bodies) > _MAX_TOKENS:
        lead = ""
    out = []
    for body in bodies:
        text = lead + body
        if style.upper:  # written with care: a capital first letter and "I" (and the slot's own capitals)
            text = _PRONOUN_RE.sub("I", text)
            text = text[0].upper() + text[1:]
        else:  # written casually: all in lower case
            text = text.lower()
        out.append(text + mark)
    return out


# --------------------------------------------------------------------------- the pairs


class _Meta(NamedTuple):
    """What a generated row means: its kind and each side's intent, slot and template index."""

    kind: str  # "duplicate", "slot_swap", "twin" (the two hard negatives) or "easy"
    intent1: str
    intent2: str
    slot1: str | None
    slot2: str | None
    template1: int
    template2: int


def _positive_int(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        msg = f"{name} must be an int; got {type(value).__name__}"
        raise TypeError(msg)
    if int(value) < minimum:
        msg = f"{name} must be at least {minimum}; got {int(value)}"
        raise ValueError(msg)
    return int(value)


def _fraction(value: object, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        msg = f"{name} must be a number within [0, 1]; got {type(value).__name__}"
        raise TypeError(msg)
    x = float(value)
    if math.isnan(x) or not 0.0 <= x <= 1.0:
        msg = f"{name} must be within [0, 1]; got {x!r}"
        raise ValueError(msg)
    return x


def _template_set(templates: object) -> _TemplateSet:
    if not isinstance(templates, str):
        msg = f"templates must be a str, one of {', '.join(TEMPLATE_SETS)}; got {type(templates).__name__}"
        raise TypeError(msg)
    if templates not in _SETS:
        msg = f"templates must be one of {', '.join(TEMPLATE_SETS)}; got {templates!r}"
        raise ValueError(msg)
    return _SETS[templates]


def _paraphrase_pairs_with_meta(n: int, *, seed: int = 0, templates: str = "default", duplicate_fraction: float = 0.5,
                                hard_negative_fraction: float = 0.6) -> list[tuple[str, str, int, _Meta]]:
    """:func:`paraphrase_pairs` with what each row means (see :class:`_Meta`)."""
    n = _positive_int(n, "n", minimum=1)
    seed = _positive_int(seed, "seed", minimum=0)
    tset = _template_set(templates)
    dup_frac = _fraction(duplicate_fraction, "duplicate_fraction")
    hard_frac = _fraction(hard_negative_fraction, "hard_negative_fraction")
    rng = np.random.default_rng([seed, 0x5EED, TEMPLATE_SETS.index(templates)])
    draws = _Draws(rng)
    intents = tset.intents
    names = list(intents)
    n_dup = int(round(n * dup_frac))
    n_hard = int(round((n - n_dup) * hard_frac))

    def slot_of(intent: _Intent, other_than: str | None = None) -> str | None:
        if intent.kind is None:
            return None
        slots = tset.slots[intent.kind]
        if other_than is None or other_than not in slots:
            return draws.pick(slots)
        k = draws.index(len(slots) - 1)
        return slots[k + (k >= slots.index(other_than))]

    rows: list[tuple[str, str, int, _Meta]] = []
    for row in range(n):
        a = intents[draws.pick(names)]
        slot = slot_of(a)
        if row < n_dup:
            i, j = draws.two_indices(len(a.templates))
            (q1,) = _render([a.templates[i]], [slot], _draw_style(draws, [a.templates[i]]))
            (q2,) = _render([a.templates[j]], [slot], _draw_style(draws, [a.templates[j]]))
            for _ in range(8):
                if q1 != q2:
                    break
                (q2,) = _render([a.templates[j]], [slot], _draw_style(draws, [a.templates[j]]))
            if q1 == q2:  # different templates differ when written plainly
                q1, q2 = _render([a.templates[i], a.templates[j]], [slot, slot], _PLAIN_STYLE)
            meta = _Meta("duplicate", a.name, a.name, slot, slot, i, j)
        elif row < n_dup + n_hard:
            i = draws.index(len(a.templates))
            if a.twin is not None and (a.kind is None or draws.uniform() < _TWIN_P):
                b, slot2 = intents[a.twin], slot
                kind = "twin"
            else:
                b, slot2 = a, slot_of(a, other_than=slot)
                kind = "slot_swap"
            pair = [a.templates[i], b.templates[i]]
            q1, q2 = _render(pair, [slot, slot2], _draw_style(draws, pair))
            meta = _Meta(kind, a.name, b.name, slot, slot2, i, i)
        else:
            b = intents[draws.pick([m for m in names if m not in (a.name, a.twin)])]
            slot2 = slot_of(b, other_than=slot)
            i, j = draws.index(len(a.templates)), draws.index(len(b.templates))
            (q1,) = _render([a.templates[i]], [slot], _draw_style(draws, [a.templates[i]]))
            (q2,) = _render([b.templates[j]], [slot2], _draw_style(draws, [b.templates[j]]))
            meta = _Meta("easy", a.name, b.name, slot, slot2, i, j)
        label = int(meta.kind == "duplicate")
        if draws.uniform() < 0.5:
            rows.append((q1, q2, label, meta))
        else:
            flipped = meta._replace(intent1=meta.intent2, intent2=meta.intent1, slot1=meta.slot2, slot2=meta.slot1,
                                    template1=meta.template2, template2=meta.template1)
            rows.append((q2, q1, label, flipped))
    return [rows[k] for k in rng.permutation(n).tolist()]


def paraphrase_pairs(n: int, *, seed: int = 0, templates: str = "default", duplicate_fraction: float = 0.5,
                     hard_negative_fraction: float = 0.6) -> list[tuple[str, str, int]]:
    """Generated question pairs ``(question1, question2, is_duplicate)`` to train the duplicate-question model.

    Parameters
    ----------
    n : int
        Number of rows, at least 1.
    seed : int, default 0
        Seed of the draws (a non-negative int).  The rows are a function of
        ``(n, seed, templates)`` and the two fractions, the same in every
        process.
    templates : str, default "default"
        The template set to draw from, one of :data:`TEMPLATE_SETS`
        (``"default"``: skills, dishes, things to buy, the listener;
        ``"alt"``: cities, pets, careers, the listener).  The sets share no
        template and no slot.
    duplicate_fraction : float, default 0.5
        Share of rows that are duplicates (label 1): ``round(n *
        duplicate_fraction)`` of them.
    hard_negative_fraction : float, default 0.6
        Share of the non-duplicates (``round``-ed) that are hard negatives:
        the same template with another slot of the same kind, or the twin
        intent's matching template, which differs in a word or two.  The
        rest are easy negatives (another intent, another slot).

    Returns
    -------
    list of tuple (str, str, int)
        ``n`` rows in shuffled order; a duplicate's two questions always
        differ.  Questions are 3 to 15 tokens long (words and punctuation
        marks).

    Raises
    ------
    TypeError
        An argument of the wrong type (``bool`` is not an int here).
    ValueError
        ``n < 1``, ``seed < 0``, a fraction outside [0, 1] or an unknown
        template set (the message lists the known ones).

    Examples
    --------
    >>> rows = paraphrase_pairs(4, seed=3)
    >>> len(rows), sum(label for _, _, label in rows)
    (4, 2)
    """
    return [(q1, q2, label) for q1, q2, label, _ in _paraphrase_pairs_with_meta(
        n, seed=seed, templates=templates, duplicate_fraction=duplicate_fraction,
        hard_negative_fraction=hard_negative_fraction)]


# --------------------------------------------------------------------------- the CSV file


def _check_columns(columns: object) -> tuple[str, str, str]:
    if isinstance(columns, str) or not isinstance(columns, Sequence) or len(columns) != 3:
        msg = f"columns must be a sequence of three column names; got {columns!r}"
        raise TypeError(msg)
    if not all(isinstance(c, str) and c.strip() for c in columns):
        msg = f"columns must be three non-empty str; got {tuple(columns)!r}"
        raise ValueError(msg)
    if len(set(columns)) != 3:
        msg = f"columns must be three different names; got {tuple(columns)!r}"
        raise ValueError(msg)
    return (columns[0], columns[1], columns[2])


def _check_pair(index: int, row: object, columns: tuple[str, str, str]) -> tuple[str, str, int]:
    where = f"pairs[{index}]"
    if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
        msg = f"{where} must be a (question1, question2, is_duplicate) sequence; got {type(row).__name__}"
        raise TypeError(msg)
    if len(row) != 3:
        msg = f"{where} must have 3 items (question1, question2, is_duplicate); got {len(row)}"
        raise ValueError(msg)
    for name, q in zip(columns[:2], row[:2]):
        if not isinstance(q, str):
            msg = f"{where}: {name} must be a str; got {type(q).__name__}"
            raise TypeError(msg)
        if not q.strip():
            msg = f"{where}: {name} is empty"
            raise ValueError(msg)
    label = row[2]
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, numbers.Integral):
        msg = f"{where}: {columns[2]} must be the int 0 or 1; got {type(label).__name__}"
        raise TypeError(msg)
    if label not in (0, 1):
        msg = f"{where}: {columns[2]} must be 0 or 1; got {int(label)}"
        raise ValueError(msg)
    return (row[0], row[1], int(label))


def _create_temporary(folder: str, name: str) -> tuple[str, int]:
    """A new file beside the target, opened for writing, created with the permissions the umask gives."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{os.urandom(6).hex()}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
    msg = f"could not create a temporary file in {folder}"
    raise FileExistsError(msg)


def write_pairs_csv(path: str | os.PathLike[str], pairs: Iterable[Sequence[object]], *,
                    columns: Sequence[str] = ("question1", "question2", "is_duplicate")) -> None:
    """Write question pairs as a CSV file: the header ``columns``, then one row per pair.

    The file is written under a temporary name in the target's directory and
    renamed over ``path`` (:func:`os.replace`) only when complete, so ``path``
    is never a half-written file: on any error (a bad row, a full disk, an
    interrupt) it keeps its old content, or stays absent, and the temporary
    file is removed.

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file to write (replaced if it exists); its directory must exist.
    pairs : iterable of (str, str, int)
        Rows ``(question1, question2, is_duplicate)`` such as
        :func:`paraphrase_pairs` returns: two non-empty str and the label 0
        or 1 (an int, not a bool).  May be a generator; it is read once.
    columns : sequence of three str, default ("question1", "question2", "is_duplicate")
        The header: names of the two question columns and of the label column.

    Raises
    ------
    TypeError
        ``path`` is not a str path, ``columns`` is not three names, or a row
        (named ``pairs[i]``) has an item of the wrong type.
    ValueError
        Empty or repeated column names, or a row without 3 items, with an
        empty question or with a label other than 0 and 1.
    OSError
        The file could not be written.

    Notes
    -----
    Fields are quoted as needed (the :mod:`csv` module's minimal quoting), so
    questions may hold commas, quotes and line breaks; the file is UTF-8.
    """
    header = _check_columns(columns)
    target = os.fspath(path)
    if not isinstance(target, str):
        msg = f"path must be a str or os.PathLike[str]; got {type(path).__name__}"
        raise TypeError(msg)
    folder = os.path.dirname(os.path.abspath(target))
    tmp, fd = _create_temporary(folder, os.path.basename(target))
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for index, row in enumerate(pairs):
                writer.writerow(_check_pair(index, row, header))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable where directories can be synced
        with contextlib.suppress(OSError):
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
