"""What augmentation costs: milliseconds per training batch for each augment preset, interleaved.

    python scripts/bench_augment.py                    # Fashion-MNIST (Debian's files), batch 128
    python scripts/bench_augment.py --batches 60 --repeats 5

For each preset (none, light, standard, strong) the training pipeline of epoch 1 is read for
`--batches` batches on its own (no model), in rounds that alternate the order, so the VM's speed
levels hit every preset alike; the medians are printed and written to bench_augment.json next to
the median train step of the fashion experiment's model (cnn_small, same batch, same precision
policy as `auto`), measured in the same process. The pipeline runs beside training (prefetch), so
a preset costs wall time only when its ms/batch approaches the step's, or when the two cores are
needed by the step itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safetrain.core.tf_import import import_tensorflow  # noqa: E402

tf = import_tensorflow()

import keras  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from safetrain.models.parse import parse_layers  # noqa: E402
from safetrain.models.presets import preset_layers  # noqa: E402
from safetrain.models.shapes import infer  # noqa: E402
from safetrain.pipelines.build import build_datasets  # noqa: E402
from safetrain.config import config_dir  # noqa: E402
from safetrain.config.schema import AugmentConfig, DatasetConfig, OptimizerConfig, Precision, TrainerConfig  # noqa: E402
from safetrain.train.hardware import choose_precision, detect_devices  # noqa: E402
from safetrain.train.task import build_task  # noqa: E402

PRESETS = ("none", "light", "standard", "strong")


def _config(cls, path: Path):
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.load(path)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=40, help="batches read per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="bench_augment.json")
    args = parser.parse_args()

    configs = Path(config_dir())
    dataset = _config(DatasetConfig, configs / "dataset" / "fashion_mnist.yaml")
    dataset.download = False
    data = {name: build_datasets(dataset, args.batch_size, args.batch_size, seed=0,
                                 augment=_config(AugmentConfig, configs / "augment" / f"{name}.yaml"))
            for name in PRESETS}

    def pipeline_ms(name: str) -> float:
        ds = data[name].train_epoch(1).take(args.batches)
        start = time.perf_counter()
        for _ in ds:
            pass
        return 1000 * (time.perf_counter() - start) / args.batches

    for name in PRESETS:  # warm up: caches filled, functions traced
        pipeline_ms(name)
    samples = {name: [] for name in PRESETS}
    for r in range(args.repeats):
        for name in (PRESETS if r % 2 == 0 else PRESETS[::-1]):
            samples[name].append(pipeline_ms(name))
            print(f"round {r + 1}/{args.repeats}  {name:9s} {samples[name][-1]:7.2f} ms/batch", flush=True)

    policy, _ = choose_precision(detect_devices(), Precision.auto)  # what `auto` trains in on this machine
    keras.mixed_precision.set_global_policy(policy)
    plain = data["none"]
    plan = infer(parse_layers(preset_layers("cnn_small")), plain.spec.shape, plain.source.num_classes)
    steps = build_task(plan, optimizer=OptimizerConfig(), trainer=TrainerConfig(), strategy=tf.distribute.get_strategy(),
                       steps_per_epoch=args.batches, policy=policy).steps()
    batch = next(iter(plain.train_epoch(1)))
    fixed = iter(tf.data.Dataset.from_tensors(batch).repeat())
    for _ in range(5):
        steps.train(fixed)
    step_s = []
    for _ in range(args.batches):
        start = time.perf_counter()
        steps.train(fixed)["loss_sum"].numpy()
        step_s.append(time.perf_counter() - start)
    step_ms = 1000 * statistics.median(step_s)
    keras.mixed_precision.set_global_policy("float32")

    result = {"data": "Fashion-MNIST train[:90%] (Debian's IDX files), epoch 1", "batch_size": args.batch_size,
              "pipeline_ms_per_batch": {name: round(statistics.median(v), 2) for name, v in samples.items()},
              "train_step_ms_cnn_small": round(step_ms, 2), "precision": policy,
              "presets": {name: data[name].augmentation for name in PRESETS}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\ntrain step (cnn_small, {policy}): {step_ms:.2f} ms")
    for name in PRESETS:
        ms = result["pipeline_ms_per_batch"][name]
        print(f"{name:9s} {ms:7.2f} ms/batch  ({ms / step_ms:4.2f}x a train step)  {data[name].augmentation}")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
