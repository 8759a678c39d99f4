from dataclasses import replace

import pytest
import torch

from nanobias.model import GPT, GPTConfig
from nanobias.sampling import completion_batch, completion_logits, completion_logprobs, left_pad, next_token, sample

EOT = 60


def tiny_model(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"block_size": 48, "vocab_size": 61, "n_layer": 2, "n_head": 2, "n_embd": 16, **kw})).eval()


PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]]


def test_left_pad():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_cached_sampling_equals_uncached_for_the_same_seed():
    model = tiny_model()
    a = sample(model, PROMPTS, EOT, group_size=4, max_new_tokens=12, temperature=1.0, seed=3)
    b = sample(model, PROMPTS, EOT, group_size=4, max_new_tokens=12, temperature=1.0, seed=3, use_cache=False)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    assert a.tokens.shape == (12, 12)
    c = sample(model, PROMPTS, EOT, group_size=4, max_new_tokens=12, temperature=1.0, seed=4)
    assert not torch.equal(a.tokens, c.tokens)


def test_temperature_zero_is_greedy():
    model = tiny_model()
    s = sample(model, PROMPTS, EOT, group_size=2, max_new_tokens=6, temperature=0.0)
    for r in range(len(PROMPTS) * 2):
        seq = list(PROMPTS[r // 2])
        for t in range(6):
            if not s.mask[r, t]:
                break
            logits = model(torch.tensor([seq]))[0, -1]
            assert s.tokens[r, t].item() == logits.argmax().item()
            torch.testing.assert_close(s.logprobs[r, t], torch.log_softmax(logits, -1).max(), atol=1e-5, rtol=0)
            seq.append(s.tokens[r, t].item())
    assert torch.equal(s.tokens[0::2], s.tokens[1::2])  # greedy: every member of a group is the same


def test_logprobs_match_a_full_forward_and_mask_stops_at_eot():
    model = tiny_model()
    s = sample(model, PROMPTS, EOT, group_size=3, max_new_tokens=10, temperature=0.7, seed=1)
    seq = torch.cat([s.prompt_ids, s.tokens], 1)
    full_mask = torch.cat([s.prompt_mask, torch.ones_like(s.tokens)], 1)
    logits = model(seq, attention_mask=full_mask)[:, s.prompt_ids.shape[1] - 1:-1] / 0.7
    expected = torch.log_softmax(logits, -1).gather(-1, s.tokens[..., None])[..., 0] * s.mask
    torch.testing.assert_close(s.logprobs, expected, atol=1e-5, rtol=0)
    for row, m in zip(s.tokens.tolist(), s.mask.tolist()):
        n = sum(m)
        assert m == [1] * n + [0] * (len(m) - n)
        assert EOT not in row[:n - 1]  # nothing generated after end-of-text


def test_top_k_and_top_p_only_draw_allowed_tokens():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    tok, _ = next_token(logits, 1.0, 2, None, g)
    assert set(tok.tolist()) == {0, 1}
    p = torch.softmax(logits[0], -1)  # [0.636, 0.234, 0.086, ...]: top_p 0.8 keeps two tokens
    assert p[0] < 0.8 < p[0] + p[1]
    tok, _ = next_token(logits, 1.0, None, 0.8, g)
    assert set(tok.tolist()) == {0, 1}


def test_the_draw_follows_the_distribution_and_each_group_its_own_generator():
    """Token frequencies over many draws match softmax(logits / T) (a chi-square bound no correct
    sampler exceeds but once in ~1e6 runs); a token of probability 0 is never drawn; and block j of
    the rows depends on generator j alone."""
    logits = torch.randn(1, 61, generator=torch.Generator().manual_seed(0)) * 2
    logits[0, 7] = float("-inf")  # probability 0
    probs = torch.softmax(logits / 0.8, -1)[0]
    draws = 20_000
    token, logp = next_token(logits.expand(draws, -1), 0.8, None, None, torch.Generator().manual_seed(1))
    counts = torch.bincount(token, minlength=61).double()
    assert counts[7] == 0
    live = probs > 0
    chi2 = ((counts[live] - draws * probs[live]) ** 2 / (draws * probs[live])).sum().item()
    assert chi2 < 130  # 59 degrees of freedom: P(chi2 > 130) ~ 1e-7
    torch.testing.assert_close(logp, torch.log_softmax(logits / 0.8, -1)[0, token])
    rows = torch.randn(12, 61, generator=torch.Generator().manual_seed(2))
    alone = next_token(rows[4:8], 1.0, None, None, torch.Generator().manual_seed(11))[0]
    together = next_token(rows, 1.0, None, None, [torch.Generator().manual_seed(10 + i) for i in range(3)])[0]
    assert torch.equal(together[4:8], alone)


def test_next_token_leaves_the_callers_logits_alone():
    logits = torch.randn(4, 61, generator=torch.Generator().manual_seed(1))
    before = logits.clone()
    for top_k, top_p in ((5, None), (None, 0.5), (5, 0.5)):
        next_token(logits, 1.0, top_k, top_p, torch.Generator().manual_seed(0))
    assert torch.equal(logits, before)


def test_samples_can_be_trained_on():
    """sample() runs in inference mode; what it returns must still enter autograd (the trainers' forward)."""
    model = tiny_model().train()
    s = sample(model, PROMPTS, EOT, group_size=2, max_new_tokens=4, seed=0)
    assert model.training and not any(torch.is_tensor(t) and t.is_inference() for t in vars(s).values())
    completion_logprobs(model, s).sum().backward()
    assert model.lm_head.weight.grad is not None


@pytest.mark.parametrize("kw", [{}, {"position": "rotary"}, {"token_shift": 3}])
def test_a_group_shares_its_prompt_forward_with_the_same_logits_and_gradients(kw):
    """completion_logits runs a group's prompt once and its G completions on its cached keys and values:
    the logits, hidden states and every parameter's gradient are those of one forward per row."""
    model = tiny_model(**kw).train()
    g = torch.Generator().manual_seed(0)
    completions = [torch.randint(0, 60, (n,), generator=g).tolist() for n in (6, 2, 4, 1, 5, 3, 6, 6, 2)]
    # three groups of three: left-padded prompts of 5, 2 and 3 tokens, right-padded completions
    grouped = completion_batch([p for p in PROMPTS for _ in range(3)], completions, EOT, group_size=3)
    results = []
    for samples in (grouped, replace(grouped, group_size=1)):
        model.zero_grad()
        logits, hidden = completion_logits(model, samples, return_hidden=True)
        (logits.log_softmax(-1).gather(-1, samples.tokens[..., None])[..., 0] * samples.mask).sum().backward()
        results.append((logits, hidden, [p.grad.clone() for p in model.parameters()]))
    (lg, hg, gg), (lf, hf, gf) = results
    torch.testing.assert_close(lg, lf, atol=1e-5, rtol=0)
    torch.testing.assert_close(hg, hf, atol=1e-5, rtol=0)
    for a, b in zip(gg, gf):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # one-token completions: only the prompt's forward
    one = completion_batch([[1, 2, 3], [1, 2, 3]], [[4], [5]], EOT, group_size=2)
    torch.testing.assert_close(completion_logits(model, one), completion_logits(model, replace(one, group_size=1)),
                               atol=1e-5, rtol=0)
