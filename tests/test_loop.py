"""TrainLoop and its periodic actions with a fake step function and a fake clock.

No graph is traced and nothing sleeps: the step "trains" by returning fixed outputs and advancing
the clock, so the cadence (logging, checkpoints every N steps and every S seconds, evaluation at
epoch ends, the gradient probe), the NaN stop and skip, the resume position and the signal
handling are checked exactly, step by step.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from safetrain.train.actions import Evaluate, EverySeconds, GradientProbe, LogScalars, SaveCheckpoints
from safetrain.config.schema import OnNan, TrainerConfig
from safetrain.core.errors import NanStop
from safetrain.train.loop import TrainLoop
from safetrain.train.metrics import Collection
from safetrain.train.progress import Progress
from safetrain.core.run_state import Position
from safetrain.train.signals import Interrupted, SignalGuard
from safetrain.train.throughput import StepTimer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeSteps:
    """`train(iterator)` takes one batch and returns what safetrain.train.steps returns; each step
    takes `step_seconds` on the fake clock. A batch of None is a non-finite step."""

    variable_paths = ["L0_dense/kernel", "L0_dense/bias", "head/kernel"]
    eval_metrics = Collection(["loss", "accuracy"], num_classes=2)  # the real collection: sums the outputs below
    train_metrics = Collection(["loss", "accuracy"], num_classes=2)  # what a single-label train step reports

    def __init__(self, clock: FakeClock, step_seconds: float = 1.0, grads=(1.0, 0.0, 2.0)) -> None:
        self.clock, self.step_seconds, self.grads = clock, step_seconds, grads
        self.calls: list[str] = []

    def _run(self, iterator, probe: bool) -> dict:
        try:
            batch = next(iterator)
        except StopIteration:
            raise tf.errors.OutOfRangeError(None, None, "end of data") from None
        self.clock.now += self.step_seconds
        self.calls.append("probe" if probe else "train")
        out = {"loss_sum": 4.0 if batch is not None else float("nan"), "correct": 3, "count": 4,
               "finite": batch is not None, "input_wait_s": 0.1}
        if probe:
            out["grad_abs_max"] = np.array(self.grads)
        return out

    def train(self, iterator):
        return self._run(iterator, probe=False)

    def train_steps(self, iterator, n):
        """Up to n steps in one call, as safetrain.train.steps does it in the graph: sums over the finite
        steps, stopping right after a non-finite one or when the data runs out."""
        n = int(n)
        out = {"loss_sum": 0.0, "correct": 0, "count": 0, "finite": True, "steps": 0, "last_loss_sum": 0.0,
               "input_wait_s": 0.0}
        while out["steps"] < n and out["finite"]:
            try:
                batch = next(iterator)
            except StopIteration:
                break
            self.clock.now += self.step_seconds
            out["steps"] += 1
            out["input_wait_s"] += 0.1
            out["finite"] = batch is not None
            out["last_loss_sum"] = 4.0 if batch is not None else float("nan")
            if batch is not None:
                out["loss_sum"] += 4.0
                out["correct"] += 3
                out["count"] += 4
        self.calls.append("train" if n == 1 else f"train:{out['steps']}")
        return out

    def train_probe(self, iterator):
        return self._run(iterator, probe=True)

    def eval(self, images, labels):
        return {"loss_sum": 2.0, "correct": 1, "count": 2}

    def missing_gradients_error(self):
        return None


class FakeCheckpoints:
    def __init__(self, start: Position = Position()) -> None:
        self.start = start
        self.saved: list[Position] = []
        self.warnings: list[str] = []

    def restore(self) -> Position:
        return self.start

    def save(self, at: Position) -> None:
        if self.saved and self.saved[-1] == at:  # as Checkpoints does: the same position once
            return
        self.saved.append(at)


class FakeRecord:
    def __init__(self) -> None:
        self.scalar_steps: dict[str, list[int]] = {}
        self.events: list[dict] = []

    def scalars(self, step, values) -> None:
        for tag, value in values.items():
            if value is not None:
                self.scalar_steps.setdefault(tag, []).append(step)

    def event(self, **fields) -> None:
        self.events.append(fields)

    def flush(self) -> None:
        pass


def make_loop(*, epochs=2, steps_per_epoch=5, max_steps=None, every_steps=3, every_seconds=None, log_every=2,
              on_nan=OnNan.stop, batches=None, start=Position(), step_seconds=1.0, guard=None, probe_steps=3,
              steps_per_loop=1, epoch_seconds=0.0):
    clock = FakeClock()
    steps = FakeSteps(clock, step_seconds)
    cfg = TrainerConfig(epochs=epochs, max_steps=max_steps, on_nan=on_nan, log_every_steps=log_every,
                        checkpoint_every_steps=every_steps, checkpoint_every_seconds=every_seconds)
    record, checkpoints, dead = FakeRecord(), FakeCheckpoints(start), []
    progress = Progress(is_tty=False)
    probe = GradientProbe(steps.variable_paths, lambda paths, step: dead.append((paths, step)), steps=probe_steps)
    timer = StepTimer(warmup_steps=probe.steps + 1)
    data = batches or (lambda epoch: [f"e{epoch}b{i}" for i in range(steps_per_epoch)])
    seen: list[tuple[int, int]] = []

    def train_batches(epoch, skip):
        seen.append((epoch, skip))
        return data(epoch)[skip:]

    loop = TrainLoop(steps=steps, train_batches=train_batches, distribute=lambda ds: ds, cfg=cfg, record=record,
                     checkpoints=checkpoints, steps_per_epoch=steps_per_epoch, probe=probe, timer=timer,
                     progress=progress, started=0.0, clock=clock, guard=guard, steps_per_loop=steps_per_loop)
    evaluation = Evaluate(loop.evaluate, [("images", "labels")], record)
    loop.actions = [probe, LogScalars(log_every, record, progress, timer, learning_rate=lambda: 0.01), evaluation,
                    SaveCheckpoints(checkpoints, every_steps, every_seconds, clock, epoch_seconds=epoch_seconds)]
    return loop, steps, record, checkpoints, evaluation, dead, seen


def test_checkpoints_every_n_steps_at_epoch_ends_and_the_start():
    loop, _, _, checkpoints, _, _, _ = make_loop(epochs=2, steps_per_epoch=5, every_steps=3)
    result = loop.run()
    assert result.steps == 10 and result.epochs == 2
    assert checkpoints.saved == [Position(0, 1, 0), Position(3, 1, 3), Position(5, 2, 0), Position(6, 2, 1),
                                 Position(9, 2, 4), Position(10, 3, 0)]


def test_short_epochs_save_at_most_every_epoch_seconds_and_always_where_training_ends():
    """5 one-second steps an epoch, epoch-end saves at most every 12 s: the ends at t=15 and t=30
    save (12 s and more since the last), the others do not; the last epoch's end saves at t=35."""
    loop, _, _, checkpoints, _, _, _ = make_loop(epochs=7, steps_per_epoch=5, every_steps=1000, epoch_seconds=12.0)
    result = loop.run()
    assert result.steps == 35
    assert checkpoints.saved == [Position(0, 1, 0), Position(15, 4, 0), Position(30, 7, 0), Position(35, 8, 0)]


