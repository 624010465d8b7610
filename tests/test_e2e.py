"""End-to-end runs of the real CLI on the embedded digits set: artifacts read back, not mocked."""

from __future__ import annotations

import socket
import sys

import pytest

from conftest import read_tensorboard

pytestmark = pytest.mark.e2e

THROUGHPUT = ("throughput/examples_per_sec", "throughput/steps_per_sec", "throughput/step_time_ms",
              "throughput/input_wait_fraction")


def test_default_run_trains_digits_to_95_percent_and_writes_the_run_dir(run_cli):
    result = run_cli()
    assert result.code == 0, result.err
    assert "Traceback" not in result.text

    report = result.report()
    assert report["status"] == "ok" and report["exit_code"] == 0 and report["error"] is None
    assert report["name"] == "digits_cnn"
    assert report["metrics"]["test_accuracy"] >= 0.95
    assert 0 < report["metrics"]["train_loss"] < 1.0
    assert report["epochs"] == 15 and report["steps"] == 15 * (1294 // 32)
    assert report["data"]["counts"] == {"train": 1294, "eval": 144, "test": 359}
    tp = report["throughput"]
    assert tp["examples_per_sec"] > 0 and 0 <= tp["input_wait_fraction"] < 1
    assert 0 < tp["step_time_ms_p50"] <= tp["step_time_ms_p90"]
    from safetrain.train.hardware import cpu_features

    # auto: measured by a trial where the CPU has native bfloat16, float32 without it
    hardware = report["hardware"]
    if cpu_features():
        trial = hardware["precision_trial"]
        assert trial["chosen"] in trial["candidates"] and hardware["precision_reason"].startswith("auto (")
        assert hardware["precision_policy"] in ("float32", "mixed_bfloat16")
    else:
        assert hardware["precision_policy"] == "float32" and hardware["precision_trial"] is None
        assert hardware["precision_reason"].startswith("auto: no GPU")
    assert report["hardware"]["replicas"] == 1
    assert report["versions"]["tensorflow"].startswith("2.21")
    digest = report["model"].pop("weights_sha256")
    assert len(digest) == 64 and int(digest, 16)
    assert report["model"] == {"name": "cnn_small", "params": 421_642, "flops_per_example": 8_519_936}
    assert report["throughput"]["train_flops_per_sec"] == pytest.approx(3 * 8_519_936 * tp["examples_per_sec"], rel=1e-3)
    assert 0 < report["time_to_first_step_s"] < report["wall_seconds"]
    # Honest rates: every example trained over the training epochs' seconds, and where the time went.
    wall = tp["wall_seconds"]
    assert tp["effective_examples_per_sec"] == pytest.approx(report["steps"] * 32 / wall["train"], rel=0.01)
    assert 0 < tp["effective_examples_per_sec"] < 1.2 * tp["examples_per_sec"]
    parts = ("start_up", "train", "eval", "test", "results", "export", "other")
    assert sum(wall[k] for k in parts) == pytest.approx(wall["total"], abs=0.01)
    assert all(wall[k] > 0 for k in ("start_up", "scan", "train", "eval", "test", "results", "export"))
    assert wall["scan"] < wall["start_up"] and wall["total"] < report["wall_seconds"]  # the latter has the import
    # auto steps_per_loop: chosen, said why, and divides the default cadences (log 10, checkpoints 200)
    assert tp["steps_per_loop"] in (1, 2, 5, 10) and "per call (a step took" in tp["steps_per_loop_reason"]
    assert f"trainer.steps_per_loop=auto: {tp['steps_per_loop']} step" in result.err

    scalars, texts = read_tensorboard(result.run_dir / "tb")
    for tag in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy",
                "optimizer/learning_rate", *THROUGHPUT):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    for tag in THROUGHPUT[:3]:
        assert all(v > 0 for _, v in scalars[tag]), tag
    assert all(0 <= v < 1 for _, v in scalars["throughput/input_wait_fraction"])
    assert len(scalars["eval/accuracy"]) == 15
    assert scalars["optimizer/learning_rate"][0][1] == pytest.approx(0.001)
    assert "conv2d 32, 3x3" in texts["model/summary"] and "421,642" in texts["model/summary"]
    assert "tensorflow: 2.21" in texts["env/report"]
    assert "resize (bilinear) -> 28x28" in texts["pipeline/spec"]
    assert "_hparams_/session_start_info" in texts  # the HParams dashboard entry for sweeps

    # The console: the shape table, non-TTY progress lines, the final summary.
    assert "(None, 7, 7, 64)" in result.err
    assert "epoch 15/15 step 40/40" in result.err
    assert "done: test accuracy" in result.err and f"run directory: {result.run_dir}" in result.err
    assert f"{tp['effective_examples_per_sec']:,.0f} examples/s (training epochs; " in result.err
    assert (result.run_dir / "checkpoints" / "checkpoint").exists()
    assert (result.run_dir / ".hydra" / "config.yaml").exists()
    assert (result.run_dir / "safetrain.log").read_text().count("epoch 15/15") >= 1


