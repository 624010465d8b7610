"""The image-folder scan and its duplicate search as a folder grows: per-file cost should stay flat.

    python scripts/bench_duplicates.py                        # 20,000, 100,000 and 200,000 files
    python scripts/bench_duplicates.py --sizes 20000 --all-pairs

Each size gets a generated folder of small PNG files (32x32, 10 class folders: random texture
at three scales, 4, 8 and 16 cells a side, so every low frequency the 256-bit pHash reads carries
signal, as in photos; a smooth image whose only content is one 4x4 field has near-zero DCT
coefficients whose hash bits JPEG noise flips) with 0.5% planted near copies (a JPEG re-encode,
quality 90, of another file of the folder) and 0.1% exact copies. Per size, in a fresh process:

- scan: `image_folder_source` on an empty cache (read, check, decode, hash every file, write the
  uint8 shards, find duplicates) — files/s;
- duplicate search: the calibration and the candidate search (pipelines.sources.duplicates) on
  the folder's 256-bit hashes, timed alone, with its peak memory (tracemalloc: NumPy's arrays
  included); the candidates are then confirmed on the pixels (seconds from the run's report);
- `--all-pairs`: the same search comparing every pair, for the ratio (quadratic: 20,000 only).

Prints a table (with the CPU model) and writes bench_duplicates.json.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CLASSES = 10


def texture(rng):
    """32x32 RGB: random fields of 4, 8 and 16 cells a side, upsampled and summed."""
    import numpy as np
    from PIL import Image

    out = np.zeros((32, 32, 3))
    for cells, weight in ((4, 1.0), (8, 0.6), (16, 0.35)):
        field = rng.integers(0, 256, (cells, cells, 3)).astype(np.uint8)
        out += weight * np.asarray(Image.fromarray(field).resize((32, 32), Image.BICUBIC), float)
    return Image.fromarray(np.clip(out / 1.95, 0, 255).astype(np.uint8))


def make_folder(folder: Path, n: int) -> tuple[int, int]:
    """n files: textures, then near (JPEG) and exact copies of some of them."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(n)
    near, exact = n // 200, n // 1000
    originals = n - near - exact
    for i in range(originals):
        path = folder / f"class_{i % CLASSES}" / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        texture(rng).save(path, compress_level=1)
    picked = rng.choice(originals, near + exact, replace=False)
    for j, i in enumerate(picked.tolist()):
        source = folder / f"class_{i % CLASSES}" / f"{i:06d}.png"
        if j < near:
            buffer = io.BytesIO()
            Image.open(source).convert("RGB").save(buffer, "JPEG", quality=90)
            (source.parent / f"near_{j:06d}.jpg").write_bytes(buffer.getvalue())
        else:
            (source.parent / f"copy_{j:06d}.png").write_bytes(source.read_bytes())
    return near, exact


def measure(folder: Path, cache: Path, all_pairs: bool) -> dict:
    """One size, in this process."""
    import tracemalloc

    from safetrain.config.schema import (ChannelPolicy, DatasetConfig, ImageConfig, ResizePolicy, Source,
                                         SplitsConfig)
    from safetrain.pipelines.sources import duplicates
    from safetrain.pipelines.sources.image_folder import image_folder_source

    cfg = DatasetConfig(name="bench", source=Source.image_folder, path=str(folder), cache_dir=str(cache),
                        splits=SplitsConfig(train="train[:90%]", eval="train[90%:]", test=None),
                        image=ImageConfig(height=32, width=32, channels=3), resize=ResizePolicy.bilinear,
                        channel_policy=ChannelPolicy.convert)
    started = time.perf_counter()
    source = image_folder_source(cfg)
    scan_s = time.perf_counter() - started
    entries = json.loads(next(cache.rglob("scan.json")).read_text())["files"]
    rels = sorted(entries)
    hashes = duplicates.pack([entries[r]["phash"] for r in rels])
    sha = [entries[r]["sha256"] for r in rels]
    labels = [r.split("/")[0] for r in rels]
    tracemalloc.start()
    started = time.perf_counter()
    rule = duplicates.calibrate(hashes, labels, "auto")
    pairs = duplicates.find_pairs(sha, hashes, rule)
    search_s = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out = {"files": len(rels), "scan_s": round(scan_s, 2), "scan_files_per_s": round(len(rels) / scan_s),
           "search_s": round(search_s, 3), "search_us_per_file": round(1e6 * search_s / len(rels), 1),
           "search_peak_mb": round(peak / 2**20, 1), "radius": rule.radius, "search": rule.search,
           "candidates": sum(not p.exact for p in pairs), "exact_pairs": sum(p.exact for p in pairs),
           "confirmed_near": source.report["duplicates"]["near"]}
    if all_pairs:
        started = time.perf_counter()
        every = duplicates.find_pairs(sha, hashes, duplicates.Rule(rule.radius, "all"), exact_limit=10**9)
        out["all_pairs_s"] = round(time.perf_counter() - started, 3)
        out["lsh_found_all"] = {(p.a, p.b) for p in every} == {(p.a, p.b) for p in pairs}
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 200_000])
    parser.add_argument("--all-pairs", action="store_true", help="also time the all-pairs search (quadratic)")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # internal: FOLDER CACHE ALL_PAIRS
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(Path(args.one[0]), Path(args.one[1]), args.one[2] == "1")))
        return
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-dup-") as tmp:
            folder, cache = Path(tmp) / "images", Path(tmp) / "cache"
            started = time.perf_counter()
            near, exact = make_folder(folder, n)
            print(f"{n:,} files generated in {time.perf_counter() - started:.0f} s", flush=True)
            proc = subprocess.run([sys.executable, __file__, "--one", str(folder), str(cache),
                                   "1" if args.all_pairs and n <= 20_000 else "0"],
                                  capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row.update(planted_near=near, planted_exact=exact)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nCPU: {cpu_model()} ({platform.machine()})")
    print("| files | scan files/s | duplicate search s | µs/file | peak MB | candidates | confirmed near "
          "(planted) | exact pairs (planted) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['files']:,} | {r['scan_files_per_s']:,} | {r['search_s']} | {r['search_us_per_file']} | "
              f"{r['search_peak_mb']} | {r['candidates']:,} | {r['confirmed_near']:,} ({r['planted_near']:,}) | "
              f"{r['exact_pairs']:,} ({r['planted_exact']:,}) |")
    for r in rows:
        if "all_pairs_s" in r:
            print(f"all pairs at {r['files']:,} files: {r['all_pairs_s']} s vs LSH {r['search_s']} s "
                  f"(same pairs: {r['lsh_found_all']})")
    (ROOT / "bench_duplicates.json").write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