def test_an_epoch_end_where_the_step_limit_stops_training_saves_though_a_save_was_recent():
    loop, _, _, checkpoints, _, _, _ = make_loop(epochs=7, steps_per_epoch=5, max_steps=12, every_steps=1000,
                                                 epoch_seconds=100.0)
    loop.run()
    assert checkpoints.saved == [Position(0, 1, 0), Position(12, 3, 2)]


def test_checkpoints_every_s_seconds_on_the_fake_clock_counted_from_the_last_save():
    loop, _, _, checkpoints, _, _, _ = make_loop(epochs=1, steps_per_epoch=8, every_steps=1000, every_seconds=2.5,
                                                 step_seconds=1.0)
    loop.run()
    # t=3 (>= 2.5 since the start), t=6, then the epoch end at step 8.
    assert checkpoints.saved == [Position(0, 1, 0), Position(3, 1, 3), Position(6, 1, 6), Position(8, 2, 0)]


def test_every_seconds_is_never_due_when_off():
    clock = FakeClock()
    due = EverySeconds(None, clock)
    clock.now = 1e9
    assert not due()


def test_scalars_are_logged_at_the_cadence_and_eval_at_each_epoch_end():
    loop, _, record, _, evaluation, _, _ = make_loop(epochs=2, steps_per_epoch=5, log_every=2)
    loop.run()
    assert record.scalar_steps["train/loss"] == [2, 4, 6, 8, 10]
    assert record.scalar_steps["optimizer/learning_rate"] == [2, 4, 6, 8, 10]
    assert record.scalar_steps["eval/accuracy"] == [5, 10]
    assert (evaluation.loss, evaluation.accuracy) == (1.0, 0.5)
    assert record.scalar_steps["throughput/examples_per_sec"] == [2, 4, 6, 8, 10]
    # The median leaves out the 4 warm-up steps (3 probing + the first plain one) and epoch starts.
    assert len(loop.timer.totals) == 10 - 4 - 1
    assert loop.timer.summary()["examples_per_sec"] == pytest.approx(4.0)  # 4 examples per fake second


