"""A folder of JPEG photos: safetrain's image_folder pipeline vs `keras.utils.image_dataset_from_directory`.

    python scripts/bench_folder.py                      # 3,000 photos (300-500 px) -> 160x160, 2 rounds
    python scripts/bench_folder.py --files 6000 --rounds 3

The photos are generated once (crops of scikit-learn's two sample photos, resized to 300-500 px,
JPEG quality 75-95, in 5 class folders) in a temporary folder. Each measurement is a fresh
process, and the sides alternate within every round (keras, safetrain cold, safetrain rerun;
then safetrain cold, keras, safetrain rerun; ...), so the VM's speed levels hit both alike:

- keras: `image_dataset_from_directory(image_size=(160, 160), batch_size=32)` + `.cache()` +
  `.prefetch()`, as Keras' guide writes it;
- safetrain cold: `build_datasets` on the folder with an empty cache dir (the scan reads,
  checks, hashes and decodes every file once and writes the uint8 shards), then the same batches;
- safetrain rerun: the same, with the cache the cold run left (nothing is decoded).

Per process: seconds from the start of building to the first batch and to the end of epoch 1
(Keras decodes lazily, during epoch 1; safetrain decodes and checks every file before the first
batch, so "epoch 1 done" is where both have done the same work), examples/s of epoch 1 and of
epoch 2 (the pipeline alone, no model), examples/s of a third epoch that trains a small CNN (the
same model on both sides: the pipeline's rate as training sees it), and peak RSS (VmHWM). Prints a table, writes
bench_folder.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SIZE, BATCH, CLASSES = 160, 32, 5


def make_photos(folder: Path, n: int) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    photos = load_sample_images().images
    for i in range(n):
        image = photos[i % 2]
        h, w = rng.integers(200, 420), rng.integers(200, 620)
        y, x = rng.integers(0, image.shape[0] - h + 1), rng.integers(0, image.shape[1] - w + 1)
        side = int(rng.integers(300, 501))
        crop = Image.fromarray(image[y:y + h, x:x + w]).resize((side, int(side * h / w) or 1))
        path = folder / f"class_{i % CLASSES}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path, "JPEG", quality=int(rng.integers(75, 96)))


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(side: str, folder: Path, cache: Path) -> dict:
    from safetrain.core.tf_import import import_tensorflow

    tf = import_tensorflow()
    start = time.perf_counter()
    if side == "keras":
        import keras

        ds = keras.utils.image_dataset_from_directory(str(folder), image_size=(SIZE, SIZE), batch_size=BATCH,
                                                      seed=0, verbose=False)
        ds = ds.cache().prefetch(tf.data.AUTOTUNE)
        epoch = lambda e: ds  # noqa: E731
    else:
        from safetrain.pipelines.build import build_datasets
        from safetrain.config.schema import (ChannelPolicy, DatasetConfig, ImageConfig, ResizePolicy, Source,
                                             SplitsConfig)

        cfg = DatasetConfig(name="photos", source=Source.image_folder, path=str(folder), cache_dir=str(cache),
                            image=ImageConfig(height=SIZE, width=SIZE, channels=3), resize=ResizePolicy.bilinear,
                            channel_policy=ChannelPolicy.convert, splits=SplitsConfig(train="train", eval=None,
                                                                                      test=None))
        data = build_datasets(cfg, BATCH, BATCH, seed=0)
        epoch = data.train_epoch
    rates, first, done = [], None, None
    for e in (1, 2):
        began, count = time.perf_counter(), 0
        for images, _ in epoch(e):
            if first is None:
                first = time.perf_counter() - start
            count += int(images.shape[0])
        rates.append(count / (time.perf_counter() - began))
        done = done or time.perf_counter() - start
    # Epoch 3 feeds a small CNN (the same model and seed on both sides): what training sees when
    # the pipeline and the model share the 2 cores.
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
                              keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(CLASSES)])
    optimizer = keras.optimizers.Adam()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    for images, labels in epoch(3):  # traces, and fills nothing new: both caches are full
        step(images, labels)
        break
    began, count = time.perf_counter(), 0
    for images, labels in epoch(3):
        step(images, labels)
        count += int(images.shape[0])
    trained = count / (time.perf_counter() - began)
    return {"first_batch_s": round(first, 3), "epoch1_done_s": round(done, 3),
            "training_epoch_examples_per_sec": round(trained, 1),
            "epoch1_examples_per_sec": round(rates[0], 1),
            "epoch2_examples_per_sec": round(rates[1], 1), "peak_rss_mb": round(_peak_rss_mb(), 1)}


def _run(side: str, folder: Path, cache: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", side, "--folder", str(folder), "--cache", str(cache)],
                          capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="bench_folder.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.folder, args.cache)))
        return
    work = Path(tempfile.mkdtemp(prefix="safetrain-bench-folder-"))
    folder = work / "photos"
    began = time.perf_counter()
    make_photos(folder, args.files)
    print(f"{args.files} JPEG photos in {folder} ({time.perf_counter() - began:.0f} s to write)", flush=True)
    runs: dict[str, list[dict]] = {"keras": [], "safetrain_cold": [], "safetrain_rerun": []}
    for r in range(args.rounds):
        cache = work / f"cache{r}"
        order = ("keras", "safetrain_cold") if r % 2 == 0 else ("safetrain_cold", "keras")
        for side in (*order, "safetrain_rerun"):
            result = _run("keras" if side == "keras" else "safetrain", folder, cache)
            runs[side].append(result)
            print(f"round {r + 1}/{args.rounds} {side:16s} first batch {result['first_batch_s']:6.2f} s  epoch 1 done "
                  f"{result['epoch1_done_s']:6.2f} s  "
                  f"epoch 1 {result['epoch1_examples_per_sec']:8,.0f} ex/s  epoch 2 "
                  f"{result['epoch2_examples_per_sec']:8,.0f} ex/s  training epoch "
                  f"{result['training_epoch_examples_per_sec']:6,.0f} ex/s  peak RSS {result['peak_rss_mb']:6,.0f} MB",
                  flush=True)
        shutil.rmtree(cache, ignore_errors=True)

    def median(side: str, key: str) -> float:
        return round(statistics.median(r[key] for r in runs[side]), 3)

    keys = ("first_batch_s", "epoch1_done_s", "epoch1_examples_per_sec", "epoch2_examples_per_sec",
            "training_epoch_examples_per_sec", "peak_rss_mb")
    summary = {side: {k: median(side, k) for k in keys} for side in runs}
    k, cold, warm = summary["keras"], summary["safetrain_cold"], summary["safetrain_rerun"]
    ratios = {"first_batch_cold_over_keras": round(cold["first_batch_s"] / k["first_batch_s"], 2),
              "epoch1_done_cold_over_keras": round(cold["epoch1_done_s"] / k["epoch1_done_s"], 2),
              "rerun_setup_over_cold": round(warm["first_batch_s"] / cold["first_batch_s"], 3),
              "epoch2_safetrain_over_keras": round(cold["epoch2_examples_per_sec"] / k["epoch2_examples_per_sec"], 2),
              "training_epoch_safetrain_over_keras": round(cold["training_epoch_examples_per_sec"]
                                                           / k["training_epoch_examples_per_sec"], 2),
              "peak_rss_safetrain_over_keras": round(cold["peak_rss_mb"] / k["peak_rss_mb"], 2)}
    Path(args.out).write_text(json.dumps({"files": args.files, "size": SIZE, "batch": BATCH, "rounds": args.rounds,
                                          "median": summary, "ratios": ratios, "runs": runs}, indent=2) + "\n")
    print(f"\nmedian of {args.rounds}:")
    for side, values in summary.items():
        print(f"  {side:16s} " + "  ".join(f"{key} {value:,}" for key, value in values.items()))
    print("  " + "  ".join(f"{key} {value}" for key, value in ratios.items()) + f"  -> {args.out}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