def test_nan_loss_stops_with_exit_5_and_keeps_records(train):
    result = train("optimizer.name=sgd", "optimizer.learning_rate=1e12")
    assert result.code == 5, result.err
    assert "Traceback" not in result.text
    assert "became NaN/Inf at step" in result.err and "lower optimizer.learning_rate" in result.err
    # The replay from the last good checkpoint names the first op and the cause.
    assert "Replayed with check_numerics: the first non-finite value came from op" in result.err
    assert "the learning rate is the likely cause" in result.err
    report = result.report()
    assert report["status"] == "failed" and report["error"]["kind"] == "non_finite"
    assert report["error"]["config_key"] == "optimizer.learning_rate"
    assert [e["kind"] for e in result.errors()] == ["non_finite"]
    _, texts = read_tensorboard(result.run_dir / "tb")
    assert "became NaN/Inf" in texts["errors/graph"]
    # Whatever checkpoint exists was written before the blow-up: every saved tensor is finite.
    import numpy as np
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(result.run_dir / "checkpoints"))
    if latest is not None:
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if getattr(value, "dtype", None) is not None and value.dtype.kind == "f":
                assert np.isfinite(value).all(), name


def test_nan_skip_step_goes_on_and_lists_each_skip(train):
    result = train("optimizer.name=sgd", "optimizer.learning_rate=1e12", "trainer.on_nan=skip_step")
    assert result.code == 0, result.err
    report = result.report()
    skipped = report["data"]["skipped_steps"]
    assert skipped >= 1 and len(result.errors()) == skipped
    assert [e["kind"] for e in result.errors()] == ["non_finite"] * skipped
    assert report["steps"] == 4
    # A skipped update is not applied at all: the saved weights are finite and the optimizer
    # counted only the updates it applied.
    import numpy as np
    import tensorflow as tf

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(result.run_dir / "checkpoints")))
    names = reader.get_variable_to_shape_map()
    [iterations] = [n for n in names if n.startswith("optimizer/") and "iteration" in n]
    assert int(reader.get_tensor(iterations)) == report["steps"] - skipped
    floats = [reader.get_tensor(n) for n in names if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    floats = [v for v in floats if getattr(v, "dtype", None) is not None and v.dtype.kind == "f"]
    assert len(floats) > 8 and all(np.isfinite(v).all() for v in floats)  # weights, Adam's slots


def test_label_out_of_range_is_a_data_error_naming_examples_before_training(train):
    # 10 digit classes declared as 5: plain Keras fails inside the first step with a graph error
    # naming the loss op; here the scan names the examples before any step.
    result = train("dataset.num_classes=5")
    assert result.code == 3, result.err
    assert "Traceback" not in result.text
    assert "label outside [0, 5) (dataset.num_classes=5)" in result.err
    assert "train[:90%]#" in result.err and "dataset.on_bad_example=skip" in result.err
    report = result.report()
    assert report["steps"] == 0 and report["error"]["kind"] == "data"
    events = [e for e in result.errors() if e["kind"] == "bad_example"]
    assert len(events) > 100 and all(e["example"].split("#")[1].isdigit() for e in events)


def test_skipped_bad_examples_are_counted_listed_and_training_goes_on(train):
    result = train("dataset.num_classes=5", "dataset.on_bad_example=skip")
    assert result.code == 0, result.err
    report = result.report()
    listed = [e for e in result.errors() if e["kind"] == "bad_example"]
    assert report["data"]["skipped"] == len(listed) > 0
    assert sum(report["data"]["counts"].values()) + len(listed) == 256 + 144 + 256  # tiny: max_examples=256
    assert f"{len(listed)} bad examples skipped" in result.err


def test_rerun_in_same_run_dir_resumes_from_checkpoint(train):
    first = train()
    assert first.code == 0, first.err
    again = train("trainer.max_steps=6")
    assert again.code == 0, again.err
    assert "resuming from checkpoint at step 4" in again.err
    assert again.report()["steps"] == 6


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_reachable("storage.googleapis.com"),
                    reason="this machine has network access, so the offline path cannot be exercised")