def test_the_probe_runs_the_first_steps_then_reports_dead_variables_once():
    loop, steps, _, _, _, dead, _ = make_loop(epochs=1, steps_per_epoch=5, probe_steps=3)
    loop.run()
    assert steps.calls == ["probe"] * 3 + ["train"] * 2
    assert dead == [(["L0_dense/bias"], 3)]


def test_a_non_finite_step_stops_at_that_step_without_a_checkpoint_after_it():
    data = lambda epoch: ["a", "b", None, "d"]  # noqa: E731
    loop, _, _, checkpoints, _, _, _ = make_loop(epochs=1, steps_per_epoch=4, every_steps=1, batches=data)
    with pytest.raises(NanStop) as stopped:
        loop.run()
    assert stopped.value.step == 3 and stopped.value.config_key == "trainer.on_nan"
    assert "at step 3 (epoch 1" in stopped.value.message
    assert checkpoints.saved[-1] == Position(2, 1, 2)


def test_skip_step_records_each_skip_and_goes_on():
    data = lambda epoch: ["a", None, "c", None]  # noqa: E731
    loop, _, record, _, _, _, _ = make_loop(epochs=1, steps_per_epoch=4, on_nan=OnNan.skip_step, batches=data,
                                            log_every=1)
    result = loop.run()
    assert result.steps == 4 and result.skipped_steps == 2
    assert [e["step"] for e in record.events] == [2, 4] and all(e["kind"] == "non_finite" for e in record.events)
    assert record.scalar_steps["train/loss"] == [1, 3]  # skipped steps are not logged
    assert result.train_loss == 1.0  # totals count the finite steps only


def test_max_steps_mid_epoch_saves_where_a_resume_continues():
    loop, _, _, checkpoints, _, _, _ = make_loop(epochs=3, steps_per_epoch=5, max_steps=7, every_steps=100)
    result = loop.run()
    assert result.steps == 7 and result.epochs == 2
    assert checkpoints.saved[-1] == Position(7, 2, 2)


def test_a_resume_skips_the_batches_done_and_keeps_counting_from_the_checkpoint():
    loop, steps, _, checkpoints, _, _, seen = make_loop(epochs=2, steps_per_epoch=5, start=Position(7, 2, 2),
                                                        every_steps=100)
    result = loop.run()
    assert seen == [(2, 2)] and result.steps == 10 and len(steps.calls) == 3
    assert checkpoints.saved == [Position(10, 3, 0)]  # no step-0 save on a resume


def test_a_pending_signal_saves_at_the_exact_step_then_stops():
    guard = SignalGuard()
    loop, steps, _, checkpoints, _, _, _ = make_loop(epochs=1, steps_per_epoch=5, every_steps=100, guard=guard)
    real_train = steps.train_steps

    def train_steps(iterator, n):
        out = real_train(iterator, n)
        if len(steps.calls) == 4:
            guard.pending = 143  # what the SIGTERM handler records inside `deferred()`
        return out

    steps.train_steps = train_steps
    with pytest.raises(Interrupted) as stopped:
        loop.run()
    assert stopped.value.exit_code == 143
    assert checkpoints.saved == [Position(0, 1, 0), Position(4, 1, 4)]


