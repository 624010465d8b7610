"""trainer.time_budget: a duration turned into planned steps from measured costs, a schedule that
decays over the plan (and follows a new one without retracing), a stop at the budget, refusals of
what it cannot honour, and a real run that fills its budget."""

from __future__ import annotations

import pytest
import tensorflow as tf

from safetrain.config.schema import Config, OptimizerConfig, Schedule
from safetrain.core.errors import ConfigError
from safetrain.core.run_state import Position
from safetrain.train.actions import EpochEnd, StepEnd, Totals
from safetrain.train.budget import Budget, parse_budget, steps_that_fit
from safetrain.train.schedules import Horizon, learning_rate, value_at


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400), (45, 45),
                                          ("120", 120), (" 2m 30s ", 150)])
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["15 minutes", "m", "1x", "1h30"])
def test_a_duration_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_budget(text)


@pytest.mark.parametrize("settings,match", [
    ({"trainer.time_budget": "soon"}, "is not a duration"),
    ({"trainer.time_budget": "5s"}, "under 10 s nothing can be measured"),
    ({"trainer.time_budget": "15m", "optimizer.schedule": "step", "optimizer.milestones": [1]},
     "drops the rate at fixed epochs"),
    ({"trainer.time_budget": "15m", "trainer.lr_find": True}, "runs the LR finder instead"),
])
def test_settings_a_budget_cannot_honour_are_refused_by_name(settings, match):
    from omegaconf import OmegaConf

    from safetrain.experiment.validate import validate

    node = OmegaConf.structured(Config)
    for key, value in settings.items():
        OmegaConf.update(node, key, value)
    with pytest.raises(ConfigError, match=match) as info:
        validate(OmegaConf.to_object(node))
    assert info.value.config_key == "trainer.time_budget"


def test_the_schedule_decays_over_the_planned_steps_and_follows_a_new_plan_without_retracing():
    horizon = Horizon(1000)  # the cap (trainer.epochs), until the budget plans
    plan = learning_rate(OptimizerConfig(learning_rate=0.1, schedule=Schedule.cosine, min_learning_rate=0.001), 10,
                         1000, horizon)
    assert plan.describe == "cosine 0.1 -> 0.001 at the step trainer.time_budget plans"
    traced = []

    @tf.function
    def rate(step):
        traced.append(1)
        return plan.learning_rate(step)

    assert float(rate(tf.constant(999))) == pytest.approx(0.001)
    horizon.variable.assign(200)  # planned: 200 steps
    assert float(rate(tf.constant(199))) == pytest.approx(0.001) and float(rate(tf.constant(100))) > 0.04
    assert len(traced) == 1
    for kind in (Schedule.linear, Schedule.one_cycle):
        other = learning_rate(OptimizerConfig(learning_rate=0.1, schedule=kind, min_learning_rate=0.001), 10, 1000,
                              horizon)
        assert value_at(other.learning_rate, 199) == pytest.approx(0.001, rel=1e-3)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _budget(clock, seconds=100.0, cap=10_000, deterministic=False):
    horizon = tf.Variable(cap, dtype=tf.int64)
    return Budget(seconds, horizon, cap=cap, steps_per_epoch=100, batch_size=32, eval_examples=320,
                  test_examples=320, export=True, started=0.0, clock=clock, replan=not deterministic), horizon


def _step(budget, clock, step, dt, epoch=1):
    clock.now += dt
    totals = Totals()
    totals.count = 32 * step
    budget.after_step(StepEnd(at=Position(step, epoch, step), outputs={}, totals=totals, rate=32 / dt, finite=True))


def test_the_plan_fits_the_measured_steps_and_evaluations_into_the_budget_then_follows_the_real_epochs():
    clock = FakeClock()
    budget, horizon = _budget(clock)
    for step in range(1, 8):
        _step(budget, clock, step, 0.1)  # 100 ms a step
    # 100 s - 0.7 s spent - reserve (2 test passes of 320 examples at 1/3 of a step's cost, export 8 s,
    # 2 s) = 88.8 s; a step costs 0.1 s plus 1/100 of an evaluation (320 examples, 0.33 s)
    assert budget.reserve(0.1 / 32) == pytest.approx(2 * 320 * 0.1 / 32 / 3 + 8 + 2)
    expected = 7 + steps_that_fit(100 - 0.7 - budget.reserve(0.1 / 32), 0.1, 320 * 0.1 / 32 / 3, 100)
    assert budget.planned == expected and 800 < expected < 900
    for step in range(8, 101):
        _step(budget, clock, step, 0.05)  # the steady rate is twice the first steps'
    budget.after_epoch(EpochEnd(epoch=1, step=100, totals=Totals(), next_position=Position(100, 2, 0)))
    assert budget.planned > expected * 1.5 and budget.summary(100)["replans"] == 1


