"""Fault injection: what a user's mistake, a kill, a full disk or a broken file does to a run.

Every case runs the real CLI and asserts three things: the message names the file, flag or
setting; no traceback is printed; nothing partial is left that a later run would take as complete
(and a killed run, re-run, ends with the same results as one that was never killed). A kill, a
signal, a resource limit and the console script's exit status need a process of their own
(`nanobias`); every other case runs `nanobias.cli.main` in this process (`cli`), where an escaping
exception fails the test as a printed traceback would.
"""

import json
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import CLI_ENV, SMOKE_REPRODUCE

from nanobias.cli import main

SMOKE = ["reproduce", "--preset", "smoke"]


def check(proc, check_rc):
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


def nanobias(*args, cwd, check_rc=None, preexec_fn=None):
    """Run `python -m nanobias ARGS` as a user would; returns the CompletedProcess (rc checked if check_rc is given)."""
    proc = subprocess.run([sys.executable, "-m", "nanobias", *map(str, args)], cwd=cwd, env=CLI_ENV,
                          capture_output=True, text=True, timeout=600, preexec_fn=preexec_fn)
    return check(proc, check_rc)


@pytest.fixture
def cli(capsys, monkeypatch, tmp_path):
    """cli(*ARGS, check_rc=None): `nanobias.cli.main(ARGS)` in this process, from tmp_path, as a
    CompletedProcess with the exit status and output the console script would have: sys.exit(message)
    prints the message to stderr and exits 1. The CLI's CPU path: every kernel call here takes
    --backend torch (TRITON_INTERPRET is set in this process)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NANOBIAS_DEBUG", raising=False)

    def run(*args, check_rc=None):
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = 0 if e.code is None else e.code
        out, err = capsys.readouterr()
        if isinstance(code, str):
            code, err = 1, err + code + "\n"
        return check(subprocess.CompletedProcess(args, code, out, err), check_rc)

    return run


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
    out = {k: v for k, v in results.items() if k not in ("seconds", "command")}
    scorer = {k: v for k, v in out["reward_model"]["scorer"].items() if k != "seconds_per_1k_calls"}
    return {**out, "reward_model": {**out["reward_model"], "scorer": scorer}}


def test_a_finished_folder_refuses_other_settings_and_names_them(smoke_run, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    before = (run / "results.json").read_bytes()
    one_line_error(cli("reproduce", "--preset", "cpu", "--eval-categories", "SES", "--out", run),
                   str(run), "preset 'smoke' -> 'cpu'", "--force")
    one_line_error(cli(*SMOKE, "--out", run), "eval_categories ['SES'] -> []")
    assert (run / "results.json").read_bytes() == before  # nothing was redone or relabelled
    again = cli(*SMOKE_REPRODUCE, "--out", run, check_rc=0)  # same identity: resumes
    assert "already done" in again.stdout


def test_a_killed_run_resumes_to_the_same_results(smoke_run, tmp_path):
    out = tmp_path / "killed"
    rng = random.Random(int(time.time()))
    # SIGKILL at a random moment of the pipeline (another each run of the suite; a smoke run takes ~15 s
    # alone, more on a busy machine), then let it finish
    proc = subprocess.Popen([sys.executable, "-m", "nanobias", *SMOKE_REPRODUCE, "--out", str(out)], cwd=tmp_path,
                            env=CLI_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=rng.uniform(2, 14))  # a run that ends before its moment is not killed
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    nanobias(*SMOKE_REPRODUCE, "--out", out, cwd=tmp_path, check_rc=0)
    assert not list(out.rglob("*.tmp"))
    expected = numbers(json.loads((smoke_run / "results.json").read_text()))
    assert numbers(json.loads((out / "results.json").read_text())) == expected


def test_ctrl_c_is_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "nanobias", "pretrain", "--preset", "smoke", "--steps", "100000",
                             "--out", str(tmp_path / "p")], cwd=tmp_path, env=CLI_ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            # as at a terminal, even when this test runs in the background (which ignores SIGINT)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # wait until training runs
        if line.startswith("pretrain:"):
            break
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "interrupted; run the same command again to resume" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("content", ["empty", "random", "truncated"])
def test_a_broken_checkpoint_names_its_file(smoke_run, tmp_path, cli, content):
    good = (smoke_run / "policy.pt").read_bytes()
    data = {"empty": b"", "random": random.Random(0).randbytes(5000), "truncated": good[:len(good) // 3]}[content]
    path = tmp_path / "policy.pt"
    path.write_bytes(data)
    one_line_error(cli("eval", "--preset", "smoke", "--policy", path), str(path), "not a readable checkpoint")


def test_a_partial_checkpoint_is_not_taken_for_a_finished_one(tmp_path, cli):
    out = tmp_path / "p"
    proc = subprocess.Popen([sys.executable, "-m", "nanobias", "pretrain", "--preset", "smoke", "--steps", "100000",
                             "--set", "pretrain.ckpt_every=5", "--out", str(out)], cwd=tmp_path, env=CLI_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "policy.pt").is_file() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    one_line_error(cli("eval", "--preset", "smoke", "--policy", out / "policy.pt"), str(out / "policy.pt"),
                   "partial checkpoint", "of 100000")


def test_a_torn_metrics_line_is_dropped_on_resume_and_a_bad_one_named(tmp_path, cli):
    out = tmp_path / "p"
    short = ["pretrain", "--preset", "smoke", "--set", "pretrain.eval_every=2", "--eval-examples", "2", "--out", out]
    cli(*short, "--steps", "4", check_rc=0)
    metrics = out / "policy.metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 4, "lo')  # the kill came mid-write
    cli(*short, "--steps", "6", "--resume", check_rc=0)
    assert [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()] == list(range(6))
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines[:2] + ["not json"] + lines[2:]) + "\n")
    one_line_error(cli(*short, "--steps", "8", "--resume"), f"{metrics}, line 3")


def test_a_full_disk_names_the_path_and_leaves_no_partial_file(tmp_path):
    def small_files():  # writes beyond 200 kB fail with EFBIG (SIGXFSZ ignored, as a full disk's ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "p"
    proc = nanobias("pretrain", "--preset", "smoke", "--steps", "2", "--out", out, cwd=tmp_path, preexec_fn=small_files)
    assert proc.returncode == 1, proc.stderr  # the console script's status for a user's mistake
    one_line_error(proc, f"cannot write {out / 'policy.pt'}", "File too large")
    assert not (out / "policy.pt").exists() and not list(out.glob("*.tmp"))


def test_bbq_files_that_are_not_utf8_or_empty_are_named(tmp_path, cli):
    bbq = tmp_path / "bbq"
    bbq.mkdir()
    from test_bbq import bbq_record

    (bbq / "Age.jsonl").write_bytes(json.dumps(bbq_record()).encode() + b"\n\xff\xfe broken\n")
    one_line_error(cli(*SMOKE, "--data", "bbq", "--bbq-dir", bbq, "--out", tmp_path / "r"),
                   f"{bbq / 'Age.jsonl'}, line 2", "not UTF-8")
    (bbq / "Age.jsonl").write_bytes(b"\n")
    one_line_error(cli(*SMOKE, "--data", "bbq", "--bbq-dir", bbq, "--out", tmp_path / "r"),
                   str(bbq / "Age.jsonl"), "no examples")
    assert not (tmp_path / "r").exists()


def test_holding_out_every_category_stops_before_any_work(tmp_path, cli):
    every = "Age,Disability_status,Gender_identity,Nationality,Physical_appearance,Race_ethnicity,Religion,SES," \
            "Sexual_orientation"
    one_line_error(cli(*SMOKE, "--eval-categories", every, "--out", tmp_path / "r"), "holds out every category")
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
def test_bad_flags_are_usage_errors(smoke_run, tmp_path, cli, args, named):
    needs = {"grpo": ["--preset", "smoke", "--policy", smoke_run / "policy.pt", "--oracle-reward", "--out", tmp_path],
             "sample": ["--ckpt", smoke_run / "policy.pt"]}.get(args[0], [])
    proc = cli(*args, *needs)
    assert proc.returncode == 2 and named in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not list(tmp_path.iterdir())


def test_the_console_script_exits_2_on_a_usage_error(tmp_path):
    proc = nanobias("reproduce", "--seed", str(2**64), cwd=tmp_path)  # before torch is imported: no run time
    assert proc.returncode == 2 and "--seed" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert "Traceback" not in proc.stderr and not list(tmp_path.iterdir())


def test_bad_values_found_at_run_time_are_named(smoke_run, tmp_path, cli):
    policy = smoke_run / "policy.pt"
    one_line_error(cli("sample", "--ckpt", policy, "--prompt", "x", "--max-new-tokens", "100000"), "block_size")
    report = tmp_path / "report.md"
    report.write_text("a file where eval wants a folder")
    proc = cli("eval", "--preset", "smoke", "--policy", policy, "--out", report)
    assert proc.returncode == 2 and f"--out {report}" in proc.stderr
    run = tmp_path / "run"  # a pretrained folder to resume, with the smoke run's files
    run.mkdir()
    for name in ("policy.pt", "tokenizer.json"):
        shutil.copy2(smoke_run / name, run / name)
    tokenizer = (run / "tokenizer.json").read_bytes()
    resumed = cli("pretrain", "--preset", "smoke", "--vocab-size", "600", "--resume", "--out", run)
    one_line_error(resumed, "--resume", "vocabulary of 512, not 600")
    assert (run / "tokenizer.json").read_bytes() == tokenizer


@pytest.mark.parametrize("flag, value, named", [("--lr", "1e30", "--lr"), ("--beta", "1e308", "--beta")])
def test_divergence_stops_at_the_step_and_names_the_likely_flag(smoke_run, tmp_path, cli, flag, value, named):
    proc = cli("grpo", "--preset", "smoke", "--set", "rl.steps=3", "--policy", smoke_run / "policy.pt",
               "--reward", smoke_run / "reward.pt", flag, value, "--backend", "torch", "--out", tmp_path / "g")
    message = one_line_error(proc, "grpo step", named)
    assert not (tmp_path / "g" / "grpo.pt").exists(), message


def test_a_policy_too_short_for_the_data_says_what_to_do(smoke_run, tmp_path, cli):
    from test_bbq import bbq_record, write_bbq

    long_context = "A grandson and a grandfather were at the store, " * 60  # far past the smoke policy's window
    # one template, six pairs of people: real BBQ is split by pair of people within a template (data.py)
    pairs = [("grandfather", "grandson"), ("old man", "boy"), ("retiree", "student"), ("grandmother", "girl"),
             ("pensioner", "teen"), ("old woman", "young man")]
    write_bbq(tmp_path / "bbq", "Age", [json.dumps(bbq_record(
        example_id=i, context=long_context, ans0=f"The {pairs[i // 2][0]}", ans1=f"The {pairs[i // 2][1]}",
        answer_info={"ans0": [pairs[i // 2][0], "old"], "ans1": [pairs[i // 2][1], "nonOld"],
                     "ans2": ["Undetermined", "unknown"]})) for i in range(12)])
    proc = cli("eval", "--preset", "smoke", "--data", "bbq", "--bbq-dir", tmp_path / "bbq", "--policy",
               smoke_run / "policy.pt")
    one_line_error(proc, "block_size", "pretrained on this data")
