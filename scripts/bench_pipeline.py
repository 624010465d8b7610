"""Is the input pipeline ever the bottleneck? Pipeline throughput vs training throughput.

    python scripts/bench_pipeline.py                 # digits_cnn, and fashion_mnist_cnn when Debian's files exist
    python scripts/bench_pipeline.py --steps 400

For each experiment: (1) the scan (first pass: decode, check, adapt, fill the cache), timed;
(2) the finished train pipeline alone (cached, shuffled, batched, prefetched), examples/s over
two epochs; (3) a real training run through the CLI (`python -m safetrain`, --steps steps), whose
report.json gives training examples/s and `input_wait_fraction`; (4) the wait's floor: the same
train step fed one cached batch, interleaved with the real pipeline, so the pipeline's own share
of the wait is the difference. Prints the ratio pipeline/training and writes bench_pipeline.json.
Target: input_wait_fraction <= 0.05.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FASHION = Path("/usr/share/datasets/fashion-mnist")


def experiment_config(name: str):
    """The composed dataset and trainer config of an experiment, through Hydra's compose API."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from safetrain.config import config_dir
    from safetrain.config.schema import register

    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=[f"+experiment={name}"]))


def measure_pipeline(name: str, data_dir: str | None) -> dict:
    from safetrain.core.tf_import import import_tensorflow

    import_tensorflow()
    from safetrain.pipelines.build import build_datasets

    cfg = experiment_config(name)
    if data_dir:
        cfg.dataset.data_dir = data_dir
    t = cfg.trainer
    start = time.perf_counter()
    data = build_datasets(cfg.dataset, t.batch_size, t.batch_size, t.seed)
    scan_s = time.perf_counter() - start
    seen, start = 0, time.perf_counter()
    for epoch in (1, 2):  # a new per-epoch pipeline each time, over the one shared cache
        for images, _ in data.train_epoch(epoch):
            seen += int(images.shape[0])
    rate = seen / (time.perf_counter() - start)
    return {"examples_scanned": sum(data.counts.values()) + len(data.bad), "scan_seconds": round(scan_s, 2),
            "pipeline_examples_per_sec": round(rate, 1), "batch_size": t.batch_size}


def measure_training(name: str, steps: int, data_dir: str | None) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    cmd = [sys.executable, "-m", "safetrain", f"+experiment={name}", f"hydra.run.dir={run_dir}",
           f"trainer.max_steps={steps}"] + ([f"dataset.data_dir={data_dir}"] if data_dir else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"{name}: training run failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    report = json.loads((run_dir / "report.json").read_text())
    return {"training_examples_per_sec": report["throughput"]["examples_per_sec"],
            "input_wait_fraction": report["throughput"]["input_wait_fraction"], "steps": report["steps"]}


def measure_wait_floor(name: str, data_dir: str | None, timed_steps: int = 300) -> dict:
    """What `input_wait_fraction` reads when the pipeline does no work at all: the same train step
    fed one cached batch over and over, interleaved with the real pipeline, in this process. The
    difference is the pipeline's own share; the floor is the in-graph dequeue and its timestamps."""
    import statistics

    import keras

    from safetrain.models.shapes import infer
    from safetrain.models.parse import parse_layers
    from safetrain.pipelines.build import build_datasets
    from safetrain.train.hardware import choose_precision, detect_devices
    from safetrain.train.task import build_task
    from safetrain.core.tf_import import import_tensorflow

    tf = import_tensorflow()
    cfg = experiment_config(name)
    if data_dir:
        cfg.dataset.data_dir = data_dir
    t = cfg.trainer
    policy, _ = choose_precision(detect_devices(), cfg.hardware.precision)
    keras.mixed_precision.set_global_policy(policy)
    data = build_datasets(cfg.dataset, t.batch_size, t.batch_size, t.seed)
    plan = infer(parse_layers(cfg.model.layers), data.spec.shape, data.source.num_classes)
    steps = build_task(plan, optimizer=cfg.optimizer, trainer=t, strategy=tf.distribute.get_strategy(),
                       steps_per_epoch=data.steps_per_epoch, policy=policy).steps()
    feeds = {"pipeline": iter(data.train_epoch(1).repeat()),
             "floor": iter(data.train_epoch(1).take(1).cache().repeat())}
    timings: dict[str, list[tuple[float, float]]] = {k: [] for k in feeds}
    for feed in feeds.values():
        for _ in range(10):
            steps.train(feed)
    for _ in range(6):
        for key, feed in feeds.items():
            for _ in range(max(1, timed_steps // 6)):
                start = time.perf_counter()
                out = steps.train(feed)
                float(out["loss_sum"])
                timings[key].append((float(out["input_wait_s"]), time.perf_counter() - start))
    fraction = {k: sum(w for w, _ in v) / sum(s for _, s in v) for k, v in timings.items()}
    return {"wait_floor_fraction": round(fraction["floor"], 4),
            "wait_with_pipeline_fraction": round(fraction["pipeline"], 4), "step_ms_median": round(1000 * statistics.median(s for _, s in timings["pipeline"]), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="training steps per experiment")
    parser.add_argument("--data-dir", default=None, help="TFDS data dir (default: TFDS's)")
    parser.add_argument("--out", default="bench_pipeline.json")
    args = parser.parse_args()

    names = ["digits_cnn"] + (["fashion_mnist_cnn"] if FASHION.is_dir() else [])
    results = {}
    for name in names:
        row = measure_pipeline(name, args.data_dir)
        row.update(measure_training(name, args.steps, args.data_dir))
        row["pipeline_over_training"] = round(row["pipeline_examples_per_sec"] / row["training_examples_per_sec"], 1)
        row.update(measure_wait_floor(name, args.data_dir))
        results[name] = row
        print(f"{name:18s} scan {row['examples_scanned']:>6,} examples in {row['scan_seconds']:5.2f} s | "
              f"pipeline {row['pipeline_examples_per_sec']:>9,.0f} ex/s | training "
              f"{row['training_examples_per_sec']:>7,.0f} ex/s | pipeline/training {row['pipeline_over_training']:5.1f}x"
              f" | input wait {100 * row['input_wait_fraction']:.1f}%", flush=True)
        print(f"{'':18s} same step fed one cached batch: wait {100 * row['wait_floor_fraction']:.1f}% (the "
              f"floor) vs {100 * row['wait_with_pipeline_fraction']:.1f}% with the pipeline, interleaved; "
              f"step {row['step_ms_median']:.1f} ms", flush=True)
    if not FASHION.is_dir():
        print(f"(fashion_mnist_cnn skipped: {FASHION} missing; apt-get install dataset-fashion-mnist)")
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
