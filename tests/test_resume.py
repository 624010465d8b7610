"""Nothing lost, nothing let in: exact resume, checkpoint fallback, refused resumes, hostile
overrides, run-dir checks and file limits. Real processes and real signals throughout."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _cmd(run_dir: Path, tfds_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "safetrain", "+debug=tiny", f"hydra.run.dir={run_dir}",
            f"dataset.data_dir={tfds_dir}", *overrides]


def _report(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def _errors(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "errors.jsonl").read_text().splitlines()]


@pytest.mark.e2e
def test_sigterm_at_a_random_step_then_rerun_ends_bitwise_equal_to_an_uninterrupted_run(tmp_path, tfds_dir):
    """Bitwise, not a tolerance: with op determinism every kernel is deterministic on CPU, the data
    order is a function of (seed, epoch), and the checkpoint holds weights, Adam's slots, the
    dropout RNG and the position, so nothing is left to differ. A tolerance would hide exactly the
    bugs this test exists for (a lost RNG state shows as a small drift, not a crash)."""
    same = ("trainer.deterministic=true", "trainer.epochs=3", "trainer.max_steps=null",
            "trainer.checkpoint_every_steps=1000",  # 8 steps per epoch; saves only at epoch ends and on signals
            # the recipe's pieces ride along: a schedule with warmup, weight decay, label smoothing, the
            # weights' moving average, augmentation (with the crop), balanced sampling and the best epoch
            # (keep_best: the digits have eval); the residual model's batch norms (moving statistics,
            # the fused kernel) too
            "model=cnn_residual", "optimizer.schedule=cosine", "optimizer.warmup_epochs=1", "optimizer.weight_decay=0.01",
            "trainer.label_smoothing=0.1", "trainer.ema=0.9", "augment=standard", "augment.crop=random_resized",
            "dataset.sampling=balanced")
    straight = tmp_path / "straight"
    done = subprocess.run(_cmd(straight, tfds_dir, *same), capture_output=True, text=True, env=ENV, timeout=240)
    assert done.returncode == 0, done.stderr

    # Any step but the last epoch's end; RESUME_SEED=N replays a failure's stop step.
    seed = int(os.environ.get("RESUME_SEED", random.SystemRandom().randrange(2**32)))
    print(f"RESUME_SEED={seed}")
    stop_after = random.Random(seed).randint(2, 21)
    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(_cmd(interrupted, tfds_dir, *same), stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 180
    for line in proc.stderr:
        if f"step {(stop_after - 1) % 8 + 1}/8" in line and f"epoch {(stop_after - 1) // 8 + 1}/3" in line:
            proc.send_signal(signal.SIGTERM)
            break
        assert time.monotonic() < deadline, "training never reached the step"
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, rest
    stopped = _report(interrupted)
    assert stopped["status"] == "interrupted" and stopped["steps"] >= stop_after

    resumed = subprocess.run(_cmd(interrupted, tfds_dir, *same), capture_output=True, text=True, env=ENV,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from checkpoint at step {stopped['steps']}" in resumed.stderr
    a, b = _report(straight), _report(interrupted)
    assert b["steps"] == a["steps"] == 24
    assert b["model"]["weights_sha256"] == a["model"]["weights_sha256"], \
        f"stopped after step {stopped['steps']} (replay: RESUME_SEED={seed})"
    assert b["metrics"]["test_accuracy"] == a["metrics"]["test_accuracy"]


@pytest.mark.e2e
def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous_one(train):
    first = train("trainer.checkpoint_every_steps=2", "trainer.max_steps=4")
    assert first.code == 0, first.err
    run_dir = first.run_dir
    data = run_dir / "checkpoints" / "ckpt-4.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])  # a crash mid-write

    again = train("trainer.checkpoint_every_steps=2", "trainer.max_steps=6")
    assert again.code == 0, again.err
    assert "checkpoint ckpt-4 is unreadable" in again.err and "resuming from checkpoint at step 2" in again.err
    assert _report(run_dir)["steps"] == 6
    [fallback] = [e for e in _errors(run_dir) if e["kind"] == "checkpoint_fallback"]
    assert "ckpt-4" in fallback["message"]


@pytest.mark.e2e
def test_a_resume_that_changes_a_shape_defining_setting_is_refused_naming_it(train):
    first = train("trainer.max_steps=2")
    assert first.code == 0, first.err
    run_dir = first.run_dir
    changed = train("trainer.max_steps=4", "dataset.image.height=32", "dataset.image.width=32")
    assert changed.code == 2, changed.err
    assert "trained with dataset.image.height=28, but this run has dataset.image.height=32" in changed.err
    assert "also changed: dataset.image.width" in changed.err and "Traceback" not in changed.err
    assert _report(run_dir)["error"]["config_key"] == "dataset.image.height"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*.index")) == ["ckpt-0.index", "ckpt-2.index"]


def test_hostile_overrides_are_refused_before_anything_runs(tmp_path):
    target = tmp_path / "created_by_a_callback"
    evil = tmp_path / "conf" / "experiment"
    evil.mkdir(parents=True)
    (evil / "evil.yaml").write_text("# @package _global_\nmodel:\n  _target_: os.system\n")
    cases = [
        ["+model._target_=os.system"],
        ["+hydra.callbacks.x._target_=os.makedirs", f"+hydra.callbacks.x.name={target}"],
        [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "+experiment=evil"],
    ]
    for overrides in cases:
        proc = subprocess.run([sys.executable, "-m", "safetrain", f"hydra.run.dir={tmp_path / 'run'}", *overrides],
                              cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=60)
        assert proc.returncode == 2, (overrides, proc.stderr)
        assert "_target_" in proc.stderr and "never" in proc.stderr and "Traceback" not in proc.stderr
    assert not target.exists()


def test_the_guard_refuses_a_target_key_segment_not_a_key_that_contains_the_word():
    from safetrain.experiment.app import refuse_code_execution

    for hostile in ("+model._target_=os.system", "a.b[0]._target_=x", "+model={_target_: os.system}",
                    "+hydra.callbacks.x.name=y"):
        assert refuse_code_execution([hostile]) is not None, hostile
    for plain in ("trainer.serving_target_accuracy=0.99", "model.name=my_target_net", "name=_target_ish"):
        assert refuse_code_execution([plain]) is None, plain


def test_an_unwritable_run_dir_is_a_clear_error_before_anything_starts(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = subprocess.run([sys.executable, "-m", "safetrain", f"hydra.run.dir={blocker / 'run'}"],
                          cwd=tmp_path, capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 2 and "run directory cannot be created or written" in proc.stderr
    assert "hydra.run.dir" in proc.stderr and "Traceback" not in proc.stderr


def test_a_full_disk_is_refused_before_training_fake_disk_usage(tmp_path):
    """Fake disk_usage: this machine's disk is not full, and filling it would hurt other work."""
    from collections import namedtuple

    from safetrain.core.errors import ConfigError
    from safetrain.record.rundir import check_free_space

    usage = namedtuple("usage", "total used free")
    check_free_space(tmp_path, 421_642, usage=lambda _: usage(10**12, 0, 10**12))
    with pytest.raises(ConfigError, match=r"has 10 MiB free, but this run's checkpoints and logs need about") as info:
        check_free_space(tmp_path, 421_642, usage=lambda _: usage(10**12, 0, 10 * 2**20))
    assert info.value.config_key == "hydra.run.dir"