def _run_signalled(loop, guard: SignalGuard) -> Interrupted:
    """Run the loop with `guard`'s real handlers installed; the Interrupted it must end with."""
    try:
        with pytest.raises(Interrupted) as stopped:
            loop.run()
    finally:
        guard.restore()
    return stopped.value


@pytest.mark.parametrize("epoch_seconds", [0.0, 100.0])
def test_a_signal_during_the_epoch_end_evaluation_waits_for_it_and_saves_where_a_resume_starts(epoch_seconds):
    """A real SIGTERM to this process while epoch 1's end evaluates: the evaluation finishes and
    the run stops with a checkpoint at the next epoch's start — also where the epoch-end save was
    not due (epoch_seconds=100) — not with only the step-0 one."""
    guard = SignalGuard().install()
    loop, steps, _, checkpoints, evaluation, _, _ = make_loop(epochs=3, steps_per_epoch=5, every_steps=100,
                                                              guard=guard, epoch_seconds=epoch_seconds)
    real_eval, evaluated = steps.eval, []

    def eval_(images, labels):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, in this thread
        evaluated.append(1)
        return real_eval(images, labels)

    steps.eval = eval_
    stopped = _run_signalled(loop, guard)
    assert stopped.exit_code == 143 and stopped.saved_step == 5
    assert evaluated == [1] and evaluation.accuracy == 0.5
    assert checkpoints.saved == [Position(0, 1, 0), Position(5, 2, 0)]


def test_a_second_signal_during_the_epoch_end_stops_at_once():
    guard = SignalGuard().install()
    loop, steps, _, checkpoints, _, _, _ = make_loop(epochs=3, steps_per_epoch=5, every_steps=100, guard=guard)

    def eval_(images, labels):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the second signal did not stop the evaluation")

    steps.eval = eval_
    assert _run_signalled(loop, guard).saved_step is None and checkpoints.saved == [Position(0, 1, 0)]


class FakeBest:
    """The state SelectBest keeps (tf.Variables on the training side), as plain attributes."""

    def __init__(self) -> None:
        self.value, self.epoch, self.step, self.bad_epochs = 0.0, 0, 0, 0  # value: meaningless while epoch is 0
        self.loss = 0.0
        self.captured: list[int] = []

    def capture(self) -> None:
        self.captured.append(self.epoch)


class ScriptedEval:
    """Evaluate's results, one per epoch."""

    def __init__(self, accuracies) -> None:
        self.accuracies = list(accuracies)
        self.results = {}
        self.fresh = True  # an evaluation at every epoch end

    def after_step(self, end) -> None:
        pass

    def after_epoch(self, end) -> str:
        accuracy = self.accuracies[end.epoch - 1]
        self.results = {"accuracy": accuracy, "loss": 1.0 - accuracy}
        return f"eval acc {accuracy}"

    wants_stop = False


def test_early_stopping_ends_the_run_after_patience_epochs_and_keeps_the_best_epoch():
    from safetrain.train.actions import SelectBest

    loop, steps, _, checkpoints, _, _, _ = make_loop(epochs=8, steps_per_epoch=2, every_steps=100)
    evaluation, best = ScriptedEval([0.5, 0.7, 0.69, 0.705, 0.708, 0.9, 0.9, 0.9]), FakeBest()
    choose = SelectBest(evaluation, best, "accuracy", higher_is_better=True, min_delta=0.01, patience=3)
    loop.actions = [loop.actions[0], evaluation, choose, loop.actions[-1]]
    result = loop.run()
    # 0.69, 0.705 and 0.708 are not more than min_delta=0.01 better than 0.7: stop after epoch 5.
    assert result.epochs == 5 and result.steps == 10 and len(steps.calls) == 10
    assert (best.epoch, best.step, best.value, best.captured) == (2, 4, 0.7, [1, 2])
    assert checkpoints.saved[-1] == Position(10, 6, 0)  # the resume point; a rerun sees wants_stop and stops


