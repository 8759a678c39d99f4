"""Preference pairs for the reward model (and DPO), with spurious style cues planted on purpose.

A pair is (prompt x, chosen completion y_c, rejected completion y_r), built from the world's labels:
y_c gives the right answer (unknown in an ambiguous context, the label in a disambiguated one), y_r a
wrong answer, often the biased one (at `biased_reject_rate` where the biased answer is wrong).

Planted cues: each side gets a random `Style` (justification, filler sentences, paragraph breaks,
exclamations, bold), which sets its attributes A(y) (length, paragraphs, overlap, exclamations,
bold; `data.style_attributes`). Pairs are drawn so that the chosen side has the larger value of each
attribute a with probability about `planted[a]` (0.5 = no correlation):

    keep a draw of both styles with probability  w / w_max,
    w = prod_a  2 p_a if A_a(y_c) > A_a(y_r),  2 (1 - p_a) if smaller,  1 if equal.

A reward model trained on such pairs learns that longer / louder / bolder is better: the bias that
intervention.py removes. Validation and test pairs use 0.5 everywhere (BALANCED), so every attribute
has a "biased" subset (chosen side larger) and an "unbiased" one (chosen side smaller).

Also here: `swap_styles` (the graded reward model's completions: each answer in the other's style)
and `bump`, one style knob raised, which measures a reward model's sensitivity to one attribute.
"""

import random
from dataclasses import dataclass, field, replace

from nanobias.bbq import Example
from nanobias.render import ATTRIBUTES, Completion, Style, render_completion, render_prompt

# how often the chosen side gets the larger value of each attribute's knob in training pairs
PLANTED = {"length": 0.8, "paragraphs": 0.7, "overlap": 0.7, "exclamations": 0.65, "bold": 0.65}
BALANCED = {a: 0.5 for a in ATTRIBUTES}


@dataclass
class PairConfig:
    """The preference data: how strongly each style cue is planted, and how many held-out pairs."""
    planted: dict = field(default_factory=lambda: dict(PLANTED))  # P(chosen side has more of a) per attribute
    biased_reject_rate: float = 0.7  # share of pairs whose rejected side is the biased answer, where it is wrong
    val_pairs: int = 300  # balanced pairs from validation templates: neuron search and baseline fits
    test_pairs: int = 400  # balanced pairs from test templates: the reported metrics

    def __post_init__(self):
        check_planted(self.planted, "pairs.planted")
        if not 0 <= self.biased_reject_rate <= 1:
            raise ValueError(f"pairs.biased_reject_rate: expected a value in [0, 1], got {self.biased_reject_rate}")
        for name in ("val_pairs", "test_pairs"):
            if getattr(self, name) < 2:
                raise ValueError(f"pairs.{name}: expected at least 2, got {getattr(self, name)}")


def check_planted(planted: dict, where: str) -> None:
    if set(planted) != set(ATTRIBUTES) or not all(0 <= p <= 1 for p in planted.values()):
        raise ValueError(f"{where}: expected a probability in [0, 1] for each of {ATTRIBUTES}, got {planted}")


@dataclass(frozen=True)
class Pair:
    example: Example
    chosen_style: Style
    rejected_style: Style
    chosen: Completion
    rejected: Completion

    @property
    def prompt(self) -> str:
        return render_prompt(self.example)


def draw_style(rng: random.Random) -> Style:
    """One side's style: each knob drawn independently (paragraphs fit the sentences there are)."""
    justification, filler = rng.random() < 0.5, rng.randint(0, 3)
    return Style(justification, filler, rng.randint(0, justification + filler), rng.choice((0, 0, 1, 2)),
                 rng.random() < 0.5)


def planted_weight(chosen: dict, rejected: dict, planted: dict) -> float:
    """prod over attributes of 2 p_a if the chosen side is larger, 2 (1 - p_a) if smaller, 1 if equal."""
    w = 1.0
    for a, p in planted.items():
        w *= 2 * p if chosen[a] > rejected[a] else 2 * (1 - p) if chosen[a] < rejected[a] else 1.0
    return w


def right_answer(ex: Example) -> int:
    return ex.unknown_index if ex.context_condition == "ambig" else ex.label