def test_an_oversized_image_file_is_a_bad_example_and_never_opened(tmp_path):
    import numpy as np
    from PIL import Image

    from safetrain.pipelines.sources.image_folder import image_folder_source

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    big = tmp_path / "data" / "b" / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 5000)  # not even a valid PNG: it must not be opened at all
    from safetrain.config.schema import DatasetConfig, ImageConfig, Source

    source = image_folder_source(DatasetConfig(source=Source.image_folder, path=str(tmp_path / "data"),
                                               image=ImageConfig(height=8, width=8, channels=1),
                                               cache_dir=str(tmp_path / "cache"), max_file_bytes=4096))
    [bad] = source.bad
    assert bad.key == str(big) and "exceeds dataset.max_file_bytes=4,096 (not opened)" in bad.reason


def test_config_paths_are_resolved_and_checked_before_tensorflow(tmp_path, monkeypatch):
    from safetrain.config.schema import Config, Source
    from safetrain.experiment.validate import resolve, validate
    from safetrain.core.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "images").mkdir()
    cfg = Config()
    cfg.model.layers = [{"type": "flatten"}]
    cfg.dataset.source, cfg.dataset.path = Source.image_folder, "images"
    resolved = resolve(cfg)
    validate(resolved)
    assert resolved.dataset.path == str(tmp_path / "images")  # absolute from here on
    assert cfg.dataset.path == "images"  # resolve() returns a new config; validate() changes nothing
    cfg.dataset.path = "missing"
    with pytest.raises(ConfigError, match="is not an existing folder") as info:
        validate(resolve(cfg))
    assert info.value.config_key == "dataset.path"
