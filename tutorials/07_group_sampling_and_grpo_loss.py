"""07 - Group sampling and the GRPO loss, by hand, next to the library's.

Run: python tutorials/07_group_sampling_and_grpo_loss.py [--tiny]

What you will see: G completions for each of two prompts, sampled with one shared prompt prefix;
their rewards; the group-normalised advantage computed by hand and by grpo.group_advantages;
one GRPO update of the policy (nanobias.grpo.grpo_update); and then the GRPO loss of the moved
policy written out term by term in plain PyTorch, compared, value and gradient, with
grpo.grpo_loss on each backend ("triton" is the fused kernel nanobias.kernels.fused_grpo_loss).
Library: nanobias/sampling.py, nanobias/grpo.py, nanobias/kernels/.
"""

import torch

import common

args = common.parse_args(__doc__)

from nanobias import rl  # noqa: E402
from nanobias.checkpoint import load_policy  # noqa: E402
from nanobias.answers import extract_answer  # noqa: E402
from nanobias.evaluate import oracle_rewards  # noqa: E402
from nanobias.grpo import fixed_logprobs, group_advantages, grpo_loss, grpo_update  # noqa: E402
from nanobias.kernels.dispatch import resolve_backend  # noqa: E402
from nanobias.render import render_prompt  # noqa: E402
from nanobias.sampling import completion_logits, completion_logprobs, completion_texts, sample  # noqa: E402
from nanobias.optim import make_optimizer  # noqa: E402

preset = common.tutorial_preset(args.tiny)
splits = common.world(preset)
G = 4 if args.tiny else 8
# two prompts of G completions each; sampling length and temperature as the preset's budget says
rl_cfg = rl.RLConfig(prompts_per_step=2, group_size=G, max_new_tokens=preset.rl.max_new_tokens,
                     temperature=preset.rl.temperature)
grpo_cfg = preset.grpo  # GRPO's own settings: learning rate, KL weight beta, clip range, ...
EPS_LOW, EPS_HIGH = grpo_cfg.eps_low, grpo_cfg.eps_high

