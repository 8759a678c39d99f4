"""Multiple-choice scoring of BBQ (as lm-evaluation-harness scores it), beside the free-text answers.

For an example with rendered prompt x and its three options o_0, o_1, o_2, the policy's
log-likelihood of each option as the completion of the prompt:

    ll_j   = sum_t log p(o_j[t] | x, o_j[<t])        (raw: the whole option's log-probability)
    norm_j = ll_j / chars(o_j)                       (per character of the option text, as written below)
    pred   = argmax_j ll_j   or   argmax_j norm_j    (a tie goes to the lowest index)

BBQ's metrics (metrics.bias_metrics, docs/design.md 4.1) then follow from the predicted indices.
The policy never has to write anything, so no answer is ever invalid (invalid_rate is 0).

Decisions:
- Option text: exactly what the policy writes as a short answer, render.render_completion with
  the default style: a leading space, the option's text, a period (" The grandson.", " Unknown.";
  chars counts every character: 14 and 9). The same form for all three options, so none is
  favoured by formatting; the period closes the option, so an option is not credited with the
  mass of longer phrases it starts ("The old man" inside "The old man's son").
- No end-of-text after the option: the score is of the answer, not of stopping right after it (a
  policy that likes to justify some answers would otherwise lose them), as lm-evaluation-harness.
- Normalisation per character, not per token (lm-evaluation-harness's acc_norm also divides by the
  continuation's length in characters): the divisor is the same whatever the tokenizer, whereas a
  BPE vocabulary trained on the world merges frequent options into few tokens and would favour
  rare, many-token ones under a per-token mean. Raw favours short options (fewer terms to pay
  for); norm favours long ones that are likely token by token; both are reported.
- mean_len is left out (nothing is written); every other key of bias_metrics is kept.

Prompt and option are tokenized apart, as the policy sees them when it samples. Sequences
(three per example, sharing one forward pass of its prompt) are scored `batch_size` at a time,
grouped by length, as dpo.pair_logprobs does: prompts left-padded, options right-padded
(sampling.completion_batch), log-probs from sampling.completion_logprobs. A prompt longer than
block_size minus its longest option loses its first tokens (as dpo.encode_pairs cuts).
"""

import torch

from nanobias.bbq import Example
from nanobias.metrics import bias_metrics
from nanobias.render import render_completion, render_prompt
from nanobias.reward import length_batches
from nanobias.sampling import completion_batch, completion_logprobs

SCORINGS = ("raw", "norm")
TABLE_KEYS = ("acc_ambig", "acc_disambig", "s_amb", "s_dis")


def option_texts(ex: Example) -> list[str]:
    """The three options as the policy writes a short answer: " The grandson." (render_completion)."""
    return [render_completion(ex, j).text for j in range(3)]


@torch.no_grad()
def option_loglikelihoods(model, enc, examples: list[Example], batch_size: int = 64,
                          backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """(ll [E, 3] summed log-probs of each option, chars [E, 3] its length in characters), float32 on CPU.

    `batch_size` sequences (prompt + one option) per forward pass. backend "torch" (the chunked
    log-softmax): evaluation needs no fused kernel, and it gives the same numbers on every device."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size}")
    texts = [t for ex in examples for t in option_texts(ex)]  # row 3e + j: example e, option j
    chars = torch.tensor([float(len(t)) for t in texts]).view(-1, 3)
    if not examples:
        return torch.zeros(0, 3), chars
    block = model.config.block_size
    options = [enc.encode_ordinary(t) for t in texts]
    prompts = [enc.encode_ordinary(render_prompt(ex)) for ex in examples]
    longest = max(len(o) for o in options)
    if longest >= block:
        raise ValueError(f"an option of {longest} tokens leaves no room for its prompt in block_size={block}")
    # an example's three options share its prompt's forward pass (sampling.completion_logits, groups of 3)
    prompts = [p[-(block - max(len(o) for o in options[3 * e:3 * e + 3])):] for e, p in enumerate(prompts)]
    device = next(model.parameters()).device
    ll = torch.empty(len(texts))
    was_training = model.training
    model.eval()
    try:
        lengths = [len(p) + max(len(o) for o in options[3 * e:3 * e + 3]) for e, p in enumerate(prompts)]
        for group in length_batches(lengths, max(1, batch_size // 3)):
            rows = [3 * e + j for e in group for j in range(3)]
            samples = completion_batch([prompts[r // 3] for r in rows], [options[r] for r in rows], enc.eot_token,
                                       device, group_size=3)
            ll[rows] = completion_logprobs(model, samples, backend=backend).sum(-1).float().cpu()
    finally:
        model.train(was_training)
    return ll.view(-1, 3), chars


def choose(scores: torch.Tensor) -> list[int]:
    """[E, 3] -> the index of each row's largest score; of tied ones, the lowest."""
    return [max(range(3), key=row.__getitem__) for row in scores.tolist()]


def option_scores(model, enc, examples: list[Example], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """{"raw": ll [E, 3], "norm": ll / chars [E, 3]}: each option's score under each scoring."""
    ll, chars = option_loglikelihoods(model, enc, examples, batch_size)
    return {"raw": ll, "norm": ll / chars}


def predictions(model, enc, examples: list[Example], batch_size: int = 64) -> dict[str, list[int]]:
    """{"raw": predicted option per example by ll, "norm": by ll per character}."""
    return {s: choose(scores) for s, scores in option_scores(model, enc, examples, batch_size).items()}


def metrics_from_predictions(examples: list[Example], preds: list[int]) -> dict:
    """metrics.bias_metrics of the predicted indices, without mean_len (no text is written)."""
    out = bias_metrics(examples, preds, [""] * len(preds))
    del out["mean_len"]
    return out


def choice_metrics(model, enc, examples: list[Example], batch_size: int = 64) -> dict:
    """{"raw": {...}, "norm": {...}}, each with bias_metrics' keys (no mean_len; invalid_rate 0)."""
    preds = predictions(model, enc, examples, batch_size)
    return {s: metrics_from_predictions(list(examples), preds[s]) for s in SCORINGS}


def choice_table(rows: dict[str, dict], std: dict[str, dict] | None = None) -> str:
    """{name: metrics with a "choice" key} -> a title and a markdown table of TABLE_KEYS, raw and norm
    per name (names without "choice", from an older run, are left out; "" if none has it); a name in
    `std` ({name: metrics' std over seeds}) gets "mean ± std" cells."""
    spread = {name: m["choice"] for name, m in (std or {}).items() if m.get("choice")}
    rows = {name: m["choice"] for name, m in rows.items() if m.get("choice")}
    if not rows:
        return ""

    def cell(name, s, k):
        return f"{rows[name][s][k]:.3f}" + (f" ± {spread[name][s][k]:.3f}" if name in spread else "")
    head = ("Multiple-choice scoring (log-likelihood of each option); raw: summed, norm: per character:\n\n"
            "| | scoring | " + " | ".join(TABLE_KEYS) + " |\n|---|---|" + "---|" * len(TABLE_KEYS) + "\n")
    return head + "".join(f"| {name} | {s} | " + " | ".join(cell(name, s, k) for k in TABLE_KEYS) + " |\n"
                          for name in rows for s in SCORINGS)
