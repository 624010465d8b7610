"""Shared test set-up: quiet, small TensorFlow; one prepared digits data dir per session.

Three ways to run a job, fastest first:
- `train(*values)`: the real config, composed once per session (`+debug=tiny`, this session's
  TFDS dir, as lightning-hydra-template's conftest does), copied, changed by `key=value` values
  and run in this process through `safetrain.experiment.run.execute` — what most end-to-end tests need;
- `run_main(*overrides)`: the real Hydra app in this process, for overrides that change the
  defaults list (`+experiment=...`, `optimizer=sgd`) or in-process patches (tfds mock_data);
- `run_cli(*overrides)`: a subprocess, exactly what a user types — for what only a process shows:
  exit codes and tracebacks of the process itself, signals, process-global TensorFlow settings
  (op determinism, logical CPUs), sweeps.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "2")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")
# A run that names no dataset.data_dir keeps its caches (precision trials, image-folder scans) beside
# TFDS's data dir: the suite's, subprocesses included, go to a folder of its own (removed at exit),
# never into the user's ~/tensorflow_datasets.
_DATA_DIR = tempfile.TemporaryDirectory(prefix="safetrain-tests-data-")
os.environ["TFDS_DATA_DIR"] = _DATA_DIR.name

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    code: int
    out: str
    err: str
    run_dir: Path

    @property
    def text(self) -> str:
        return self.out + self.err

    def report(self) -> dict:
        return json.loads((self.run_dir / "report.json").read_text())

    def errors(self) -> list[dict]:
        path = self.run_dir / "errors.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _float32_policy_after_each_test():
    """A run made in this process sets Keras' global precision policy (on a CPU with AMX `auto`
    picks mixed_bfloat16) and a CLI process never needs it back; tests that follow expect the
    default, float32, as they get when run alone."""
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def hand_drawn() -> Path:
    """../shared/data/hand_drawn_shapes: 545 real drawings by many people (CC BY 4.0; its README).
    CI places ../shared beside the checkout; a missing copy fails (it would hide what it tests)."""
    path = SHARED_DATA / "hand_drawn_shapes"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: the real-data tests need ../shared/data beside the checkout")
    return path


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> Path:
    """A TFDS data dir shared by the session: the digits set is prepared into it once."""
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture
def run_cli(tmp_path, tfds_dir):
    def run(*overrides: str, timeout: float = 240, data_dir: Path | None = None) -> CliResult:
        run_dir = tmp_path / "run"
        cmd = [sys.executable, "-m", "safetrain", f"hydra.run.dir={run_dir}",
               f"dataset.data_dir={data_dir or tfds_dir}", *overrides]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        return CliResult(proc.returncode, proc.stdout, proc.stderr, run_dir)

    return run


@pytest.fixture(scope="session")
def tiny_config(tfds_dir):
    """The default experiment under `+debug=tiny`, composed once for the whole session."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from safetrain.experiment.app import DEFAULT_EXPERIMENT
    from safetrain.config import config_dir
    from safetrain.config.schema import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("config", overrides=[f"+experiment={DEFAULT_EXPERIMENT}", "+debug=tiny",
                                            f"dataset.data_dir={tfds_dir}"])


@pytest.fixture
def train(tiny_config, tmp_path):
    """Run the composed tiny config in this process with `key=value` changes (typed: a wrong key or
    type fails here as it would at composition). The console text is what the safetrain logger
    printed plus what the run wrote to sys.stderr (a traceback, if any)."""
    from safetrain.experiment.run import execute

    def run(*values: str, name: str = "run") -> CliResult:
        node = copy.deepcopy(tiny_config)
        node.merge_with_dotlist(list(values))
        run_dir = tmp_path / name
        run_dir.mkdir(parents=True, exist_ok=True)
        logger, text = logging.getLogger("safetrain"), io.StringIO()
        handler = logging.StreamHandler(text)
        level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        try:
            with contextlib.redirect_stderr(text):  # what run.py prints itself (a traceback, for a bug)
                code = execute(node, run_dir)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        return CliResult(code, "", text.getvalue(), run_dir)

    return run


@pytest.fixture
def run_main(tmp_path, tfds_dir):
    """The real CLI in this process (for what must be set up in-process: custom layers registered
    by the test, tfds.testing.mock_data). The console text is read back from the run's log file,
    which receives every line the console does; an unexpected error would show in report.json as
    kind "internal" (the only path that prints a traceback)."""
    import logging

    from hydra.core.global_hydra import GlobalHydra

    from safetrain.experiment.app import main

    def run(*overrides: str, data_dir: Path | None = None, name: str = "run") -> CliResult:
        run_dir = tmp_path / name
        GlobalHydra.instance().clear()
        try:
            main([f"hydra.run.dir={run_dir}", f"dataset.data_dir={data_dir or tfds_dir}", *overrides])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        finally:
            # Hydra pointed the logger at this test's captured stderr; detach it before capture closes.
            logging.getLogger("safetrain").handlers.clear()
            GlobalHydra.instance().clear()
        log_file = run_dir / "safetrain.log"
        return CliResult(code, "", log_file.read_text() if log_file.exists() else "", run_dir)

    return run


def read_tensorboard(logdir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, str]]:
    """Scalars and texts from real event files (TF2 summaries come back as tensor events)."""
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={TENSORS: 0})
    acc.Reload()
    scalars: dict[str, list[tuple[int, float]]] = {}
    texts: dict[str, str] = {}
    for tag in acc.Tags()["tensors"]:
        for event in acc.Tensors(tag):
            value = tf.make_ndarray(event.tensor_proto)
            if value.dtype.kind in "SO":
                texts[tag] = value.item().decode() if value.shape == () else str(value)
            elif value.shape == ():
                scalars.setdefault(tag, []).append((event.step, float(value)))
            else:  # e.g. the HParams plugin's session record: kept by tag, value unused
                texts.setdefault(tag, "")
    return scalars, texts
