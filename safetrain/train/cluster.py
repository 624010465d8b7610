"""This process's place in a multi-worker cluster, read from `TF_CONFIG` without TensorFlow.

TensorFlow reads the same variable when `MultiWorkerMirroredStrategy` starts, but a malformed one
fails there deep in the runtime, or waits forever for a peer that can never connect. We parse it
first so a mistake is a config error (exit 2) naming `TF_CONFIG`, in a second.

The chief is the `chief` task when the cluster has one, else worker 0. It owns the run directory:
report.json, TensorBoard logs and the checkpoints. Every other worker writes its own report and
logs under `<run dir>/worker-<index>/`, so workers may share one run directory (a shared
filesystem — needed to resume, since every worker restores from the chief's checkpoints) or each
have their own.

`wait_for_peers` bounds the start-up. MultiWorkerMirroredStrategy's constructor waits without a
deadline until every worker has connected, holding the GIL all the while, so no Python thread or
signal handler can end the wait. Before TensorFlow starts, each worker therefore listens on its
own TF_CONFIG port from Python and dials every peer until all answer or
`hardware.worker_timeout_s` passes — a plain, clear error instead of a silent hang. A peer that
has already moved on answers through TensorFlow's server on the same port.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from safetrain.core.errors import ClusterError, ConfigError

_HINT = ('set TF_CONFIG to JSON like {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
         '"task": {"type": "worker", "index": 0}} — the same cluster on every worker, its own task index')


@dataclass(frozen=True)
class ClusterTask:
    task_type: str
    index: int
    num_workers: int          # chief included
    has_chief_task: bool = False
    address: str = ""         # this task's host:port
    peers: tuple[str, ...] = ()  # every other task's host:port

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (self.task_type == "worker" and self.index == 0
                                             and not self.has_chief_task)

    def describe(self) -> str:
        role = "chief" if self.is_chief else "non-chief"
        return f"{self.task_type} {self.index} ({role}) of {self.num_workers} workers"


def parse_tf_config(text: str) -> ClusterTask:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({err})", hint=_HINT, config_key="TF_CONFIG") from None
    cluster = data.get("cluster") if isinstance(data, dict) else None
    task = data.get("task") if isinstance(data, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ConfigError("TF_CONFIG needs a \"cluster\" object and a \"task\" object", hint=_HINT,
                          config_key="TF_CONFIG")
    for kind, hosts in cluster.items():
        if kind not in ("chief", "worker", "evaluator", "ps") or not isinstance(hosts, list) or not all(
                isinstance(h, str) and ":" in h for h in hosts):
            raise ConfigError(f"TF_CONFIG cluster entry {kind!r}: {hosts!r} is not a list of \"host:port\" "
                              f"strings under chief/worker", hint=_HINT, config_key="TF_CONFIG")
    if "ps" in cluster or "evaluator" in cluster:
        raise ConfigError("TF_CONFIG names parameter servers or an evaluator; safetrain runs "
                          "MultiWorkerMirroredStrategy, which uses only chief and worker tasks",
                          hint=_HINT, config_key="TF_CONFIG")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ConfigError(f"TF_CONFIG task {task!r} is not in its cluster "
                          f"({ {k: len(v) for k, v in cluster.items()} } tasks)",
                          hint=_HINT, config_key="TF_CONFIG")
    addresses = [h for kind in ("chief", "worker") for h in cluster.get(kind, [])]
    own = cluster[task_type][index]
    return ClusterTask(task_type=task_type, index=index, num_workers=len(addresses),
                       has_chief_task=bool(cluster.get("chief")), address=own,
                       peers=tuple(a for a in addresses if a != own))


def current_task() -> ClusterTask | None:
    """This process's task, or None when TF_CONFIG is unset (raises ConfigError when malformed)."""
    text = os.environ.get("TF_CONFIG", "").strip()
    return parse_tf_config(text) if text else None


def output_dir(run_dir: Path) -> Path:
    """Where this process writes its report and logs: the run dir, or worker-<i>/ inside it."""
    try:
        task = current_task()
    except ConfigError:
        return run_dir  # reported by validation, which will fail this run
    if task is None or task.is_chief:
        return run_dir
    return run_dir / f"{task.task_type}-{task.index}"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def wait_for_peers(task: ClusterTask, timeout_s: float, poll_s: float = 0.2) -> float:
    """Return the seconds it took every peer to answer; raise ClusterError after `timeout_s`."""
    started = time.monotonic()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", _split(task.address)[1]))
    except OSError as err:
        listener.close()
        raise ClusterError(f"{task.describe()}: cannot listen on {task.address} from TF_CONFIG ({err})",
                           hint="another process holds the port: stop it, or give this worker a free "
                                "port in TF_CONFIG (the same cluster list on every worker)",
                           config_key="TF_CONFIG") from None
    listener.listen(16)
    listener.settimeout(poll_s)
    stop = threading.Event()

    def serve() -> None:  # answer peers' dials; they hang up first, so the port is free again at once
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(1)
                except OSError:
                    pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    waiting = set(task.peers)
    try:
        while waiting:
            for peer in sorted(waiting):
                try:
                    with socket.create_connection(_split(peer), timeout=poll_s):
                        waiting.discard(peer)
                except OSError:
                    pass
            if waiting and time.monotonic() - started > timeout_s:
                raise ClusterError(
                    f"{task.describe()}: waited {timeout_s:g} s (hardware.worker_timeout_s) for the other "
                    f"workers in TF_CONFIG; never reached: {', '.join(sorted(waiting))}",
                    hint="start the same command on every worker of the cluster, each with its own task "
                         "index; check that the host:port pairs are reachable from each other, or raise "
                         "hardware.worker_timeout_s", config_key="hardware.worker_timeout_s")
            if waiting:
                time.sleep(poll_s)
        # Peers still dialling us get answered until they are through too (or TF takes the port).
        return time.monotonic() - started
    finally:
        stop.set()
        server.join()
        listener.close()
