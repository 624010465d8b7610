"""trainer.time_budget: a duration turned into planned steps from measured costs, a schedule that
decays over the plan (and follows a new one without retracing), a stop at the budget, refusals of
what it cannot honour, and a real run that fills its budget."""

from __future__ import annotations

import pytest
import tensorflow as tf

from safetrain.config.schema import Config, OptimizerConfig, Schedule
from safetrain.core.errors import ConfigError
from safetrain.core.run_state import Position
from safetrain.train.actions import EpochEnd, StepEnd
from safetrain.train.metrics import Totals
from safetrain.train.budget import Budget, Costs, parse_budget, snapped, spacing, steps_that_fit
from safetrain.train.schedules import horizon_for, learning_rate, value_at


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
    optimizer = OptimizerConfig(learning_rate=0.1, schedule=Schedule.cosine, min_learning_rate=0.001, warmup_epochs=1)
    horizon = horizon_for(optimizer, 100, 10_000)  # the cap (trainer.epochs), until the budget plans
    plan = learning_rate(optimizer, 100, 10_000, horizon)
    assert plan.describe.startswith("linear warmup over 100 steps (at most 10% of the planned steps), then cosine "
                                    "0.1 -> 0.001 at the step trainer.time_budget plans")
    traced = []

    @tf.function
    def rate(step):
        traced.append(1)
        return plan.learning_rate(step)

    assert float(rate(tf.constant(9_999))) == pytest.approx(0.001)
    horizon.first_plan(200)  # planned: 200 steps; the one-epoch warmup is cut to a tenth of them
    assert horizon.warmup_steps == 20
    assert float(rate(tf.constant(199))) == pytest.approx(0.001) and float(rate(tf.constant(100))) > 0.04
    assert float(rate(tf.constant(19))) == pytest.approx(0.1)  # the warmup's last step reaches the rate
    assert len(traced) == 1
    for kind in (Schedule.linear, Schedule.one_cycle):
        other_cfg = OptimizerConfig(learning_rate=0.1, schedule=kind, min_learning_rate=0.001)
        other_horizon = horizon_for(other_cfg, 10, 1000)
        other = learning_rate(other_cfg, 10, 1000, other_horizon)
        other_horizon.first_plan(200)
        assert value_at(other.learning_rate, 199) == pytest.approx(0.001, rel=1e-3)


@pytest.mark.parametrize("kind", [Schedule.cosine, Schedule.linear, Schedule.one_cycle])
def test_a_new_plan_bends_the_rest_of_the_curve_and_the_rate_never_rises_after_the_warmup(kind):
    """Longer, shorter, longer again: the rate goes on from where it is to min_learning_rate at the
    new last step (a restarted cosine over a longer plan would rise)."""
    cfg = OptimizerConfig(learning_rate=0.1, schedule=kind, min_learning_rate=0.001,
                          warmup_epochs=0 if kind is Schedule.one_cycle else 1)
    horizon = horizon_for(cfg, 50, 100_000)
    plan = learning_rate(cfg, 50, 100_000, horizon)
    horizon.first_plan(1000)
    rates = [value_at(plan.learning_rate, s) for s in range(0, 400, 5)]
    for at, total in ((400, 3000), (900, 1500), (1200, 2500)):
        horizon.replan(at, total)
        end = {400: 900, 900: 1200, 1200: 2500}[at]
        rates += [value_at(plan.learning_rate, s) for s in range(at, end, 5)] + [value_at(plan.learning_rate, end - 1)]
    peak = rates.index(max(rates))
    after = rates[peak:]
    assert peak <= 300  # the warmup (one_cycle: its 30% rise) of the first plan
    assert all(b <= a * (1 + 1e-6) for a, b in zip(after, after[1:]))
    assert after[-1] == pytest.approx(0.001, rel=1e-2)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeEvaluation:
    """What the Budget reads of the Evaluate action: seconds and count so far."""

    def __init__(self) -> None:
        self.seconds, self.count = 0.0, 0


def _budget(clock, seconds=100.0, cap=10_000, deterministic=False, eval_examples=320, export=True, save_s=0.0):
    horizon = horizon_for(OptimizerConfig(learning_rate=0.1, schedule=Schedule.cosine, warmup_epochs=1), 100, cap)
    evaluation = FakeEvaluation()
    # the eval step: its trace took 0.5 s, then 1 ms an example; a checkpoint save `save_s`
    budget = Budget(seconds, horizon, cap=cap, steps_per_epoch=100, batch_size=32, eval_examples=eval_examples,
                    test_examples=320, results_examples=0, export=export, started=0.0, clock=clock,
                    replan=not deterministic, evaluation=evaluation, time_evaluation=lambda: (0.5, 0.001),
                    save_seconds=lambda: save_s)
    return budget, horizon, evaluation