def test_spaced_evaluations_judge_only_the_epochs_that_evaluated():
    """trainer.time_budget spaces out costly evaluations (Evaluate.due): the epochs in between
    neither evaluate nor count towards early stopping's patience."""
    from safetrain.train.actions import SelectBest

    loop, _, record, _, _, _, _ = make_loop(epochs=8, steps_per_epoch=2, every_steps=100)
    accuracies = iter([0.5, 0.6, 0.55, 0.55])  # epochs 2, 4, 6, 8
    evaluated = []

    def evaluate(dataset):
        evaluated.append(loop.result.epochs)
        return {"loss": 0.0, "accuracy": next(accuracies)}

    evaluation, best = Evaluate(evaluate, None, record), FakeBest()
    evaluation.due = lambda end: end.epoch % 2 == 0
    choose = SelectBest(evaluation, best, "accuracy", higher_is_better=True, patience=2)
    loop.actions = [loop.actions[0], evaluation, choose, loop.actions[-1]]
    result = loop.run()
    assert evaluated == [2, 4, 6, 8] and evaluation.count == 4
    # epoch 4 the best; 6 and 8 no better: patience 2 counts those two evaluations, not four epochs
    assert (best.epoch, best.value) == (4, 0.6) and result.epochs == 8 and choose.wants_stop


def test_a_resumed_run_that_had_stopped_early_trains_no_further():
    from safetrain.train.actions import SelectBest

    loop, steps, _, _, _, _, _ = make_loop(epochs=8, steps_per_epoch=2, start=Position(10, 6, 0))
    best = FakeBest()
    best.value, best.epoch, best.step, best.bad_epochs = 0.7, 2, 4, 3  # as restored from the checkpoint
    loop.actions = [SelectBest(ScriptedEval([0.1] * 8), best, "accuracy", True, patience=3)]
    result = loop.run()
    assert steps.calls == [] and result.steps == 10


def test_the_best_of_a_lower_is_better_metric_without_early_stopping():
    from safetrain.train.actions import EpochEnd, SelectBest
    from safetrain.train.metrics import Totals

    evaluation, best = ScriptedEval([0.5, 0.8, 0.6]), FakeBest()
    choose = SelectBest(evaluation, best, "loss", higher_is_better=False)
    for epoch in (1, 2, 3):
        end = EpochEnd(epoch=epoch, step=10 * epoch, totals=Totals(), next_position=Position(10 * epoch, epoch + 1))
        evaluation.after_epoch(end)
        choose.after_epoch(end)
    assert (best.epoch, best.value) == (2, pytest.approx(0.2)) and not choose.wants_stop


def test_a_tie_on_the_metric_goes_to_the_lower_eval_loss_without_resetting_patience():
    """A 55-image eval split's accuracy ties often; the later, better-trained epoch at the same
    accuracy has the lower eval loss and becomes the best, while patience still counts it."""
    from safetrain.train.actions import EpochEnd, SelectBest
    from safetrain.train.metrics import Totals

    class Scripted:
        fresh, results = True, {}

    evaluation, best = Scripted(), FakeBest()
    choose = SelectBest(evaluation, best, "accuracy", higher_is_better=True, patience=3)
    said = []
    for epoch, (accuracy, loss) in enumerate([(0.9, 0.6), (0.8, 0.55), (0.9, 0.5), (0.9, 0.52)], start=1):
        evaluation.results = {"accuracy": accuracy, "loss": loss}
        said.append(choose.after_epoch(EpochEnd(epoch=epoch, step=10 * epoch, totals=Totals(),
                                                next_position=Position(10 * epoch, epoch + 1))))
    assert (best.epoch, best.step, best.value, best.loss) == (3, 30, 0.9, 0.5)
    assert best.captured == [1, 3] and best.bad_epochs == 3 and choose.wants_stop
    assert said[2] == "best eval accuracy 0.9000 at epoch 3 (tied, lower eval loss), 2/3 epochs without improvement"
    assert said[3].startswith("best eval accuracy 0.9000 at epoch 3, 3/3")


