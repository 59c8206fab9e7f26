"""mrdl-bench's measuring loop: backends timed interleaved round by round (order rotated), paired per-round
speed-ups with their quartiles, the load-average flag, and percentiles only where the iterations resolve them."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from mrdl_bench.bench import _rounds, load_check  # noqa: E402
from mrdl_bench.inputs import InputSet  # noqa: E402
from mrdl_bench.measure import LatencySummary, paired_ratios  # noqa: E402


class _FakeRunner:
    """Records the order of calls across runners; each 'inference' takes ``seconds`` on its own clock."""

    def __init__(self, name: str, seconds: list[float], log: list[str]) -> None:
        self.name, self.seconds, self.log, self.inference_times = name, iter(seconds), log, []

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.log.append(self.name)
        self.inference_times.append(next(self.seconds))
        return batch


def test_rounds_interleave_and_rotate_the_order():
    log: list[str] = []
    runners = {name: _FakeRunner(name, [0.01 * (i + 1)] * 6, log) for i, name in enumerate("abc")}
    inputs = InputSet(source="test", names=["x", "y"], raw=[np.zeros((4, 4, 3), np.uint8)] * 2, tensors=np.zeros((2, 3, 4, 4), np.float32), size=4)
    times = _rounds(runners, inputs, batch=1, first_index=0, iters=6, include_prepost=False, threshold=0.5)
    assert log[:9] == list("abc" "bca" "cab")  # one step each per round, each backend first once in 3 rounds
    assert {name: len(series) for name, series in times.items()} == {"a": 6, "b": 6, "c": 6}
    assert times["b"] == [0.02] * 6


def test_paired_ratios_cancel_a_load_burst_that_hits_both_backends():
    baseline = [10.0, 10.0, 30.0, 10.0, 10.0]  # round 3: the machine was busy for both
    candidate = [5.0, 5.0, 15.0, 5.0, 5.0]
    paired = paired_ratios(baseline, candidate)
    assert paired["median"] == paired["p25"] == paired["p75"] == pytest.approx(2.0) and paired["rounds"] == 5
    # unpaired means would mix the burst in differently; the paired spread stays tight only when the burst is shared
    skewed = paired_ratios(baseline, [5.0, 5.0, 5.0, 5.0, 15.0])
    assert skewed["max"] == pytest.approx(6.0) and skewed["min"] == pytest.approx(10 / 15)
    with pytest.raises(ValueError, match="two equal, non-empty series"):
        paired_ratios([1.0], [1.0, 2.0])


def test_load_check_flags_more_runnable_work_than_cpus():
    assert not load_check(0.5, 1.9, cpus=2)["flagged"]
    check = load_check(1.0, 3.5, cpus=2)
    assert check["flagged"] and check["note"].startswith("LOADED: 1-minute load average 3.50 > 2")


def test_percentiles_need_the_iterations_that_resolve_them():
    few = LatencySummary.from_seconds([0.01] * 9)
    assert few.meaningful(50) and not few.meaningful(90) and not few.meaningful(99)
    enough = LatencySummary.from_seconds([0.01] * 100)
    assert enough.meaningful(90) and enough.meaningful(99)


def test_rounds_pause_before_every_step_when_asked(monkeypatch):
    import mrdl_bench.bench as bench

    events: list[str] = []
    monkeypatch.setattr(bench.time, "sleep", lambda seconds: events.append(f"sleep {seconds}"))
    runners = {name: _FakeRunner(name, [0.01] * 3, events) for name in "ab"}
    inputs = InputSet(source="test", names=["x"], raw=[np.zeros((4, 4, 3), np.uint8)], tensors=np.zeros((1, 3, 4, 4), np.float32), size=4)
    _rounds(runners, inputs, batch=1, first_index=0, iters=2, include_prepost=False, threshold=0.5, settle_s=0.05)
    assert events == ["sleep 0.05", "a", "sleep 0.05", "b", "sleep 0.05", "b", "sleep 0.05", "a"]
    events.clear()
    _rounds(runners, inputs, batch=1, first_index=0, iters=1, include_prepost=False, threshold=0.5)
    assert events == ["a", "b"]  # no pause by default in the loop itself