def _run(budget, clock, evaluation, steps, dt, start=1, eval_s=0.32, first_call=None):
    """Steps `start`..`steps` of `dt` seconds (an epoch every 100, its evaluation `eval_s`); the
    first call of each epoch takes `first_call` seconds (a new iterator's first fill) and is not steady."""
    for step in range(start, steps + 1):
        epoch, in_epoch = (step - 1) // 100 + 1, (step - 1) % 100 + 1
        first = in_epoch == 1
        clock.now += first_call if first and first_call else dt
        budget.after_step(StepEnd(at=Position(step, epoch, in_epoch), outputs={}, totals=Totals(), rate=None,
                                  finite=True, steady=not first and step > 2))
        if in_epoch == 100:
            clock.now += eval_s
            evaluation.seconds += eval_s
            evaluation.count += 1
            budget.after_epoch(EpochEnd(epoch=epoch, step=step, totals=Totals(), next_position=Position(step, 2, 0)))


def test_the_first_plan_leaves_the_traces_out_and_fits_steps_evaluations_and_what_follows():
    clock = FakeClock()
    budget, horizon, evaluation = _budget(clock, seconds=300.0, save_s=0.4)
    clock.now = 10.0  # start-up: imports, the scan, the model
    # The first call traces (3 s), the second is the first untraced one: neither is measured.
    budget.after_step(StepEnd(at=Position(1, 1, 1), outputs={}, totals=Totals(), rate=None, finite=True,
                              steady=False))  # the probe: the eval step traced and timed here
    clock.now += 3.0
    # Epochs of 5 s are short (under 5% of the budget): measured in whole epochs from the first
    # one's end, at least 6 s (2% of 300 s): planned early in epoch 4.
    _run(budget, clock, evaluation, 400, 0.05, start=2)
    costs = budget.costs
    assert costs.step_s == pytest.approx(0.05, rel=0.01)  # the trace left out
    assert costs.eval_s == pytest.approx(0.32)           # real evaluations, measured
    # the checkpoint where training ends (0.4 s), test 320 x 1 ms, the pictures (2.5 s + a trace +
    # 320 x 1 ms), the export (2.5 s + two traces), the interpreter's exit (1.5 s) and 1% of the
    # budget for what no estimate sees
    assert costs.after_s == pytest.approx(0.4 + 0.32 + 2.5 + 0.5 + 0.32 + 2.5 + 1.0 + 1.5 + 3.0, rel=0.01)
    first, mark = budget.summary(400)["first_plan"], budget._mark
    assert budget.summary(400)["replans"] == 0 and 300 < mark.step < 400
    # What is left after the plan's steps and evaluations (the last one too), at these costs, is
    # the time after training.
    left = first - mark.step
    plan_end = mark.time + left * 0.05 + (left / 100 + 1) * 0.32
    assert plan_end + costs.after_s == pytest.approx(300.0, abs=0.5)
    assert horizon.warmup_steps == 100  # one epoch, under a tenth of the plan


def test_a_warming_pipeline_is_waited_out_the_first_plan_uses_the_steady_half_of_its_window():
    """Long epochs: steps that start three times slower and settle (tf.data's autotuning) are
    measured until the window's halves agree; the plan's step is the steady one."""
    import math

    clock = FakeClock()
    budget, horizon, evaluation = _budget(clock, seconds=150.0)  # an epoch of 100 steps (10 s) is long here
    step = 0
    while not budget.summary(step)["first_plan"] and step < 99:
        step += 1
        clock.now += 0.1 * (1 + 2 * math.exp(-step / 12))
        budget.after_step(StepEnd(at=Position(step, 1, step), outputs={}, totals=Totals(), rate=None, finite=True,
                                  steady=step > 2))
    assert budget.summary(step)["first_plan"]
    # (a plan from the first 3 seconds alone would have taken a step for 40% slower: ~0.14 s)
    assert budget.costs.step_s == pytest.approx(0.1, rel=0.12)


def test_replans_follow_a_machine_that_slows_down_and_out_of_time_it_stops_at_the_next_step():
    clock = FakeClock()
    budget, horizon, evaluation = _budget(clock, seconds=200.0)
    _run(budget, clock, evaluation, 400, 0.05)
    first = budget.planned
    _run(budget, clock, evaluation, 1200, 0.1, start=401)  # twice as slow from here
    assert 1200 < budget.planned < first and budget.summary(1200)["replans"] >= 1
    clock.now = 197.0  # stalled: the test and export still to come
    _run(budget, clock, evaluation, 1201, 0.1, start=1201)
    assert budget.step_limit() == 1201 and budget.summary(1201)["stopped_by"] == "time"


