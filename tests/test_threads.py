"""The thread policy: --threads, then OMP_NUM_THREADS, then min(model cap, free cores)."""

import pytest

from nanobias import threads
from nanobias.presets import get_preset


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 4)
    return monkeypatch


def test_the_flag_wins_then_the_environment(four_cores):
    four_cores.setattr(threads, "busy_cores", lambda: 0.0)
    four_cores.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose(2, 10**9) == (2, "--threads")
    assert threads.choose(None, 10**9) == (3, "OMP_NUM_THREADS")


def test_never_more_threads_than_free_cores(four_cores):
    four_cores.setattr(threads, "busy_cores", lambda: 2.6)  # another job keeps 2.6 of 4 cores busy
    assert threads.choose(None, 10**9)[0] == 1
    four_cores.setattr(threads, "busy_cores", lambda: 1.2)
    assert threads.choose(None, 10**9)[0] == 3
    four_cores.setattr(threads, "busy_cores", lambda: 4.0)
    assert threads.choose(None, 10**9)[0] == 1  # a full machine still gets one


def test_a_small_model_gets_one_thread(four_cores):
    four_cores.setattr(threads, "busy_cores", lambda: 0.0)
    smoke, cpu = threads.model_params(get_preset("smoke")), threads.model_params(get_preset("cpu"))
    assert smoke < threads.SMALL_MODEL <= cpu
    assert threads.choose(None, smoke)[0] == 1
    assert threads.choose(None, cpu)[0] == 4
    assert threads.choose(None, None)[0] == 4  # no preset (nanobias sample): the cores


def test_model_params_is_near_the_real_count():
    import torch

    from nanobias.model import GPT
    from dataclasses import replace

    preset = get_preset("cpu")
    with torch.device("meta"):
        real = GPT(replace(preset.model, vocab_size=preset.pretrain.vocab_size)).num_params()
    assert abs(threads.model_params(preset) - real) / real < 0.05


def test_busy_cores_reads_this_machine():
    assert 0.0 <= threads.busy_cores(interval=0.05) <= threads.cores() + 0.5


def test_configure_sets_torch_and_says_why(four_cores):
    import torch

    said = []
    before = torch.get_num_threads()
    try:
        assert threads.configure(1, None, say=said.append) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert said == ["threads: 1 (from --threads)"]
