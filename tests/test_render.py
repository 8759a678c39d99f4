"""nanobias/render.py: prompts, styled completions and their attributes, the pretraining corpus."""

import random

import pytest

from nanobias.render import (ATTRIBUTES, Style, pretraining_documents, random_style, render_completion, render_prompt,
                             style_attributes)
from nanobias.world import synthetic_examples
from test_bbq import make_example  # the hand-written Example of the schema tests (pytest puts tests/ on sys.path)

SYNTH = synthetic_examples()


def test_style_attributes_hand_computed():
    prompt = "The cat sat.\nQuestion: Who sat?"
    completion = " **The cat** sat!\n\nA dog ran!"
    assert style_attributes(prompt, completion) == {
        "length": 29.0, "paragraphs": 1.0, "exclamations": 2.0, "bold": 2.0,
        "overlap": 0.5}  # 12+5+2+10 chars; words the cat sat a dog ran: 3 of 6 in the prompt
    assert style_attributes("x", "")["overlap"] == 0.0
    assert set(style_attributes("x", "y")) == set(ATTRIBUTES)


def test_render_completion_texts():
    ex = make_example()
    assert render_completion(ex, 2).text == " The grandfather."
    assert render_completion(ex, 1).text == " Not enough info."
    assert render_completion(ex, 2, Style(justification=True)).text == " The grandfather. The grandfather forgot the keys."
    assert render_completion(ex, 1, Style(justification=True)).text == \
        " Not enough info. The context does not say who forgot the keys."
    assert render_completion(ex, 0, Style(bold=True, exclamations=1)).text == " **The grandson**!"
    assert render_completion(ex, 0, Style(exclamations=3)).text == " The grandson!!!"
    short = render_completion(ex, 0)
    assert short.answer_index == 0 and short.attributes == style_attributes(render_prompt(ex), " The grandson.")
    with pytest.raises(ValueError, match="paragraphs"):
        render_completion(ex, 0, Style(paragraphs=1))


@pytest.mark.parametrize("knob, value, attribute", [
    ("justification", True, "overlap"), ("filler", 4, "length"), ("paragraphs", 2, "paragraphs"),
    ("exclamations", 2, "exclamations"), ("bold", True, "bold")])
def test_each_style_knob_raises_its_own_attribute(knob, value, attribute):
    base = Style(filler=2)
    for ex in SYNTH[:40]:
        for answer in range(3):
            before = render_completion(ex, answer, base)
            after = render_completion(ex, answer, Style(**{**base.__dict__, knob: value}))
            assert after.attributes[attribute] > before.attributes[attribute]
            for other in ("paragraphs", "exclamations", "bold"):  # the count attributes move only by their knob
                if other != attribute:
                    assert after.attributes[other] == before.attributes[other]
            assert ex.answers[answer] in after.text


def test_random_style_mix():
    assert all(not s.justification and not s.filler for s in (random_style(random.Random(i), 0.0) for i in range(50)))
    styles = [random_style(random.Random(i), 1.0) for i in range(300)]
    assert all(s.justification or s.filler for s in styles)
    assert [random_style(random.Random(5), 0.5) for _ in range(3)] == [random_style(random.Random(5), 0.5)] * 3
    for s in styles:  # every drawn style renders
        render_completion(SYNTH[0], 0, s)


@pytest.mark.parametrize("bias_rate", [0.8, 0.3])
def test_pretraining_documents_plant_the_bias_rate(bias_rate):
    docs = pretraining_documents(SYNTH, bias_rate=bias_rate, seed=1)
    assert len(docs) == len(SYNTH)
    biased = ambig = 0
    for ex, doc in zip(SYNTH, docs):
        prompt = render_prompt(ex)
        assert doc.startswith(prompt)
        answer = doc[len(prompt):].replace("**", "")
        first = [i for i in range(3) if answer.startswith(" " + ex.answers[i])]
        assert len(first) == 1
        if ex.context_condition == "disambig":
            assert first[0] == ex.label
        else:
            assert first[0] in (ex.biased_index, ex.unknown_index)
            ambig += 1
            biased += first[0] == ex.biased_index
    assert biased / ambig == pytest.approx(bias_rate, abs=0.05)  # 864 ambiguous items: 3.5 sigma
    assert pretraining_documents(SYNTH[:50], seed=2) == pretraining_documents(SYNTH[:50], seed=2)
