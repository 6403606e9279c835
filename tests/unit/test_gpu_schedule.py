"""The time-budgeted run's schedule and step planning (appliance.ml.schedule)."""

from __future__ import annotations

import pytest

from appliance.ml.schedule import Schedule, duration, planned_steps


def test_warmup_then_linear_to_zero():
    schedule = Schedule(peak=0.4, warmup=10, total=110)
    assert schedule(0) == pytest.approx(0.4 / 25)
    assert schedule(5) == pytest.approx(0.4 / 25 + (0.4 - 0.4 / 25) / 2)
    assert schedule(10) == pytest.approx(0.4)
    assert schedule(60) == pytest.approx(0.2)
    assert schedule(110) == 0.0 and schedule(500) == 0.0


def test_replan_keeps_the_rate_continuous():
    schedule = Schedule(peak=0.4, warmup=10, total=110)
    before = schedule(60)
    schedule.replan(60, 160)  # faster than measured first: more steps
    assert schedule(60) == pytest.approx(before)
    assert schedule(110) == pytest.approx(before / 2)
    assert schedule(160) == 0.0
    schedule.replan(110, 120)  # then slower: the end comes sooner, still no jump
    assert schedule(110) == pytest.approx(before / 2)
    assert schedule(115) == pytest.approx(before / 4)


def test_a_short_run_shortens_its_warmup():
    schedule = Schedule(peak=0.4, warmup=194, total=10**9)  # 2 epochs of 97
    schedule.replan(5, 50)
    assert schedule.warmup == 10 and schedule(10) == pytest.approx(0.4)
    assert schedule(49) > 0.0 and schedule(50) == 0.0
    tiny = Schedule(peak=0.1, warmup=8, total=2)
    tiny.replan(0, 2)
    assert tiny(0) == pytest.approx(0.1) and tiny(1) == pytest.approx(0.05)


def test_planned_steps_fit_the_time_left():
    # 10,000 img/s, 60 s left, batches of 500: 1,200 more steps; whole epochs of 97 steps.
    assert planned_steps(11, 10_000, 60, 500, 97) == 1164  # 12 epochs
    assert planned_steps(11, 10_000, 60, 500, 97, max_epochs=5) == 485
    assert planned_steps(3, 10, 10, 16, 4) == 9  # 6 more: under 3 epochs, not rounded
    assert planned_steps(40, 100, -5, 16, 4) == 41  # out of time: at least one more step


def test_duration():
    assert duration(5.4) == "5s" and duration(125) == "2m05s" and duration(-3) == "0s"
