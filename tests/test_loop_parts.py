"""Pieces of the loop that need no training: progress output, step timing, error conversion, report."""

from __future__ import annotations

import io
import json
import math

import pytest

from safetrain.train.progress import Progress
from safetrain.record.report import RunReport
from safetrain.train.throughput import StepTimer

WARMUP_STEPS = 4


def test_progress_redraws_a_bar_on_a_terminal_and_throttles():
    clock = iter([0.0, 0.05, 0.2, 0.3]).__next__
    out = io.StringIO()
    bar = Progress(stream=out, is_tty=True, clock=clock)
    bar.start_epoch(2, 5, total_steps=8)
    bar.update(1, 2.0, 0.1, None)          # t=0.0: drawn
    bar.update(2, 1.9, 0.2, 1000.0)        # t=0.05: throttled
    bar.update(4, 1.5, 0.5, 1234.0)        # t=0.2: drawn
    text = out.getvalue()
    assert text.count("\r") == 2
    assert "epoch 2/5 [============>           ] 4/8  loss 1.5000  acc 0.5000  1,234 ex/s" in text
    # A message logged mid-epoch clears the bar first: it gets its own line, not the bar's tail.
    import logging

    logging.getLogger("safetrain").warning("mid-epoch news")
    assert out.getvalue() == text + "\r\x1b[K"
    bar.update(6, 1.2, 0.6, 1300.0, force=True)  # t=0.3: drawn again, below the message
    assert out.getvalue().endswith("6/8  loss 1.2000  acc 0.6000  1,300 ex/s\x1b[K")
    bar.end_epoch("done")
    assert bar not in logging.getLogger("safetrain").filters


def test_progress_logs_plain_lines_only_at_the_log_cadence(caplog):
    out = io.StringIO()
    bar = Progress(stream=out, is_tty=False)
    bar.start_epoch(1, 1, total_steps=None)
    with caplog.at_level("INFO", logger="safetrain"):
        bar.update(1, 2.0, 0.1, None)
        bar.update(2, 1.0, 0.2, 99.0, force=True)
    assert out.getvalue() == ""
    assert [r.getMessage() for r in caplog.records] == ["epoch 1/1 step 2  loss 1.0000  acc 0.2000  99 ex/s"]


def test_step_timer_excludes_warmup_and_epoch_starts():
    timer = StepTimer(warmup_steps=WARMUP_STEPS)
    for i in range(WARMUP_STEPS):
        timer.add(wait=1.0, total=10.0, examples=1, first_of_epoch=False)  # slow tracing steps
    timer.add(wait=0.5, total=1.0, examples=100, first_of_epoch=True)       # new iterator
    for total in (0.1, 0.2, 0.4):
        timer.add(wait=0.01, total=total, examples=100, first_of_epoch=False)
    summary = timer.summary()
    assert summary["examples_per_sec"] == 500.0            # median of 1000, 500, 250
    assert summary["step_time_ms_p50"] == 200.0 and summary["step_time_ms_p90"] == 400.0
    assert summary["input_wait_fraction"] == pytest.approx(0.03 / 0.7, abs=1e-4)
    interval = timer.interval()                            # everything since the start
    steps, seconds = WARMUP_STEPS + 4, 10.0 * WARMUP_STEPS + 1.0 + 0.7
    assert interval["throughput/steps_per_sec"] == pytest.approx(steps / seconds)
    assert timer.interval() == {}


def test_step_timer_reports_no_input_wait_when_it_was_not_measured():
    """trainer.deterministic=true cannot time the input in-graph: the fraction is None, not 0."""
    timer = StepTimer(warmup_steps=WARMUP_STEPS)
    for _ in range(WARMUP_STEPS + 3):
        timer.add(wait=None, total=0.1, examples=10, first_of_epoch=False)
    assert timer.summary()["input_wait_fraction"] is None
    assert timer.summary()["examples_per_sec"] == pytest.approx(100.0)
    assert timer.interval()["throughput/input_wait_fraction"] is None


def test_report_is_valid_json_even_with_nan_metrics(tmp_path):
    report = RunReport(name="x")
    report.metrics["train_loss"] = math.nan
    path = report.write(tmp_path)
    data = json.loads(path.read_text())
    assert data["metrics"]["train_loss"] is None and data["status"] == "failed"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_checkpoint_resumed_with_another_batch_size_continues_at_the_same_example(tmp_path):
    import keras

    from safetrain.train.checkpoints import Checkpoints
    from safetrain.core.run_state import Position

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = keras.optimizers.SGD()
    optimizer.build(model.trainable_variables)
    Checkpoints(tmp_path, model, optimizer, batch_size=16).save(Position(step=40, epoch=2, in_epoch=6))
    assert Checkpoints(tmp_path, model, optimizer, batch_size=32).restore() == Position(40, 2, 3)  # 96 examples in
    assert Checkpoints(tmp_path, model, optimizer, batch_size=8).restore() == Position(40, 2, 12)
    assert Checkpoints(tmp_path, model, optimizer, batch_size=16).restore() == Position(40, 2, 6)


def test_auto_steps_per_loop_takes_the_longest_call_within_100_ms_that_divides_both_cadences():
    from safetrain.train.throughput import choose_steps_per_loop

    assert choose_steps_per_loop(0.011, 10, 200)[0] == 5      # 10 steps would take 110 ms
    assert choose_steps_per_loop(0.2, 10, 200)[0] == 1        # one step is already longer
    assert choose_steps_per_loop(0.004, 50, 200)[0] == 25     # divisors of gcd(50, 200) = 50
    k, why = choose_steps_per_loop(0.001, 10, 200)
    assert k == 10 and "capped at 10" in why and "trainer.log_every_steps=10" in why
    assert "capped" not in choose_steps_per_loop(0.009, 10, 200)[1]  # 90 ms: within the target


def test_the_step_timer_reports_per_step_times_of_multi_step_calls():
    timer = StepTimer(warmup_steps=0)
    timer.add(wait=0.0, total=0.1, examples=40, first_of_epoch=False, steps=10)
    timer.add(wait=0.0, total=0.02, examples=8, first_of_epoch=False, steps=2)
    summary = timer.summary()
    assert summary["step_time_ms_p50"] == pytest.approx(10.0)
    assert summary["examples_per_sec"] == pytest.approx(400.0)
    assert timer.interval()["throughput/steps_per_sec"] == pytest.approx(12 / 0.12)
