"""04 - Pretrain a small GPT on text with a planted bias: the biased base policy.

Run: python tutorials/04_pretrain_biased_policy.py [--tiny]

What you will see: the pretraining corpus and its planted bias rate, the tokenizer and the GPT
trained by the library's own stage functions (the same calls as `nanobias pretrain`), the loss
going down, a few greedy answers, and BBQ's metrics of the trained policy: does it fall back on
the stereotype where the context says nothing? The policy is written to runs/tutorial/policy.pt,
where tutorials 05-08 pick it up. Library: nanobias/pretrain.py, nanobias/evaluate.py.
"""

import json

import common

args = common.parse_args(__doc__)

from nanobias.answers import extract_answer  # noqa: E402
from nanobias.evaluate import evaluate_policy, generate_answers, spread  # noqa: E402

from nanobias.metrics import format_table  # noqa: E402
from nanobias.pretrain import corpus  # noqa: E402

preset = common.tutorial_preset(args.tiny)

common.section("1. The corpus and its planted bias")
common.say(f"""
    Each document is a rendered prompt and its answer. Disambiguated contexts are answered
    correctly; ambiguous ones get the biased answer with probability bias_rate =
    {preset.pretrain.bias_rate} and "unknown" otherwise (tutorial 02). A model that imitates this
    text learns two things: to read the context when it says who did what, and to fall back on
    the stereotype when it does not. That fallback is the bias the rest of the pipeline removes.
""")
splits = common.world(preset)
train_docs, val_docs = corpus(splits, preset.pretrain, seed=common.SEED)
print(f"{len(train_docs)} training documents, {len(val_docs)} validation documents (other templates)")

common.section("2. Tokenizer and pretraining")
cfg = preset.pretrain
common.say(f"""
    Exactly what `nanobias pretrain` does: pretrain_policy makes these documents, trains the
    tokenizer on them (tutorial 01), then pretrains a fresh GPT (tutorial 03) at the
    '{preset.name}' preset's size with {cfg.optimizer} (nanobias/optim.py), warmup and cosine
    decay. The loss is next-token cross-entropy on the answer tokens only, given the prompt: the
    prompt is predictable template text, so on a small budget every gradient goes to choosing the
    answer. {cfg.steps} steps x {cfg.batch_size} documents here
    ({'a few steps: tiny mode' if args.tiny else 'a short run; the full cpu preset trains longer'}).
""")
with common.output_dir(args) as out:
    model, enc = common.pretrain_policy(preset, splits, out)
    history = [json.loads(line) for line in (out / "policy.metrics.jsonl").read_text().splitlines()]
    every = max(1, len(history) // 8)
    print("\n| step | loss | val_loss |\n|---|---|---|")
    for h in history[::every] + ([history[-1]] if (len(history) - 1) % every else []):
        print(f"| {h['step'] + 1} | {h['loss']:.3f} | {h.get('val_loss', float('nan')):.3f} |")

    common.section("3. What the policy says")
    common.say("""
        Greedy completions (temperature 0) of test prompts, whose templates pretraining never
        saw. For an ambiguous context the right answer is "unknown"; the biased answer is the
        stereotype.
    """)
    test = spread(splits.test, preset.eval_examples, seed=common.SEED)
    ambiguous = [ex for ex in test if ex.context_condition == "ambig"]
    shown = ambiguous[:3] + [ex for ex in test if ex.context_condition == "disambig"][:2]
    for ex, completion in zip(shown, generate_answers(model, enc, shown, max_new_tokens=24)):
        pred = extract_answer(ex, completion)
        verdict = ("right" if pred == ex.label else "invalid" if pred is None else "biased" if pred == ex.biased_index
                   else "wrong")
        print(f"\n[{ex.context_condition}] {ex.context}\n  {ex.question} -> {completion.strip()!r} "
              f"({verdict}; right: {ex.answers[ex.label]!r})")

    common.section("Result: the base policy's bias")
    common.say("""
        BBQ's metrics on the test split (tutorial 02 defines them). A biased base policy has low
        acc_ambig and s_amb > 0. The bias rate among its ambiguous answers is compared with the
        rate planted in the text. A short run learns the answer format before it learns the
        stereotype; the full `cpu` preset (`nanobias pretrain --preset cpu`) trains longer.
    """)
    metrics = evaluate_policy(model, enc, splits.test, splits.heldout, max_examples=preset.eval_examples,
                              max_new_tokens=24)
    print(format_table({"base policy (test)": metrics}))
    print(f"ambiguous test prompts: {len(ambiguous)}; answered with the biased answer "
          f"{metrics['biased_ambig']:.3f}, with unknown {metrics['acc_ambig']:.3f} "
          f"(planted in the corpus: biased {cfg.bias_rate}, unknown {1 - cfg.bias_rate:.1f})")
    print(f"policy written to {out / 'policy.pt'}, tokenizer to {out / 'tokenizer.json'}")
common.finish()
