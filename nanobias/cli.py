"""`nanobias <command>`: one subcommand per pipeline stage. Flags are checked before any work.
Under `torchrun --nproc_per_node=N -m nanobias ...` the training stages run on N processes (distributed.py)."""

import argparse
import os
import sys
from pathlib import Path

from nanobias.commands import (cmd_bench, cmd_claims, cmd_dpo, cmd_eval, cmd_intervene, cmd_online_rl, cmd_positions,
                               cmd_pretrain, cmd_reproduce, cmd_reward, cmd_sample, cmd_sites, cmd_sweep)
from nanobias.errors import UserError
from nanobias.flags import (add_compile_arg, add_data_args, add_init_args, add_preset_args, add_rl_args, category_list,
                            check_eval_args, check_pretrain_args, check_reward_args, check_rl_args, check_sample_args,
                            nonnegative_float, positive_float, positive_int, preset_from_args, seconds, seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanobias", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also NANOBIAS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, check=lambda parser, args: None, help: str = "") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--threads", type=positive_int, help="CPU threads (default: nanobias/threads.py's policy)")
        p.set_defaults(func=func, check=check, parser=p)
        return p

    p = command("reproduce", cmd_reproduce, check_pretrain_args,
                help="the whole pipeline: pretrain, reward model, intervention, GRPO/DPO/PPO, report")
    add_preset_args(p, {"--seeds": "seeds"})
    add_data_args(p)
    p.add_argument("--seeds", type=positive_int, help="RL seeds --seed, --seed + 1, ... trained from the one base "
                   "policy and reward model, reported as mean ± std (default: the preset's; same as --set seeds=N)")
    p.add_argument("--out", type=Path, help="output folder (default runs/<preset>-<data>-<seed>)")
    p.add_argument("--force", action="store_true", help="redo every stage, even those already done")
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "torch", "reference"],
                   help="log-prob / GRPO-loss kernels (auto: Triton on CUDA, chunked PyTorch on CPU)")
    add_init_args(p)
    add_compile_arg(p)

    p = command("positions", cmd_positions, help="the reward model and the intervention under learned and rotary "
                "positions (synthetic data; one policy per scheme, a reward model per seed)")
    add_preset_args(p)
    p.add_argument("--seeds", type=positive_int, default=3, help="reward-model seeds: --seed, --seed + 1, ...")
    p.add_argument("--seed", type=seed, default=0, help="the policies' seed and the first reward-model seed")
    p.add_argument("--out", type=Path, default=Path("runs/positions"), help="output folder")
    p.add_argument("--force", action="store_true", help="redo every job, even those already done")

    p = command("sites", cmd_sites, help="on a finished reproduce run's reward model: the intervention at each "
                "site (MLP post-activation, pre-activation, attention query) x selection (Spearman, effect)")
    p.add_argument("--base", required=True, type=Path, help="a finished `nanobias reproduce` folder (only read)")
    p.add_argument("--out", required=True, type=Path, help="output folder (sites.json, sites.md, sites.png)")
    p.add_argument("--force", action="store_true", help="redo every variant, even those already done")
    p = command("sweep", cmd_sweep, help="one setting over several values, from a finished reproduce run: re-runs "
                "only the stages the setting changes, RL seeds as reproduce; sweep.json, sweep.md, sweep.png")
    p.add_argument("setting", metavar="KEY=V1,V2,...", help="a preset key (as --set) and its values, e.g. "
                   "rl.group_size=2,4,8 (B is set so B*G stays the base run's) or reward.lr=1e-3,3e-3")
    p.add_argument("--base", required=True, type=Path, help="a finished `nanobias reproduce` folder (read only)")
    p.add_argument("--seeds", type=positive_int, default=1, help="RL seeds: the base run's seed, + 1, ...")
    p.add_argument("--out", required=True, type=Path, help="output folder (a sub-folder KEY=V per value)")
    p.add_argument("--methods", type=category_list, help="methods to train and evaluate: dpo,ppo,grpo,grpo_cirm "
                   "(and base: the base policy), default by key (rl.*: grpo, reward.*: grpo,grpo_cirm, ...)")
    p.add_argument("--force", action="store_true", help="redo every stage, even those already done")

    p = command("claims", cmd_claims, help="the papers' claims beside a finished run's numbers (and its sweeps'), "
                "each with a verdict computed from mean ± standard error; writes RUN/claims.md")
    p.add_argument("run", type=Path, help="a finished `nanobias reproduce` folder")
    p.add_argument("--sweep", type=Path, action="append", default=[], help="a finished `nanobias sweep` folder "
                   "from that run (repeatable), e.g. of rl.group_size for BiasGRPO's group-size claims")

    p = command("pretrain", cmd_pretrain, check_pretrain_args,
                help="train the tokenizer and a GPT policy with a planted bias")
    add_preset_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, help="output folder (tokenizer.json, policy.pt, metrics)")
    p.add_argument("--steps", type=positive_int, help="override the preset's training steps")
    p.add_argument("--lr", type=positive_float, help="override the preset's peak learning rate")
    p.add_argument("--batch-size", type=positive_int, help="override the preset's batch size")
    p.add_argument("--vocab-size", type=positive_int, help="override the preset's BPE vocabulary size")
    p.set_defaults(shorthands={"--steps": "pretrain.steps", "--lr": "pretrain.lr", "--batch-size": "pretrain.batch_size",
                               "--vocab-size": "pretrain.vocab_size"})
    p.add_argument("--eval-examples", type=positive_int,
                   help="test prompts to evaluate after training (default: the preset's, as reproduce)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/policy.pt")
    add_init_args(p)
    add_compile_arg(p)

    p = command("sample", cmd_sample, check_sample_args, help="print completions of a prompt from a policy checkpoint")
    p.add_argument("--ckpt", required=True, type=Path, help="policy checkpoint (policy.pt, grpo.pt, ...)")
    p.add_argument("--prompt", required=True, help="prompt text (\\n for newlines)")
    p.add_argument("--n", type=positive_int, default=4, help="number of completions")
    p.add_argument("--max-new-tokens", type=positive_int, default=48, help="tokens to generate at most")
    p.add_argument("--temperature", type=nonnegative_float, default=0.8, help="sampling temperature (0: greedy)")
    p.add_argument("--top-k", type=positive_int, help="sample from the k most likely tokens only")
    p.add_argument("--seed", type=seed, default=0, help="sampling seed")

    p = command("bench", cmd_bench,
                help="training and sampling tokens/s of a preset's model, beside Hugging Face's and two at once")
    add_preset_args(p)
    p.add_argument("--seconds", type=seconds, default=10.0, help="time per measurement")
    p.add_argument("--run", type=Path, help="a `nanobias reproduce` folder: also print its stage times")
    p.add_argument("--json", type=Path, help="also write every number to this JSON file")
    p.add_argument("--no-compare", action="store_true", help="training and KV-cache sampling alone, nothing to compare")

    p = command("grpo", cmd_online_rl, check_rl_args,
                help="debias a policy with GRPO against a reward model (BiasGRPO)")
    add_rl_args(p)
    p.add_argument("--beta", type=nonnegative_float, help="override the preset's KL weight (grpo.beta)")
    p.add_argument("--lr", type=positive_float, help="override the preset's GRPO learning rate (grpo.lr)")
    p.add_argument("--scale", help="advantage scale: group (BiasGRPO: divide by the group's reward std), "
                   "batch (by the batch's), none (Dr. GRPO: do not divide)")
    p.add_argument("--agg", help="loss aggregation over tokens: grpo | dapo | dr_grpo")
    p.set_defaults(shorthands={"--beta": "grpo.beta", "--lr": "grpo.lr", "--scale": "grpo.scale", "--agg": "grpo.agg"})

    p = command("dpo", cmd_dpo, check_rl_args,
                help="DPO/IPO baseline on offline preference pairs, as many as GRPO's reward-model "
                       "calls (the reward only scores DPO's samples, for the stability curve)")
    add_rl_args(p)
    p.add_argument("--loss", choices=["dpo", "ipo"], default="dpo", help="DPO's -log sigmoid or IPO's squared loss")

    p = command("ppo", cmd_online_rl, check_rl_args,
                help="PPO baseline with a value head, GAE and a per-token KL penalty, at GRPO's budget")
    add_rl_args(p)

    p = command("eval", cmd_eval, check_eval_args,
                help="a policy's BBQ accuracy and bias scores on the test (and held-out) prompts")
    add_preset_args(p, help="the preset the policy's data was made with (synthetic world size)")
    add_data_args(p)
    p.add_argument("--policy", required=True, type=Path, help="policy checkpoint")
    p.add_argument("--out", type=Path, help="folder for <policy stem>.eval.json")
    p.add_argument("--eval-examples", type=positive_int,
                   help="test (and held-out) prompts to evaluate, drawn at random (default: the preset's, as reproduce)")
    p = command("reward", cmd_reward, check_reward_args, help="train the reward model on planted-bias preference pairs")
    add_preset_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, type=Path, help="output folder (reward.pt, reward_eval.json, plots)")
    p.add_argument("--policy", type=Path, help="pretrained policy whose backbone starts the reward model "
                   "(default: OUT/policy.pt)")
    p.add_argument("--loss", choices=["bt", "regression", "graded"],
                   help="Bradley-Terry (preset default), regression on chosen 1 / rejected 0, or graded (a bias score)")
    p.add_argument("--steps", type=positive_int, help="override the preset's reward training steps")
    p.add_argument("--lr", type=positive_float, help="override the preset's reward learning rate")
    p.add_argument("--batch-size", type=positive_int, help="override the preset's pairs per step")
    p.set_defaults(shorthands={"--steps": "reward.steps", "--lr": "reward.lr", "--batch-size": "reward.batch_size",
                               "--loss": "reward.loss"})
    p.add_argument("--resume", action="store_true", help="continue from OUT/reward.pt")
    add_compile_arg(p)

    p = command("intervene", cmd_intervene, check_reward_args,
                help="find the reward model's bias neurons and clamp them to their medians")
    add_preset_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, type=Path, help="output folder (reward_eval.json, plots)")
    p.add_argument("--reward", type=Path, help="reward model checkpoint (default: OUT/reward.pt); "
                   "intervention.json is written next to it")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run a command. A user's mistake (UserError, a bad value or file, a failed write) and Ctrl-C
    print one line and exit non-zero; --debug or NANOBIAS_DEBUG=1 shows the traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("NANOBIAS_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    command = argv[0] if argv else "nanobias"
    try:
        run(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"nanobias {command}: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)  # a shell's code for a command ended by Ctrl-C (128 + SIGINT)
    except UserError as e:
        if debug:
            raise
        sys.exit(f"nanobias {command}: error: {e}")
    except (ValueError, OSError) as e:  # a bad value or file the checks above did not name
        if debug:
            raise
        sys.exit(f"nanobias {command}: error: {e} (--debug shows the traceback)")


def run(argv: list[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    args.check(args.parser, args)
    from nanobias import device, distributed, threads  # torch: only once the flags are known to be good
    if hasattr(args, "preset"):
        args.config = preset_from_args(args.parser, args)
        device.configure(fast=args.config.cuda_fast, compile=getattr(args, "compile", False))
    args.threads = threads.configure(args.threads, threads.model_params(args.config) if "config" in args else None)
    distributed.init()  # a no-op unless launched by torchrun
    try:
        args.func(args)
    finally:
        distributed.cleanup()