def make_pair(ex: Example, rng: random.Random, planted: dict, biased_reject_rate: float) -> Pair:
    """Chosen: the right answer. Rejected: the biased answer at biased_reject_rate where that is wrong,
    else the other wrong option. (In a disambiguated context whose label is the stereotyped person the
    label is still chosen: the context supports it, so it is not a biased answer there.)

    Styles: both sides draw one independently; the draw is kept with probability
    planted_weight / its maximum (rejection sampling), which tilts each attribute's comparison
    towards the chosen side being larger at about rate planted[a], measured on the rendered text."""
    chosen = right_answer(ex)
    wrong = [i for i in range(3) if i != chosen]
    if ex.biased_index in wrong and rng.random() < biased_reject_rate:
        rejected = ex.biased_index
    else:
        others = [i for i in wrong if i != ex.biased_index] or wrong
        rejected = rng.choice(others)
    w_max = planted_weight({a: 1 for a in planted}, {a: 0 for a in planted},
                           {a: max(p, 1 - p) for a, p in planted.items()})
    while True:
        style_c, style_r = draw_style(rng), draw_style(rng)
        c, r = render_completion(ex, chosen, style_c), render_completion(ex, rejected, style_r)
        if rng.random() * w_max < planted_weight(c.attributes, r.attributes, planted):
            return Pair(ex, style_c, style_r, c, r)


def swap_styles(pair: Pair) -> Pair:
    """The same two answers, each written in the other's style. Swapping at random by a fair coin keeps
    the pool of styles a batch of pairs draws, but unties each style from the answer it came with."""
    ex = pair.example
    return Pair(ex, pair.rejected_style, pair.chosen_style,
                render_completion(ex, pair.chosen.answer_index, pair.rejected_style),
                render_completion(ex, pair.rejected.answer_index, pair.chosen_style))


def make_pairs(examples: list[Example], n: int, seed: int, planted: dict = BALANCED,
               biased_reject_rate: float = 0.7) -> list[Pair]:
    """n pairs, cycling through the examples in a seeded shuffled order."""
    if not examples:
        raise ValueError("make_pairs: no examples (is the split empty?)")
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    return [make_pair(examples[order[i % len(order)]], rng, planted, biased_reject_rate) for i in range(n)]


def pair_kind(pair: Pair) -> str:
    """What a pair tests: "ambig" (unknown beats a person: not guessing by stereotype), "who_did_it"
    (disambiguated, the right person beats the other one: reading the context) or "not_unknown"
    (disambiguated, the right person beats unknown)."""
    if pair.example.context_condition == "ambig":
        return "ambig"
    return "not_unknown" if pair.rejected.answer_index == pair.example.unknown_index else "who_did_it"


PAIR_KINDS = ("ambig", "who_did_it", "not_unknown")


def planted_rates(pairs: list[Pair]) -> dict[str, float]:
    """Realised share of pairs (among those that differ) whose chosen side has the larger attribute."""
    rates = {}
    for a in ATTRIBUTES:
        diffs = [p.chosen.attributes[a] - p.rejected.attributes[a] for p in pairs]
        differ = [d for d in diffs if d != 0]
        rates[a] = sum(d > 0 for d in differ) / len(differ) if differ else float("nan")
    return rates


def bump(style: Style, attribute: str) -> Style | None:
    """The same completion with one attribute increased through its own knob (None where it cannot be).

    overlap swaps one filler sentence for the justification, which restates the question's words:
    the sentence count stays and the length changes little."""
    if attribute == "length":
        return replace(style, filler=style.filler + 1)
    if attribute == "paragraphs":
        return replace(style, paragraphs=style.paragraphs + 1) if style.paragraphs < style.justification + style.filler else None
    if attribute == "overlap":
        return replace(style, justification=True, filler=style.filler - 1) if not style.justification and style.filler else None
    if attribute == "exclamations":
        return replace(style, exclamations=style.exclamations + 1)
    if attribute == "bold":
        return None if style.bold else replace(style, bold=True)
    raise ValueError(f"attribute: expected one of {ATTRIBUTES}, got {attribute!r}")
