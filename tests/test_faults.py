"""Fault injection: what a user's mistake, a kill, a full disk or a broken file does to a run.

Every case runs the real CLI in a subprocess and asserts three things: the message names the file,
flag or setting; no traceback is printed; nothing partial is left that a later run would take as
complete (and a killed run, re-run, ends with the same results as one that was never killed).
"""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time

import pytest

# without TRITON_INTERPRET (conftest sets it for the kernel tests): the CLI runs its CPU path, as a user's does
ENV = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, "OMP_NUM_THREADS": "1", "NANOBIAS_DEBUG": "0"}
SMOKE = ["reproduce", "--preset", "smoke"]


def nanobias(*args, cwd, check_rc=None, preexec_fn=None):
    """Run `python -m nanobias ARGS`; returns the CompletedProcess (rc checked if check_rc is given)."""
    proc = subprocess.run([sys.executable, "-m", "nanobias", *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600, preexec_fn=preexec_fn)
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


def one_line_error(proc, *named: str) -> str:
    """The run failed with a one-line message (no traceback) that names each of `named`."""
    assert proc.returncode != 0, proc.stdout[-1000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    for word in named:
        assert word in message, (word, message)
    return message


def numbers(results: dict) -> dict:
    """results.json without what differs between two runs of the same identity (timings, the command)."""
    return {k: v for k, v in results.items() if k not in ("seconds", "command")}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("faults") / "run"
    nanobias(*SMOKE, "--out", out, cwd=out.parent, check_rc=0)
    return out


def test_a_finished_folder_refuses_other_settings_and_names_them(smoke_run, tmp_path):
    before = (smoke_run / "results.json").read_bytes()
    one_line_error(nanobias("reproduce", "--preset", "cpu", "--out", smoke_run, cwd=tmp_path),
                   str(smoke_run), "preset 'smoke' -> 'cpu'", "--force")
    one_line_error(nanobias(*SMOKE, "--eval-categories", "SES", "--out", smoke_run, cwd=tmp_path),
                   "eval_categories [] -> ['SES']")
    assert (smoke_run / "results.json").read_bytes() == before  # nothing was redone or relabelled
    again = nanobias(*SMOKE, "--out", smoke_run, cwd=tmp_path, check_rc=0)  # same identity: resumes
    assert "already done" in again.stdout


def test_killed_runs_resume_to_the_same_results(smoke_run, tmp_path):
    out = tmp_path / "killed"
    rng = random.Random(int(time.time()))
    for _ in range(2):  # SIGKILL at two random moments of the pipeline, then let it finish
        proc = subprocess.Popen([sys.executable, "-m", "nanobias", *SMOKE, "--out", str(out)], cwd=tmp_path, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3, 20))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    nanobias(*SMOKE, "--out", out, cwd=tmp_path, check_rc=0)
    assert not list(out.rglob("*.tmp"))
    expected = numbers(json.loads((smoke_run / "results.json").read_text()))
    assert numbers(json.loads((out / "results.json").read_text())) == expected


def test_ctrl_c_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "nanobias", "pretrain", "--preset", "smoke", "--steps", "100000",
                             "--out", str(tmp_path / "p")], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until training runs
        if line.startswith("pretrain:"):
            break
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err
    assert "interrupted; run the same command again to resume" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("content", ["empty", "random", "truncated"])
def test_a_broken_checkpoint_names_its_file(smoke_run, tmp_path, content):
    good = (smoke_run / "policy.pt").read_bytes()
    data = {"empty": b"", "random": random.Random(0).randbytes(5000), "truncated": good[:len(good) // 3]}[content]
    path = tmp_path / "policy.pt"
    path.write_bytes(data)
    one_line_error(nanobias("eval", "--preset", "smoke", "--policy", path, cwd=tmp_path), str(path),
                   "not a readable checkpoint")


def test_a_partial_checkpoint_is_not_taken_for_a_finished_one(tmp_path):
    out = tmp_path / "p"
    proc = subprocess.Popen([sys.executable, "-m", "nanobias", "pretrain", "--preset", "smoke", "--steps", "100000",
                             "--set", "pretrain.ckpt_every=5", "--out", str(out)], cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "policy.pt").is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    one_line_error(nanobias("eval", "--preset", "smoke", "--policy", out / "policy.pt", cwd=tmp_path),
                   str(out / "policy.pt"), "partial checkpoint", "of 100000")


def test_a_torn_metrics_line_is_dropped_on_resume_and_a_bad_one_named(tmp_path):
    out = tmp_path / "p"
    short = ["pretrain", "--preset", "smoke", "--set", "pretrain.eval_every=2", "--out", out]
    nanobias(*short, "--steps", "4", cwd=tmp_path, check_rc=0)
    metrics = out / "policy.metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 4, "lo')  # the kill came mid-write
    nanobias(*short, "--steps", "6", "--resume", cwd=tmp_path, check_rc=0)
    assert [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()] == list(range(6))
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:2] + ["not json"] + lines[2:]) + "\n")
    one_line_error(nanobias(*short, "--steps", "8", "--resume", cwd=tmp_path), f"{metrics}, line 3")


