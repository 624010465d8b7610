"""The config tree has one source for each default, and the schema documents every field."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys

from conftest import ROOT
from safetrain.experiment.app import DEFAULT_EXPERIMENT, with_default_experiment

SCHEMA = ROOT / "safetrain" / "config" / "schema.py"


def _composed(tmp_path, *overrides: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "safetrain", f"hydra.run.dir={tmp_path / 'run'}", *overrides,
                           "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_default_run_composes_to_the_digits_cnn_experiment(tmp_path):
    default = _composed(tmp_path)
    assert default == _composed(tmp_path, "+experiment=digits_cnn")
    assert "name: digits_cnn" in default and "epochs: 15" in default and "batch_size: 32" in default
    # Another experiment brings only its own values: nothing of digits_cnn's leaks into it.
    mnist = _composed(tmp_path, "+experiment=mnist_cnn")
    assert "name: mnist_cnn" in mnist and "batch_size: 128" in mnist and "epochs: 3" in mnist


def test_the_default_experiment_is_added_only_when_none_is_chosen():
    default = f"+experiment={DEFAULT_EXPERIMENT}"
    assert with_default_experiment(["-m", "trainer.epochs=2,3"]) == ["-m", default, "trainer.epochs=2,3"]
    assert with_default_experiment(["x=1", "--cfg", "job"]) == [default, "x=1", "--cfg", "job"]
    assert with_default_experiment(["--cfg", "job", "x=1"]) == ["--cfg", "job", default, "x=1"]
    assert with_default_experiment(["--info", "defaults", "x=1"]) == ["--info", "defaults", default, "x=1"]
    assert with_default_experiment(["--cfg", "job", "--info"]) == ["--cfg", "job", default, "--info"]
    assert with_default_experiment([]) == [default]
    for chosen in (["+experiment=mnist_cnn"], ["experiment=mnist_cnn"], ["++experiment=x"], ["--config-name", "mine"]):
        assert with_default_experiment(chosen) == chosen


def test_every_schema_field_has_a_comment_and_every_module_it_names_exists():
    source = SCHEMA.read_text()
    fields = re.findall(r"^    [a-z_]+: [^=\n]+ = .*$", source, re.M)
    assert len(fields) > 50
    assert [line for line in fields if "#" not in line] == []
    named = set(re.findall(r"\b((?:safetrain|pipelines|models)(?:\.[a-z_]+)+)", source))
    assert named
    for dotted in sorted(named):
        if dotted.startswith(("pipelines.", "models.")):  # the folders install as safetrain.pipelines/.models
            dotted = f"safetrain.{dotted}"
        try:
            importlib.import_module(dotted)
        except ModuleNotFoundError:
            module, _, attribute = dotted.rpartition(".")
            assert hasattr(importlib.import_module(module), attribute), f"schema.py names {dotted}: no such thing"
