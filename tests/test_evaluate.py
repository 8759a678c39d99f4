"""nanobias/evaluate.py: the oracle reward, the evaluation subset and evaluate_policy (extraction: test_answers.py)."""

import torch

from nanobias.evaluate import evaluate_policy, oracle_rewards, spread
from nanobias.model import GPT, GPTConfig
from nanobias.tokenizer import train_bpe
from test_answers import example  # the hand-made grandfather/grandson item (pytest puts tests/ on sys.path)


def test_oracle_rewards_pay_only_the_labelled_answer():
    items = [example("ambig"), example("ambig"), example("disambig", label=1), example("disambig", label=1)]
    completions = [" Unknown.", " The grandfather.", " The grandson.", " Not known."]
    assert oracle_rewards(items, completions).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_spread_is_seeded_ordered_capped_and_keeps_every_condition():
    items = list(range(100))
    a, b = spread(items, 10, seed=3), spread(items, 10, seed=3)
    assert a == b == sorted(a) and len(set(a)) == 10
    assert spread(items, 10, seed=4) != a
    assert spread(items, 500) == items and spread(items, None) == items
    # blocks of four conditions: n = len / 4 must not keep one condition only (as a stride of 4 would)
    assert len({i % 4 for i in spread(list(range(400)), 100)}) == 4


def test_evaluate_policy_reports_test_and_heldout_apart():
    enc = train_bpe(["The grandson. Unknown. The grandfather."], 260)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=128, vocab_size=enc.n_vocab, n_layer=1, n_head=2, n_embd=16)).eval()
    test = [example("ambig"), example("disambig", label=1)]
    heldout = [example("ambig", category="SES")]
    out = evaluate_policy(model, enc, test, heldout, max_new_tokens=4)
    assert out["n"] == 2 and out["heldout"]["n"] == 1 and set(out["heldout"]["per_category"]) == {"SES"}
    assert 0 < out["mean_len"] and len(out["samples"]) == 2
    assert evaluate_policy(model, enc, test, max_new_tokens=4)["heldout"] == {}
    assert evaluate_policy(model, enc, test * 3, heldout * 3, max_examples=2, max_new_tokens=4)["heldout"]["n"] == 2
