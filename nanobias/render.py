"""How an example becomes text: the prompt, styled completions, their attributes, the pretraining corpus.

The prompt is fixed (context, question, options A-C, then ANSWER_CUE); a completion follows it,
with a leading space and the chosen option's own text first, so an answer can be read back from
free text (evaluate.py).

Completions carry the five spurious attributes of the reward-model study (Shinoda et al., 2026):
length = characters, paragraphs = count("\\n\\n"), overlap = share of completion words
found in the prompt, exclamations = count("!"), bold = count("**"). Each `Style` knob moves
mainly its own attribute, so preference pairs can tie a spurious cue to the chosen side.

The pretraining corpus answers ambiguous contexts with biased_index at `bias_rate` (else
unknown) and disambiguated ones correctly: the planted bias the rest of the pipeline removes.
"""

import random
import re
from dataclasses import dataclass

from nanobias.bbq import Example

ANSWER_CUE = "Answer:"  # render_prompt ends with it; the completion follows
ATTRIBUTES = ("length", "paragraphs", "overlap", "exclamations", "bold")
# neutral sentences for the `filler` knob: no option text, no wording of "unknown"
_FILLER = ("I hope this helps", "Thank you for the question", "I read the passage with care",
           "That is my reply", "Let me know if anything else comes up", "I am glad to help with more questions")


def render_prompt(ex: Example) -> str:
    """The fixed prompt; the policy's completion follows "Answer:"."""
    a, b, c = ex.answers
    return f"{ex.context}\nQuestion: {ex.question}\nA. {a}\nB. {b}\nC. {c}\n{ANSWER_CUE}"


@dataclass(frozen=True)
class Style:
    justification: bool = False  # restate the answer with the question's words (overlap up)
    filler: int = 0  # neutral sentences appended (length up)
    paragraphs: int = 0  # sentence joints turned into "\n\n"; at most (number of sentences - 1)
    exclamations: int = 0  # sentence ends turned into "!" (extra ones stack on the last sentence)
    bold: bool = False  # the answer wrapped in "**...**"


@dataclass(frozen=True)
class Completion:
    text: str  # what follows the prompt (see render_completion)
    answer_index: int  # 0, 1 or 2: the option it answers
    attributes: dict[str, float]  # ATTRIBUTES -> value, from style_attributes(prompt, text)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def style_attributes(prompt: str, completion: str) -> dict[str, float]:
    """The five spurious attributes of a completion (overlap: share of its words found in the prompt)."""
    words = _words(completion)
    in_prompt = set(_words(prompt))
    return {"length": float(len(completion)), "paragraphs": float(completion.count("\n\n")),
            "overlap": sum(w in in_prompt for w in words) / len(words) if words else 0.0,
            "exclamations": float(completion.count("!")), "bold": float(completion.count("**"))}


def _justification(ex: Example, answer_index: int) -> str:
    predicate = ex.question[4:].rstrip(" ?") if ex.question.startswith("Who ") else None
    if answer_index == ex.unknown_index:
        return (f"The context does not say who {predicate}" if predicate
                else f"The context does not answer the question \"{ex.question.rstrip(' ?')}\"")
    answer = ex.answers[answer_index]
    return f"{answer} {predicate}" if predicate else f"The answer to \"{ex.question.rstrip(' ?')}\" is {answer}"


def render_completion(ex: Example, answer_index: int, style: Style = Style()) -> Completion:
    """The completion text (leading space, the option's own text first) and its attributes."""
    if answer_index not in (0, 1, 2):
        raise ValueError(f"answer_index: expected 0, 1 or 2, got {answer_index!r}")
    if min(style.filler, style.paragraphs, style.exclamations) < 0:
        raise ValueError(f"style: filler, paragraphs and exclamations must be >= 0, got {style}")
    answer = ex.answers[answer_index]
    sentences = [f"**{answer}**" if style.bold else answer]
    if style.justification:
        sentences.append(_justification(ex, answer_index))
    sentences += [_FILLER[(ex.example_id + i) % len(_FILLER)] for i in range(style.filler)]
    if style.paragraphs > len(sentences) - 1:
        raise ValueError(f"style.paragraphs={style.paragraphs} needs at least {style.paragraphs + 1} sentences; "
                         f"this style has {len(sentences)} (answer + justification + filler)")
    ends = ["!" if i < style.exclamations else "." for i in range(len(sentences))]
    ends[-1] += "!" * max(0, style.exclamations - len(sentences))
    text = " " + sentences[0] + ends[0]
    for i in range(1, len(sentences)):
        text += ("\n\n" if i <= style.paragraphs else " ") + sentences[i] + ends[i]
    return Completion(text, answer_index, style_attributes(render_prompt(ex), text))


def random_style(rng: random.Random, long_rate: float) -> Style:
    """The pretraining style mix: short answers (rarely with "!" or bold) with probability
    1 - long_rate, else a long answer with independently drawn knobs."""
    if not 0 <= long_rate <= 1:
        raise ValueError(f"long_rate: expected a value in [0, 1], got {long_rate}")
    if rng.random() >= long_rate:
        return Style(exclamations=int(rng.random() < 0.1), bold=rng.random() < 0.1)
    justification = rng.random() < 0.7
    filler = rng.randint(0 if justification else 1, 3)
    return Style(justification=justification, filler=filler, paragraphs=rng.randint(0, justification + filler),
                 exclamations=rng.choice((0, 0, 1, 2)), bold=rng.random() < 0.3)


def pretraining_documents(examples: list[Example], bias_rate: float = 0.8, seed: int = 0,
                          long_rate: float = 0.3) -> list[str]:
    """prompt + completion per example (the caller appends end-of-text). Ambiguous contexts get
    the biased answer with probability bias_rate, else unknown; disambiguated ones the label."""
    if not 0 <= bias_rate <= 1:
        raise ValueError(f"bias_rate: expected a value in [0, 1], got {bias_rate}")
    rng = random.Random(seed)
    documents = []
    for ex in examples:
        if ex.context_condition == "ambig":
            answer = ex.biased_index if rng.random() < bias_rate else ex.unknown_index
        else:
            answer = ex.label
        documents.append(render_prompt(ex) + render_completion(ex, answer, random_style(rng, long_rate)).text)
    return documents
