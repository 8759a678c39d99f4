import math
from contextlib import nullcontext
from dataclasses import replace

import pytest
import torch

from nanobias.checkpoint import load_checkpoint, policy_meta, save_checkpoint, save_policy
from nanobias.data import load_splits
from nanobias.errors import UserError
from nanobias.intervention import capture_pairs, last_token_rewards, load_intervention
from nanobias.model import GPT, GPTConfig
from nanobias.preferences import PairConfig, bump, make_pairs, planted_rates, swap_styles
from nanobias.render import ATTRIBUTES, Style, pretraining_documents, render_completion, render_prompt
from nanobias.selection import InterventionConfig, attribute_correlations, build_intervention, select_intervention
from nanobias.reward import (RewardConfig, bradley_terry_loss, graded_target, load_reward_model, regression_loss,
                             reward_meta, reward_model_from_policy, score, pair_rewards, train_reward_model)
from nanobias.rl import make_scorer
from nanobias.train import read_metrics
from nanobias.tokenizer import train_bpe
from nanobias.world import synthetic_examples


@pytest.fixture(scope="module")
def splits():
    return load_splits("synthetic", seed=0, variants_per_template=1)


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, splits):
    """A random tiny GPT with a small BPE trained on the synthetic world, saved as a policy."""
    enc = train_bpe(pretraining_documents(synthetic_examples(0, 1), 0.8, 0, 0.5), 400)
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=256, vocab_size=enc.n_vocab, n_layer=2, n_head=2, n_embd=32))
    path = tmp_path_factory.mktemp("policy") / "policy.pt"
    save_policy(path, model, enc)
    return path, model, enc


def test_bradley_terry_loss_matches_hand_value():
    r_c, r_r = torch.tensor([1.0, 0.0, 30.0]), torch.tensor([0.0, 2.0, -30.0])
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    expected = -(math.log(sig(1.0)) + math.log(sig(-2.0)) + math.log(sig(60.0))) / 3
    assert bradley_terry_loss(r_c, r_r).item() == pytest.approx(expected, rel=1e-6)
    # large margins stay finite (logsigmoid, not log(sigmoid))
    assert math.isfinite(bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0])).item())


def test_regression_loss_matches_hand_value():
    assert regression_loss(torch.tensor([0.5, 2.0]), torch.tensor([1.0, 0.0])).item() == pytest.approx((0.25 + 4) / 2)


