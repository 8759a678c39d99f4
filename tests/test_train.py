import json

import pytest
import torch

from nanobias.checkpoint import load_checkpoint
from nanobias.model import GPT, GPTConfig
from nanobias.optim import OptimConfig
from nanobias.pretrain import lm_loss
from nanobias.train import TrainConfig, TrainingDiverged, read_metrics, train


def random_windows(stream, batch_size, seq_len, generator):
    starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,), generator=generator).tolist()
    return (torch.stack([stream[s:s + seq_len] for s in starts]),
            torch.stack([stream[s + 1:s + 1 + seq_len] for s in starts]))


# a learnable stream: mostly x[t+1] = x[t] + 3 (mod 40), with random jumps
_jumps = torch.randint(0, 40, (2000,), generator=torch.Generator().manual_seed(0))
STREAM = torch.tensor([(3 * t) % 40 for t in range(2000)]).where(torch.rand(2000, generator=torch.Generator().manual_seed(1)) > 0.1, _jumps)


def fresh_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=40, n_layer=1, n_head=2, n_embd=16))


def batch_loss_for(model, fail_at=None):
    def batch_loss(step):
        if step == fail_at:
            raise KeyboardInterrupt  # the run is interrupted here
        g = torch.Generator().manual_seed(step)
        return lm_loss(model, *random_windows(STREAM, 4, 16, g)), {}
    return batch_loss


CFG = TrainConfig(steps=10, batch_size=4, lr=1e-2, warmup=2, eval_every=5, ckpt_every=3)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    straight = fresh_model()
    train(straight, batch_loss_for(straight), CFG, tmp_path / "a.pt", meta={})

    interrupted = fresh_model()
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, batch_loss_for(interrupted, fail_at=7), CFG, tmp_path / "b.pt", meta={})
    assert load_checkpoint(tmp_path / "b.pt")["step"] == 6
    resumed = fresh_model()
    train(resumed, batch_loss_for(resumed), CFG, tmp_path / "b.pt", meta={}, resume=True)

    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "b.metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10))  # the replaced steps 6.. are logged once


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    model = fresh_model()

    def batch_loss(step):
        loss = batch_loss_for(model)(step)[0]
        return (loss * float("nan") if step == 4 else loss), {}

    with pytest.raises(TrainingDiverged, match="step 4"):
        train(model, batch_loss, CFG, tmp_path / "c.pt", meta={})
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["step"] == 3 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert not (tmp_path / "c.pt.tmp").exists()


def test_bad_training_settings_are_rejected():
    with pytest.raises(ValueError, match=r"TrainConfig\.lr=-0\.1 \(lr, grad_clip > 0"):
        TrainConfig(lr=-0.1)
    with pytest.raises(ValueError, match=r"TrainConfig\.steps=0 \(steps, batch_size"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match=r"OptimConfig\.min_lr_frac=1\.5"):
        OptimConfig(min_lr_frac=1.5)


def test_training_lowers_the_loss(tmp_path):
    model = fresh_model()
    g = torch.Generator().manual_seed(99)
    held = random_windows(STREAM, 8, 16, g)
    before = lm_loss(model, *held).item()
    train(model, batch_loss_for(model), TrainConfig(steps=30, lr=1e-2, warmup=2), tmp_path / "d.pt", meta={})
    with torch.no_grad():
        assert lm_loss(model, *held).item() < before - 0.1


def test_document_batch_packs_documents_and_masks_exactly_the_completion_predictions():
    from nanobias.pretrain import document_batch

    # (prompt + completion + eot ids, prompt length): inputs of 5, 2, 3 and 1 tokens
    docs = [([5, 6, 7, 8, 9, 4], 3), ([1, 2, 3], 1), ([11, 12, 13, 14], 2), ([21, 22], 1)]
    x, y, mask, doc = document_batch(docs, pad_id=0)
    # first fit, longest first, rows as long as the longest document: [5 tokens], [3 + 2], [1 + padding]
    assert x.tolist() == [[5, 6, 7, 8, 9], [11, 12, 13, 1, 2], [21, 0, 0, 0, 0]]
    assert y.tolist() == [[6, 7, 8, 9, 4], [12, 13, 14, 2, 3], [22, 0, 0, 0, 0]]
    assert doc.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 2, 2], [1, 0, 0, 0, 0]]
    # the targets that are completion tokens: 9 and 4; 13 and 14; 2 and 3; 22
    assert mask.tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_a_packed_document_gets_the_loss_it_gets_alone():
    """The attention mask keeps packed documents apart and their positions restart (model.py): the
    loss of a packed batch is the token-weighted mean of each document's loss alone."""
    from nanobias.pretrain import document_batch

    torch.manual_seed(0)  # with token_shift: the earlier tokens' embeddings stop at a document's start too
    model = GPT(GPTConfig(block_size=16, vocab_size=40, n_layer=1, n_head=2, n_embd=16, token_shift=3))
    docs = [([5, 6, 7, 8, 9, 4], 3), ([1, 2, 3], 1), ([11, 12, 13, 14], 2), ([21, 22], 1)]
    x, y, mask, d = document_batch(docs, pad_id=0)
    packed = lm_loss(model, x, y, mask, d)
    alone = [lm_loss(model, *document_batch([one], pad_id=0)[:3]) for one in docs]
    counts = [len(ids) - n for ids, n in docs]  # completion targets per document
    torch.testing.assert_close(packed, sum(l * c for l, c in zip(alone, counts)) / sum(counts), atol=1e-6, rtol=0)


def test_masked_lm_loss_ignores_masked_positions():
    model = fresh_model()
    x = torch.tensor([[1, 2, 3, 4]])
    y = torch.tensor([[2, 3, 4, 5]])
    logp = torch.log_softmax(model(x), -1)[0]
    expected = -(logp[2, 4] + logp[3, 5]) / 2
    torch.testing.assert_close(lm_loss(model, x, y, torch.tensor([[0.0, 0, 1, 1]])), expected)


def test_pretraining_logs_its_reading_curve_and_draws_it(tmp_path):
    """pretrain.eval_prompts: every evaluation answers that many test prompts and logs BBQ's metrics of
    them beside val_loss; every step logs the tokens it trained on; reading.png draws the curve."""
    from nanobias.curves import answer_metrics, curve_prompts
    from nanobias.data import load_splits
    from nanobias.presets import get_preset
    from nanobias.pretrain import pretrain_policy

    preset = get_preset("smoke", {"pretrain.steps": 6, "pretrain.eval_every": 3, "pretrain.eval_prompts": 8})
    splits = load_splits("synthetic", seed=0, variants_per_template=1)
    model, enc = pretrain_policy(splits, preset.pretrain, preset.model, tmp_path, seed=0)
    records = read_metrics(tmp_path / "policy.metrics.jsonl")
    evaluated = [r for r in records if "acc_disambig" in r]
    assert [r["step"] for r in evaluated] == [2, 5] and all("val_loss" in r for r in evaluated)
    assert all(r["tokens"] > 8 * 20 for r in records)  # 8 documents of a few dozen tokens each
    final = answer_metrics(model, enc, curve_prompts(splits.test, 8))
    assert all(evaluated[-1][k] == final[k] for k in ("acc_disambig", "biased_ambig", "acc_ambig", "invalid_rate"))
    assert (tmp_path / "reading.png").stat().st_size > 0
