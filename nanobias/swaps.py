"""Swapped and made-up people: more pretraining examples from the same scenes, with other people in them.

A real BBQ template is filled with a few dozen pairs of people, and a small model trained on it for
long learns each item's answer by the names in it: its validation loss turns up while its training
loss falls towards zero. Copies with other people take that shortcut away (README, "Real BBQ data",
measures what that buys and what it does not). `swap_people` adds `copies` more of each training
example, in which the two people's words are replaced, wherever they occur in context, question and
answers, by other words of the same group from the same category, drawn from the examples given:

    "I saw a grandson and their grandfather ..."  ->  "I saw a teenager and their retiree ..."

Groups, label and the biased answer stay as they were, so the planted bias is planted as before.
A word that the stereotype itself names is kept (Nationality's stereotyped_groups list
nationalities: "British" stays British), and only words it does not name replace the others. An
example whose two words are not both found in its context is not copied.

Made-up people (`made_up_people`): a category never trained on names people whose words the policy
has never seen, so it can answer only by copying them from the context and the options, a skill the
training categories let it skip, since their people recur. Copies of the disambiguated examples with
the two people replaced by made-up words, which recur nowhere, make that skill the only way to the
answer, which the context decides:

    "The grandfather forgot the keys"  ->  "The kavito forgot the keys"

Ambiguous examples are not copied: with made-up people, no stereotype says whom the planted bias
would pick.
"""

import random
import re
from collections import defaultdict
from dataclasses import replace

from nanobias.bbq import Example, relaxed_group_keys


def people(ex: Example) -> list[tuple[int, str, str]]:
    """The two people of an example: (option index, word, group) each."""
    return [(i, *ex.answer_info[f"ans{i}"]) for i in ex.people]


def _found(word: str, text: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.I) is not None


def swapped(ex: Example, new: dict[str, str]) -> Example:
    """`ex` with each key of `new` (a person's word, matched whole and in any case) replaced by its value
    in context, question, the people's answers and answer_info. Where the text capitalises a word that
    answer_info writes in lower case ("Grandfather" opening a sentence), the new word is capitalised too."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(new, key=len, reverse=True))) + r")\b", re.I)
    by_lower = {word.lower(): (word, value) for word, value in new.items()}

    def substitute(text: str) -> str:
        def one(match):
            word, value = by_lower[match.group(0).lower()]
            return value[:1].upper() + value[1:] if match.group(0) != word and match.group(0)[:1].isupper() else value
        return pattern.sub(one, text)

    info = dict(ex.answer_info)
    answers = list(ex.answers)
    for i, word, group in people(ex):
        info[f"ans{i}"] = [new.get(word, word), group]
        answers[i] = substitute(answers[i])
    return replace(ex, context=substitute(ex.context), question=substitute(ex.question), answers=tuple(answers),
                   answer_info=info)


def copied_people(ex: Example) -> tuple[str, str] | None:
    """The two people's words of an example that can be copied with others: both named in its context
    and not the same word; else None."""
    (_, a, _), (_, b, _) = people(ex)
    return (a, b) if a.lower() != b.lower() and _found(a, ex.context) and _found(b, ex.context) else None


def swap_people(examples: list[Example], copies: int, seed: int = 0) -> list[Example]:
    """The examples, then `copies` swapped copies of each (module docstring); the same seed, the same copies."""
    if copies < 0:
        raise ValueError(f"copies: expected 0 or more, got {copies}")
    words = defaultdict(set)  # (category, group) -> the words of that group's people
    for ex in examples:
        for _, word, group in people(ex):
            words[ex.category, group].add(word)
    words = {key: sorted(found) for key, found in words.items()}
    rng = random.Random(seed)
    out = list(examples)
    for ex in examples:
        if copied_people(ex) is None:
            continue
        (_, a, group_a), (_, b, group_b) = people(ex)
        stereotyped = set().union(*map(relaxed_group_keys, ex.stereotyped_groups))
        named = {w for w in words[ex.category, group_a] + words[ex.category, group_b]  # a and b among them
                 if relaxed_group_keys(w) & stereotyped}
        for _ in range(copies):
            new_a = a if a in named else rng.choice([w for w in words[ex.category, group_a]
                                                     if w not in named and (b not in named or w.lower() != b.lower())])
            others = [w for w in words[ex.category, group_b] if w not in named and w.lower() != new_a.lower()]
            new_b = b if b in named or not others else rng.choice(others)
            if new_a.lower() != new_b.lower():  # else the two would be one person
                out.append(swapped(ex, {a: new_a, b: new_b}))
    return out


def made_up_word(rng: random.Random) -> str:
    """Two or three consonant-vowel syllables: "kavito"."""
    return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.choice((2, 3))))


def made_up_people(examples: list[Example], copies: int, seed: int = 0) -> list[Example]:
    """`copies` copies of each disambiguated example, its two people made-up words (module docstring); the
    copies only, and the same seed, the same words."""
    if copies < 0:
        raise ValueError(f"copies: expected 0 or more, got {copies}")
    rng = random.Random(seed)
    out = []
    for ex in examples:
        pair = copied_people(ex) if ex.context_condition == "disambig" else None
        for _ in range(copies if pair else 0):
            new_a = made_up_word(rng)
            new_b = made_up_word(rng)
            while new_b == new_a:
                new_b = made_up_word(rng)
            out.append(swapped(ex, dict(zip(pair, (new_a, new_b)))))
    return out