def test_mnist_offline_fails_fast_with_exit_3(run_cli):
    result = run_cli("+experiment=mnist_cnn", timeout=60)
    assert result.code == 3, result.err
    assert "Traceback" not in result.text
    assert "downloading it failed: storage.googleapis.com is unreachable" in result.err
    assert "train offline with the embedded set" in result.err
    assert result.report()["error"]["kind"] == "data"


def test_mnist_cnn_through_tfds_mock_data(run_main, tmp_path):
    """The real mnist builder and pipeline, with TFDS's own mock serving random uint8 images."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=96):
        result = run_main("+experiment=mnist_cnn", "+debug=tiny", "dataset.download=false",
                          data_dir=tmp_path / "tfds")
    assert result.code == 0, result.err
    report = result.report()
    assert report["name"] == "mnist_cnn" and report["status"] == "ok"
    assert report["steps"] == 3  # 96 mock examples / batch 32, under max_steps=4
    assert report["metrics"]["test_accuracy"] is not None
    assert "source mnist: 28x28x1 uint8" in result.err


def test_multirun_runs_every_job_and_exits_with_the_worst_code(tmp_path, tfds_dir):
    import json
    import os
    import subprocess

    from conftest import ROOT

    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "safetrain", "-m", "+debug=tiny", f"dataset.data_dir={tfds_dir}",
         f"hydra.sweep.dir={sweep}", "trainer.max_steps=7", "hardware.precision=auto,float32",
         "optimizer.name=adam,adamm"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    reports = [json.loads((sweep / str(i) / "report.json").read_text()) for i in range(4)]
    assert [r["exit_code"] for r in reports] == [0, 2, 0, 2]
    # Each job ran in its own process (isolate_jobs=true) with its own precision policy.
    from safetrain.config.schema import Precision
    from safetrain.train.hardware import Device, choose_precision, cpu_features

    # +debug=tiny: no precision trial (too short to pay back): the table decides
    auto, _ = choose_precision([Device("CPU", "cpu", features=cpu_features())], Precision.auto)
    assert [r["hardware"]["precision_policy"] for r in reports[::2]] == [auto, "float32"]

    # The sweep report: one row per job, failed jobs included, non-zero exit when any failed.
    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep_report.py"), str(sweep), "--json"],
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 1
    summary = json.loads(table.stdout)
    rows = summary["rows"]
    assert summary["best"]["job"] in (0, 2) and summary["plot"] is None  # two overrides vary: no plot
    assert summary["best"]["eval_accuracy"] == max(rows[0]["eval_accuracy"], rows[2]["eval_accuracy"])
    assert [(r["job"], r["precision"], r["exit_code"]) for r in rows] == [
        (0, auto, 0), (1, None, 2), (2, "float32", 0), (3, None, 2)]
    assert rows[1]["status"] == "failed (config)" and "optimizer.name=adamm" in rows[1]["overrides"]
    assert rows[0]["examples_per_sec"] > 0
    assert all(r["steps"] == 7 for r in reports[::2])


def test_multirun_jobs_run_in_their_own_processes_so_process_global_state_cannot_leak(tmp_path, tfds_dir):
    """`hardware.logical_cpus` can be applied once per process. Isolated, both jobs get their own
    device split; in one process (isolate_jobs=false, the control) the second job cannot."""
    import json
    import os
    import subprocess

    from conftest import ROOT

    def sweep(name: str, *extra: str) -> tuple[int, list[dict]]:
        out = tmp_path / name
        proc = subprocess.run(
            [sys.executable, "-m", "safetrain", "-m", "+debug=tiny", f"dataset.data_dir={tfds_dir}",
             f"hydra.sweep.dir={out}", "trainer.max_steps=2", "trainer.deterministic=true",
             "hardware.strategy=mirrored", "hardware.logical_cpus=2,3", *extra],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        return proc.returncode, [json.loads((out / str(i) / "report.json").read_text()) for i in range(2)]

    code, reports = sweep("isolated")
    assert code == 0, reports
    assert [(r["status"], r["hardware"]["replicas"]) for r in reports] == [("ok", 2), ("ok", 3)]

    code, reports = sweep("shared", "isolate_jobs=false")
    assert code == 2 and reports[0]["status"] == "ok"
    assert reports[1]["error"]["config_key"] == "hardware.logical_cpus"
    assert "already initialized its devices in this process" in reports[1]["error"]["message"]


def test_sigterm_saves_a_checkpoint_at_the_step_reached_and_a_rerun_resumes(tmp_path, tfds_dir):
    import json
    import os
    import signal
    import subprocess
    import time

    import tensorflow as tf

    from conftest import ROOT

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "safetrain", f"hydra.run.dir={run_dir}", f"dataset.data_dir={tfds_dir}",
           "trainer.epochs=50", "trainer.log_every_steps=5", "trainer.checkpoint_every_steps=1000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # wait until training is under way (epoch 1, step 15 logged)
        if "epoch 1/50 step 15/" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143, rest
    assert "interrupted (exit 143)" in rest and "Traceback" not in rest
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "interrupted" and report["exit_code"] == 143
    stopped_at = report["steps"]
    # the report says why the run ended, for a reader of report.json or a sweep table
    assert report["error"] == {"kind": "interrupted", "config_key": None,
                               "message": f"SIGTERM at step {stopped_at}; checkpoint saved at step {stopped_at}",
                               "hint": f"rerun the same command with hydra.run.dir={run_dir} to resume"}
    assert 15 <= stopped_at < 50 * 40
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest.endswith(f"ckpt-{stopped_at}")  # saved at the exact step reached, not the last cadence

    again = subprocess.run(cmd[:-3] + [f"trainer.max_steps={stopped_at + 5}", "trainer.epochs=50"],
                           cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"resuming from checkpoint at step {stopped_at}" in again.stderr
    assert json.loads((run_dir / "report.json").read_text())["steps"] == stopped_at + 5


def _messy_folder(root):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("circle", "square"):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / "square" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole JPEG")
    return root


def test_image_folder_from_the_cli_stops_naming_the_bad_file_or_skips_it(run_main, tmp_path):
    root = _messy_folder(tmp_path / "shapes")
    args = ["dataset=image_folder", f"dataset.path={root}", "dataset.image.height=16", "dataset.image.width=16",
            "trainer.epochs=1", "trainer.batch_size=4"]
    stopped = run_main(*args)
    assert stopped.code == 3, stopped.err
    assert f"{root / 'square' / 'broken.jpg'} (train): unreadable, corrupt or truncated image file" in stopped.err
    assert "Traceback" not in stopped.text and stopped.report()["steps"] == 0

    skipped = run_main(*args, "dataset.on_bad_example=skip")
    assert skipped.code == 0, skipped.err
    report = skipped.report()
    # train[:80%] per class: 80% of each class of 12 is 9.6, rounded to 10 (stratified slices)
    assert report["data"]["skipped"] == 1 and report["data"]["counts"]["train"] == 20
    # errors.jsonl keeps the history of the run dir: one event from each of the two runs.
    events = [e for e in skipped.errors() if e["kind"] == "bad_example"]
    assert [e["example"] for e in events] == [str(root / "square" / "broken.jpg")] * 2
    assert events[-1]["hint"] == "skipped"
    assert "per class: circle 12, square 12" in (skipped.run_dir / "safetrain.log").read_text()


FASHION = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not __import__("os").path.isdir(FASHION),
                    reason="Debian's dataset-fashion-mnist is not installed (CI installs it)")
def test_fashion_mnist_experiment_trains_on_the_real_local_idx_files(run_main):
    result = run_main("+experiment=fashion_mnist_cnn", "+debug=tiny", "trainer.max_steps=30",
                     "dataset.max_examples=null", "dataset.download=false")
    assert result.code == 0, result.err
    report = result.report()
    assert report["data"]["counts"] == {"train": 54000, "eval": 6000, "test": 10000}
    assert report["metrics"]["test_accuracy"] > 0.5  # 30 steps of batch 32 on real data
    assert f"using local IDX files in {FASHION}" in result.err


def test_one_hot_labels_train_like_the_same_labels_sparse(train):
    """Categorical cross-entropy on one-hot labels is sparse cross-entropy on class ids: the same
    seed and batches give the same run. A wrong encoding (classes shifted, all-zero rows) could
    not."""
    same = ("trainer.max_steps=8", "hardware.precision=float32")
    one_hot = train("dataset.label_encoding=one_hot", "trainer.loss=categorical_crossentropy", *same, name="one_hot")
    sparse = train(*same, name="sparse")
    assert one_hot.code == 0 and sparse.code == 0, one_hot.err + sparse.err
    a, b = one_hot.report(), sparse.report()
    assert a["steps"] == b["steps"] == 8
    for metric in ("train_loss", "eval_loss", "test_loss"):
        assert a["metrics"][metric] == pytest.approx(b["metrics"][metric], rel=1e-4), metric
    assert a["metrics"]["test_accuracy"] == pytest.approx(b["metrics"]["test_accuracy"], abs=2 / 256)
    assert a["metrics"]["train_accuracy"] > 0.1  # better than chance after 8 steps


def test_mnist_rnn_learns_offline_on_the_digits_and_reports_flops(run_main):
    # The LSTM-over-rows experiment on offline data (MNIST itself needs the network): 95.8-97.2%
    # measured over three seeds.
    result = run_main("+experiment=mnist_rnn", "dataset=digits", "trainer.epochs=15", "trainer.batch_size=32")
    assert result.code == 0, result.err
    report = result.report()
    assert report["name"] == "mnist_rnn" and report["model"]["name"] == "lstm_rows"
    assert report["metrics"]["test_accuracy"] >= 0.93
    assert report["model"]["params"] == 4 * 128 * (28 + 128 + 1) + 128 * 10 + 10
    assert report["model"]["flops_per_example"] > 0 and report["throughput"]["train_flops_per_sec"] > 0
    assert "lstm 128" in result.err and "(None, 28, 28)" in result.err


def test_mirrored_strategy_over_two_logical_cpus(run_cli):
    result = run_cli("+debug=tiny", "hardware.strategy=mirrored", "hardware.logical_cpus=2")
    assert result.code == 0, result.err
    hardware = result.report()["hardware"]
    assert hardware["strategy"] == "MirroredStrategy" and hardware["replicas"] == 2
    assert hardware["per_replica_batch_size"] == 16  # global batch 32 split over two replicas
    assert result.report()["steps"] == 4 and result.report()["metrics"]["test_accuracy"] is not None
    assert "MirroredStrategy x2 | batch 32 global, 16 per replica" in result.err


def test_the_recipe_is_printed_and_tensorboard_shows_the_rate_each_step_used(train):
    result = train("trainer.max_steps=8", "optimizer.schedule=cosine", "optimizer.warmup_epochs=0.25",
                   "optimizer.weight_decay=0.05", "trainer.label_smoothing=0.1")
    assert result.code == 0, result.err
    recipe = ("adam, learning rate linear warmup over 2 steps, then cosine 0.001 -> 0 at step 8, weight decay "
              "0.05 (not on the 4 1-D weights: biases, normalization), label smoothing 0.1")
    assert f"optimizer: {recipe}" in result.err
    scalars, texts = read_tensorboard(result.run_dir / "tb")
    assert recipe in texts["optimizer/recipe"]
    steps, rates = zip(*scalars["optimizer/learning_rate"])
    assert steps == tuple(range(1, 9))
    assert rates[0] == pytest.approx(0.0005) and rates[1] == pytest.approx(0.001)  # the 2 warmup steps
    assert all(b < a for a, b in zip(rates[2:], rates[3:])) and rates[-1] == pytest.approx(0.0, abs=1e-9)


def test_early_stopping_keeps_the_best_eval_epoch_for_the_test_and_a_rerun_trains_no_further(train):
    # A learning rate too small to change a prediction: the eval accuracy stays flat after epoch 1.
    args = ("trainer.max_steps=null", "trainer.epochs=6", "trainer.early_stopping.patience=1",
            "optimizer.learning_rate=1e-9", "hardware.precision=float32")
    first = train(*args)
    assert first.code == 0, first.err
    report = first.report()
    best = report["best"]
    assert best["metric"] == "eval_accuracy" and best["weights_restored"] is True
    assert best["epoch"] == 1 and report["epochs"] == 2  # one epoch of patience after the best, then the stop
    assert best["step"] == 8 * best["epoch"] and best["value"] == pytest.approx(max(v for _, v in read_tensorboard(
        first.run_dir / "tb")[0]["eval/accuracy"]))  # TensorBoard stores float32
    assert "stopping early (trainer.early_stopping)" in first.err
    assert f"best eval accuracy {best['value']:.4f} at epoch {best['epoch']}" in first.err

    again = train(*args)
    assert again.code == 0, again.err
    assert f"resuming from checkpoint at step {report['steps']}" in again.err and "epoch 1/6 step" not in again.err
    rerun = again.report()
    assert rerun["steps"] == report["steps"] and rerun["best"] == best
    for metric in ("test_accuracy", "test_loss"):  # the same restored weights, exactly
        assert rerun["metrics"][metric] == report["metrics"][metric], metric


def test_the_moving_average_is_what_eval_and_test_see_and_training_is_untouched_by_it(train):
    args = ("trainer.max_steps=null", "trainer.epochs=2", "optimizer.learning_rate=0.01", "trainer.keep_best=false",
            "hardware.precision=float32")
    plain, averaged = train(*args, name="plain"), train(*args, "trainer.ema=0.9", name="ema")
    assert plain.code == 0 and averaged.code == 0, plain.err + averaged.err
    a, b = plain.report()["metrics"], averaged.report()["metrics"]
    assert a["train_loss"] == b["train_loss"]  # the swaps are exact: training never sees the average
    assert a["eval_loss"] != b["eval_loss"] and a["test_loss"] != b["test_loss"]
    assert "weights' moving average (decay 0.9, warmed up as min(decay, (1 + t) / (10 + t))) for eval, test and " \
           "export" in averaged.err


def test_plateau_lowers_the_rate_after_flat_epochs_and_a_resume_keeps_counting(train):
    # A rate too small to change a prediction keeps the eval accuracy flat: each epoch after the
    # first is one without improvement (patience 1), so the rate drops 10x after epochs 2 and 3.
    args = ("trainer.epochs=4", "optimizer.schedule=plateau", "optimizer.plateau_patience=1",
            "optimizer.plateau_metric=accuracy", "optimizer.learning_rate=1e-9", "optimizer.min_learning_rate=1e-12",
            "hardware.precision=float32")
    first = train(*args, "trainer.max_steps=12")  # stops in epoch 2: the plateau state is in the checkpoint
    assert first.code == 0, first.err
    again = train(*args, "trainer.max_steps=null")
    assert again.code == 0, again.err
    assert "resuming from checkpoint at step 12" in again.err
    assert "learning rate -> 1e-10 (no better eval accuracy for 1 epochs)" in again.err
    rates = dict(read_tensorboard(again.run_dir / "tb")[0]["optimizer/learning_rate"])
    assert rates[12] == pytest.approx(1e-9) and rates[16] == pytest.approx(1e-9)
    assert rates[17] == pytest.approx(1e-10) and rates[25] == pytest.approx(1e-11)


def test_augmentation_is_listed_in_the_pipeline_and_shown_next_to_the_enforced_inputs(run_main):
    result = run_main("+debug=tiny", "augment=standard")
    assert result.code == 0, result.err
    said = "augment training batches (before normalization, checked after): flip horizontal, rotation 0.05"
    assert said in result.err
    _, texts = read_tensorboard(result.run_dir / "tb")
    assert said in texts["pipeline/spec"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(result.run_dir / "tb"))
    board.Reload()
    assert {"inputs/after_enforcement", "inputs/after_augmentation"} <= set(board.Tags()["tensors"])


def test_class_weights_multiply_each_examples_loss_and_must_fit_the_classes(train):
    same = ("trainer.max_steps=8", "hardware.precision=float32")
    plain = train(*same, name="plain")
    doubled = train(*same, "dataset.class_weights=[2,2,2,2,2,2,2,2,2,2]", name="doubled")
    assert plain.code == 0 and doubled.code == 0, plain.err + doubled.err
    # Adam's updates do not depend on the loss's scale: the same run, with every loss twice as large.
    assert doubled.report()["metrics"]["train_loss"] == pytest.approx(2 * plain.report()["metrics"]["train_loss"],
                                                                      rel=1e-3)
    assert doubled.report()["metrics"]["eval_loss"] == pytest.approx(plain.report()["metrics"]["eval_loss"], rel=1e-3)
    assert doubled.report()["data"]["class_weights"] == {str(i): 2.0 for i in range(10)}

    balanced = train(*same, "dataset.class_weights=balanced", name="balanced")
    weights = balanced.report()["data"]["class_weights"]
    assert balanced.code == 0 and len(weights) == 10 and all(0.7 < w < 1.4 for w in weights.values())
    assert "class weights (dataset.class_weights: balanced): 0 " in balanced.err

    wrong = train(*same, "dataset.class_weights=[1,2,3]", name="wrong")
    assert wrong.code == 2 and wrong.report()["error"]["config_key"] == "dataset.class_weights"
    assert "dataset.class_weights has 3 weights, and the data has 10 classes" in wrong.err
