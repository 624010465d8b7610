"""hardware.precision=auto by measurement (safetrain.train.precision_trial), its cache, and the
oneDNN math mode taken from the cache before TensorFlow starts.

The decision rules run on made-up measurements; the trial itself runs on real TensorFlow with a
tiny model, on any CPU (mixed_bfloat16 runs everywhere — emulated, slowly, without native
bfloat16 — which is all the runner's tests need); the end-to-end test checks what the run does on
the CPU it runs on.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from safetrain.config.schema import Config, OptimizerConfig, Precision, TrainerConfig
from safetrain.train import precision_trial as pt
from safetrain.train.hardware import Device, cpu_device_key, read_cpuinfo
from safetrain.train.precision_cache import ONEDNN_MATH_ENV, PrecisionCache, cache_path, trial_key

# Fake device records: this machine has no GPU (the names say what each stands for).
CPU = Device("CPU", "cpu:0")
CPU_AVX512_BF16 = Device("CPU", "cpu:0", features=frozenset({"avx512_bf16"}))
CPU_AMX = Device("CPU", "cpu:0", features=frozenset({"avx512_bf16", "amx_bf16"}))
V100 = Device("GPU", "Tesla V100", (7, 0))
A100 = Device("GPU", "NVIDIA A100", (8, 0))
TPU = Device("TPU", "TPU v4")


@pytest.mark.parametrize("devices, trains_backbone, expected", [
    ([CPU], False, ["float32"]),
    ([CPU_AVX512_BF16], False, ["float32", "mixed_bfloat16", "onednn_bf16"]),
    ([CPU_AMX], False, ["float32", "mixed_bfloat16", "onednn_bf16"]),
    ([CPU_AMX, V100], False, ["float32", "mixed_float16"]),
    ([CPU, A100], False, ["float32", "mixed_float16", "mixed_bfloat16"]),
    ([CPU, A100], True, ["float32", "mixed_bfloat16"]),  # a fine-tuned backbone's optimizer gets no loss scale
    ([CPU, TPU], False, []),
])
def test_the_candidates_are_what_the_devices_run_natively(devices, trains_backbone, expected):
    assert pt.candidates(devices, trains_backbone) == expected


def _m(rate, loss, why=None):
    return pt.Measured(examples_per_sec=rate, loss=loss, why=why)


def test_the_fastest_candidate_whose_loss_agrees_is_chosen():
    chosen, rejected = pt.decide({"float32": _m(1000, 1.00), "mixed_bfloat16": _m(1500, 1.03)})
    assert chosen == "mixed_bfloat16" and rejected == {}


def test_a_lower_trial_loss_is_no_reason_to_reject():
    """What an AMX Xeon and a Zen 5 EPYC measured on the Fashion-MNIST recipe: mixed_bfloat16 at
    2.4x and 1.89x float32 with a trial loss 12-13% lower. The rule guards against training worse."""
    chosen, rejected = pt.decide({"float32": _m(2195, 1.8817), "mixed_bfloat16": _m(4149, 1.6425)})
    assert chosen == "mixed_bfloat16" and rejected == {}
    chosen, rejected = pt.decide({"float32": _m(2195, 1.8817), "mixed_bfloat16": _m(4149, 2.0)})
    assert chosen == "float32" and "is worse than float32's 1.8817" in rejected["mixed_bfloat16"]


@pytest.mark.parametrize("candidate, words", [
    (_m(1500, 1.20), "is worse than float32's 1.0000"),           # faster, but it trains worse
    (_m(1500, float("nan")), "non-finite"),
    (_m(1030, 1.00), "not faster than float32 by more than the measurement's noise (1.03x, needs > 1.05x)"),
    (_m(700, 1.00), "0.70x"),                                     # slower: never chosen
    (_m(None, None, why="not measured: over the trial's budget (10 s)"), "over the trial's budget"),
])
def test_a_candidate_is_rejected_with_the_reason(candidate, words):
    chosen, rejected = pt.decide({"float32": _m(1000, 1.00), "mixed_bfloat16": candidate})
    assert chosen == "float32" and words in rejected["mixed_bfloat16"]
    faster = candidate.examples_per_sec and candidate.examples_per_sec > 1050 and "worse" in words
    # a candidate rejected on its loss says what it would have gained, and how to take it anyway
    assert ("1.50x float32's examples/s: hardware.precision=mixed_bfloat16 uses it anyway" in
            rejected["mixed_bfloat16"]) == bool(faster)


def test_a_math_mode_that_changed_nothing_cannot_win_on_another_process_speed():
    chosen, rejected = pt.decide({"float32": _m(1000, 1.2345678), "onednn_bf16": _m(1400, 1.2345678)})
    assert chosen == "float32" and "changed none of this model's arithmetic" in rejected["onednn_bf16"]
    chosen, rejected = pt.decide({"float32": _m(1000, 1.00), "onednn_bf16": _m(1100, 1.01)})
    assert chosen == "float32" and "needs > 1.15x" in rejected["onednn_bf16"]  # timed in another process
    assert pt.decide({"float32": _m(1000, 1.00), "onednn_bf16": _m(1700, 1.01)})[0] == "onednn_bf16"


def test_the_budget_is_the_larger_of_ten_seconds_and_three_percent_of_the_training():
    assert pt.budget(60) == 10.0 and pt.budget(1000) == pytest.approx(30.0)


def test_under_a_time_budget_the_trial_is_paid_from_it_and_skipped_when_it_is_too_small():
    # 60 epochs planned, 15 minutes to train them in: 3% of the 900 s, not of the 3,000 s
    assert pt.budget(3000, 900) == pytest.approx(27.0)
    assert pt.budget(60, 300) == 10.0             # the floor, under the 5% cap (15 s)
    assert pt.budget(3000, 100) == pytest.approx(5.0)  # never over 5% of the budget
    assert pt.affordable(None) and pt.affordable(200) and not pt.affordable(60)


def test_a_one_minute_run_trusts_the_table_or_the_cache_instead_of_measuring(tmp_path):
    from types import SimpleNamespace

    from safetrain.experiment import precision

    cfg = _config(tmp_path, time_budget="1m")
    # A fake bfloat16 CPU's device record: the machine running this may have none (then no trial anyway).
    hardware = SimpleNamespace(devices=[CPU_AMX], cluster=None, replicas=1, policy="mixed_bfloat16",
                               reason="auto: the CPU has AMX")
    plan = SimpleNamespace(backbone=None)
    policy, reason, trial = precision.decide(cfg, plan, None, hardware, None)  # data is never read: no trial
    assert trial is None and policy == "mixed_bfloat16"
    assert "no precision trial: it would take over 5% of trainer.time_budget=1m" in reason and "200 s" in reason
    from safetrain.train.hardware import device_key

    key = precision._key(cfg, device_key(hardware.devices, read_cpuinfo()), 1)  # a longer run measured it
    record = pt.Trial(candidates={"float32": 1000.0, "mixed_bfloat16": 1500.0}, chosen="mixed_bfloat16",
                      budget_s=10.0).record()
    PrecisionCache(cache_path(str(tmp_path))).put(key, record)
    policy, reason, trial = precision.decide(cfg, plan, SimpleNamespace(steps_per_epoch=10), hardware, None)
    assert trial.cached and policy == "mixed_bfloat16" and reason.startswith("auto (cached trial)")


def test_decisions_are_cached_per_key_and_concurrent_writers_lose_nothing(tmp_path):
    cache = PrecisionCache(cache_path(str(tmp_path)))
    key = trial_key("CPU test", {"layers": [{"type": "flatten"}]}, 32, (28, 28, 1, "float32"))
    assert cache.get(key) is None
    cache.put(key, {"chosen": "mixed_bfloat16"})
    assert cache.get(key) == {"chosen": "mixed_bfloat16"}
    assert cache.get({**key, "per_replica_batch": 64}) is None  # another batch: another decision
    assert cache.get({**key, "rule": key["rule"] - 1}) is None  # an older rule's decision is measured again
    keys = [{**key, "per_replica_batch": n} for n in range(16)]
    writers = [threading.Thread(target=cache.put, args=(k, {"chosen": "float32", "n": i})) for i, k in enumerate(keys)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert all(cache.get(k)["n"] == i for i, k in enumerate(keys))
    assert [e["key"]["device"] for e in cache.for_device("CPU test")] == ["CPU test"] * 17
    cache.path.write_text("{not json")
    assert cache.get(key) is None  # a damaged file is no decision, not a crash


@pytest.fixture(scope="module")
def tiny_trial():
    """A tiny CNN, its batches and builder: what safetrain.experiment.precision hands the trial."""
    import tensorflow as tf

    from safetrain.models.parse import parse_layers
    from safetrain.models.shapes import infer
    from safetrain.train.task import build_task

    plan = infer(parse_layers([{"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "flatten"}]),
                 (8, 8, 1), 3)
    rng = np.random.default_rng(0)
    images = rng.random((4, 16, 8, 8, 1), dtype=np.float32)
    labels = rng.integers(0, 3, (4, 16)).astype(np.int32)

    def build(policy):
        return build_task(plan, optimizer=OptimizerConfig(), trainer=TrainerConfig(seed=3),
                          strategy=tf.distribute.get_strategy(), steps_per_epoch=1, policy=policy)

    return pt.TrialInputs(images=images, labels=labels, build=build, strategy=tf.distribute.get_strategy(),
                          planned_steps=100), build


def test_the_trial_measures_each_candidate_on_the_same_weights_and_batches_and_leaves_no_trace(tiny_trial):
    import keras

    from safetrain.experiment.recording import weights_digest

    inputs, build = tiny_trial
    # What the run's model would be named and hold without a trial ...
    counters = pt._name_counters()
    alone = build("float32").model
    names, digest = [v.path for v in alone.variables], weights_digest(alone)
    pt._restore_name_counters(counters)

    keras.mixed_precision.set_global_policy("float32")
    trial = pt.run_trial(["float32", "mixed_bfloat16"], inputs)
    assert keras.mixed_precision.global_policy().name == "float32"  # put back
    assert set(trial.candidates) == {"float32", "mixed_bfloat16"} and all(trial.candidates.values())
    assert 3 <= trial.steps <= 40 and trial.seconds > 0 and trial.budget_s == 10.0
    # the same weights and batches: bfloat16 arithmetic moves the loss a little, not a lot
    assert trial.losses["mixed_bfloat16"] == pytest.approx(trial.losses["float32"], rel=0.05, abs=0.01)
    assert trial.chosen in trial.candidates and trial.chosen not in trial.rejected
    # ... and with one: the same names, the same initial weights.
    after = build("float32").model
    assert [v.path for v in after.variables] == names and weights_digest(after) == digest
    record = json.loads(json.dumps(trial.record()))
    assert set(record) >= {"candidates", "chosen", "seconds", "cached", "rejected"} and record["cached"] is False
    assert pt.Trial.from_record(record).cached is True


def test_onednn_math_is_measured_in_its_own_process(tiny_trial):
    """The worker rebuilds the model from the spec the run gives it and times it the same way."""
    inputs, _ = tiny_trial
    spec = {"optimizer": {"name": "adam", "learning_rate": 1e-3, "clipnorm": None, "weight_decay": 0.0},
            "trainer": {"loss": "sparse_categorical_crossentropy", "label_smoothing": 0.0, "seed": 3, "ema": None,
                        "jit_compile": False},
            "layers": [{"type": "conv2d", "filters": 4, "kernel_size": 3}, {"type": "flatten"}],
            "input_shape": [8, 8, 1], "num_classes": 3, "input_dtype": "float32"}
    inputs.worker_spec = spec
    measured = pt._measure_in_worker(inputs, steps=5, seconds_left=120)
    assert measured.why is None and measured.examples_per_sec > 0 and np.isfinite(measured.loss)


def _config(tmp_path, **trainer) -> Config:
    cfg = Config()
    cfg.model.layers = [{"type": "flatten"}]
    cfg.dataset.data_dir = str(tmp_path)
    for k, v in trainer.items():
        setattr(cfg.trainer, k, v)
    return cfg


def test_a_cached_onednn_decision_sets_the_math_mode_before_tensorflow_starts(tmp_path, monkeypatch):
    from safetrain.experiment import precision

    monkeypatch.delenv(ONEDNN_MATH_ENV, raising=False)
    cfg = _config(tmp_path)
    assert precision.math_mode_before_tensorflow(cfg) is None  # nothing cached
    key = precision._key(cfg, cpu_device_key(read_cpuinfo()), 1)
    PrecisionCache(cache_path(str(tmp_path))).put(key, {"chosen": "onednn_bf16"})
    assert precision.math_mode_before_tensorflow(cfg) == "BF16"
    import os

    assert os.environ[ONEDNN_MATH_ENV] == "BF16"
    monkeypatch.setenv(ONEDNN_MATH_ENV, "ANY")  # yours: never overridden
    assert precision.math_mode_before_tensorflow(cfg) is None and os.environ[ONEDNN_MATH_ENV] == "ANY"
    monkeypatch.delenv(ONEDNN_MATH_ENV)
    cfg.hardware.precision = Precision.float32  # an explicit precision is never trialled
    assert precision.math_mode_before_tensorflow(cfg) is None


def test_what_the_run_trains_in_after_a_onednn_decision():
    from safetrain.experiment.precision import _apply

    trial = pt.Trial(candidates={"float32": 1000.0, "mixed_bfloat16": 1200.0, "onednn_bf16": 1800.0},
                     chosen="onednn_bf16", seconds=9.0)
    policy, reason = _apply(trial, "BF16")  # set before TensorFlow started (from the cache)
    assert policy == "float32" and "oneDNN bfloat16 math" in reason and "1.80x" in reason
    policy, reason = _apply(trial, None)  # this process started without it: the next run gets it
    assert policy == "mixed_bfloat16" and "applies from the next run" in reason


@pytest.mark.e2e
def test_auto_measures_once_then_reuses_the_decision(train):
    """On the CPU this runs on: a trial where it has native bfloat16, the table where it has not."""
    from safetrain.train.hardware import cpu_features

    first = train("hardware.precision_trial=true", "trainer.batch_size=24", "trainer.max_steps=3")
    assert first.code == 0, first.err
    hardware = first.report()["hardware"]
    if not cpu_features():  # nothing but float32 runs natively: nothing to measure
        assert hardware["precision_policy"] == "float32" and hardware["precision_trial"] is None
        return
    trial = hardware["precision_trial"]
    assert {"float32", "mixed_bfloat16", "onednn_bf16"} == set(trial["candidates"]) and not trial["cached"]
    assert trial["seconds"] <= trial["budget_s"] + 5 and trial["candidates"]["float32"] > 0
    assert hardware["precision_policy"] == pt.POLICY[trial["chosen"]] or trial["chosen"] == "onednn_bf16"
    assert hardware["precision_reason"].startswith("auto (trial")
    again = train("hardware.precision_trial=true", "trainer.batch_size=24", "trainer.max_steps=3")
    second = again.report()["hardware"]
    assert second["precision_trial"]["cached"] and second["precision_trial"]["chosen"] == trial["chosen"]
    assert second["precision_policy"] == hardware["precision_policy"]
    assert second["precision_reason"].startswith("auto (cached trial)")


def test_a_cached_trial_that_left_a_candidate_out_is_measured_again_by_a_longer_run(tmp_path):
    from types import SimpleNamespace

    from safetrain.experiment.precision import _worth_measuring_again

    trial = pt.Trial(candidates={"float32": 1000.0, "mixed_bfloat16": None}, chosen="float32", budget_s=10.0,
                     rejected={"mixed_bfloat16": "not measured: over the trial's budget (10 s)"})
    data = SimpleNamespace(steps_per_epoch=100)
    short = _config(tmp_path, epochs=1, batch_size=32)   # 3.2 s of training: the same 10 s budget
    long = _config(tmp_path, epochs=200, batch_size=32)  # 640 s: a 19 s budget
    assert not _worth_measuring_again(trial, short, data)
    assert _worth_measuring_again(trial, long, data)
    complete = pt.Trial(candidates={"float32": 1000.0, "mixed_bfloat16": 900.0}, chosen="float32", budget_s=10.0)
    assert not _worth_measuring_again(complete, long, data)
    assert not _worth_measuring_again(trial, _config(tmp_path, epochs=200, batch_size=32, time_budget="2m"), data)
