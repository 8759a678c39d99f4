import math

import pytest
import torch

from nanobias.checkpoint import load_checkpoint, save_policy
from nanobias.data import load_splits
from nanobias.model import GPT, GPTConfig
from nanobias.preferences import PairConfig, make_pairs
from nanobias.render import Style, pretraining_documents, render_completion, render_prompt
from nanobias.reward import (RewardConfig, bradley_terry_loss, load_reward_model, regression_loss,
                             reward_model_from_policy, score, score_pairs, train_reward_model)
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
    r_c, r_r = score_pairs(rm, enc2, pairs)
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