def test_a_plan_reached_early_is_extended_with_the_time_left():
    clock = FakeClock()
    budget, horizon, evaluation = _budget(clock, seconds=200.0)
    _run(budget, clock, evaluation, 300, 0.2)  # slow first steps
    first = budget.planned
    _run(budget, clock, evaluation, first, 0.02, start=301)  # then ten times faster
    assert budget.planned > first


def test_the_budget_counts_the_whole_command_from_its_first_line(tmp_path):
    """`python -m safetrain` marks its first line; the command's first run counts from there
    (Python, Hydra and the config included), a later run in the same process from its own start."""
    import time

    from safetrain.core import run_state
    from safetrain.record.run_record import RunRecord

    began = time.monotonic() - 2.0  # the seconds before the run's record
    run_state.command_started(began)
    assert RunRecord(tmp_path).started == began
    before = time.monotonic()
    (tmp_path / "next").mkdir()
    assert RunRecord(tmp_path / "next").started >= before  # a multirun's next job


def test_a_plan_that_would_end_a_few_steps_into_a_new_epoch_ends_at_the_epoch_end():
    """Measured at 1 minute on Fashion-MNIST (421 steps an epoch): plans of 422-456 steps paid the
    second epoch's start and a stop inside it, 1-3 s beyond the budget, for a few steps."""
    assert snapped(422, 300, 421) == 421 and snapped(456, 300, 421) == 421
    assert snapped(500, 300, 421) == 500   # 79 steps in: a share of an epoch worth training
    assert snapped(403, 0, 421) == 403     # inside the first epoch: nothing to end at
    assert snapped(842, 0, 421) == 842     # already an epoch end
    assert snapped(429, 425, 421) == 429   # the epoch end has passed: never back before the step


def test_deterministic_runs_keep_the_first_plan():
    clock = FakeClock()
    budget, horizon, evaluation = _budget(clock, deterministic=True)
    _run(budget, clock, evaluation, 300, 0.05)
    first = budget.planned
    _run(budget, clock, evaluation, 600, 0.02, start=301)
    assert budget.planned == first and budget.summary(600)["replans"] == 0
    assert budget.summary(600)["replanning"].startswith("off (trainer.deterministic=true")


def test_evaluations_that_cost_more_than_a_tenth_of_an_epoch_are_spaced_out_and_the_last_step_is_evaluated():
    costs = Costs(step_s=0.01, eval_s=0.5, after_s=5.0)  # an epoch trains 1 s, an evaluation 0.5 s
    assert spacing(costs, 100, planned_epochs=500) == 5
    assert spacing(costs, 100, planned_epochs=12) == 2  # still 5 evaluations in the plan
    assert spacing(Costs(0.01, 0.05, 5.0), 100, planned_epochs=500) == 1
    assert steps_that_fit(100.0, costs, 100, eval_every=5) > steps_that_fit(100.0, costs, 100, eval_every=1)
    clock = FakeClock()
    budget, horizon, evaluation = _budget(clock, seconds=120.0)
    _run(budget, clock, evaluation, 500, 0.01, eval_s=0.5)
    every = budget.eval_every
    assert every > 1
    assert not budget.eval_due(EpochEnd(epoch=every + 1, step=100 * (every + 1), totals=Totals(),
                                        next_position=Position(0, 0, 0)))
    assert budget.eval_due(EpochEnd(epoch=2 * every, step=200 * every, totals=Totals(),
                                    next_position=Position(0, 0, 0)))
    last = budget.planned
    assert budget.eval_due(EpochEnd(epoch=every * 1000 + 1, step=last, totals=Totals(),
                                    next_position=Position(0, 0, 0)))


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
        if planned and re.search(r"epoch \d+/300 step 10/", line) or time.monotonic() > deadline:
            break
        found = re.search(r"trainer.time_budget 40s: .* -> (\d+) steps", line)
        planned = int(found.group(1)) if found else planned
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
    assert budget["first_plan"] == planned and budget["replans"] == 0
    # to the planned step, or (a loaded machine) stopped at its own budget: the stop is recorded as such
    assert report["steps"] == budget["planned_steps"] == planned or (
        budget["stopped_by"] == "time" and report["steps"] == budget["planned_steps"] < planned)
