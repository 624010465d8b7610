"""validate()'s check that the head, the loss and the label encoding fit dataset.task, before
TensorFlow starts.

Plain Keras trains multi-hot labels through a softmax and categorical cross-entropy without a
word: the model learns to spread one unit of probability over the labels, predicts one label at
a time, and an "accuracy" on multi-hot targets means nothing. Here the task decides the head (a
sigmoid per label for multi_label: models.shapes.ModelPlan.activation), and a loss or encoding of
the other task is refused naming the keys to change. The data side (a table with label sets under
single_label) is checked where the table is read (pipelines.sources.table).
"""

from __future__ import annotations

from safetrain.config.schema import MAX_LABELS, Config, Source, TaskKind
from safetrain.core.errors import ConfigError

MULTI_LABEL_LOSS = "binary_crossentropy"


def check_task(cfg: Config) -> None:
    d, t, a = cfg.dataset, cfg.trainer, cfg.augment

    def refuse(message: str, hint: str, key: str) -> None:
        raise ConfigError(message, hint=hint, config_key=key)

    if d.task is TaskKind.single_label:
        if t.loss == MULTI_LABEL_LOSS or d.label_encoding.value == "multi_hot":
            key = "trainer.loss" if t.loss == MULTI_LABEL_LOSS else "dataset.label_encoding"
            refuse(f"{key}={t.loss if key == 'trainer.loss' else 'multi_hot'} treats each class as its own yes/no "
                   f"question, and dataset.task=single_label says each image has exactly one class (a softmax "
                   f"over them).", "set dataset.task=multi_label (images with label sets), or trainer.loss="
                   "sparse_categorical_crossentropy dataset.label_encoding=sparse (one class per image)", key)
        if d.columns.labels:
            refuse(f"dataset.columns.labels={list(d.columns.labels)} gives each image a 0/1 per label, a label set, "
                   f"and dataset.task=single_label gives each image one class.",
                   "set dataset.task=multi_label, or dataset.columns.labels=null with dataset.columns.label=<the class "
                   "column>", "dataset.columns.labels")
        if t.threshold_precision is not None:
            refuse("trainer.threshold_precision sets multi-label thresholds; dataset.task=single_label has none "
                   "(the most probable class wins).", "set trainer.threshold_precision=null",
                   "trainer.threshold_precision")
        return
    fix = f"set trainer.loss={MULTI_LABEL_LOSS} dataset.label_encoding=multi_hot"
    if d.source is not Source.image_table:
        refuse(f"dataset.task=multi_label reads each image's label set from a table, and dataset.source="
               f"{d.source.value} gives one class per image.",
               "set dataset=image_table dataset.table=<a CSV with a path column and a label-set column (cat|dog)>",
               "dataset.task")
    if t.loss != MULTI_LABEL_LOSS:
        refuse(f"trainer.loss={t.loss} is a softmax loss: it makes the labels of an image compete for one unit of "
               f"probability, so the model learns to name one label per image; dataset.task=multi_label needs a "
               f"sigmoid per label and binary cross-entropy.", fix, "trainer.loss")
    if d.label_encoding.value != "multi_hot":
        refuse(f"dataset.label_encoding={d.label_encoding.value} holds one class per image; a label set is a 0/1 "
               f"per label (multi_hot).", fix, "dataset.label_encoding")
    if a.mixup or a.cutmix:
        refuse("augment.mixup and augment.cutmix are not available for multi-label runs yet (mixing two label "
               "sets, and the thresholds tuned on their soft targets, are not checked).",
               "set augment.mixup=0 augment.cutmix=0", "augment.mixup" if a.mixup else "augment.cutmix")
    if d.sampling.value == "balanced":
        refuse("dataset.sampling=balanced draws each image by its one class; a label set has several (or none).",
               "set dataset.sampling=shuffle, and dataset.class_weights=balanced for rare labels (it weighs each "
               "label's positives)", "dataset.sampling")
    if t.serving_target_accuracy is not None:
        refuse("trainer.serving_target_accuracy sets an \"unsure\" threshold on the top class's probability; a "
               "multi-label answer is a set, decided per label by the thresholds tuned on eval.",
               "set trainer.serving_target_accuracy=null, and trainer.threshold_precision=0.9 for surer labels",
               "trainer.serving_target_accuracy")
    if not d.label_separator:
        refuse("dataset.label_separator is empty: the labels of a set could not be told apart.",
               "set dataset.label_separator='|' (or the character your table puts between labels)",
               "dataset.label_separator")
    if d.classes and len(d.classes) > MAX_LABELS:
        refuse(f"dataset.classes lists {len(d.classes)} labels; multi-label runs take at most {MAX_LABELS}.",
               "train on the 63 labels that matter most", "dataset.classes")
    if t.threshold_precision is not None and not 0.0 < t.threshold_precision <= 1.0:
        refuse(f"trainer.threshold_precision={t.threshold_precision} must be in (0, 1].",
               "set trainer.threshold_precision=0.9 (or null: the best eval F1 per label)",
               "trainer.threshold_precision")
