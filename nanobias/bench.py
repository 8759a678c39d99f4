"""`nanobias bench`: how fast a preset's model trains and samples, against what, and when shared.

The model is the preset's shape in GPT-2's architecture (no token shift, the tanh GELU) and trains with
AdamW, so that Hugging Face's GPT-2 does exactly the same work beside it.

- training tokens/s: forward + backward + AdamW on the preset's batch of 128 random tokens a row;
- sampling tokens/s: 16 prompts of 64 random tokens, 64 new tokens each, with the KV cache and
  without; the end-of-text id is one the model never samples, so every row runs all 64;
- against Hugging Face (bench_hf.py, when transformers is installed): GPT2LMHeadModel with the
  same config and inputs; a ratio is nanobias / HF;
- two at once: two copies of this benchmark (same arguments and `--no-compare`: training and
  KV-cache sampling only) run at the same time, each one's rate as a share of the solo rate (an
  even split of what one copy uses is 50%);
- the stage times of a run folder (`--run DIR`: the "seconds" of each DIR/stages/<stage>.json).

Rates that are compared are measured interleaved, a slice of each in turn for `ROUNDS` rounds, so
that all of them see the same machine. A benchmark, not a test: it prints numbers, and on a shared
machine its ratios mean more than its rates.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import nanobias
from nanobias.bench_hf import INSTALL, hf_available, hf_workloads
from nanobias.checkpoint import write_json
from nanobias.errors import UserError
from nanobias.model import GPT, GPTConfig
from nanobias.optim import make_optimizer
from nanobias.presets import get_preset
from nanobias.pretrain import lm_loss
from nanobias.progress import format_seconds
from nanobias.sampling import sample

ROUNDS = 5
SEQ_LEN, PROMPTS, PROMPT_LEN, NEW_TOKENS = 128, 16, 64, 64
ROWS = {"train_tok_s": "training", "sample_tok_s_cache": "sampling, KV cache",
        "sample_tok_s_no_cache": "sampling, no cache"}


def interleaved_rates(work: dict, seconds: float, rounds: int = ROUNDS) -> dict[str, float]:
    """work {name: (fn, units per call)} -> {name: units per second}. Each fn runs once to warm up, then
    gets `seconds` in all, in `rounds` turns: by the end of turn r it has run for r / rounds of it (at
    least one call), so a fn slower than a turn skips turns rather than overrunning."""
    for fn, _ in work.values():
        fn()
    calls, spent = dict.fromkeys(work, 0), dict.fromkeys(work, 0.0)
    for r in range(1, rounds + 1):
        for name, (fn, _) in work.items():
            while not calls[name] or spent[name] < seconds * r / rounds:
                start = time.perf_counter()
                fn()
                spent[name] += time.perf_counter() - start
                calls[name] += 1
    return {name: calls[name] * units / spent[name] for name, (_, units) in work.items()}


def bench_inputs(preset, device) -> tuple[torch.Tensor, list[list[int]]]:
    """(x [batch_size, SEQ_LEN + 1] token ids to train on, PROMPTS prompts of PROMPT_LEN ids)."""
    g = torch.Generator().manual_seed(0)
    vocab = preset.pretrain.vocab_size
    x = torch.randint(0, vocab, (preset.pretrain.batch_size, SEQ_LEN + 1), generator=g).to(device)
    return x, torch.randint(0, vocab - 1, (PROMPTS, PROMPT_LEN), generator=g).tolist()


def nanobias_workloads(model: GPT, preset, x: torch.Tensor, prompts: list[list[int]]) -> dict:
    opt = make_optimizer(model, preset.pretrain)
    no_eot = preset.pretrain.vocab_size  # an id never sampled, so every row runs all NEW_TOKENS

    def train_step():
        loss = lm_loss(model, x[:, :-1], x[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sampler(use_cache: bool):
        return lambda: sample(model, prompts, no_eot, max_new_tokens=NEW_TOKENS, use_cache=use_cache)

    sampled = len(prompts) * NEW_TOKENS
    return {"train_tok_s": (train_step, x[:, :-1].numel()), "sample_tok_s_cache": (sampler(True), sampled),
            "sample_tok_s_no_cache": (sampler(False), sampled)}


def bench_config(preset) -> GPTConfig:
    """The benchmarked GPT: the preset's shape in GPT-2's architecture (no token shift, the tanh GELU, no
    dropout), as Hugging Face's GPT-2 is built beside it: the same work on both sides."""
    return replace(preset.model, vocab_size=preset.pretrain.vocab_size, dropout=0.0, token_shift=0,
                   gelu_approximate="tanh")