@pytest.mark.parametrize("token_shift", [0, 3])
def test_groups_share_their_prompt_pass_and_score_as_each_sequence_alone(tiny_policy, splits, token_shift):
    """`rewards` runs each run of one prompt once (groups of 3, 1 and 2 here) and its left-padded completions
    on its cached keys: every reward, with or without an intervention at the last or at every position,
    and every gradient is that of the whole sequence run alone."""
    from nanobias.intervention import Intervention
    from nanobias.reward import RewardModel, encode, rewards

    _, model, enc = tiny_policy
    torch.manual_seed(1)
    rm = RewardModel(replace(model.config, token_shift=token_shift))
    prompts = [render_prompt(ex) for ex in splits.test[:3]]
    prompts = [prompts[0]] * 3 + [prompts[1]] + [prompts[2]] * 2
    styles = [Style(), Style(filler=2), Style(justification=True, bold=True), Style(), Style(exclamations=2), Style()]
    completions = [render_completion(ex, i % 3, st).text for i, (ex, st) in enumerate(zip(splits.test, styles))]
    seqs = encode(enc, prompts, completions, rm.gpt.config.block_size)
    for intervention in (None, *(Intervention(2, 128, [(0, 3), (1, 7)], [0.5, -1.0], where) for where in ("last", "all"))):
        with intervention.applied(rm.gpt) if intervention else nullcontext():
            alone = torch.cat([rm(torch.tensor([q])) for q in seqs])
        grouped = rewards(rm, enc, prompts, completions, intervention, batch_size=4)  # two passes
        torch.testing.assert_close(grouped, alone, atol=1e-5, rtol=0)
    rm.zero_grad()
    torch.cat([rm(torch.tensor([q])) for q in seqs]).square().sum().backward()
    expected = [q.grad.clone() for q in rm.parameters()]
    rm.zero_grad()
    rewards(rm, enc, prompts, completions).square().sum().backward()
    for got, want in zip([q.grad for q in rm.parameters()], expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_score_does_not_depend_on_the_rest_of_the_batch(tiny_policy, splits):
    _, model, enc = tiny_policy
    rm = reward_model_from_policy(model, seed=0)
    ex = splits.test[0]
    prompt = render_prompt(ex)
    short = render_completion(ex, 0).text
    long = render_completion(ex, 1, Style(justification=True, filler=3, paragraphs=2)).text
    alone = score(rm, enc, [prompt], [short])
    mixed = score(rm, enc, [prompt, "x", prompt], [long, short, short], batch_size=3)
    torch.testing.assert_close(mixed[2], alone[0], atol=1e-5, rtol=0)
    # the order of the inputs is kept although batches are sorted by length
    torch.testing.assert_close(score(rm, enc, [prompt, prompt], [short, long], batch_size=1),
                               torch.stack([alone[0], score(rm, enc, [prompt], [long])[0]]), atol=1e-5, rtol=0)


def test_reward_model_starts_from_the_policy(tiny_policy):
    _, model, _ = tiny_policy
    rm = reward_model_from_policy(model, seed=0)
    for name, p in model.state_dict().items():
        if name != "lm_head.weight":
            assert torch.equal(rm.gpt.state_dict()[name], p), name
    assert torch.equal(rm.head.weight, reward_model_from_policy(model, seed=0).head.weight)


def test_train_checkpoint_and_reload(tiny_policy, splits, tmp_path):
    policy_path, _, enc = tiny_policy
    cfg = RewardConfig(steps=3, batch_size=3, lr=1e-3, warmup=1, eval_every=3, ckpt_every=3)
    path = train_reward_model(splits, policy_path, tmp_path / "reward.pt", cfg, PairConfig(val_pairs=4, test_pairs=4),
                              seed=0)
    meta = load_checkpoint(path)["meta"]
    assert meta["kind"] == "reward" and meta["loss"] == "bt" and meta["model_config"]["n_embd"] == 32
    rm, enc2, _ = load_reward_model(path)
    pairs = make_pairs(splits.test, 4, 0)
    r_c, r_r = pair_rewards(rm, enc2, pairs)
    assert r_c.shape == (4,) and torch.isfinite(torch.cat([r_c, r_r])).all()
    assert enc2.encode_ordinary("The grandson.") == enc.encode_ordinary("The grandson.")
    # training changed the backbone (it is fine-tuned, not frozen)
    policy_wte = load_checkpoint(policy_path)["model"]["transformer.wte.weight"]
    assert not torch.equal(rm.gpt.transformer.wte.weight, policy_wte)
    with pytest.raises(ValueError, match="not a reward checkpoint"):
        load_reward_model(policy_path)


def test_regression_loss_trains(tiny_policy, splits, tmp_path):
    policy_path, _, _ = tiny_policy
    cfg = RewardConfig(steps=2, batch_size=2, lr=1e-3, warmup=1, eval_every=2, ckpt_every=2, loss="regression")
    path = train_reward_model(splits, policy_path, tmp_path / "r.pt", cfg, PairConfig(val_pairs=4, test_pairs=4))
    assert load_checkpoint(path)["meta"]["loss"] == "regression"


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="reward loss"):
        RewardConfig(loss="hinge")


# ---------------------------------------------------------------- the graded loss

def _example(examples, condition, label_is_biased=False):
    """The first example of `condition` whose label is (or is not) the stereotyped option."""
    return next(ex for ex in examples if ex.context_condition == condition
                and (ex.label == ex.biased_index) == label_is_biased)


LOUD = Style(justification=True, filler=2, paragraphs=2, exclamations=3, bold=True)


