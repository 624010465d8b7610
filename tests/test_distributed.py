"""Multi-worker training from TF_CONFIG: parsing, the bounded start-up, and two real workers.

The two-worker test starts real `python -m safetrain` processes on 127.0.0.1. Every process gets
a hard deadline and is SIGKILLed past it: a worker whose peer never arrives would otherwise wait
inside TensorFlow, where SIGTERM does not reach Python.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from safetrain.train.cluster import ClusterTask, output_dir, parse_tf_config, wait_for_peers
from safetrain.config.schema import Config, StrategyKind
from safetrain.experiment.validate import validate
from safetrain.core.errors import ClusterError, ConfigError


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def test_tf_config_roles_chief_and_output_dirs(monkeypatch, tmp_path):
    two = {"worker": ["a:1", "b:2"]}
    first = parse_tf_config(json.dumps({"cluster": two, "task": {"type": "worker", "index": 0}}))
    second = parse_tf_config(json.dumps({"cluster": two, "task": {"type": "worker", "index": 1}}))
    assert first.is_chief and not second.is_chief and second.num_workers == 2
    assert second.address == "b:2" and second.peers == ("a:1",)
    with_chief = {"chief": ["c:0"], "worker": ["a:1"]}
    w0 = parse_tf_config(json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    chief = parse_tf_config(json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}}))
    assert chief.is_chief and not w0.is_chief and w0.num_workers == 2

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": two, "task": {"type": "worker", "index": 1}}))
    assert output_dir(tmp_path) == tmp_path / "worker-1"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": two, "task": {"type": "worker", "index": 0}}))
    assert output_dir(tmp_path) == tmp_path
    monkeypatch.delenv("TF_CONFIG")
    assert output_dir(tmp_path) == tmp_path


@pytest.mark.parametrize("text, says", [
    ("{not json", "not valid JSON"),
    ('{"cluster": {"worker": ["a:1"]}}', 'needs a "cluster" object and a "task" object'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "is not in its cluster"),
    ('{"cluster": {"worker": ["a"]}, "task": {"type": "worker", "index": 0}}', 'not a list of "host:port"'),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "parameter servers"),
])
def test_malformed_tf_config_is_a_config_error_naming_it(text, says):
    with pytest.raises(ConfigError) as info:
        parse_tf_config(text)
    assert says in info.value.message and info.value.config_key == "TF_CONFIG"
    assert info.value.exit_code == 2 and '"task"' in info.value.hint


def test_strategy_and_tf_config_must_agree_before_tensorflow(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    cfg = Config()
    cfg.model.layers = [{"type": "flatten"}]
    cfg.hardware.strategy = StrategyKind.multi_worker
    with pytest.raises(ConfigError, match="needs TF_CONFIG") as info:
        validate(cfg)
    assert info.value.config_key == "hardware.strategy"

    monkeypatch.setenv("TF_CONFIG", _tf_config([1, 2], 0))
    cfg.hardware.strategy = StrategyKind.mirrored
    with pytest.raises(ConfigError, match="every worker would train its own copy"):
        validate(cfg)
    cfg.hardware.strategy = StrategyKind.auto
    cfg.hardware.logical_cpus = 2
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert info.value.config_key == "hardware.logical_cpus"
    cfg.hardware.logical_cpus = None
    validate(cfg)  # auto + TF_CONFIG: multi-worker


def test_waiting_for_a_peer_that_never_comes_is_bounded_and_names_it():
    own, absent = _free_ports(2)
    task = ClusterTask("worker", 1, 2, address=f"127.0.0.1:{own}", peers=(f"127.0.0.1:{absent}",))
    started = time.monotonic()
    with pytest.raises(ClusterError) as info:
        wait_for_peers(task, timeout_s=0.5, poll_s=0.05)
    assert time.monotonic() - started < 5
    assert f"never reached: 127.0.0.1:{absent}" in info.value.message
    assert info.value.exit_code == 4 and info.value.config_key == "hardware.worker_timeout_s"


def test_peers_that_both_arrive_find_each_other_and_free_their_ports():
    import threading

    a, b = _free_ports(2)
    tasks = [ClusterTask("worker", 0, 2, address=f"127.0.0.1:{a}", peers=(f"127.0.0.1:{b}",)),
             ClusterTask("worker", 1, 2, address=f"127.0.0.1:{b}", peers=(f"127.0.0.1:{a}",))]
    waited: dict[int, float] = {}

    def join(i: int, delay: float) -> None:
        time.sleep(delay)
        waited[i] = wait_for_peers(tasks[i], timeout_s=10, poll_s=0.05)

    threads = [threading.Thread(target=join, args=(0, 0.0)), threading.Thread(target=join, args=(1, 0.5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(waited) == [0, 1] and waited[0] >= 0.4
    for port in (a, b):  # TensorFlow's server can bind the port next
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("", port))


def _start_worker(run_dir: Path, ports: list[int], index: int, tfds_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CONFIG": _tf_config(ports, index)}
    return subprocess.Popen(
        [sys.executable, "-m", "safetrain", "+debug=tiny", f"hydra.run.dir={run_dir}",
         f"dataset.data_dir={tfds_dir}", "hardware.strategy=multi_worker", *extra],
        cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen], deadline_s: float) -> list[tuple[int, str]]:
    """Wait for every process until the deadline, then SIGKILL the rest (TensorFlow ignores SIGTERM
    while it waits for peers); return (exit code, output) per process."""
    end = time.monotonic() + deadline_s
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(1.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        results.append((proc.returncode, out))
    return results


@pytest.mark.e2e
def test_two_workers_train_together_to_identical_weights_and_only_the_chief_checkpoints(tmp_path, tfds_dir):
    run_dir = tmp_path / "run"  # one run dir for both, as on a shared filesystem
    ports = _free_ports(2)
    procs = [_start_worker(run_dir, ports, i, tfds_dir, "hardware.worker_timeout_s=120", "trainer.export=true")
             for i in (0, 1)]
    (code0, out0), (code1, out1) = _finish(procs, deadline_s=240)
    assert (code0, code1) == (0, 0), out0[-3000:] + out1[-3000:]

    chief = json.loads((run_dir / "report.json").read_text())
    worker = json.loads((run_dir / "worker-1" / "report.json").read_text())
    for report in (chief, worker):
        assert report["status"] == "ok" and report["steps"] == 4
        assert report["hardware"]["strategy"] == "MultiWorkerMirroredStrategy"
        assert report["hardware"]["replicas"] == 2 and report["hardware"]["per_replica_batch_size"] == 16
    assert chief["hardware"]["cluster"] == "worker 0 (chief) of 2 workers"
    assert worker["hardware"]["cluster"] == "worker 1 (non-chief) of 2 workers"
    assert chief["model"]["weights_sha256"] == worker["model"]["weights_sha256"]
    assert chief["metrics"]["test_accuracy"] == worker["metrics"]["test_accuracy"]

    saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "checkpoint" in saved and "ckpt-4.index" in saved
    assert not (run_dir / "worker-1" / "checkpoints").exists()
    assert (run_dir / "export" / "saved_model.pb").exists() and not (run_dir / "worker-1" / "export").exists()
    assert "every worker reachable" in out0 and "MultiWorkerMirroredStrategy x2" in out1


@pytest.mark.e2e
def test_a_worker_alone_gives_up_after_worker_timeout_s_with_exit_4(tmp_path, tfds_dir):
    run_dir = tmp_path / "run"
    ports = _free_ports(2)
    started = time.monotonic()
    [(code, out)] = _finish([_start_worker(run_dir, ports, 1, tfds_dir, "hardware.worker_timeout_s=2")],
                            deadline_s=120)
    assert code == 4, out[-3000:]
    assert time.monotonic() - started < 60
    assert f"never reached: 127.0.0.1:{ports[0]}" in out and "Traceback" not in out
    report = json.loads((run_dir / "worker-1" / "report.json").read_text())
    assert report["status"] == "failed" and report["error"]["kind"] == "cluster"
    [record] = [json.loads(line) for line in (run_dir / "worker-1" / "errors.jsonl").read_text().splitlines()]
    assert record["kind"] == "cluster" and record["config_key"] == "hardware.worker_timeout_s"