def bench_model(preset, seconds: float = 10.0, device: str | None = None, compare: bool = True) -> dict:
    """Rates of nanobias's GPT and, with `compare`, its rate without the KV cache and (transformers
    installed) HF's GPT-2 of the same config, all interleaved. `preset`: a presets.Preset (the CLI's,
    with --set applied) or a name."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    preset = get_preset(preset) if isinstance(preset, str) else preset
    preset = replace(preset, pretrain=replace(preset.pretrain, optimizer="adamw"))  # HF's side takes it too
    config = bench_config(preset)
    torch.manual_seed(0)
    model = GPT(config).to(device)
    x, prompts = bench_inputs(preset, device)
    ours = nanobias_workloads(model, preset, x, prompts)
    if not compare:  # the two headline rates only (what each copy of the two-at-once run measures)
        del ours["sample_tok_s_no_cache"]
    theirs = hf_workloads(config, preset.pretrain, x, prompts, NEW_TOKENS) if compare and hf_available() else {}
    work = {}
    for key, w in ours.items():  # in turn: ours, theirs, ours, ...
        work[("nanobias", key)] = w
        if key in theirs:
            work[("hf", key)] = theirs[key]
    rates = interleaved_rates(work, seconds)
    results = {"preset": preset.name, "device": device, "threads": torch.get_num_threads(),
               "params_M": model.num_params() / 1e6,
               "nanobias": {k: rate for (who, k), rate in rates.items() if who == "nanobias"}}
    if compare:  # None: transformers is not installed
        results["hf"] = {k: rate for (who, k), rate in rates.items() if who == "hf"} or None
    if results.get("hf"):
        results["nanobias_over_hf"] = {k: results["nanobias"][k] / r for k, r in results["hf"].items()}
    return results


def copy_argv(argv: list[str]) -> list[str]:
    """`bench ARGS` -> ARGS without --json, --run and --no-compare, which a copy sets for itself."""
    out, args = [], iter(argv[1:])
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in ("--json", "--run"):
            if "=" not in arg:
                next(args, None)  # its value
        elif arg != "--no-compare":
            out.append(arg)
    return out


def two_at_once(argv: list[str]) -> list[dict]:
    """Run two copies of `nanobias bench ARGS --no-compare` at the same time; each one's results."""
    root = str(Path(nanobias.__file__).resolve().parents[1])  # the copies import this very package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"copy{i}.json" for i in range(2)]
        logs = [open(f.with_suffix(".err"), "w+") for f in files]  # files, not pipes: a full pipe would stall a copy
        procs = [subprocess.Popen([sys.executable, "-m", "nanobias", "bench", *copy_argv(argv), "--no-compare",
                                   "--json", str(f)], env=env, stdout=subprocess.DEVNULL, stderr=log)
                 for f, log in zip(files, logs)]
        for code, log in zip([p.wait() for p in procs], logs):
            log.seek(0)
            last = (log.read().strip().splitlines() or ["(no message)"])[-1]
            log.close()
            if code:
                raise RuntimeError(f"bench: a copy of the two-at-once run failed (exit {code}): {last}")
        return [json.loads(f.read_text()) for f in files]


def stage_times(run: Path) -> dict[str, float]:
    """{stage: seconds} of a run folder's stage markers, in the order they finished."""
    markers = sorted((run / "stages").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not markers:
        raise UserError(f"--run {run}: no stages/<stage>.json there (a folder `nanobias reproduce` wrote?)")
    times = {p.stem: json.loads(p.read_text()).get("seconds") for p in markers}
    for stage, seconds in times.items():
        if not isinstance(seconds, (int, float)):
            raise UserError(f"--run {run}: stages/{stage}.json has no \"seconds\" number")
    return times


def run_bench(preset, seconds: float, argv: list[str], compare: bool = True, run: Path | None = None,
              json_path: Path | None = None) -> dict:
    """What `nanobias bench` does: measure, print, and with --json write everything measured."""
    stages = stage_times(run) if run is not None else None  # a bad --run fails before the measuring
    results = bench_model(preset, seconds=seconds, compare=compare)
    if compare:
        copies = two_at_once(argv)
        results["two_at_once"] = [c["nanobias"] for c in copies]
        results["share_of_solo"] = [{k: c[k] / results["nanobias"][k] for k in c} for c in results["two_at_once"]]
    if stages is not None:
        results["stages"] = stages
    print_results(results, run)
    if json_path is not None:
        write_json(json_path, results)
    return results


def print_results(results: dict, run: Path | None) -> None:
    print(f"{results['preset']} model ({results['params_M']:.2f}M params) on {results['device']}, "
          f"{results['threads']} thread(s); training {SEQ_LEN} tokens a row, sampling {PROMPTS} prompts x "
          f"{PROMPT_LEN} tokens + {NEW_TOKENS} new")
    hf = results.get("hf")
    print(f"  {'':20} {'nanobias':>14}" + (f" {'Hugging Face':>14} {'nanobias/HF':>12}" if hf else ""))
    for key, rate in results["nanobias"].items():
        line = f"  {ROWS[key]:20} {rate:>8,.0f} tok/s"
        if hf and key in hf:
            line += f" {hf[key]:>8,.0f} tok/s {results['nanobias_over_hf'][key]:>11.2f}x"
        print(line)
    if "hf" in results and hf is None:
        print(f"  (Hugging Face rows skipped: transformers is not installed; {INSTALL})")
    if "share_of_solo" in results:
        print("  two at once, each copy's rate as a share of solo (an even split is 50%):")
        for key in results["share_of_solo"][0]:
            shares = [s[key] for s in results["share_of_solo"]]
            print(f"  {ROWS[key]:20} " + " + ".join(f"{s:.0%}" for s in shares) + f" = {sum(shares):.0%}")
    if "stages" in results:
        stages = results["stages"]
        print(f"  stage times of {run}: " + ", ".join(f"{k} {format_seconds(s)}" for k, s in stages.items())
              + f"; summed {format_seconds(sum(stages.values()))} (stages on workers overlap)")
