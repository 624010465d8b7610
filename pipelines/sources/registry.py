"""The source registry: `dataset.source` names a registered opener, never an import path.

Each opener takes the dataset config and returns a Source (pipelines.sources.base). A new kind
of source registers here by name; the config schema's `Source` enum lists the names users type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from safetrain.pipelines.sources.base import Source
from safetrain.pipelines.sources.digits import SklearnDigits
from safetrain.pipelines.sources.idx import find_idx_files, idx_source
from safetrain.pipelines.sources.image_folder import image_folder_source, image_table_source
from safetrain.pipelines.sources.tfds_source import open_builder, tfds_source
from safetrain.config.schema import DatasetConfig
from safetrain.core.registry import Registry

SOURCES: Registry[Callable[[DatasetConfig], Source]] = Registry("dataset source", "dataset.source")


def open_source(cfg: DatasetConfig) -> Source:
    return SOURCES.get(cfg.source.value)(cfg)


def _pixel_range(cfg: DatasetConfig) -> tuple[float, float] | None:
    return tuple(cfg.pixel_range) if cfg.pixel_range else None


@SOURCES.register("digits")
def _digits(cfg: DatasetConfig) -> Source:
    builder = open_builder("sklearn_digits", cfg.data_dir, cfg.download, builder_cls=SklearnDigits)
    return tfds_source(builder, "digits", cfg.num_classes)


@SOURCES.register("tfds")
def _tfds(cfg: DatasetConfig) -> Source:
    for folder in cfg.local_idx_dirs:
        if Path(folder).is_dir() and find_idx_files(Path(folder)):
            source = idx_source(cfg.name, folder, cfg.num_classes, _pixel_range(cfg))
            source.notes.insert(0, f"using local IDX files in {folder} instead of TFDS (dataset.local_idx_dirs)")
            return source
    return tfds_source(open_builder(cfg.name, cfg.data_dir, cfg.download), cfg.name, cfg.num_classes)


@SOURCES.register("idx")
def _idx(cfg: DatasetConfig) -> Source:
    return idx_source(cfg.name, cfg.path, cfg.num_classes, _pixel_range(cfg))


@SOURCES.register("image_folder")
def _image_folder(cfg: DatasetConfig) -> Source:
    return image_folder_source(cfg)


@SOURCES.register("image_table")
def _image_table(cfg: DatasetConfig) -> Source:
    return image_table_source(cfg)