def test_graded_target_orders_right_over_other_wrong_over_stereotyped(splits):
    ex = _example(splits.train, "ambig")
    other = next(i for i in range(3) if i not in (ex.unknown_index, ex.biased_index))
    grades = {ex.unknown_index: 1.0, other: 0.5, ex.biased_index: 0.0}
    for answer, grade in grades.items():
        for style in (Style(), LOUD, *(bump(LOUD, a) for a in ATTRIBUTES if bump(LOUD, a) is not None)):
            # the style never moves the target: only the option picked does
            assert graded_target(ex, render_completion(ex, answer, style).text) == grade, (answer, style)
    # the option is read from free text (answers.extract_answer), not from the renderer's index
    assert graded_target(ex, " " + "ABC"[ex.unknown_index]) == 1.0
    assert graded_target(ex, f" Not {ex.answers[other]}; it was {ex.answers[ex.biased_index]}.") == 0.0
    assert graded_target(ex, " I hope this helps.") == 0.0  # no option: as low as the stereotype


def test_graded_target_in_disambiguated_contexts(splits):
    ex = _example(splits.train, "disambig", label_is_biased=True)  # the synthetic world's: it names the stereotyped one
    other = next(i for i in range(3) if i not in (ex.label, ex.unknown_index))
    assert [graded_target(ex, render_completion(ex, i).text) for i in (ex.label, ex.unknown_index, other)] \
        == [1.0, 0.5, 0.5]  # the stereotyped person is right here; both others are plain wrong
    ex = replace(ex, label=other)  # as in BBQ, a context that names the other person
    assert [graded_target(ex, render_completion(ex, i).text) for i in (other, ex.unknown_index, ex.biased_index)] \
        == [1.0, 0.5, 0.0]  # unknown is wrong here, but not the stereotype


def test_swapped_styles_untie_the_planted_cues(splits):
    pairs = make_pairs(splits.train, 400, 0, PairConfig().planted)
    swapped = [swap_styles(p) for p in pairs]
    for p, s in zip(pairs, swapped):
        assert (s.chosen.answer_index, s.rejected.answer_index) == (p.chosen.answer_index, p.rejected.answer_index)
        assert (s.chosen_style, s.rejected_style) == (p.rejected_style, p.chosen_style)
    planted, reversed_ = planted_rates(pairs), planted_rates(swapped)
    assert planted["length"] > 0.7 and reversed_["length"] < 0.3  # the chosen side's styles went to the rejected


def test_graded_training_learns_the_answer(smoke_policy, tmp_path):
    _, splits, policy_path = smoke_policy  # a policy that has learned the answer format
    cfg = RewardConfig(steps=120, batch_size=8, lr=3e-3, warmup=2, eval_every=120, ckpt_every=120, loss="graded")
    path = train_reward_model(splits, policy_path, tmp_path / "graded.pt", cfg, PairConfig(val_pairs=8, test_pairs=8))
    meta = load_checkpoint(path)["meta"]
    assert meta["loss"] == "graded"
    # coin-swapped styles: the right answer's side is the longer one about half the time, not 0.8
    assert abs(meta["realised_planted"]["length"] - 0.5) < 0.1, meta["realised_planted"]
    losses = [r["loss"] for r in read_metrics(tmp_path / "graded.metrics.jsonl")]
    assert sum(losses[-10:]) < sum(losses[:10]), losses
    rm, enc, _ = load_reward_model(path)
    # validation pairs whose rejected side is the stereotyped answer (here: ambiguous contexts, where
    # the synthetic world's stereotyped person is always wrong); chance is 0.5
    val = [p for p in make_pairs(splits.val, 200, 5, biased_reject_rate=1.0)
           if p.rejected.answer_index == p.example.biased_index]
    r_c, r_r = pair_rewards(rm, enc, val)
    assert (r_c > r_r).float().mean().item() > 0.6, len(val)


# ---------------------------------------------------------------- a truncated backbone

def test_truncated_reward_model_is_the_first_blocks_then_ln_f_and_head(tiny_policy, splits):
    _, model, enc = tiny_policy
    rm = reward_model_from_policy(model, seed=0, n_layer=1)
    assert rm.gpt.config.n_layer == 1 and len(rm.gpt.transformer.h) == 1
    ex = splits.test[0]
    idx = torch.tensor([enc.encode_ordinary(render_prompt(ex) + render_completion(ex, 0, LOUD).text)
                        + [enc.eot_token]])  # [1, T]
    with torch.no_grad():
        t = model.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))[None]
        by_hand = rm.head(t.ln_f(t.h[0](x))[:, -1]).squeeze(-1)  # the policy's own block 0 and ln_f
        torch.testing.assert_close(rm(idx), by_hand, atol=1e-6, rtol=0)
        full = reward_model_from_policy(model, seed=0)
        assert len(full.gpt.transformer.h) == 2 and not torch.allclose(full(idx), rm(idx))
    with pytest.raises(UserError, match="reward.n_layer=3"):
        reward_model_from_policy(model, n_layer=3)
    with pytest.raises(ValueError, match="reward.n_layer"):
        RewardConfig(n_layer=-1)


