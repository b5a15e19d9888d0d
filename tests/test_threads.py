"""torch threads: every core by default, or the cores other processes left idle when adapting."""

import pytest
import torch

from deltabelief import threads as T


def test_fixed_and_default_thread_counts(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert T.ThreadFitter(1).fit() == 1 and torch.get_num_threads() == 1
        assert T.ThreadFitter(0, cores=2).fit() == 2  # 0: every core
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="num_threads"):
        T.ThreadFitter(-1)


def test_adapting_leaves_the_cores_other_processes_kept_busy(monkeypatch):
    # (all processes' busy CPU seconds, this process's CPU seconds) at t = 0 s and t = 10 s:
    # others used 15 - 5 = 10 CPU seconds in 10 s, one core of the two.
    samples = iter([(0.0, 0.0), (15.0, 5.0), (25.0, 15.0)])
    clock = iter([0.0, 10.0, 20.0])
    monkeypatch.setattr(T, "_busy_and_own_seconds", lambda: next(samples))
    monkeypatch.setattr(T.time, "monotonic", lambda: next(clock))
    before = torch.get_num_threads()
    try:
        fitter = T.ThreadFitter(cores=2, adapt=True)
        assert fitter.fit() == 2  # no window yet: every core
        assert fitter.fit() == 1  # one core was busy elsewhere
        assert fitter.fit() == 2  # the others stopped (all 10 busy CPU seconds were ours): every core again
    finally:
        torch.set_num_threads(before)


def test_waiting_openmp_threads_sleep_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    T.passive_openmp()
    assert T.os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    T.passive_openmp()
    assert T.os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
