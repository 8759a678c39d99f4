import fcntl
import os
import subprocess
import sys
from pathlib import Path

# NANOBIAS_TEST_DEVICE=cuda (scripts/gpu_check.sh) runs the kernel tests compiled on the GPU.
# Otherwise Triton's interpreter runs them on the CPU: Triton reads TRITON_INTERPRET when a kernel
# module is first imported, so it is set before any test imports `nanobias.kernels`.
TEST_DEVICE = os.environ.get("NANOBIAS_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")
# One thread for torch here and in every subprocess a test starts (they inherit it): nano models gain
# nothing from a second thread, and the other core is busy with another test or another job.
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402  (after TRITON_INTERPRET, which must come first)

# the environment of a user's `nanobias` command: no TRITON_INTERPRET, so the CLI runs its CPU path
CLI_ENV = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, "NANOBIAS_DEBUG": "0"}
# the smoke reproduction that test_reproduce and test_faults share; SES held out, so held-out metrics exist
SMOKE_REPRODUCE = ["reproduce", "--preset", "smoke", "--eval-categories", "SES"]


def pytest_xdist_auto_num_workers(config):
    """`pytest -n auto` (the README's command): one single-thread worker per free core, by the thread
    policy nanobias's own processes follow (nanobias/threads.py), so a busy laptop is not oversubscribed."""
    from nanobias import threads

    return threads.free_cores()


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder `name` that `build(folder)` fills once per test session, shared by every xdist worker:
    the first worker to ask builds it under a lock, the others wait for it and then read it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if build fails
        if not done.exists():
            folder.mkdir(exist_ok=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The folder of one finished `nanobias reproduce` smoke run, run once as a user runs it (a
    subprocess with CLI_ENV). Read it only: a test that writes into a run folder copies it first."""
    def build(folder):
        proc = subprocess.run([sys.executable, "-m", "nanobias", *SMOKE_REPRODUCE, "--out", str(folder / "run")],
                              cwd=folder, env=CLI_ENV, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])

    return built_once(tmp_path_factory, "smoke_run", build) / "run"


@pytest.fixture(scope="session")
def smoke_policy(tmp_path_factory):
    """A smoke-sized policy that has learned the answer format (short answers, two categories),
    pretrained once for every RL test: (preset, splits, policy checkpoint path)."""
    from nanobias.data import load_splits
    from nanobias.presets import get_preset
    from nanobias.pretrain import pretrain_policy
    from nanobias.world import CATEGORIES

    # GPT-2's architecture: at this size and rate, token_shift learns the format more slowly
    preset = get_preset("smoke", {"pretrain.long_rate": 0.0, "pretrain.steps": 150, "pretrain.lr": 1e-2,
                                  "pretrain.warmup": 10, "pretrain.eval_every": 150, "pretrain.ckpt_every": 150,
                                  "model.token_shift": 0})
    splits = load_splits("synthetic", seed=0, variants_per_template=preset.variants_per_template,
                         train_categories=list(CATEGORIES[:2]))
    out = built_once(tmp_path_factory, "smoke_policy",
                     lambda folder: pretrain_policy(splits, preset.pretrain, preset.model, folder, seed=0))
    return preset, splits, out / "policy.pt"


@pytest.fixture(scope="session")
def sampled_oracle_reward():
    """(policy checkpoint, examples, max_new_tokens, group_size) -> mean oracle reward of
    group_size sampled completions per example, with a fixed sampling seed."""
    from nanobias import rl
    from nanobias.checkpoint import load_policy
    from nanobias.evaluate import oracle_rewards

    def mean_reward(ckpt, examples, max_new_tokens: int, group_size: int) -> float:
        model, enc, _ = load_policy(ckpt)
        cfg = rl.RLConfig(prompts_per_step=len(examples), group_size=group_size, max_new_tokens=max_new_tokens)
        ro = rl.rollout(model, enc, examples, cfg, seed=123)
        return oracle_rewards(ro.examples, ro.completions).mean().item()

    return mean_reward


@pytest.fixture
def cpu_path(monkeypatch):
    """Kernels take a CPU's path in this process, as in a user's `nanobias` command on a CPU: "auto"
    resolves to the torch backend, not to the interpreted Triton kernels TRITON_INTERPRET selects here
    (which run every masked GELU of an intervened reward model in NumPy, many times slower)."""
    from nanobias.kernels import dispatch

    monkeypatch.setattr(dispatch, "triton_interpreted", lambda: False)


@pytest.fixture
def poison_outputs(monkeypatch):
    """Kernel output buffers start as NaN, so an element a kernel forgets to write fails the test
    (the kernel test modules use it for every test); their tensors are made on TEST_DEVICE."""
    import torch

    from nanobias.kernels import dispatch

    def nan_filled(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(dispatch, "empty_output", nan_filled)
    torch.set_default_device(TEST_DEVICE)
    yield
    torch.set_default_device("cpu")


@pytest.fixture(scope="session")
def tiny_splits():
    """The smallest synthetic world (one variant per template), split by template."""
    from nanobias.data import load_splits

    return load_splits("synthetic", seed=0, variants_per_template=1)


@pytest.fixture(scope="session")
def random_rm():
    """(reward model, tokenizer): a random 2-layer, 16-wide reward model whose head reads varied rewards."""
    import torch

    from nanobias.model import GPT, GPTConfig
    from nanobias.render import pretraining_documents
    from nanobias.reward import reward_model_from_policy
    from nanobias.tokenizer import train_bpe
    from nanobias.world import synthetic_examples

    enc = train_bpe(pretraining_documents(synthetic_examples(0, 1), 0.8, 0, 0.5), 400)
    torch.manual_seed(0)
    policy = GPT(GPTConfig(block_size=256, vocab_size=enc.n_vocab, n_layer=2, n_head=2, n_embd=16))
    rm = reward_model_from_policy(policy, seed=0).eval()
    with torch.no_grad():  # a random head reads near-constant rewards; make it matter
        rm.head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    return rm, enc


@pytest.fixture(scope="session")
def random_rm_ckpt(tmp_path_factory, random_rm):
    from nanobias.checkpoint import save_checkpoint
    from nanobias.reward import reward_meta

    rm, enc = random_rm
    path = tmp_path_factory.mktemp("rm") / "reward.pt"
    save_checkpoint(path, {"model": rm.state_dict(), "step": 0, "meta": reward_meta(rm, enc)})
    return path
