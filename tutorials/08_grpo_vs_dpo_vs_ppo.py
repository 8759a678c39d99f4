"""08 - GRPO vs DPO vs PPO at the same budget, from the same biased policy and reward model.

Run: python tutorials/08_grpo_vs_dpo_vs_ppo.py [--tiny]

What you will see: the three RL methods of BiasGRPO's comparison, each run by its library stage
function (the same calls as `nanobias grpo | dpo | ppo` and `nanobias reproduce`) from the policy
of tutorial 04, with the reward model of tutorial 05 as the reward in BOTH modes (rl.make_scorer;
the oracle reward is never used here). Then BBQ's metrics of all four policies (metrics.format_table),
the training stability of each method, and their reward curves in one PNG.
Library: nanobias/grpo.py, dpo.py, ppo.py, rl.py, evaluate.py.
"""

import time

import common

args = common.parse_args(__doc__)

from nanobias import plots, rl  # noqa: E402
from nanobias.checkpoint import load_policy  # noqa: E402
from nanobias.dpo import train_dpo  # noqa: E402
from nanobias.evaluate import evaluate_policy  # noqa: E402
from nanobias.metrics import format_table  # noqa: E402
from nanobias.grpo import train_grpo  # noqa: E402
from nanobias.ppo import train_ppo  # noqa: E402
from nanobias.reproduce import budget  # noqa: E402

preset = common.tutorial_preset(args.tiny)
splits = common.world(preset)

with common.output_dir(args) as out:
    common.section("0. The policy of tutorial 04 and the reward model of tutorial 05")
    reward_path = common.ensure_reward(preset, splits, out)
    policy_path = out / "policy.pt"
    score_fn = rl.make_scorer(reward_path)  # the reward model; rl.make_scorer(oracle=True) would use the labels
    # Log-probs and losses on the chunked PyTorch path, what backend="auto" picks on a CPU. Named
    # here because with TRITON_INTERPRET=1 in the environment (tutorial 09, the tests) "auto" would
    # run the Triton kernels through the interpreter: the same numbers, many times slower.
    BACKEND = "torch"

    common.section("1. One budget for all three")
    b = budget(preset)
    common.say(f"""
        A fair comparison holds the budget fixed (preset.rl): {b['steps']} steps; GRPO and PPO both
        sample B = {b['prompts_per_step']} prompts x G = {b['group_size']} completions per step (at most
        {b['max_new_tokens']} tokens) and score them with the reward model, {b['reward_model_calls']['grpo']}
        reward-model calls in all; DPO trains on as many preference pairs ({b['dpo_preference_pairs']}).
        The same reward model also scores samples of DPO's policy along the way, only to draw its
        reward curve (DPO never uses a reward in its loss). These are a few steps only: the point
        is to see the three machines run side by side; `nanobias reproduce` runs them longer.
    """)
    histories, stability, seconds = {}, {}, {}

    common.section("2. GRPO: group-relative advantages, no critic")
    common.say("""
        Per step: sample G completions per prompt, score them, A_i = (r_i - mean) / std within
        each group (tutorial 07), then the clipped objective plus beta * k3 KL to the initial
        policy. Only the policy is trained.
    """)
    start = time.perf_counter()
    result = train_grpo(splits, policy_path, out / "grpo.pt", score_fn, preset.rl, preset.grpo, seed=common.SEED,
                        backend=BACKEND)
    seconds["grpo"] = time.perf_counter() - start
    histories["grpo"], stability["grpo"] = result["history"], result["stability"]

    common.section("3. DPO: offline preference pairs, no sampling, no reward in the loss")
    common.say("""
        L = -log sigmoid(beta * h), h = the chosen side's log-ratio to the reference minus the
        rejected side's (Rafailov et al., 2023). The pairs are the reward model's own kind of
        training pairs (planted cues included): DPO learns from fixed data and never sees what
        its own policy would say. BiasGRPO calls it the offline baseline.
    """)
    start = time.perf_counter()
    result = train_dpo(splits, policy_path, out / "dpo.pt", preset.rl, preset.dpo, preset.pairs, seed=common.SEED,
                       backend=BACKEND, score_fn=score_fn)
    seconds["dpo"] = time.perf_counter() - start
    histories["dpo"] = [h for h in result["history"] if "reward_mean" in h]  # the probed steps
    stability["dpo"] = result["stability"]

    common.section("4. PPO: a learned critic")
    common.say("""
        The standard RLHF recipe: a value head on the policy's backbone estimates V(s_t) per
        token, the reward arrives at the last token minus a per-token KL penalty, advantages come
        from GAE, and policy and critic are trained together with clipped losses. The same B x G
        samples and reward-model calls per step as GRPO; BiasGRPO argues the critic is what makes
        PPO less stable.
    """)
    start = time.perf_counter()
    result = train_ppo(splits, policy_path, out / "ppo.pt", score_fn, preset.rl, preset.ppo, seed=common.SEED,
                       backend=BACKEND)
    seconds["ppo"] = time.perf_counter() - start
    histories["ppo"], stability["ppo"] = result["history"], result["stability"]

    common.section("5. Evaluate all four policies")
    metrics = {}
    for name in ("base", "grpo", "dpo", "ppo"):
        model, enc, _ = load_policy(policy_path if name == "base" else out / f"{name}.pt")
        metrics[name] = evaluate_policy(model, enc, splits.test, splits.heldout, max_examples=preset.eval_examples,
                                        desc=f"eval {name}")
    curves = plots.reward_curves(histories, out / "rl_reward_curves.png")

    common.section("Result: GRPO vs DPO vs PPO")
    common.say("""
        Policy metrics on the test split (tutorial 02): higher acc_ambig (answers "unknown" where
        the context says nothing) and s_amb nearer 0 mean less bias; acc_disambig should not
        drop; mean_len shows whether a method learned to write longer answers (the reward
        model's length cue). Stability: reward_fluctuation is the std of the per-step mean
        reward over the second half of training, mean_reward_std the average spread of rewards
        within a step.
    """)
    print(format_table(metrics))
    print("| method | seconds | final_reward_mean | reward_fluctuation | mean_reward_std |\n|---|---|---|---|---|")
    for name in ("grpo", "dpo", "ppo"):
        s, h = stability[name], histories[name]
        print(f"| {name} | {seconds[name]:.0f} | {s['final_reward_mean']:+.4f} | {s['reward_fluctuation']:.4f} | "
              f"{sum(x['reward_std'] for x in h) / len(h):.4f} |")
    print(f"\nreward: the reward model {reward_path}; reward curves: {curves}")
common.finish()
