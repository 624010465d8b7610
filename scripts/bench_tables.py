"""Tables of images (dataset=image_table) against the same files as a folder, and copies kept whole.

    python scripts/bench_tables.py                      # all three, prints a table per part
    python scripts/bench_tables.py same --epochs 3      # one part
    python scripts/bench_tables.py speed --rows 100000

- `same`: the 545 shared hand-drawn shapes (../shared/data/hand_drawn_shapes, CC BY 4.0) as their
  class folders and as a flat folder of the same files with a `train.csv`, trained the same way
  (`trainer.deterministic=true`, a fixed number of epochs): the split sizes, the weights' SHA-256
  and the test accuracy, side by side. Goal: the same to the last digit.
- `speed`: a generated folder of N small PNGs (10 classes), scanned as a folder and as a table of
  the same files (each in a fresh process with an empty cache: every file read, checked, decoded,
  hashed, cached; the table parsed and every row checked). Files per second, side by side.
- `copies`: scenes cut from scikit-learn's sample photos, each saved three ways (PNG, a JPEG 4%
  brighter, a JPEG at quality 70), 3 classes. Copy pairs across the default 80/10/10 carve with
  the file-by-file carve this project used before (each class's files in the order of their path's
  hash) and with the carve that keeps copy clusters whole. Goal: 0.

Each run prints the CPU model; the figures in docs/your-data.md name theirs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "hand_drawn_shapes"
sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _train(work: Path, name: str, dataset: list[str], epochs: int) -> dict:
    run_dir = work / name
    command = [sys.executable, "-m", "safetrain", *dataset, "dataset.image.height=32", "dataset.image.width=32",
               "dataset.image.channels=1", "dataset.resize=bilinear", "dataset.channel_policy=convert",
               f"dataset.cache_dir={work / 'cache'}", f"dataset.data_dir={work / 'tfds'}", "model=cnn_small",
               f"trainer.epochs={epochs}", "trainer.batch_size=32", "trainer.deterministic=true",
               "trainer.export=false", "hardware.precision=float32", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return json.loads((run_dir / "report.json").read_text())


def same(work: Path, epochs: int) -> None:
    flat = work / "flat"
    flat.mkdir()
    rows = []
    for folder in sorted(p for p in SHARED.iterdir() if p.is_dir()):
        for image in sorted(folder.glob("*.png")):
            shutil.copy2(image, flat / image.name)
            rows.append([image.name, folder.name])
    with open(flat / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["filename", "label"], *rows])
    folder = _train(work, "folder", ["dataset=image_folder", f"dataset.path={SHARED}"], epochs)
    table = _train(work, "table", ["dataset=image_table", f"dataset.table={flat / 'train.csv'}"], epochs)
    print(f"\nthe 545 shared drawings, {epochs} epochs, trainer.deterministic=true ({cpu_model()}):\n")
    print("| read as | splits (train/eval/test) | weights SHA-256 | test accuracy |")
    print("|---|---|---|---|")
    for name, report in (("class folders (`dataset=image_folder`)", folder),
                         ("a flat folder + `train.csv` (`dataset=image_table`)", table)):
        counts = report["data"]["selected"]
        print(f"| {name} | {counts['train']}/{counts['eval']}/{counts['test']} | "
              f"{report['model']['weights_sha256'][:16]}… | {report['metrics']['test_accuracy']!r} |")
    equal = (folder["model"]["weights_sha256"] == table["model"]["weights_sha256"]
             and folder["metrics"]["test_accuracy"] == table["metrics"]["test_accuracy"])
    print(f"\nthe same weights and test accuracy: {'yes' if equal else 'NO'}")


def _png_folder(root: Path, n: int) -> list[list[str]]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        cls = f"class{i % 10}"
        (root / cls).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).save(root / cls / f"{i:06d}.png")
        rows.append([f"{cls}/{i:06d}.png", cls])
    return rows


def _scan_seconds(kind: str, root: Path, table: Path, cache: Path) -> tuple[float, int]:
    code = f"""
import time
from omegaconf import OmegaConf
from safetrain.config.schema import DatasetConfig, Source
from safetrain.pipelines.sources.image_folder import image_folder_source, image_table_source
cfg = OmegaConf.structured(DatasetConfig)
cfg.merge_with(OmegaConf.load({str(ROOT / 'configs' / 'dataset' / 'image_folder.yaml')!r}))
cfg.image.height = cfg.image.width = 32
cfg.cache_dir = {str(cache)!r}
cfg.near_duplicate_radius = None
if {kind!r} == "folder":
    cfg.source, cfg.path = Source.image_folder, {str(root)!r}