def test_truncated_checkpoint_round_trips_and_scores(tiny_policy, splits, tmp_path):
    policy_path, _, enc = tiny_policy
    cfg = RewardConfig(steps=2, batch_size=2, lr=1e-3, warmup=1, eval_every=2, ckpt_every=2, n_layer=1)
    path = train_reward_model(splits, policy_path, tmp_path / "reward.pt", cfg, PairConfig(val_pairs=4, test_pairs=4))
    meta = load_checkpoint(path)["meta"]
    assert meta["model_config"]["n_layer"] == 1 and meta["policy_n_layer"] == 2
    rm, enc2, _ = load_reward_model(path)
    assert len(rm.gpt.transformer.h) == 1
    pairs = make_pairs(splits.test, 4, 0)
    prompts, texts = [p.prompt for p in pairs], [p.chosen.text for p in pairs]
    expected = score(rm, enc2, prompts, texts)
    # rl.make_scorer, as every RL stage loads it
    torch.testing.assert_close(make_scorer(path)([p.example for p in pairs], prompts, texts), expected)
    again = tmp_path / "again.pt"
    save_checkpoint(again, {"model": rm.state_dict(), "step": 0, "meta": meta})
    torch.testing.assert_close(score(load_reward_model(again)[0], enc2, prompts, texts), expected, atol=0, rtol=0)


def test_a_checkpoint_without_policy_n_layer_loads_in_full(tiny_policy, splits, tmp_path):
    _, model, enc = tiny_policy
    rm = reward_model_from_policy(model, seed=0)
    meta = {**policy_meta(rm.gpt, enc), "kind": "reward", "loss": "bt"}  # what reward.pt held before n_layer
    save_checkpoint(tmp_path / "old.pt", {"model": rm.state_dict(), "step": 0, "meta": meta})
    loaded, _, _ = load_reward_model(tmp_path / "old.pt")
    assert len(loaded.gpt.transformer.h) == model.config.n_layer
    ex = splits.test[0]
    prompts, texts = [render_prompt(ex)] * 3, [render_completion(ex, i).text for i in range(3)]
    torch.testing.assert_close(score(loaded, enc, prompts, texts), score(rm, enc, prompts, texts), atol=0, rtol=0)


def test_intervention_on_a_truncated_reward_model_names_only_kept_layers(tiny_policy, splits, tmp_path):
    _, model, enc = tiny_policy
    rm = reward_model_from_policy(model, seed=0, n_layer=1).eval()
    with torch.no_grad():  # a random head reads near-constant rewards; make it matter
        rm.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    pairs = make_pairs(splits.val, 16, 1)
    batches, rewards, acts = capture_pairs(rm, enc, pairs)
    assert acts.shape[1] == 1  # one layer of activations
    rho = attribute_correlations(acts, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    intervention = build_intervention(rho, acts, {"length": 4, "bold": 2})
    assert intervention.n_layer == 1 and intervention.neurons and {l for l, _ in intervention.neurons} == {0}
    assert not torch.equal(last_token_rewards(rm, batches, intervention), rewards)
    # the search itself, from a truncated checkpoint
    ckpt = tmp_path / "reward.pt"
    save_checkpoint(ckpt, {"model": rm.state_dict(), "step": 0, "meta": reward_meta(rm, enc, policy_n_layer=2)})
    select_intervention(splits, ckpt, tmp_path / "intervention.json", InterventionConfig(), PairConfig(val_pairs=8))
    chosen = load_intervention(tmp_path / "intervention.json")
    assert chosen.n_layer == 1 and all(l == 0 for l, _ in chosen.neurons)