def test_out_of_time_it_stops_at_the_next_step_and_says_so():
    clock = FakeClock()
    budget, horizon = _budget(clock, seconds=30.0)
    for step in range(1, 8):
        _step(budget, clock, step, 0.1)
    clock.now = 25.0  # the machine slowed down: 25 s gone, the test and export still to come
    _step(budget, clock, 8, 0.1)
    assert budget.step_limit() == 8
    assert budget.summary(8)["stopped_by"] == "time"


def test_deterministic_runs_keep_the_first_plan():
    clock = FakeClock()
    budget, _ = _budget(clock, deterministic=True)
    for step in range(1, 101):
        _step(budget, clock, step, 0.1 if step < 8 else 0.05)
    first = budget.planned
    budget.after_epoch(EpochEnd(epoch=1, step=100, totals=Totals(), next_position=Position(100, 2, 0)))
    assert budget.planned == first and budget.summary(100)["replans"] == 0
    assert budget.summary(100)["replanning"].startswith("off (trainer.deterministic=true")


@pytest.mark.e2e
def test_a_budget_run_fills_its_time_and_the_rate_decays_over_it(train):
    result = train("trainer.time_budget=25s", "trainer.epochs=200", "trainer.max_steps=null", "trainer.export=true",
                   "optimizer.schedule=cosine", "dataset.max_examples=null", "trainer.log_every_steps=10")
    assert result.code == 0, result.err
    report = result.report()
    budget = report["budget"]
    assert budget["seconds"] == 25.0 and budget["steps"] == report["steps"] == budget["planned_steps"]
    assert budget["stopped_by"] in ("plan", "time") and budget["planned_steps"] < 200 * 40
    assert 0.6 * 25 <= report["wall_seconds"] <= 25 * 1.15  # the run's own clock, export included
    from conftest import read_tensorboard

    scalars, _ = read_tensorboard(result.run_dir / "tb")
    rates = [v for _, v in scalars["optimizer/learning_rate"]]
    assert rates[-1] < 0.2 * rates[0]  # the cosine ran its course over the planned steps
    assert report["metrics"]["test_accuracy"] > 0.8


@pytest.mark.e2e
def test_sigterm_and_a_rerun_continue_the_same_plan_to_its_last_step(tmp_path, tfds_dir):
    """The plan is in the checkpoint: the resumed process plans nothing again and trains to the
    planned step; under trainer.deterministic=true the first plan is kept (no re-planning)."""
    import json
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "safetrain", f"hydra.run.dir={run_dir}", f"dataset.data_dir={tfds_dir}",
           "trainer.time_budget=40s", "trainer.epochs=300", "trainer.deterministic=true", "optimizer.schedule=cosine",
           "trainer.log_every_steps=5", "trainer.checkpoint_every_steps=1000", "trainer.export=false",
           "hardware.precision=float32"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    deadline, planned = time.monotonic() + 120, None
    for line in proc.stderr:  # wait for the plan, then a few more logged steps
        found = re.search(r"trainer.time_budget 40s: .* -> (\d+) steps", line)
        planned = int(found.group(1)) if found else planned
        if (planned and re.search(r"epoch 2/300 step 10/", line)) or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143 and planned, rest
    stopped_at = json.loads((run_dir / "report.json").read_text())["steps"]
    assert stopped_at < planned

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=180)
    assert again.returncode == 0, again.stderr
    assert f"resuming from checkpoint at step {stopped_at}" in again.stderr
    assert "trainer.time_budget 40s:" not in again.stderr  # nothing measured or planned again
    report = json.loads((run_dir / "report.json").read_text())
    budget = report["budget"]
    assert budget["planned_steps"] == planned and budget["replans"] == 0
    assert report["steps"] == planned or budget["stopped_by"] == "time"