else:
    cfg.source, cfg.table, cfg.path = Source.image_table, {str(table)!r}, {str(root)!r}
started = time.perf_counter()
source = (image_folder_source if {kind!r} == "folder" else image_table_source)(OmegaConf.to_object(cfg))
print(time.perf_counter() - started, source.report["scan"]["scanned"])
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{kind} scan failed:\n{done.stderr[-3000:]}")
    seconds, scanned = done.stdout.split()[-2:]
    return float(seconds), int(scanned)


def speed(work: Path, rows: int, rounds: int) -> None:
    root = work / "pngs"
    started = time.perf_counter()
    listed = _png_folder(root, rows)
    table = root.parent / "pngs.csv"
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label"], *listed])
    print(f"generated {rows:,} PNGs in {time.perf_counter() - started:.0f} s")
    results: dict[str, list[float]] = {"folder": [], "table": []}
    for r in range(rounds):
        for kind in (("folder", "table") if r % 2 == 0 else ("table", "folder")):
            cache = work / f"cache-{kind}-{r}"
            seconds, scanned = _scan_seconds(kind, root, table, cache)
            assert scanned == rows, (kind, scanned)
            results[kind].append(seconds)
            shutil.rmtree(cache)
    print(f"\nscan of {rows:,} files, empty cache, duplicates: exact only ({cpu_model()}; {rounds} interleaved "
          f"rounds, median):\n")
    print("| read as | seconds | files/s | per file |")
    print("|---|---:|---:|---:|")
    medians = {kind: sorted(v)[len(v) // 2] for kind, v in results.items()}
    for kind, label in (("folder", "class folders"), ("table", "the same files listed in a CSV")):
        s = medians[kind]
        print(f"| {label} | {s:.1f} | {rows / s:,.0f} | {1e6 * s / rows:.0f} µs |")
    print(f"\ntable / folder: {medians['table'] / medians['folder']:.2f}x the time")


def copies(work: Path, scenes: int) -> None:
    from omegaconf import OmegaConf

    from safetrain.config.schema import DatasetConfig, Source
    from safetrain.pipelines.sources.folder_splits import carve
    from safetrain.pipelines.sources.image_folder import image_folder_source

    sys.path.insert(0, str(ROOT / "tests"))
    from test_tables import _keys_per_role, _scenes

    root = work / "scenes"
    _scenes(root, scenes=scenes)
    cfg = OmegaConf.structured(DatasetConfig)
    cfg.merge_with(OmegaConf.load(ROOT / "configs" / "dataset" / "image_folder.yaml"))
    cfg.source, cfg.path, cfg.cache_dir = Source.image_folder, str(root), str(work / "cache-scenes")
    source = image_folder_source(OmegaConf.to_object(cfg))
    pairs = [(e.key, e.other) for e in source.events if e.kind in ("duplicate", "leakage")]
    now = {key: role for role, keys in _keys_per_role(source).items() for key in keys}
    # The carve before: each class's files in the order of their path's hash, 80/10/10 by position.
    before = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir(), key=lambda p: hashlib.sha256(str(p.relative_to(root)).encode()).digest())
        for (lo, hi), role in zip(carve(len(files), [(0, 80), (80, 90), (90, 100)]), ("train", "eval", "test")):
            for p in files[lo:hi]:
                before[str(p)] = role
    cross = lambda placed: sum(placed[a] != placed[b] for a, b in pairs)  # noqa: E731
    dup = source.report["duplicates"]
    print(f"\n{3 * scenes * 3} files: {3 * scenes} scenes x 3 saves, 3 classes ({cpu_model()}); copy pairs found: "
          f"{len(pairs)} ({dup['exact']} exact, {dup['near']} near); clusters "
          f"{source.report['groups']['copy_clusters']}:\n")
    print("| carve (80/10/10 per class) | copy pairs across splits |")
    print("|---|---:|")
    print(f"| file by file (before) | {cross(before)} |")
    print(f"| copy clusters kept whole (now) | {cross(now)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", default=["same", "speed", "copies"], choices=["same", "speed", "copies"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=60, help="scenes per class (x3 saves)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-tables-") as tmp:
        work = Path(tmp)
        if "same" in args.parts:
            same(work, args.epochs)
        if "copies" in args.parts:
            copies(work, args.scenes)
        if "speed" in args.parts:
            speed(work, args.rows, args.rounds)


if __name__ == "__main__":
    main()
