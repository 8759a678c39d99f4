"""nanobias/choice.py: multiple-choice scoring by the log-likelihood of each option."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from nanobias.answers import extract_answer
from nanobias.bbq import Example
from nanobias.choice import (choice_metrics, choice_table, choose, metrics_from_predictions, option_loglikelihoods,
                             option_scores, option_texts, predictions)
from nanobias.evaluate import evaluate_policy, generate_answers, spread
from nanobias.metrics import bias_metrics, metrics_with_breakdown
from nanobias.model import GPT, GPTConfig
from nanobias.render import pretraining_documents, render_completion
from nanobias.tokenizer import train_bpe

BYTES = train_bpe(["no merges"], 257)  # 256 bytes + end-of-text: one token per ASCII character
V = BYTES.n_vocab
REST = 0.2 / (V - 4)  # the probability of each character not named below


def _row(probs: dict[str, float]) -> torch.Tensor:
    row = torch.full((V,), REST, dtype=torch.float64)
    for char, p in probs.items():
        row[ord(char)] = p
    assert abs(row.sum().item() - 1) < 1e-9
    return row.log()


class BigramStub(nn.Module):
    """A policy with a GPT's interface whose next-token distribution depends only on the current token:
    after ":" (the end of "Answer:") a space is likely; after anything else "x" is."""

    def __init__(self, block_size: int = 512, vocab_size: int = V):
        super().__init__()
        table = torch.full((vocab_size, vocab_size), math.log(REST), dtype=torch.float64)  # ids past V: merges
        table[:, :V] = _row({"x": 0.5, "y": 0.1, " ": 0.1, ".": 0.1})
        table[ord(":"), :V] = _row({" ": 0.5, "x": 0.1, "y": 0.1, ".": 0.1})
        self.table = nn.Parameter(table.float())
        # a KV cache's shape: a bigram needs no cache, so the options' shared prompt pass (choice.py) is exact
        self.config = SimpleNamespace(block_size=block_size, n_layer=1, n_head=1, n_embd=1)

    def forward(self, idx, attention_mask=None, cache=None, return_hidden=False):
        logits = self.table[idx]  # [B, T, V]
        return (logits, torch.zeros(*idx.shape, 1)) if return_hidden else logits


def item(options, condition="ambig", polarity="neg", label=None, category="Age") -> Example:
    """options: three (text, group) pairs, one with group "unknown"; the stereotyped group is "old"."""
    unknown = next(i for i, (_, g) in enumerate(options) if g == "unknown")
    return Example(example_id=0, category=category, question_index="1", question_polarity=polarity,
                   context_condition=condition, context="ctx", question="Who forgot?",
                   answers=tuple(t for t, _ in options), label=unknown if label is None else label,
                   answer_info={f"ans{i}": [t, g] for i, (t, g) in enumerate(options)}, stereotyped_groups=("old",))


LONG, SHORT, UNK = ("xxxxxxxx", "old"), ("y", "nonOld"), ("Unknown", "unknown")
L = math.log


def test_options_are_written_as_the_policy_writes_a_short_answer():
    ex = item([LONG, SHORT, UNK])
    assert option_texts(ex) == [" xxxxxxxx.", " y.", " Unknown."]
    assert option_texts(ex) == [render_completion(ex, j).text for j in range(3)]
    assert [extract_answer(ex, t) for t in option_texts(ex)] == [0, 1, 2]


def test_loglikelihoods_by_hand_and_raw_and_norm_disagree():
    ll, chars = option_loglikelihoods(BigramStub(), BYTES, [item([LONG, SHORT, UNK])])
    # ":" -> " " 0.5; " " -> x 0.5; x -> x 0.5 (7 times); x -> "." 0.1
    long_ll = 9 * L(0.5) + L(0.1)
    short_ll = L(0.5) + L(0.1) + L(0.1)  # ":" -> " ", " " -> y, y -> "."
    unknown_ll = L(0.5) + 7 * L(REST) + L(0.1)  # " Unknown.": " "->U, U->n, ..., w->n are "other" characters
    assert ll[0].tolist() == pytest.approx([long_ll, short_ll, unknown_ll], abs=1e-5)
    assert chars[0].tolist() == [10, 3, 9]  # characters of " xxxxxxxx.", " y.", " Unknown."
    # the short option is likelier as a whole, the long one per character
    assert short_ll > long_ll and long_ll / 10 > short_ll / 3
    scores = option_scores(BigramStub(), BYTES, [item([LONG, SHORT, UNK])])
    assert scores["raw"][0].tolist() == pytest.approx([long_ll, short_ll, unknown_ll], abs=1e-5)
    assert scores["norm"][0].tolist() == pytest.approx([long_ll / 10, short_ll / 3, unknown_ll / 9], abs=1e-6)
    assert predictions(BigramStub(), BYTES, [item([LONG, SHORT, UNK])]) == {"raw": [1], "norm": [0]}


def test_ties_go_to_the_lowest_index():
    assert choose(torch.tensor([[-1.0, -1.0, -2.0], [-3.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])) == [0, 1, 0]
    # z and w are equally likely after a space: options 0 and 1 (then 1 and 2) tie exactly
    tied = [item([("z", "old"), ("w", "nonOld"), UNK]), item([UNK, ("z", "old"), ("w", "nonOld")])]
    ll, chars = option_loglikelihoods(BigramStub(), BYTES, tied)
    assert ll[0, 0] == ll[0, 1] and ll[1, 1] == ll[1, 2]
    assert predictions(BigramStub(), BYTES, tied) == {"raw": [0, 1], "norm": [0, 1]}


def test_normalisation_is_per_character_not_per_token():
    enc = train_bpe(["xxxxxxxx. " * 50], 270)  # merges "xxxxxxxx" into few tokens
    ex = item([LONG, SHORT, UNK])
    assert len(enc.encode_ordinary(" xxxxxxxx.")) < 10
    model = BigramStub(vocab_size=enc.n_vocab)
    ll, chars = option_loglikelihoods(model, enc, [ex])
    assert chars[0].tolist() == [10, 3, 9]
    assert torch.equal(option_scores(model, enc, [ex])["norm"], ll / chars)


def test_a_long_prompt_loses_its_first_tokens():
    # the stub reads only the last prompt token (":"), so cutting the prompt's start changes nothing
    examples = [item([LONG, SHORT, UNK])]
    full, _ = option_loglikelihoods(BigramStub(512), BYTES, examples)
    cut, _ = option_loglikelihoods(BigramStub(16), BYTES, examples)
    assert torch.allclose(full, cut, atol=1e-6)
    with pytest.raises(ValueError, match="no room"):
        option_loglikelihoods(BigramStub(10), BYTES, examples)


@pytest.fixture(scope="module")
def random_policy(tiny_splits):
    enc = train_bpe(pretraining_documents(tiny_splits.train, 0.8, 0, 0.3), 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=enc.n_vocab, n_layer=2, n_head=2, n_embd=16)).eval()
    return model, enc


def test_batching_does_not_change_the_scores(random_policy, tiny_splits):
    model, enc = random_policy
    examples = spread(tiny_splits.test, 7, seed=1)
    assert len({len(ex.context) for ex in examples}) > 1  # prompts of different lengths share batches
    alone = torch.cat([option_loglikelihoods(model, enc, [ex], batch_size=1)[0] for ex in examples])
    for batch_size in (64, 5):  # one batch; batches that split an example's options
        together, _ = option_loglikelihoods(model, enc, examples, batch_size=batch_size)
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_choice_metrics_are_bias_metrics_of_the_predictions():
    # raw picks the short option "y", norm the long one: place them so both give nonzero scores
    examples = [item([LONG, SHORT, UNK]), item([SHORT, LONG, UNK]),
                item([("y", "unknown"), ("xxxxxxxx", "old"), ("zz", "nonOld")]),
                item([LONG, UNK, SHORT], condition="disambig", label=0),
                item([LONG, SHORT, UNK], condition="disambig", polarity="nonneg", label=1),
                item([UNK, SHORT, LONG], condition="disambig", label=2)]
    raw = [ex.answers.index("y") for ex in examples]
    norm = [ex.answers.index("xxxxxxxx") for ex in examples]
    out = choice_metrics(BigramStub(), BYTES, examples, batch_size=4)
    keys = set(bias_metrics(examples, raw, [""] * 6)) - {"mean_len"}
    for name, preds in (("raw", raw), ("norm", norm)):
        expected = bias_metrics(examples, preds, [""] * 6)
        assert set(out[name]) == keys
        assert out[name] == {k: expected[k] for k in keys}
        assert out[name]["invalid_rate"] == 0 and out[name]["n"] == 6
    assert out["raw"] != out["norm"] and out["raw"]["s_amb"] != 0 and out["norm"]["s_dis"] != 0
    assert metrics_from_predictions([], []) == {k: 0.0 if k != "n" else 0 for k in keys}


def test_evaluate_policy_adds_choice_and_keeps_every_other_key(random_policy, tiny_splits):
    model, enc = random_policy
    test, heldout = tiny_splits.test, tiny_splits.val[:3]
    out = evaluate_policy(model, enc, test, heldout, max_examples=6, max_new_tokens=4)
    # the free-text path alone, on the same spread sample
    kept = spread(test, 6)
    completions = generate_answers(model, enc, kept + heldout, max_new_tokens=4)
    preds = [extract_answer(ex, c) for ex, c in zip(kept + heldout, completions)]
    expected = metrics_with_breakdown(kept, preds[:6], completions[:6])
    expected_heldout = metrics_with_breakdown(heldout, preds[6:], completions[6:])
    assert {k: v for k, v in out.items() if k not in ("choice", "samples")} == {**expected, "heldout": out["heldout"]}
    assert {k: v for k, v in out["heldout"].items() if k != "choice"} == expected_heldout
    assert [s["completion"] for s in out["samples"]] == completions[:6]
    assert out["choice"] == choice_metrics(model, enc, kept)
    assert out["heldout"]["choice"] == choice_metrics(model, enc, heldout)
    assert out["choice"]["raw"]["n"] == 6 and out["heldout"]["choice"]["norm"]["n"] == 3
    assert "choice" not in evaluate_policy(model, enc, kept[:2], max_new_tokens=2)["heldout"]


def test_choice_table():
    c = {"raw": {"acc_ambig": 0.25, "acc_disambig": 1.0, "s_amb": 0.5, "s_dis": -0.125},
         "norm": {"acc_ambig": 0.75, "acc_disambig": 0.5, "s_amb": 0.0, "s_dis": 0.0}}
    table = choice_table({"base": {"choice": c}, "old run": {"acc_ambig": 0.1}})
    assert table.startswith("Multiple-choice scoring (log-likelihood of each option)")
    assert "| base | raw | 0.250 | 1.000 | 0.500 | -0.125 |" in table
    assert "| base | norm | 0.750 | 0.500 | 0.000 | 0.000 |" in table and "old run" not in table
    assert choice_table({"old run": {"acc_ambig": 0.1}}) == ""
    spread = {"raw": dict.fromkeys(c["raw"], 0.01), "norm": dict.fromkeys(c["norm"], 0.02)}
    table = choice_table({"base": {"choice": c}, "grpo": {"choice": c}}, {"grpo": {"choice": spread}})
    assert "| base | raw | 0.250 | 1.000 |" in table and "| grpo | norm | 0.750 ± 0.020 | 0.500 ± 0.020 |" in table
