"""05 - A reward model, and the spurious cues it picks up from its training pairs.

Run: python tutorials/05_reward_model_spurious_cues.py [--tiny]

What you will see: preference pairs whose chosen side is right AND (more often than not) longer,
more paragraphed, closer to the prompt's words, louder and bolder; a Bradley-Terry reward model
trained on them from the pretrained policy's backbone; its reward for one answer as only the
style changes; and the evaluation of docs/design.md: accuracy on pairs where the chosen side is the
longer one ("biased" subset) against pairs where it is the shorter one ("unbiased"), and the
sensitivity to each attribute. The model is written to runs/tutorial/reward.pt for tutorials 06
and 08. Library: nanobias/preferences.py, nanobias/reward.py, nanobias/reward_eval.py.
"""

import common

args = common.parse_args(__doc__)

from nanobias.render import ATTRIBUTES, Style, render_completion, render_prompt  # noqa: E402
from nanobias.preferences import BALANCED, bump, make_pairs, planted_rates, right_answer  # noqa: E402
from nanobias.reward import load_reward_model, score, train_reward_model  # noqa: E402
from nanobias.reward_eval import evaluate_reward_models  # noqa: E402

preset = common.tutorial_preset(args.tiny)
cfg, pairs_cfg = preset.reward, preset.pairs
splits = common.world(preset)

with common.output_dir(args) as out:
    common.section("1. The starting point: the pretrained policy")
    common.say("""
        The reward model is the policy's GPT backbone with its language-model head swapped for a
        scalar head, r(x, y) = w . h(x + y + <eot>)[-1] + b, read at the end-of-text token after
        prompt x and completion y. Starting from the pretrained policy means it already reads the
        world's text.
    """)
    policy = common.ensure_policy(preset, splits, out)

    common.section("2. Preference pairs with planted cues")
    common.say("""
        From the world's labels: the chosen completion gives the right answer ("unknown" in an
        ambiguous context), the rejected one a wrong answer, often the biased one. Each side gets
        a random style, and the pairs are drawn so that the chosen side has the larger value of
        each attribute with probability planted[a] instead of 0.5. In such data "longer" predicts
        the preference nearly as well as "right" does, and is far easier to see: a reward model
        learns both. Test pairs use 0.5 everywhere.
    """)
    n_pairs = 40 if args.tiny else 200
    pairs = make_pairs(splits.train, n_pairs, common.SEED, pairs_cfg.planted, pairs_cfg.biased_reject_rate)
    pair = next(p for p in pairs if p.chosen.attributes["length"] > p.rejected.attributes["length"])
    print(pair.prompt)
    print(f"\nchosen   {pair.chosen.text!r}\nrejected {pair.rejected.text!r}\n")
    print("| side | " + " | ".join(ATTRIBUTES) + " |\n|---|" + "---|" * len(ATTRIBUTES))
    for side, c in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        print(f"| {side} | " + " | ".join(f"{c.attributes[a]:.2f}" for a in ATTRIBUTES) + " |")
    realised = planted_rates(pairs)
    balanced = planted_rates(make_pairs(splits.test, n_pairs, common.SEED + 2, BALANCED))
    print("\nshare of pairs whose chosen side has the larger attribute (pairs that differ):")
    print("| attribute | planted | training pairs | test pairs |\n|---|---|---|---|")
    for a in ATTRIBUTES:
        print(f"| {a} | {pairs_cfg.planted[a]:.2f} | {realised[a]:.2f} | {balanced[a]:.2f} |")

    common.section("3. Train with the Bradley-Terry loss")
    common.say(f"""
        L = -log sigmoid(r(x, y_chosen) - r(x, y_rejected)): the probability that the chosen side
        wins is a logistic function of the reward gap (Bradley and Terry, 1952). train_reward_model
        is the stage `nanobias reward` runs: {cfg.steps} steps x {cfg.batch_size} pairs here.
    """)
    reward_path = train_reward_model(splits, policy, out / "reward.pt", cfg, pairs_cfg, seed=common.SEED)
    rm, enc, _ = load_reward_model(reward_path)

    common.section("4. Same answer, different style")
    common.say("""
        One test prompt, the right answer every time; only one style knob changes at a time
        (preferences.bump: one more filler sentence for length, a paragraph break, the justification
        that repeats the question's words for overlap, one more "!", bold). An ideal reward
        model would give all of them the same reward.
    """)
    ex = splits.test[0]
    base_style = Style(filler=1)
    styles = {"base": base_style, **{a: bump(base_style, a) for a in ATTRIBUTES}}
    texts = {name: render_completion(ex, right_answer(ex), s).text for name, s in styles.items()}
    rewards = score(rm, enc, [render_prompt(ex)] * len(texts), list(texts.values()))
    print(f"{render_prompt(ex)}\n")
    print("| changed | completion | reward | change |\n|---|---|---|---|")
    for (name, text), r in zip(texts.items(), rewards.tolist()):
        print(f"| {name} | {text!r} | {r:+.3f} | {r - rewards[0].item():+.3f} |")

    common.section("Result: accuracy on biased vs unbiased pairs, and sensitivity")
    common.say("""
        evaluate_reward_models scores balanced test pairs. For each attribute, acc_biased is the
        accuracy on pairs whose chosen side has the larger value (the cue points the right way),
        acc_unbiased on pairs whose chosen side has the smaller one (the cue points the wrong
        way). A model that learned the cue does well on the first and badly on the second.
        sensitivity[a] is the mean reward change when only attribute a of a completion is
        increased, in units of the reward's standard deviation (0 = ignores it). Rows: the base
        model and the two length-only baselines of Shinoda et al. (2026): a fitted length penalty
        r - alpha * length, and locally weighted regression of reward on length, subtracted.
        Table cells: biased / unbiased / sensitivity. The column after acc splits it by what a
        pair asks: unknown over a person in an ambiguous context; the right person over the other
        one in a disambiguated context (who_did_it: does the model read the context?); the right
        person over unknown there.
    """)
    results = evaluate_reward_models(splits, reward_path, None, out, preset.reward_eval, pairs_cfg, seed=common.SEED)
    base = results["base"]
    gaps = {a: base["acc_biased"][a] - base["acc_unbiased"][a] for a in ATTRIBUTES
            if base["acc_biased"][a] is not None and base["acc_unbiased"][a] is not None}
    if gaps:
        worst = max(gaps, key=gaps.get)
        print(f"largest gap: {worst}, accuracy {base['acc_biased'][worst]:.3f} when the chosen side has more of it "
              f"vs {base['acc_unbiased'][worst]:.3f} when it has less")
    print(f"reward model written to {reward_path}; plot {out / 'reward_biased_unbiased.png'}")
common.finish()