with common.output_dir(args) as out:
    common.section("0. The pretrained policy of tutorial 04 and the reward model of tutorial 05")
    reward_path = common.ensure_reward(preset, splits, out)
    model, enc, _ = load_policy(out / "policy.pt")
    score_fn = rl.make_scorer(reward_path)

    common.section("1. Group sampling")
    common.say(f"""
        GRPO never asks "how good is this answer?" in absolute terms, only "better or worse than
        its siblings?". So for each prompt we sample a group of G = {G} completions at temperature
        {rl_cfg.temperature}. sample(..., group_size=G) prefills each prompt once and repeats its KV
        cache G times (tutorial 03); rows come out as b*G + g, and each row carries the
        log-probability of every sampled token under the policy that sampled it.
    """)
    examples = [next(e for e in splits.test if e.context_condition == "ambig"),
                next(e for e in splits.test if e.context_condition == "disambig")]
    prompts = [enc.encode_ordinary(render_prompt(e)) for e in examples]
    samples = sample(model, prompts, enc.eot_token, group_size=G, max_new_tokens=rl_cfg.max_new_tokens,
                     temperature=rl_cfg.temperature, seed=common.SEED)
    texts = completion_texts(enc, samples)
    rows = [e for e in examples for _ in range(G)]  # example of each row
    print(f"prompt_ids {tuple(samples.prompt_ids.shape)}, tokens {tuple(samples.tokens.shape)}, "
          f"mask {tuple(samples.mask.shape)}, logprobs {tuple(samples.logprobs.shape)}")
    print(f"the G rows of a group share one prompt: {torch.equal(samples.prompt_ids[0], samples.prompt_ids[G - 1])}")
    again = completion_logprobs(model, samples, temperature=rl_cfg.temperature)  # one full forward
    print(f"sampling log-probs = log-probs of a fresh forward pass: max difference "
          f"{((again - samples.logprobs) * samples.mask).abs().max().item():.1e}")

    common.section("2. Rewards and the group-normalised advantage")
    common.say("""
        Each completion is scored by the reward model of tutorial 05 (rl.make_scorer: what GRPO
        uses in the pipeline). For reading, each line also says whether the answer is right
        by the world's labels ("unknown" in an ambiguous context). Then, per group,
        A_i = (r_i - mean(r)) / (std(r) + eps) with the population std. A completion is pushed up
        when it beats its siblings and down when it loses, whatever the absolute scale of the
        reward; a group whose rewards are all equal gets A = 0 and teaches nothing. No value
        network is needed.
    """)
    rewards = score_fn(rows, [render_prompt(e) for e in rows], texts)  # [B*G]
    right = oracle_rewards(rows, texts)
    r = rewards.view(-1, G)  # [B, G]
    centred = r - r.mean(1, keepdim=True)
    by_hand = torch.where(r.amax(1, keepdim=True) == r.amin(1, keepdim=True), 0.0,
                          centred / (r.std(1, correction=0, keepdim=True) + 1e-4)).view(-1)
    advantages = group_advantages(rewards, G)
    for i, (text, e) in enumerate(zip(texts, rows)):
        if i % G == 0:
            print(f"\nprompt {i // G} [{e.context_condition}] {e.question} right answer: {e.answers[e.label]!r}")
        verdict = "right" if right[i] else "invalid" if extract_answer(e, text) is None else "wrong"
        print(f"  g={i % G}  reward {rewards[i]:+.3f}  A {advantages[i]:+.3f}  {verdict:7} {text.strip()[:60]!r}")
    print(f"\nmax |A by hand - grpo.group_advantages| = {(by_hand - advantages).abs().max().item():.1e}")
    print(f"a group of equal rewards: group_advantages([0.7, 0.7, 0.7, 0.7]) = "
          f"{group_advantages(torch.tensor([0.7] * 4), 4).tolist()}")

    common.section("3. One GRPO update moves the policy")
    common.say(f"""
        grpo_update (nanobias/grpo.py) computes the loss with grpo_loss, written out in the same
        file, and takes one optimiser step. A frozen copy of the policy before the step is the reference for the KL
        term (rl.reference_policy), and its log-probs are also logp_old, the policy that sampled.
        At the preset's learning rate ({grpo_cfg.lr:g}) one step already moves some ratios pi/pi_old
        out of [1 - {EPS_LOW}, 1 + {EPS_HIGH}], where step 4 finds them clipped. Before the step the
        policy IS the sampler and the reference: every ratio is 1 and the KL 0, so the loss
        printed is about -mean(A) = 0; what moves the policy is its gradient (grad_norm).
    """)
    ref_model = rl.reference_policy(model)
    opt = make_optimizer(model, grpo_cfg)
    model.train()
    stats = grpo_update(model, ref_model, opt, samples, rewards, rl_cfg, grpo_cfg, backend="torch")[0]
    print("update stats:", {k: round(v, 4) for k, v in stats.items()})
    model.eval()

    common.section("4. The GRPO loss, term by term")
    common.say(f"""
        On the moved policy, for each completion token t of row i (mask = 1):
        ratio = exp(logp - logp_old); surrogate = min(ratio * A_i, clip(ratio, 1 - eps_low,
        1 + eps_high) * A_i); k3 KL = exp(logp_ref - logp) - (logp_ref - logp) - 1 (>= 0, unbiased
        for KL(pi || pi_ref)); per-token loss = -surrogate + beta * KL with beta = {grpo_cfg.beta}.
        Aggregation "grpo": mean over each completion's tokens, then mean over completions.
        The clip is what makes several updates on one batch safe: once a token's ratio is past
        the clip in the direction A wants, its gradient is zero.
    """)
    T = rl_cfg.temperature
    logp_old = fixed_logprobs(ref_model, samples, T, backend="reference")  # [R, N], as grpo_update computes it
    logp_ref = logp_old  # here the sampling policy is also the reference
    logits = completion_logits(model, samples).detach()  # [R, N, V], a leaf to take gradients against
    mask = samples.mask.bool()

    leaf = logits.clone().requires_grad_()
    logp = torch.log_softmax(leaf / T, -1).gather(-1, samples.tokens[..., None]).squeeze(-1)  # [R, N]
    ratio = torch.exp(logp - logp_old)
    A = advantages[:, None]  # [R, 1]
    surrogate = torch.minimum(ratio * A, ratio.clamp(1 - EPS_LOW, 1 + EPS_HIGH) * A)
    kl = torch.exp(logp_ref - logp) - (logp_ref - logp) - 1
    per_token = torch.where(mask, -surrogate + grpo_cfg.beta * kl, 0.0)  # padding: exactly 0, never 0 * inf
    loss = (per_token.sum(1) / mask.sum(1)).mean()
    loss.backward()
    hand = {"loss": loss.item(), "kl": kl[mask].mean().item(),
            "clip_frac": ((ratio.clamp(1 - EPS_LOW, 1 + EPS_HIGH) * A < ratio * A) & mask).sum().item()
            / mask.sum().item(),
            "grad": leaf.grad}
    print(f"ratio over completion tokens: min {ratio[mask].min().item():.3f}, max {ratio[mask].max().item():.3f}")

    implementations = {}
    for backend in ("reference", "torch", "triton"):  # "triton": the fused kernel, where it can run
        if backend != "triton" or resolve_backend("auto", logits.device, "tutorial") == "triton":
            implementations[f"grpo.grpo_loss ({backend})"] = lambda x, b=backend: grpo_loss(
                x, samples.tokens, samples.mask, rewards, G, logp_old=logp_old, logp_ref=logp_ref, eps_low=EPS_LOW,
                eps_high=EPS_HIGH, beta=grpo_cfg.beta, temperature=T, backend=b)
    results = {"by hand (this file)": hand}
    for name, fn in implementations.items():
        leaf = logits.clone().requires_grad_()
        value, stats = fn(leaf)
        value.backward()
        results[name] = {"loss": value.item(), "kl": stats["kl"].item(), "clip_frac": stats["clip_frac"].item(),
                         "grad": leaf.grad}

    common.section("Result: the hand-written loss and the library's agree")
    print("| implementation | loss | kl | clip_frac | max abs loss diff | max abs grad diff |")
    print("|---|---|---|---|---|---|")
    worst = 0.0
    for name, res in results.items():
        loss_diff = abs(res["loss"] - hand["loss"])
        grad_diff = (res["grad"] - hand["grad"]).abs().max().item()
        worst = max(worst, loss_diff, grad_diff)
        print(f"| {name} | {res['loss']:+.6f} | {res['kl']:.6f} | {res['clip_frac']:.3f} | {loss_diff:.1e} "
              f"| {grad_diff:.1e} |")
    print(f"\nlargest difference from the hand-written loss: {worst:.1e} "
          f"({'agree' if worst < 1e-4 else 'DISAGREE'} to float32 precision)")
common.finish()
