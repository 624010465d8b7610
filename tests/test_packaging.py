"""The wheel carries the Hydra config tree, and an installed safetrain composes from it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

pytestmark = pytest.mark.e2e


def test_wheel_ships_configs_and_composes_from_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("safetrain-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"safetrain/_configs/{p.relative_to(ROOT / 'configs')}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert expected and expected <= names
    assert {"safetrain/pipelines/build.py", "safetrain/models/spec.py", "safetrain/cli.py"} <= names
    assert not any(n.startswith(("pipelines/", "models/")) for n in names)  # no generic top-level packages

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import safetrain.config as c; print(c.config_dir())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.strip() == str(target / "safetrain" / "_configs")
    _generic_names_are_free(tmp_path, env)
    # A validation error proves the installed tree composed (experiment, groups, schema).
    proc = subprocess.run([sys.executable, "-m", "safetrain", "+experiment=mnist_cnn", "trainer.epochs=0",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "trainer.epochs=0 must be greater than 0" in proc.stderr


def _generic_names_are_free(cwd, env) -> None:
    """A project with its own `models` or `pipelines` package gets its own: safetrain's are
    safetrain.models and safetrain.pipelines."""
    for name in ("models", "pipelines"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode != 0 and f"No module named '{name}'" in proc.stderr, name
    ours = subprocess.run([sys.executable, "-c", "import safetrain.models.spec, safetrain.pipelines.spec"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert ours.returncode == 0, ours.stderr


def test_the_installed_checkout_claims_no_generic_import_names(tmp_path):
    """`pip install -e .` (the README's set-up, and CI's) installs safetrain.models and
    safetrain.pipelines from the checkout's models/ and pipelines/ folders, and nothing named
    `models` or `pipelines`, outside the checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _generic_names_are_free(tmp_path, env)