def test_plateau_drops_the_rate_after_patience_epochs_and_never_below_the_floor():
    from safetrain.train.actions import EpochEnd, ReducePlateau
    from safetrain.train.metrics import Totals

    class State:
        scale, best, seen, bad_epochs = 1.0, 0.0, False, 0

    accuracies = [0.5, 0.6, 0.6, 0.6, 0.7] + [0.7] * 6  # eval loss = 1 - accuracy
    evaluation, state = ScriptedEval(accuracies), State()
    reduce = ReducePlateau(evaluation, state, "loss", higher_is_better=False, patience=2, factor=0.1, floor=0.005,
                           base_rate=0.1)
    said = []
    for epoch in range(1, len(accuracies) + 1):
        end = EpochEnd(epoch=epoch, step=epoch, totals=Totals(), next_position=Position(epoch, epoch + 1))
        evaluation.after_epoch(end)
        said.append((reduce.after_epoch(end), round(state.scale, 6)))
    # Two flat epochs, a drop; an improvement resets the count; the floor (0.005 of the rate) holds.
    assert [scale for _, scale in said] == [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.005, 0.005, 0.005]
    assert said[3][0] == "learning rate -> 0.01 (no better eval loss for 2 epochs)"
    assert said[8][0] == "learning rate -> 0.0005 (no better eval loss for 2 epochs)"
    assert said[10][0] is None  # already at the floor: nothing more to say


def test_steps_for_epoch_is_asked_before_every_epoch_a_resume_included_and_its_steps_train_it():
    """A backbone unfrozen at epoch 2 trains other variables: the loop takes that epoch's step
    functions from `steps_for_epoch`, also for the epoch a resume starts in, and a restarted probe
    checks the new variables from their first steps."""
    loop, frozen, _, _, _, dead, _ = make_loop(epochs=3, steps_per_epoch=2, start=Position(3, 2, 1), probe_steps=1)
    unfrozen = FakeSteps(frozen.clock, grads=(1.0, 1.0, 0.0))
    asked: list[int] = []

    def steps_for(epoch):
        asked.append(epoch)
        chosen = frozen if epoch < 2 else unfrozen
        if chosen is unfrozen and loop.steps is frozen:
            loop.probe.restart(["backbone/kernel", "L0_dense/kernel", "head/kernel"])
        return chosen

    loop.steps_for_epoch = steps_for
    result = loop.run()
    assert asked == [2, 3] and result.steps == 6
    assert frozen.calls == [] and unfrozen.calls == ["probe", "train", "train"]
    assert dead == [(["head/kernel"], 4)]


# --- trainer.steps_per_loop: several steps per call -------------------------------------------

def _cadence(loop, record, checkpoints):
    result = loop.run()
    return result, record.scalar_steps["train/loss"], checkpoints.saved, record.scalar_steps["eval/accuracy"]


def test_calls_of_k_steps_end_on_multiples_of_k_and_keep_every_cadence_of_single_steps():
    """Calls end where logging/checkpoints can be due (multiples of K), at epoch ends and at
    max_steps; what is logged and saved, and at which steps, is what single steps give."""
    kwargs = dict(epochs=2, steps_per_epoch=7, log_every=3, every_steps=6, max_steps=13)
    single = make_loop(**kwargs)
    multi = make_loop(**kwargs, steps_per_loop=3)
    one = _cadence(single[0], single[2], single[3])
    three = _cadence(multi[0], multi[2], multi[3])
    assert three[0].steps == one[0].steps == 13
    assert three[1:] == one[1:]
    assert three[1] == [3, 6, 9, 12] and three[2][-1] == Position(13, 2, 6)
    # probe x3 (steps 1-3), 4-6, 7 (epoch end); 8-9 (back on multiples of 3), 10-12, 13 (max_steps)
    assert multi[1].calls == ["probe"] * 3 + ["train:3", "train", "train:2", "train:3", "train"]
    assert (three[0].train_loss, three[0].train_accuracy) == (one[0].train_loss, one[0].train_accuracy)


def test_a_non_finite_step_inside_a_call_stops_at_that_exact_step():
    data = lambda epoch: ["a", "b", "c", "d", None, "f", "g", "h"]  # noqa: E731
    loop, steps, _, checkpoints, _, _, _ = make_loop(epochs=1, steps_per_epoch=8, every_steps=4, batches=data,
                                                     steps_per_loop=4, probe_steps=1)
    with pytest.raises(NanStop) as stopped:
        loop.run()
    assert stopped.value.step == 5 and "at step 5 (epoch 1" in stopped.value.message
    assert steps.calls == ["probe", "train:3", "train:1"]  # the in-graph loop stopped after step 5
    assert checkpoints.saved[-1] == Position(4, 1, 4)  # nothing saved after the non-finite step