def test_a_full_disk_names_the_path_and_leaves_no_partial_file(tmp_path):
    def small_files():  # writes beyond 200 kB fail with EFBIG (SIGXFSZ ignored, as a full disk's ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "p"
    proc = nanobias("pretrain", "--preset", "smoke", "--steps", "2", "--out", out, cwd=tmp_path, preexec_fn=small_files)
    one_line_error(proc, f"cannot write {out / 'policy.pt'}", "File too large")
    assert not (out / "policy.pt").exists() and not list(out.glob("*.tmp"))


def test_bbq_files_that_are_not_utf8_or_empty_are_named(tmp_path):
    bbq = tmp_path / "bbq"
    bbq.mkdir()
    from test_bbq import bbq_record

    (bbq / "Age.jsonl").write_bytes(json.dumps(bbq_record()).encode() + b"\n\xff\xfe broken\n")
    one_line_error(nanobias(*SMOKE, "--data", "bbq", "--bbq-dir", bbq, "--out", tmp_path / "r", cwd=tmp_path),
                   f"{bbq / 'Age.jsonl'}, line 2", "not UTF-8")
    (bbq / "Age.jsonl").write_bytes(b"\n")
    one_line_error(nanobias(*SMOKE, "--data", "bbq", "--bbq-dir", bbq, "--out", tmp_path / "r", cwd=tmp_path),
                   str(bbq / "Age.jsonl"), "no examples")
    assert not (tmp_path / "r").exists()


def test_holding_out_every_category_stops_before_any_work(tmp_path):
    every = "Age,Disability_status,Gender_identity,Nationality,Physical_appearance,Race_ethnicity,Religion,SES," \
            "Sexual_orientation"
    one_line_error(nanobias(*SMOKE, "--eval-categories", every, "--out", tmp_path / "r", cwd=tmp_path),
                   "holds out every category")
    assert not (tmp_path / "r" / "tokenizer.json").exists() and not (tmp_path / "r" / "stages").exists()


@pytest.mark.parametrize("args, named", [
    (["grpo", "--lr", "inf"], "--lr"),
    (["reproduce", "--seed", str(2**64)], "--seed"),
    (["bench", "--seconds", "inf"], "--seconds"),
    (["reproduce", "--set", "grpo.beta=Infinity"], "grpo.beta"),
    (["reproduce", "--set", "grpo.nothing=1"], "grpo.nothing"),
    (["sample", "--prompt", ""], "--prompt"),
    (["sample", "--prompt", "x", "--temperature", "-1"], "--temperature"),
    (["sample", "--prompt", "x", "--temperature", "nan"], "--temperature"),
])
def test_bad_flags_are_usage_errors(smoke_run, tmp_path, args, named):
    needs = {"grpo": ["--preset", "smoke", "--policy", smoke_run / "policy.pt", "--oracle-reward", "--out", tmp_path],
             "sample": ["--ckpt", smoke_run / "policy.pt"]}.get(args[0], [])
    proc = nanobias(*args, *needs, cwd=tmp_path)
    assert proc.returncode == 2 and named in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not list(tmp_path.iterdir())


def test_bad_values_found_at_run_time_are_named(smoke_run, tmp_path):
    policy = smoke_run / "policy.pt"
    one_line_error(nanobias("sample", "--ckpt", policy, "--prompt", "x", "--max-new-tokens", "100000", cwd=tmp_path),
                   "block_size")
    report = smoke_run / "report.md"
    proc = nanobias("eval", "--preset", "smoke", "--policy", policy, "--out", report, cwd=tmp_path)
    assert proc.returncode == 2 and f"--out {report}" in proc.stderr
    tokenizer = (smoke_run / "tokenizer.json").read_bytes()
    resumed = nanobias("pretrain", "--preset", "smoke", "--vocab-size", "600", "--resume", "--out", smoke_run,
                       cwd=tmp_path)
    one_line_error(resumed, "--resume", "vocabulary of 512, not 600")
    assert (smoke_run / "tokenizer.json").read_bytes() == tokenizer


@pytest.mark.parametrize("flag, value, named", [("--lr", "1e30", "--lr"), ("--beta", "1e308", "--beta")])
def test_divergence_stops_at_the_step_and_names_the_likely_flag(smoke_run, tmp_path, flag, value, named):
    proc = nanobias("grpo", "--preset", "smoke", "--set", "rl.steps=3", "--policy", smoke_run / "policy.pt",
                    "--reward", smoke_run / "reward.pt", flag, value, "--out", tmp_path / "g", cwd=tmp_path)
    message = one_line_error(proc, "grpo step", named)
    assert not (tmp_path / "g" / "grpo.pt").exists(), message


def test_a_policy_too_short_for_the_data_says_what_to_do(smoke_run, tmp_path):
    from test_bbq import bbq_record, write_bbq

    long_context = "A grandson and a grandfather were at the store, " * 60  # far past the smoke policy's window
    write_bbq(tmp_path / "bbq", "Age", [json.dumps(bbq_record(example_id=i, question_index=str(i // 2 + 1),
                                                              context=long_context)) for i in range(12)])
    proc = nanobias("eval", "--preset", "smoke", "--data", "bbq", "--bbq-dir", tmp_path / "bbq", "--policy",
                    smoke_run / "policy.pt", cwd=tmp_path)
    one_line_error(proc, "block_size", "pretrained on this data")
