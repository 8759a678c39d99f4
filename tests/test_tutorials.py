"""Every tutorial runs start to finish in its tiny mode and prints its result.

Each script runs as a student would run it (`python tutorials/NN_name.py`, from the repository
root) with `--tiny` (the smoke preset cut to a few steps) and `--out` pointing at one folder
shared by the whole module: tutorials 05-08 then reuse the policy and reward model that 04 and
05 wrote there, exactly as they reuse runs/tutorial/ in real mode. A test run alone (or in
another order) finds nothing to reuse and builds what it needs, which checks that path too.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI_ENV

REPO = Path(__file__).resolve().parents[1]

# script -> (lines its output must contain, files it must leave in --out)
TUTORIALS = {
    "01_tokenizer.py": (["round trip exact: True", "reloaded tokenizer encodes identically: True",
                         "| vocab size | train s | bytes per token | tokens per document |"], ["tokenizer_01.json"]),
    "02_bias_world.py": (["| ideal (reads the context) | 1.000 | 1.000 | 0.000 | 0.000 | 0.000 |",
                          "| always the stereotype | 0.000 |"], []),
    "03_gpt_and_kv_cache.py": (["same tokens with and without the cache: True", "identical tokens: True"], []),
    "04_pretrain_biased_policy.py": (["| base policy (test) |", "ambiguous test prompts:"],
                                     ["policy.pt", "tokenizer.json", "policy.metrics.jsonl"]),
    "05_reward_model_spurious_cues.py": (["| method | acc | ambig / who_did_it / not_unknown | length b / u / sens", "| lwr |", "reward model written to"],
                                         ["reward.pt", "reward_eval.json", "reward_biased_unbiased.png"]),
    "06_bias_neurons.py": (["| cirm |", "| cirm_all |", "chosen intervention:"],
                           ["intervention.json", "neurons_per_layer.png"]),
    "07_group_sampling_and_grpo_loss.py": (["the G rows of a group share one prompt: True",
                                            "| grpo.grpo_loss (torch) |", "| grpo.grpo_loss (triton) |",
                                            "(agree to float32 precision)"], []),
    "08_grpo_vs_dpo_vs_ppo.py": (["| base |", "| grpo |", "| dpo |", "| ppo |",
                                  "| method | seconds | final_reward_mean | reward_fluctuation | mean_reward_std |"],
                                 ["grpo.pt", "dpo.pt", "ppo.pt", "rl_reward_curves.png"]),
    "09_triton_kernels.py": (["| grpo_loss | triton |", "every backend within 1e-4 of the float64 reference: True",
                              "| logits [N, T, V] | logits MiB | reference MiB | chunked torch MiB |"], []),
}


# the tutorials that show the Triton kernels run them on this CPU through Triton's interpreter
# (TRITON_INTERPRET=1); the others run on a CPU's path, as a student's do (the interpreter would
# run every masked GELU of an intervened model in NumPy, many times slower)
INTERPRETED = {"07_group_sampling_and_grpo_loss.py", "09_triton_kernels.py"}


def test_every_tutorial_is_tested():
    scripts = sorted(p.name for p in (REPO / "tutorials").glob("[0-9][0-9]_*.py"))
    assert scripts == sorted(TUTORIALS)


@pytest.fixture(scope="module")
def shared_out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tutorials")


@pytest.mark.parametrize("script", list(TUTORIALS))
def test_tutorial_tiny(script, shared_out):
    lines, files = TUTORIALS[script]
    # one thread each (conftest), since CI's two cores are shared with other jobs
    env = {**CLI_ENV, "OMP_NUM_THREADS": "1", **({"TRITON_INTERPRET": "1"} if script in INTERPRETED else {})}
    proc = subprocess.run([sys.executable, str(REPO / "tutorials" / script), "--tiny", "--out", str(shared_out)],
                          cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)  # a guard against a hang, not a speed requirement
    report = f"--- stdout (end)\n{proc.stdout[-4000:]}\n--- stderr (end)\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report
    for line in lines:
        assert line in proc.stdout, f"expected {line!r} in the output\n{report}"
    for name in files:
        assert (shared_out / name).is_file(), f"{script} did not write {name} into --out"
