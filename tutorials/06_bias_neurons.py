"""06 - Find the reward model's bias neurons and clamp them to their medians.

Run: python tutorials/06_bias_neurons.py [--tiny]

What you will see: the causal intervention of Shinoda et al. (2026) step by step, with the
library's functions: record every MLP neuron's activation at the token the reward head reads,
rank-correlate each neuron with each spurious attribute (Spearman), pick the top-k and bottom-k
neurons per attribute, and replace their activations by validation medians at inference. Then
the full search (k chosen on validation accuracy, as `nanobias intervene` does) and the reward
model evaluated with and without the intervention. Library: nanobias/intervention.py,
nanobias/selection.py, nanobias/reward_eval.py, kernels.masked_gelu (which applies the clamp inside the MLP).
"""

import common

args = common.parse_args(__doc__)

from nanobias.render import ATTRIBUTES, Style, render_completion, render_prompt  # noqa: E402
from nanobias.intervention import capture_pairs, load_intervention  # noqa: E402
from nanobias.selection import attribute_correlations, build_intervention, k_grid, select_intervention  # noqa: E402
from nanobias.preferences import BALANCED, bump, make_pairs, right_answer  # noqa: E402
from nanobias.reward import load_reward_model, score  # noqa: E402
from nanobias.reward_eval import evaluate_reward_models  # noqa: E402

preset = common.tutorial_preset(args.tiny)
cfg, pairs_cfg = preset.intervention, preset.pairs
splits = common.world(preset)

with common.output_dir(args) as out:
    common.section("0. The reward model of tutorial 05")
    reward_path = common.ensure_reward(preset, splits, out)
    rm, enc, _ = load_reward_model(reward_path)

    common.section("1. Capture: every neuron's activation at the last token")
    common.say("""
        The reward head reads the final hidden state at the end-of-text token, so the neurons
        that matter are the MLP neurons at that position. Over balanced validation pairs (both
        completions of each), record a_{l,h}(x, y) for every layer l and neuron h (capture_pairs).
        Inside, prefill runs every token but the last once and keeps the keys and values;
        last_token_rewards then runs only the last token, which is all that an intervention at the
        last position changes, so trying many interventions later costs one token per sequence.
    """)
    pairs = make_pairs(splits.val, pairs_cfg.val_pairs, common.SEED + 1, BALANCED)
    completions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    _, _, acts = capture_pairs(rm, enc, pairs)  # acts [2P, L, H]
    n_layer, n_neurons = acts.shape[1:]
    print(f"{len(completions)} completions -> activations {tuple(acts.shape)} "
          f"({n_layer} layers x {n_neurons} neurons = {n_layer * n_neurons} neurons)")

    common.section("2. Correlate: Spearman's rho of each neuron with each attribute")
    common.say("""
        rho = Pearson correlation of the ranks (ties share their mean rank): it catches any
        monotone relation, and a few huge activations cannot dominate it. A neuron with a large
        |rho| for "length" encodes how long the completion is, whatever its content.
    """)
    rho = attribute_correlations(acts, completions)  # [A, L*H]
    print("| attribute | most positive neuron (layer, index): rho | most negative: rho | neurons with |rho| > 0.5 |")
    print("|---|---|---|---|")
    for j, a in enumerate(ATTRIBUTES):
        top, bottom = rho[j].argmax().item(), rho[j].argmin().item()
        print(f"| {a} | ({top // n_neurons}, {top % n_neurons}): {rho[j, top]:+.3f} | "
              f"({bottom // n_neurons}, {bottom % n_neurons}): {rho[j, bottom]:+.3f} | "
              f"{int((rho[j].abs() > 0.5).sum())} |")

    common.section("3. Select and clamp, with a fixed k")
    demo_k = max(k_grid(n_layer * n_neurons, cfg.k_fractions))
    common.say(f"""
        Take the k neurons with the largest rho and the k with the smallest, per attribute, and
        at inference set each to its median over the validation completions: do(a_n = m_n). The
        attribute can no longer flow through those neurons to the reward, while the content
        still can: an estimate of the content's controlled direct effect instead of its total
        effect. Here k = {demo_k} per attribute (the largest k that step 4 will try), on the demo
        of tutorial 05 (one answer, one knob at a time). Intervention.applied(model) sets the
        NeuronSites' clamp (kernels.masked_gelu) and restores it on exit.
    """)
    demo = build_intervention(rho, acts, {a: demo_k for a in ATTRIBUTES})
    print(f"{len(demo.neurons)} neurons clamped, per layer {demo.per_layer()}")
    ex = splits.test[0]
    base_style = Style(filler=1)
    styles = {"base": base_style, **{a: bump(base_style, a) for a in ATTRIBUTES}}
    texts = [render_completion(ex, right_answer(ex), s).text for s in styles.values()]
    prompts = [render_prompt(ex)] * len(texts)
    plain = score(rm, enc, prompts, texts)
    clamped = score(rm, enc, prompts, texts, intervention=demo)
    print("\n| changed | reward | change | reward, clamped | change, clamped |\n|---|---|---|---|---|")
    for name, r, c in zip(styles, plain.tolist(), clamped.tolist()):
        print(f"| {name} | {r:+.3f} | {r - plain[0].item():+.3f} | {c:+.3f} | {c - clamped[0].item():+.3f} |")

    common.section("4. Choose k on validation accuracy")
    grid = ", ".join(f"1/{round(1 / f)}" for f in cfg.k_fractions)
    common.say(f"""
        k per attribute comes from a grid of fractions of all neurons (0, {grid}),
        by coordinate ascent on the validation pairs' accuracy: clamping too much also removes
        content. select_intervention is the stage `nanobias intervene` runs; it writes
        intervention.json next to the reward model.
    """)
    path = select_intervention(splits, reward_path, out / "intervention.json", cfg, pairs_cfg, seed=common.SEED)
    chosen = load_intervention(path)

    common.section("Result: the reward model with and without its bias neurons")
    common.say("""
        Test pairs as in tutorial 05 (cells: accuracy on the biased subset / on the unbiased
        subset / sensitivity). cirm clamps at the last position (where the neurons were found),
        cirm_all at every position. The intervention works when the gap between biased and
        unbiased accuracy and the sensitivity shrink while overall accuracy holds. all_neurons
        clamps every neuron at the last position: the most any last-token edit could remove.
        The line under the table splits the length sensitivity into the part that comes from the
        positions alone (the same text read where the longer one ends) and the part that comes
        from the added words. In this nano world the first part dominates: the reward model reads
        length from the position embedding, which reaches the reward head through the residual
        stream and attention without passing any MLP neuron, so clamping neurons leaves it alone.
    """)
    results = evaluate_reward_models(splits, reward_path, path, out, preset.reward_eval, pairs_cfg, seed=common.SEED)
    print(f"chosen intervention: {len(chosen.neurons)} of {chosen.n_layer * chosen.n_neurons} neurons clamped, "
          f"k per attribute {chosen.k}, written to {path}")
    print(f"plots: {out / 'neurons_per_layer.png'}, {out / 'reward_biased_unbiased.png'}")
common.finish()
