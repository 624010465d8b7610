"""dataset=image_table: a CSV/TSV/JSON Lines table of image paths and labels, every bad row named;
groups and clusters of copies kept whole by the splits safetrain carves.

The images are real: copies of the shared hand-drawn shapes (CC BY 4.0, ../shared/data/README.md)
and scikit-learn's sample photos; the tables are written by each test."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from safetrain.config.schema import TableColumns
from safetrain.core.errors import ConfigError, DataError
from safetrain.pipelines.sources.table import BAD_KINDS, read_table


def _drawings(hand_drawn: Path, per_class: int = 12) -> list[Path]:
    files = []
    for folder in sorted(p for p in hand_drawn.iterdir() if p.is_dir()):
        files += sorted(folder.glob("*.png"))[:per_class]
    return files


@pytest.fixture
def flat(tmp_path, hand_drawn) -> tuple[Path, dict[str, str]]:
    """A Kaggle-style flat folder of real drawings ({file stem: class})."""
    root = tmp_path / "images"
    root.mkdir()
    labels = {}
    for path in _drawings(hand_drawn):
        shutil.copy(path, root / path.name)
        labels[path.stem] = path.parent.name
    return root, labels


def _write_csv(path: Path, header: list[str], rows: list[list[str]], bom: bool = False, delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_a_kaggle_csv_of_ids_with_a_bom_reads_every_row(flat):
    root, labels = flat
    table = _write_csv(root / "train.csv", ["id", "label"], [[stem, cls] for stem, cls in labels.items()], bom=True)
    read = read_table(str(table), None, TableColumns(), "png", None)
    assert read.columns == {"path": "id", "label": "label", "group": None, "split": None}
    assert len(read.rows) == len(labels) == read.total and not read.bad
    assert read.extension_added == len(labels) and read.root == root
    assert {r.rel: r.label for r in read.rows} == {f"{stem}.png": cls for stem, cls in labels.items()}


def test_tsv_and_json_lines_with_named_columns(flat):
    root, labels = flat
    items = list(labels.items())
    tsv = _write_csv(root / "labels.tsv", ["File Name", "Shape"], [[f"{s}.png", c] for s, c in items], delimiter="\t")
    got = read_table(str(tsv), None, TableColumns(path="File Name", label="Shape"), None, None)
    assert len(got.rows) == len(items) and not got.bad
    jsonl = root / "export.jsonl"
    jsonl.write_text("\n".join(json.dumps({"image": f"{s}.png", "class": c, "annotator": 3}) for s, c in items) + "\n")
    got = read_table(str(jsonl), None, TableColumns(), None, None)
    assert got.columns["path"] == "image" and got.columns["label"] == "class"
    assert [r.label for r in got.rows] == [c for _, c in items]


def test_a_misnamed_column_is_refused_listing_the_columns_the_file_has(flat):
    root, labels = flat
    table = _write_csv(root / "train.csv", ["image_name", "Label"], [[f"{s}.png", c] for s, c in labels.items()])
    with pytest.raises(ConfigError) as refused:
        read_table(str(table), None, TableColumns(label="label"), None, None)
    assert "dataset.columns.label='label': train.csv has no such column (its columns: 'image_name', 'Label')" \
        in refused.value.message
    assert "dataset.columns.label='Label'" in refused.value.hint
    assert read_table(str(table), None, TableColumns(), None, None).columns["label"] == "Label"  # case folded
    other = _write_csv(root / "other.csv", ["picture", "Label"], [[f"{s}.png", c] for s, c in labels.items()])
    with pytest.raises(ConfigError, match=r"has no path column \(its columns: 'picture', 'Label'\)"):
        read_table(str(other), None, TableColumns(), None, None)


def test_an_empty_table_and_a_missing_table_are_data_errors(tmp_path):
    empty = _write_csv(tmp_path / "train.csv", ["path", "label"], [])
    with pytest.raises(DataError, match="has no rows"):
        read_table(str(empty), None, TableColumns(), None, None)
    with pytest.raises(DataError, match="is not a file"):
        read_table(str(tmp_path / "nope.csv"), None, TableColumns(), None, None)


def test_every_kind_of_bad_row_is_named_with_its_line(flat, tmp_path):
    root, labels = flat
    (stem_a, cls_a), (stem_b, cls_b), (stem_c, cls_c), *rest = labels.items()
    (root / "cats").mkdir()
    shutil.copy(root / f"{stem_c}.png", root / "cats" / "win.png")
    outside = tmp_path / "elsewhere.png"
    shutil.copy(root / f"{stem_a}.png", outside)
    rows = [[stem_a, cls_a],                       # line 2: fine
            [stem_a, cls_a],                       # 3: duplicate_row
            [stem_b, cls_b],                       # 4: conflicting (with 5)
            [stem_b, "rectangle" if cls_b != "rectangle" else "ellipse"],  # 5
            ["no_such_file", cls_a],               # 6: missing_file
            ["../elsewhere", cls_a],               # 7: outside_root
            [str(outside.with_suffix("")), cls_a],  # 8: outside_root (absolute)
            [rest[0][0], ""],                      # 9: empty_label
            [rest[1][0], "hexagon"],               # 10: unknown_label
            ["cats\\win", cls_c],                  # 11: Windows separators: fine
            [rest[2][0], cls_a, "extra"]]          # 12: ragged
    rows += [[s, c] for s, c in rest[3:]]
    table = root / "train.csv"
    with open(table, "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "label"], *rows])
    read = read_table(str(table), None, TableColumns(), "png", sorted(set(labels.values())))
    kinds = {b.line: b.kind for b in read.bad}
    assert kinds == {3: "duplicate_row", 4: "conflicting", 5: "conflicting", 6: "missing_file", 7: "outside_root",
                     8: "outside_root", 9: "empty_label", 10: "unknown_label", 12: "ragged"}
    assert set(kinds.values()) == set(BAD_KINDS) - {"empty_split"}
    assert read.windows_separators == 1 and "cats/win.png" in {r.rel for r in read.rows}
    report = read.report()
    assert report["rows"] == len(rows) and report["used"] == len(rows) - 9
    assert report["bad_rows"]["conflicting"] == 2 and report["bad_rows"]["outside_root"] == 2
    reasons = {b.line: b.reason for b in read.bad}
    assert "hexagon" in reasons[10] and "not in dataset.classes" in reasons[10]
    assert "first on line 2" in reasons[3] and "lines 4, 5" in reasons[4]
    assert "3 fields where the header has 2" in reasons[12]


def _table_config(table: Path, tmp_path: Path, **changes):
    """The image_table dataset config as `dataset=image_table` composes it, with `changes`."""
    from omegaconf import OmegaConf

    from safetrain.config.schema import DatasetConfig, Source

    cfg = OmegaConf.structured(DatasetConfig)
    cfg.merge_with(OmegaConf.load(Path(__file__).resolve().parent.parent / "configs" / "dataset" / "image_folder.yaml"))
    cfg.source, cfg.name, cfg.table = Source.image_table, "table", str(table)
    cfg.cache_dir = str(tmp_path / "cache")
    cfg.image.height = cfg.image.width = 32
    cfg.image.channels = 1
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return OmegaConf.to_object(cfg)


def _keys_per_role(source) -> dict[str, list[str]]:
    out = {}
    for role, split in source.splits.items():
        if split:
            out[role] = [key.decode() for _, _, key in source.read(split).as_numpy_iterator()]
    return out


def test_carved_splits_keep_every_group_whole_and_stay_stratified(tmp_path, hand_drawn):
    """20 groups of 5 to 7 drawings of one class each (a table's group column), two groups mixing
    classes: after the default 80/10/10 carve no group has files in two splits, and every class is in
    every split."""
    from safetrain.pipelines.sources.image_folder import image_table_source

    files = _drawings(hand_drawn, per_class=30)
    rows, group_of = [], {}
    for i, path in enumerate(files):
        group = f"g{(i // 6) % 20}" if i % 17 else f"mixed{i % 2}"
        rel = f"{path.parent.name}/{path.name}"
        rows.append([rel, path.parent.name, group])
        group_of[str(hand_drawn / rel)] = group
    table = _write_csv(tmp_path / "groups.csv", ["path", "label", "group"], rows)
    source = image_table_source(_table_config(table, tmp_path, path=str(hand_drawn)))
    placed = _keys_per_role(source)
    assert sorted(placed) == ["eval", "test", "train"] and sum(map(len, placed.values())) == len(files)
    roles_of_group: dict[str, set[str]] = {}
    for role, keys in placed.items():
        for key in keys:
            roles_of_group.setdefault(group_of[key], set()).add(role)
    assert all(len(roles) == 1 for roles in roles_of_group.values()), roles_of_group
    groups = source.report["groups"]
    assert groups["groups"] == len(set(group_of.values())) and groups["crossing_carved"] == 0
    for role in placed:
        assert len({Path(k).parent.name for k in placed[role]}) == 4, role  # every class in every split


def test_a_split_column_that_cuts_a_group_is_leakage_named_by_the_group(tmp_path, hand_drawn):
    from safetrain.config.schema import OnLeakage
    from safetrain.pipelines.sources.image_folder import image_table_source

    files = _drawings(hand_drawn, per_class=10)
    rows = [[f"{p.parent.name}/{p.name}", p.parent.name, f"person{i % 8}", "test" if i % 5 == 0 else "train"]
            for i, p in enumerate(files)]
    table = _write_csv(tmp_path / "fixed.csv", ["path", "label", "group", "split"], rows)
    source = image_table_source(_table_config(table, tmp_path, path=str(hand_drawn)))
    assert source.splits == {"train": "train[:90%]", "eval": "train[90%:]", "test": "test"}
    leaks = [e for e in source.events if e.kind == "leakage" and "in group" in e.message]
    assert leaks and all(e.split in ("eval", "test") for e in leaks)
    assert "is in group 'person0', which also has" in next(e.message for e in leaks if "'person0'" in e.message)
    assert source.report["groups"]["crossing_fixed"] == 8 and source.report["groups"]["crossing_carved"] == 0
    with pytest.raises(DataError, match=r"8 groups are cut by the splits: 'person0' in (train|eval), test"):
        image_table_source(_table_config(table, tmp_path, path=str(hand_drawn), on_leakage=OnLeakage.error))


def _scenes(root: Path, scenes: int = 20, classes: int = 3) -> None:
    """Scenes cut from scikit-learn's two sample photos, each saved three times as a user's folder
    collects them: a PNG, a JPEG re-encode 4% brighter, a JPEG at quality 70 (class = scene % 3)."""
    import numpy as np
    from PIL import Image, ImageEnhance
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(3)
    for cls in range(classes):
        (root / f"class{cls}").mkdir(parents=True)
    for i in range(scenes * classes):
        photo = photos[i % 2]
        y, x = rng.integers(0, photo.shape[0] - 160), rng.integers(0, photo.shape[1] - 160)
        scene = Image.fromarray(photo[y:y + 160, x:x + 160]).resize((64, 64))
        folder = root / f"class{i % classes}"
        scene.save(folder / f"scene{i:03d}.png")
        ImageEnhance.Brightness(scene).enhance(1.04).save(folder / f"scene{i:03d}_resaved.jpg", quality=90)
        scene.save(folder / f"scene{i:03d}_small.jpg", quality=70)


@pytest.mark.e2e
def test_the_carve_keeps_clusters_of_re_saved_copies_in_one_split(tmp_path):
    """A folder of 60 scenes saved three ways each: the copies are found (those of a few flat,
    low-contrast crops score under the confirmation threshold: precision first), and the default
    80/10/10 carve puts every cluster found in one split (no leakage to report)."""
    from omegaconf import OmegaConf

    from safetrain.config.schema import DatasetConfig, Source
    from safetrain.pipelines.sources.image_folder import image_folder_source

    root = tmp_path / "scenes"
    _scenes(root)
    cfg = OmegaConf.structured(DatasetConfig)
    cfg.merge_with(OmegaConf.load(Path(__file__).resolve().parent.parent / "configs" / "dataset" / "image_folder.yaml"))
    cfg.source, cfg.path, cfg.cache_dir = Source.image_folder, str(root), str(tmp_path / "cache")
    source = image_folder_source(OmegaConf.to_object(cfg))
    dup, groups = source.report["duplicates"], source.report["groups"]
    assert dup["exact"] + dup["near"] >= 120  # two copies of each of 60 scenes, at least
    assert groups["copy_clusters"] >= 55 and groups["largest"] >= 3
    assert dup["cross_split"] == 0 and groups["crossing_carved"] == 0
    role_of = {key: role for role, keys in _keys_per_role(source).items() for key in keys}
    pairs = [(e.key, e.other) for e in source.events if e.kind == "duplicate"]
    assert len(pairs) == dup["exact"] + dup["near"]  # every pair found is a duplicate within one split
    assert all(role_of[a] == role_of[b] for a, b in pairs)
    assert not [e for e in source.events if e.kind == "leakage"]


def test_carving_units_is_the_plain_carve_for_single_files_and_gives_every_split_a_group():
    from safetrain.pipelines.sources.folder_splits import carve, carve_units

    bounds = [(0, 80), (80, 90), (90, 100)]
    for n in (3, 5, 10, 31, 100):
        parts = carve_units([1] * n, bounds)
        assert [(parts.index(p), len(parts) - parts[::-1].index(p)) for p in range(3)] == carve(n, bounds)
    parts = carve_units([6, 6, 6, 6, 6], bounds)  # 24/3/3 files by position would leave test no group
    assert sorted(set(parts)) == [0, 1, 2] and parts.count(0) == 3
    assert carve_units([10, 1], bounds) == [0, 2]  # fewer groups than splits: no fix-up, eval gets none


@pytest.mark.e2e
def test_a_kaggle_folder_with_a_messy_csv_one_dry_run_names_every_problem_then_train_and_predict(
        flat, run_main, tmp_path):
    """As a new user would: a flat folder of real drawings, `train.csv` (id,label,group) with a
    missing file, a repeated row, a file listed under two labels, a label outside dataset.classes.
    One dry run names every kind of problem (exit 3); with on_bad_example=skip it trains, no group
    crosses a carved split, and predict classifies a file with the exported model."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    root, labels = flat
    items = list(labels.items())
    rows = [[stem, cls, f"person{i // 3}"] for i, (stem, cls) in enumerate(items)]
    rows += [["missing_0001", "ellipse", "person99"], [items[0][0], items[0][1], "person0"],
             [items[1][0], "triangle" if items[1][1] != "triangle" else "other", "person0"],
             [items[5][0] + "_x", "hexagon", "person98"]]
    shutil.copy(root / f"{items[5][0]}.png", root / f"{items[5][0]}_x.png")
    _write_csv(root / "train.csv", ["id", "label", "group"], rows)
    args = ["dataset=image_table", f"dataset.table={root / 'train.csv'}", "dataset.extension=png",
            "dataset.classes=[ellipse,other,rectangle,triangle]", "dataset.image.height=32", "dataset.image.width=32",
            "dataset.image.channels=1", "trainer.batch_size=8", "trainer.epochs=1", "hardware.precision_trial=false"]
    dry = run_main(*args, "dry_run=true", name="dry")
    assert dry.code == 3, dry.err
    report = dry.report()
    assert report["error"]["config_key"] == "dataset.on_bad_example"
    for kind in ("no such file", "listed again with the same label", "listed with 2 labels", "'hexagon'"):
        assert kind in report["error"]["message"], kind
    assert report["data"]["table"]["bad_rows"] == {
        "missing_file": 1, "outside_root": 0, "empty_label": 0, "unknown_label": 1, "empty_split": 0,
        "conflicting": 2, "duplicate_row": 1, "ragged": 0}
    assert {e["example"] for e in dry.errors() if e["kind"] == "bad_example"} == {
        f"train.csv:{n}" for n in (2 + len(items), 3 + len(items), 4 + len(items), 5 + len(items), 3)}

    trained = run_main(*args, "dataset.on_bad_example=skip", "trainer.export=true", name="trained")
    assert trained.code == 0, trained.err
    report = trained.report()
    assert report["data"]["groups"]["crossing_carved"] == 0 and report["data"]["groups"]["groups"] >= 16
    assert report["data"]["selected"]["train"] + report["data"]["selected"]["eval"] + \
        report["data"]["selected"]["test"] == len(items) - 1  # the file listed under two labels is out
    assert isinstance(report["metrics"]["test_macro_f1"], float)
    picture = root / f"{items[7][0]}.png"
    proc = subprocess.run([sys.executable, "-m", "safetrain.predict", f"run_dir={trained.run_dir}", str(picture)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"{picture}: ") and "Traceback" not in proc.stderr


def test_a_table_with_no_usable_row_says_what_its_rows_are(flat, tmp_path):
    from safetrain.pipelines.sources.image_folder import image_table_source

    root, labels = flat
    table = _write_csv(tmp_path / "elsewhere.csv", ["id", "label"], [[s, c] for s, c in labels.items()])
    with pytest.raises(DataError) as refused:  # the paths are relative to root, and dataset.path is not set
        image_table_source(_table_config(table, tmp_path, extension="png"))
    assert f"none of its {len(labels)} rows is usable (missing_file {len(labels)})" in refused.value.message
    assert refused.value.config_key == "dataset.path"
