"""Two gloo processes train exactly what one process trains.

The test runs a smoke-sized pipeline (pretraining, reward model, GRPO, DPO, PPO; a few steps
each) once in this process, then again in two processes started the way torchrun starts them
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), each running this file as a script. Same global
batches, so the weights must match: pretraining, reward model, GRPO and DPO within TOLERANCE
(float sums in another order), and GRPO must sample the same completions. PPO splits its
minibatches per process (ppo.py), so it only has to run and write a checkpoint that loads here.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

GRAD_TOLERANCE = 1e-5  # relative difference of each step's loss and gradient norm, one process vs two
UPDATE_TOLERANCE = 2e-4  # |weights(one) - weights(two)| / |weights(one) - weights at the start|


def smoke_preset():
    from nanobias.presets import get_preset

    return get_preset("smoke", {
        "pretrain.long_rate": 0.0, "pretrain.steps": 4, "pretrain.batch_size": 8, "pretrain.lr": 1e-2,
        "pretrain.warmup": 1, "pretrain.eval_every": 2, "pretrain.ckpt_every": 2,
        # a regression (graded), not Bradley-Terry: BT's gradient on the reward's bias is exactly 0, and
        # AdamW turns the float noise there into steps of +-lr that differ from run to run; one of the
        # policy's two blocks, so that the truncated reward model is trained across processes too
        "reward.loss": "graded", "reward.n_layer": 1, "reward.steps": 2, "reward.batch_size": 4,
        "rl.steps": 2, "rl.prompts_per_step": 4, "rl.group_size": 4, "rl.max_new_tokens": 8,
        "grpo.lr": 1e-2, "grpo.warmup": 0, "ppo.warmup": 0, "dpo.warmup": 0})


def length_reward(examples, prompts, completions):
    """A reward that differs inside every group (the policy is barely trained): characters written."""
    return torch.tensor([float(len(c)) for c in completions])


def splits_and_preset():
    from nanobias.data import load_splits
    from nanobias.world import CATEGORIES

    preset = smoke_preset()
    return preset, load_splits("synthetic", seed=0, variants_per_template=preset.variants_per_template,
                               train_categories=list(CATEGORIES[:2]))


def run_pretrain(out: Path, tokenizer: Path) -> None:
    from nanobias.pretrain import corpus, pretrain
    from nanobias.tokenizer import load_tokenizer

    preset, splits = splits_and_preset()
    pretrain(preset.pretrain, preset.model, load_tokenizer(tokenizer), *corpus(splits, preset.pretrain, 0),
             out / "policy.pt", seed=0)


def run_after_pretraining(out: Path, policy: Path) -> None:
    """Reward model, GRPO, DPO, PPO from `policy`: the same file for both runs, so that differences
    do not compound from stage to stage."""
    from nanobias.dpo import train_dpo
    from nanobias.grpo import train_grpo
    from nanobias.ppo import train_ppo
    from nanobias.reward import train_reward_model

    preset, splits = splits_and_preset()
    train_reward_model(splits, policy, out / "reward.pt", preset.reward, preset.pairs)
    # the chunked PyTorch kernels: the Triton interpreter (TRITON_INTERPRET, set by conftest) is slow
    train_grpo(splits, policy, out / "grpo.pt", length_reward, preset.rl, preset.grpo, backend="torch")
    train_dpo(splits, policy, out / "dpo.pt", preset.rl, preset.dpo, preset.pairs, score_fn=length_reward,
              backend="torch")
    train_ppo(splits, policy, out / "ppo.pt", length_reward, preset.rl, preset.ppo, backend="torch")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flat_params(path: Path) -> torch.Tensor:
    from nanobias.checkpoint import load_checkpoint

    return torch.cat([t.float().view(-1) for t in load_checkpoint(path)["model"].values()])


def pretraining_init(path: Path) -> torch.Tensor:
    """The weights pretraining started from: its seeded initialisation (pretrain.pretrain, seed 0)."""
    from nanobias.checkpoint import load_checkpoint
    from nanobias.model import GPT, GPTConfig

    torch.manual_seed(0)
    return torch.cat([t.view(-1) for t in GPT(GPTConfig(**load_checkpoint(path)["meta"]["model_config"])).state_dict().values()])


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_gloo_processes_match_one(tmp_path):
    from nanobias.checkpoint import load_policy
    from nanobias.pretrain import corpus, make_tokenizer
    from nanobias.reward import reward_model_from_policy

    preset, splits = splits_and_preset()
    make_tokenizer(corpus(splits, preset.pretrain, 0)[0], preset.pretrain.vocab_size, tmp_path / "tokenizer.json")
    run_pretrain(tmp_path / "single", tmp_path / "tokenizer.json")

    port = free_port()
    workers = [subprocess.Popen(
        [sys.executable, __file__, str(tmp_path / "ddp"), str(tmp_path / "tokenizer.json"),
         str(tmp_path / "single" / "policy.pt")],
        env={**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    run_after_pretraining(tmp_path / "single", tmp_path / "single" / "policy.pt")  # meanwhile, in one process
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    for r, (w, text) in enumerate(zip(workers, outputs)):
        assert w.returncode == 0, f"rank {r} failed:\n{text[-3000:]}"
    assert "pretrain 4/4" in outputs[0] and "pretrain 4/4" not in outputs[1]  # rank 0 alone reports

    # the same losses and gradient norms at every step: gradients averaged, losses normalised right
    for name in ("policy", "reward", "grpo", "dpo"):
        one, two = (metrics(tmp_path / run / f"{name}.metrics.jsonl") for run in ("single", "ddp"))
        assert [r["step"] for r in one] == [r["step"] for r in two] and len(two) >= 2
        for a, b in zip(one, two):
            for key in ("loss", "grad_norm"):
                assert abs(a[key] - b[key]) <= GRAD_TOLERANCE * abs(a[key]) + 1e-7, (name, a["step"], key, a[key], b[key])

    # the same weights. AdamW's first steps are about lr * sign(gradient), so a parameter whose gradient
    # is ~0 may move either way on float noise alone: compare whole updates, not single entries
    policy, _, _ = load_policy(tmp_path / "single" / "policy.pt")
    starts = {"policy.pt": pretraining_init(tmp_path / "single" / "policy.pt"),
              "reward.pt": torch.cat([t.view(-1) for t in reward_model_from_policy(policy, 0, preset.reward.n_layer).state_dict().values()]),
              "grpo.pt": flat_params(tmp_path / "single" / "policy.pt"),
              "dpo.pt": flat_params(tmp_path / "single" / "policy.pt")}
    for name, start in starts.items():
        one, two = flat_params(tmp_path / "single" / name), flat_params(tmp_path / "ddp" / name)
        moved = (one - start).norm().item()
        assert moved > 1e-3, name  # training changed the weights
        relative, largest = (one - two).norm().item() / moved, (one - two).abs().max().item()
        print(f"{name}: |update difference| / |update| = {relative:.1e}, max |param difference| = {largest:.1e}")
        assert relative < UPDATE_TOLERANCE, (name, relative)

    # GRPO and the DPO probe sampled the same completions: same lengths and rewards at every step
    for name in ("grpo", "dpo"):
        for a, b in zip(*(metrics(tmp_path / run / f"{name}.metrics.jsonl") for run in ("single", "ddp"))):
            assert a["completion_len"] == b["completion_len"], name
            assert abs(a["reward_mean"] - b["reward_mean"]) < 1e-6 and abs(a["reward_std"] - b["reward_std"]) < 1e-5
    assert len(metrics(tmp_path / "ddp" / "ppo.metrics.jsonl")) == 2
    for name in ("policy.pt", "grpo.pt", "ppo.pt"):  # written under torchrun, loaded in one process
        model, enc, meta = load_policy(tmp_path / "ddp" / name)
        assert model.config.n_layer == preset.model.n_layer


if __name__ == "__main__":  # one of the two processes
    from nanobias import distributed

    distributed.init()
    assert distributed.world_size() == 2
    out, tokenizer, policy = map(Path, sys.argv[1:])
    run_pretrain(out, tokenizer)
    run_after_pretraining(out, policy)
    distributed.cleanup()