def test_skip_step_inside_calls_records_the_exact_steps_and_counts_only_finite_ones():
    data = lambda epoch: ["a", None, "c", "d", "e", None, "g", "h"]  # noqa: E731
    loop, steps, record, _, _, _, _ = make_loop(epochs=1, steps_per_epoch=8, on_nan=OnNan.skip_step, batches=data,
                                                log_every=4, every_steps=4, steps_per_loop=4, probe_steps=1)
    result = loop.run()
    assert result.steps == 8 and result.skipped_steps == 2
    assert [e["step"] for e in record.events] == [2, 6]
    assert steps.calls == ["probe", "train:1", "train:2", "train:2", "train:2"]
    assert result.train_loss == 1.0 and loop.result.examples == 6 * 4  # the finite steps only


def test_data_that_runs_out_inside_a_call_ends_the_epoch_with_every_step_it_ran():
    data = lambda epoch: ["a", "b", "c", "d", "e"]  # noqa: E731 - 5 batches where 8 were counted
    loop, steps, _, checkpoints, _, _, _ = make_loop(epochs=2, steps_per_epoch=8, every_steps=4, batches=data,
                                                     steps_per_loop=4, probe_steps=0, log_every=4)
    result = loop.run()
    assert result.steps == 10 and result.epochs == 2
    assert checkpoints.saved[:3] == [Position(0, 1, 0), Position(4, 1, 4), Position(5, 2, 0)]


def test_a_signal_during_a_call_saves_at_the_calls_last_step():
    guard = SignalGuard()
    loop, steps, _, checkpoints, _, _, _ = make_loop(epochs=1, steps_per_epoch=12, every_steps=100, log_every=4,
                                                     guard=guard, steps_per_loop=4, probe_steps=1)
    real = steps.train_steps

    def train_steps(iterator, n):
        guard.pending = 143  # arrives while the call runs
        return real(iterator, n)

    steps.train_steps = train_steps
    with pytest.raises(Interrupted):
        loop.run()
    assert checkpoints.saved == [Position(0, 1, 0), Position(4, 1, 4)]  # probe: step 1; then steps 2-4


def test_auto_steps_per_loop_is_chosen_from_the_untraced_probe_steps():
    loop, steps, _, _, _, _, _ = make_loop(epochs=1, steps_per_epoch=20, every_steps=20, log_every=10,
                                           step_seconds=0.02, steps_per_loop=None)
    result = loop.run()
    # probe calls 2 and 3 (the first traced) timed 20 ms: 5 steps per call is 100 ms
    assert result.steps_per_loop == 5 and "5 steps per call (a step took 20.0 ms" in result.steps_per_loop_reason
    assert steps.calls == ["probe"] * 3 + ["train:2", "train:5", "train:5", "train:5"]


def test_auto_without_a_probe_times_single_steps_first():
    loop, steps, _, _, _, _, _ = make_loop(epochs=1, steps_per_epoch=12, every_steps=20, log_every=10,
                                           step_seconds=0.04, steps_per_loop=None, probe_steps=0)
    result = loop.run()
    assert result.steps_per_loop == 2
    # three single steps (the first traced), step 4 to reach a multiple of 2, then calls of 2
    assert steps.calls == ["train"] * 4 + ["train:2"] * 4


def test_training_seconds_split_into_first_calls_steady_calls_and_actions():
    loop, _, _, _, _, _, _ = make_loop(epochs=2, steps_per_epoch=5, step_seconds=1.0)
    result = loop.run()
    # epoch 1: probe x3 (the first one starts the epoch), then the plain call's trace; epoch 2: its first call
    assert (result.first_call_seconds, result.steady_call_seconds) == (3.0, 7.0)
    assert result.train_seconds == 10.0 and result.action_seconds == result.epoch_setup_seconds == 0.0  # fakes: no time
    assert result.examples == 40
