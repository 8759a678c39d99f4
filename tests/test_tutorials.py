"""Every tutorial runs start to finish in its tiny mode and prints its result.

Each script runs as a student would run it (`python tutorials/NN_name.py --tiny`, from the
repository root: as `__main__`, with tutorials/ first on the path and its own fresh `common`), with
`--out` pointing at one folder shared by the whole module: tutorials 05-08 then reuse the policy
and reward model that 04 and 05 wrote there, exactly as they reuse runs/tutorial/ in real mode.

The scripts run one after another in two Python processes, not nine: a new interpreter spends ~2 s
importing torch, which was a third of this module's time. One process runs the tutorials on a
CPU's path, the other those that show the Triton kernels, through Triton's interpreter.
"""

import json
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


# python -c RUNNER OUT SCRIPT...: runs each script as `python SCRIPT --tiny --out OUT` would, one after
# another, and prints {script: {"rc", "stdout", "stderr"}} as JSON
RUNNER = """
import contextlib, io, json, os, runpy, sys, traceback
out, scripts, results, real_stdout = sys.argv[1], sys.argv[2:], {}, sys.stdout
for script in scripts:
    sys.path.insert(0, os.path.dirname(script))  # what `python SCRIPT` puts first on the path
    sys.modules.pop("common", None)  # each script imports tutorials/common.py afresh
    sys.argv = [script, "--tiny", "--out", out]
    stdout, stderr, rc = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:  # sys.exit(message): the message on stderr, exit status 1
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
            rc = 1
    del sys.path[0]
    results[script] = {"rc": rc, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
json.dump(results, real_stdout)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict]:
    """(the shared --out folder, {script name: {"rc", "stdout", "stderr"}}) of every tutorial."""
    out, results = tmp_path_factory.mktemp("tutorials"), {}
    groups = (([n for n in TUTORIALS if n not in INTERPRETED], {}),  # first: 07 reuses the policy of 04
              ([n for n in TUTORIALS if n in INTERPRETED], {"TRITON_INTERPRET": "1"}))
    for names, interpret in groups:
        # one thread (conftest), since CI's two cores are shared with other jobs
        env = {**CLI_ENV, "OMP_NUM_THREADS": "1", **interpret}
        proc = subprocess.run([sys.executable, "-c", RUNNER, str(out), *(str(REPO / "tutorials" / n) for n in names)],
                              cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=1800)  # a guard against a hang, not a speed requirement
        assert proc.returncode == 0, proc.stderr[-4000:]
        results.update({Path(script).name: r for script, r in json.loads(proc.stdout).items()})
    return out, results


@pytest.mark.parametrize("script", list(TUTORIALS))
def test_tutorial_tiny(script, runs):
    out, results = runs
    lines, files = TUTORIALS[script]
    run = results[script]
    report = f"--- stdout (end)\n{run['stdout'][-4000:]}\n--- stderr (end)\n{run['stderr'][-4000:]}"
    assert run["rc"] == 0, report
    for line in lines:
        assert line in run["stdout"], f"expected {line!r} in the output\n{report}"
    for name in files:
        assert (out / name).is_file(), f"{script} did not write {name} into --out"
