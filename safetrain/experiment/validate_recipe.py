"""validate()'s checks of the training recipe: learning-rate schedule, weight decay, label
smoothing, EMA, the LR finder, the best-epoch selection, augmentation, class weights, sampling.
TensorFlow-free, like the rest of validation."""

from __future__ import annotations

from safetrain.config.schema import ClassWeights, Config, Mode, Schedule
from safetrain.train.metrics import METRICS, MULTI, best_metric, direction, metric_names, task_of
from safetrain.core.errors import ConfigError
from safetrain.train.budget import MIN_SECONDS, parse_budget
from safetrain.train.cluster import current_task


def check_recipe(cfg: Config) -> None:
    """Learning-rate schedule, weight decay and label smoothing: ranges and combinations."""
    o, t = cfg.optimizer, cfg.trainer

    def refuse(message: str, hint: str, key: str) -> None:
        raise ConfigError(message, hint=hint, config_key=key)

    if o.weight_decay < 0:
        refuse(f"optimizer.weight_decay={o.weight_decay} must be >= 0.", "set optimizer.weight_decay=0.05 (or 0: off)",
               "optimizer.weight_decay")
    if not 0.0 <= t.label_smoothing < 1.0:
        refuse(f"trainer.label_smoothing={t.label_smoothing} must be in [0, 1).", "set trainer.label_smoothing=0.1",
               "trainer.label_smoothing")
    if o.warmup_epochs < 0:
        refuse(f"optimizer.warmup_epochs={o.warmup_epochs} must be >= 0.", "set optimizer.warmup_epochs=1",
               "optimizer.warmup_epochs")
    if o.schedule is Schedule.one_cycle and o.warmup_epochs:
        refuse("optimizer.schedule=one_cycle warms up by itself (from learning_rate/25 over the first 30% of "
               f"the steps); optimizer.warmup_epochs={o.warmup_epochs} would add a second warmup.",
               "set optimizer.warmup_epochs=0, or another optimizer.schedule", "optimizer.warmup_epochs")
    if not 0.0 <= o.min_learning_rate < o.learning_rate:
        refuse(f"optimizer.min_learning_rate={o.min_learning_rate} must be >= 0 and below "
               f"optimizer.learning_rate={o.learning_rate}: it is where the decay ends.",
               f"set optimizer.min_learning_rate={o.learning_rate / 100:g}", "optimizer.min_learning_rate")
    if o.schedule is not Schedule.step and o.milestones:
        refuse(f"optimizer.milestones={list(o.milestones)} only applies to optimizer.schedule=step, not "
               f"{o.schedule.value}.", "set optimizer.schedule=step, or optimizer.milestones=[]",
               "optimizer.milestones")
    if o.schedule is Schedule.step:
        milestones = list(o.milestones)
        if not milestones:
            refuse("optimizer.schedule=step needs optimizer.milestones: the epochs at which the rate drops.",
                   "set optimizer.milestones=[10,20] (with optimizer.decay_factor=0.1)", "optimizer.milestones")
        if milestones != sorted(set(milestones)) or milestones[0] <= o.warmup_epochs or milestones[-1] >= t.epochs:
            refuse(f"optimizer.milestones={milestones} must increase and lie after the warmup "
                   f"(optimizer.warmup_epochs={o.warmup_epochs}) and before the end (trainer.epochs={t.epochs}).",
                   f"set optimizer.milestones=[{max(1, t.epochs // 2)}]", "optimizer.milestones")
    if o.schedule in (Schedule.step, Schedule.plateau) and not 0.0 < o.decay_factor < 1.0:
        refuse(f"optimizer.decay_factor={o.decay_factor} must be in (0, 1): the rate is multiplied by it.",
               "set optimizer.decay_factor=0.1", "optimizer.decay_factor")
    if o.schedule is Schedule.plateau:
        if not cfg.dataset.splits.eval:
            refuse("optimizer.schedule=plateau lowers the rate when the eval split stops improving, and "
                   "dataset.splits.eval is null (the test split is never used to decide anything).",
                   "set dataset.splits.eval (e.g. 'train[90%:]' with dataset.splits.train='train[:90%]'), or "
                   "another optimizer.schedule", "dataset.splits.eval")
        if o.plateau_patience < 1:
            refuse(f"optimizer.plateau_patience={o.plateau_patience} must be >= 1.",
                   "set optimizer.plateau_patience=2", "optimizer.plateau_patience")

    if t.ema is not None and not 0.0 < t.ema < 1.0:
        refuse(f"trainer.ema={t.ema} must be in (0, 1): the decay of the weights' moving average.",
               "set trainer.ema=0.999 (or null: off)", "trainer.ema")
    _check_lr_find(cfg, refuse)
    _check_budget(cfg, refuse)
    _check_metrics(cfg, refuse)
    _check_selection(cfg, refuse)
    _check_augment(cfg, refuse)
    _check_class_weights(cfg, refuse)
    _check_sampling(cfg, refuse)


def _check_budget(cfg: Config, refuse) -> None:
    """trainer.time_budget: a duration, and no setting it cannot honour."""
    t, o = cfg.trainer, cfg.optimizer
    if t.time_budget is None:
        return
    key = "trainer.time_budget"
    try:
        seconds = parse_budget(t.time_budget)
    except ValueError as err:
        refuse(f"{key}={t.time_budget!r}: {err}.", "set trainer.time_budget=15m (or null: off)", key)
    if seconds < MIN_SECONDS:
        refuse(f"{key}={t.time_budget!r} is {seconds:g} s: under {MIN_SECONDS:g} s nothing can be measured and "
               f"planned.", "set trainer.time_budget=90s or more", key)
    if o.schedule is Schedule.step:
        refuse(f"{key} plans the run's steps, and optimizer.schedule=step drops the rate at fixed epochs "
               f"(optimizer.milestones={list(o.milestones)}), which the planned run may never reach.",
               "set optimizer.schedule=cosine (or linear, one_cycle, plateau, constant) with a time budget", key)
    if current_task() is not None:
        refuse(f"{key} cannot be used in a multi-worker run (TF_CONFIG): each worker would measure and plan "
               f"its own number of steps.", "set trainer.epochs (or trainer.max_steps) instead", key)
    if t.lr_find:
        refuse(f"{key} plans a training run; trainer.lr_find=true runs the LR finder instead.",
               "run the LR finder without trainer.time_budget", key)


def _check_lr_find(cfg: Config, refuse) -> None:
    """The range test needs one optimizer whose rate it sets each step, in one process."""
    t, b = cfg.trainer, cfg.model.backbone
    if not t.lr_find:
        return
    if t.lr_find_steps < 10:
        refuse(f"trainer.lr_find_steps={t.lr_find_steps}: a range test needs at least 10 steps to show a curve.",
               "set trainer.lr_find_steps=100", "trainer.lr_find_steps")
    if not 0 < t.lr_find_start < t.lr_find_end:
        refuse(f"trainer.lr_find_start={t.lr_find_start} and trainer.lr_find_end={t.lr_find_end} must be "
               f"0 < start < end.", "set trainer.lr_find_start=1e-7 trainer.lr_find_end=10", "trainer.lr_find_start")
    if cfg.optimizer.schedule is Schedule.plateau:
        refuse("trainer.lr_find cannot honour optimizer.schedule=plateau: plateau lowers the rate after epochs "
               "without an eval gain, and a range test has neither epochs nor evaluation, so its suggestion would "
               "not say where plateau should start or how it would move.",
               "run the range test with optimizer.schedule=constant, then train with the suggested "
               "optimizer.learning_rate and optimizer.schedule=plateau", "optimizer.schedule")
    if b.name is not None and (b.trainable or b.fine_tune_from_epoch is not None):
        refuse("trainer.lr_find cannot honour a backbone that trains: it has its own optimizer and rate "
               "(model.backbone.fine_tune_learning_rate), and one range test cannot set two rates.",
               "run it with the backbone frozen (model.backbone.trainable=false model.backbone.fine_tune_from_epoch="
               "null) to choose optimizer.learning_rate for the head", "model.backbone.trainable")
    if current_task() is not None:
        refuse("trainer.lr_find runs in one process; this one is part of a multi-worker cluster (TF_CONFIG).",
               "unset TF_CONFIG and run it on one machine", "trainer.lr_find")


def best_mode(metric: str, mode: Mode | None, config_key: str = "trainer.early_stopping.metric") -> Mode:
    """The direction in which `metric` improves (trainer.early_stopping.mode, or the metric's own)."""
    return mode or (Mode.max if direction(metric, config_key) else Mode.min)


def _check_metrics(cfg: Config, refuse) -> None:
    """Every metric name is a registered one (the error lists them) that means something for
    dataset.task (accuracy has no meaning for label sets; mAP none for one class per image)."""
    task = task_of(cfg.dataset)
    named = [(f"trainer.metrics[{i}]", name) for i, name in enumerate(metric_names(cfg.trainer, task))]
    named += [("trainer.early_stopping.metric", best_metric(cfg.trainer, task)),
              ("optimizer.plateau_metric", cfg.optimizer.plateau_metric)]
    for key, name in named:
        if task not in METRICS.get(name, key).tasks:
            fitting = [n for n in METRICS.names() if task in METRICS.get(n).tasks]
            why = ("a label set is not one class: accuracy and top-k pick one class per image"
                   if task == MULTI else "it scores label sets (dataset.task=multi_label)")
            refuse(f"{key}={name} has no meaning for dataset.task={task}: {why}.",
                   f"use one of {', '.join(fitting)} (null: the task's defaults)", key)


def _check_selection(cfg: Config, refuse) -> None:
    """Early stopping and the best checkpoint choose on the eval split, never on test."""
    t, eval_split = cfg.trainer, cfg.dataset.splits.eval
    stopping = t.early_stopping
    stops = stopping is not None and stopping.patience is not None
    for key, wanted in (("trainer.early_stopping", stops), ("trainer.keep_best", t.keep_best)):
        if wanted and not eval_split:
            refuse(f"{key} chooses on the eval split, and dataset.splits.eval is null; choosing on the test split "
                   f"would make the test score an optimistic one.",
                   f"set dataset.splits.eval (e.g. dataset.splits.eval='train[90%:]' with "
                   f"dataset.splits.train='train[:90%]'), or {key}={'null' if key.endswith('stopping') else 'false'}",
                   "dataset.splits.eval")
    if not stops:
        return
    if stopping.patience < 1:
        refuse(f"trainer.early_stopping.patience={stopping.patience} must be >= 1.",
               "set trainer.early_stopping.patience=3", "trainer.early_stopping.patience")
    if stopping.min_delta < 0:
        refuse(f"trainer.early_stopping.min_delta={stopping.min_delta} must be >= 0.",
               "set trainer.early_stopping.min_delta=0", "trainer.early_stopping.min_delta")
    metric = best_metric(t, task_of(cfg.dataset))
    natural = best_mode(metric, None)
    if stopping.mode is not None and stopping.mode is not natural:
        refuse(f"trainer.early_stopping.mode={stopping.mode.value} contradicts trainer.early_stopping.metric="
               f"{metric}, which improves by going {'up' if natural is Mode.max else 'down'}.",
               f"set trainer.early_stopping.mode={natural.value} (or null)", "trainer.early_stopping.mode")


def _check_augment(cfg: Config, refuse) -> None:
    """Augmentation strengths in range, and what MixUp/CutMix and RandAugment need."""
    a = cfg.augment
    for key, value, top in (("rotation", a.rotation, 0.5), ("zoom", a.zoom, 0.9), ("translate", a.translate, 0.9),
                            ("brightness", a.brightness, 1.0), ("contrast", a.contrast, 1.0),
                            ("erasing", a.erasing, 1.0)):
        if not 0.0 <= value <= top:
            refuse(f"augment.{key}={value} must be in [0, {top:g}].", f"set augment.{key}=0.1 (or 0: off)",
                   f"augment.{key}")
    for key, value in (("mixup", a.mixup), ("cutmix", a.cutmix)):
        if value < 0:
            refuse(f"augment.{key}={value} must be >= 0 (0 = off).", f"set augment.{key}=0.2", f"augment.{key}")
        if value and cfg.dataset.label_encoding.value != "one_hot" and task_of(cfg.dataset) != MULTI:  # check_task's
            refuse(f"augment.{key}={value} mixes two images and their labels into soft labels, but "
                   f"dataset.label_encoding={cfg.dataset.label_encoding.value} and trainer.loss={cfg.trainer.loss} "
                   f"take one class id per image.",
                   "set dataset.label_encoding=one_hot trainer.loss=categorical_crossentropy, or "
                   f"augment.{key}=0", f"augment.{key}")
    if a.crop.value == "random_resized":
        _check_range(a.crop_scale, "augment.crop_scale", "a share of the image's area", top=1.0, refuse=refuse,
                     example="[0.25, 1.0]")
        _check_range(a.crop_ratio, "augment.crop_ratio", "a width/height aspect ratio", top=None, refuse=refuse,
                     example="[0.75, 1.3333]")
    if a.rand_augment.num_ops < 0:
        refuse(f"augment.rand_augment.num_ops={a.rand_augment.num_ops} must be >= 0 (0 = off).",
               "set augment.rand_augment.num_ops=2", "augment.rand_augment.num_ops")
    if a.rand_augment.num_ops:
        if cfg.dataset.image.channels != 3:
            refuse(f"augment.rand_augment draws colour transforms (hue, saturation, ...) that need RGB images, and "
                   f"dataset.image.channels={cfg.dataset.image.channels}.",
                   "set augment.rand_augment.num_ops=0 (the geometric augment keys work on any channels), or "
                   "dataset.image.channels=3 with dataset.channel_policy=convert", "augment.rand_augment")
        if not 0.0 < a.rand_augment.magnitude <= 1.0:
            refuse(f"augment.rand_augment.magnitude={a.rand_augment.magnitude} must be in (0, 1].",
                   "set augment.rand_augment.magnitude=0.5", "augment.rand_augment.magnitude")


def _check_range(values, key: str, what: str, top: float | None, refuse, example: str) -> None:
    """[low, high] with 0 < low <= high (<= top): what augment.crop=random_resized draws from."""
    pair = list(values) if hasattr(values, "__len__") and not isinstance(values, str) else None
    ok = pair is not None and len(pair) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                      for v in pair)
    if ok:
        low, high = pair
        ok = 0.0 < low <= high and (top is None or high <= top)
    where = f"(0, {top:g}]" if top is not None else "(0, inf)"
    if not ok:
        refuse(f"{key}={values!r} must be [low, high], {what}, with both in {where} and low <= high "
               f"(augment.crop=random_resized draws from it).",
               f"set {key}={example}, or augment.crop=none", key)


def _check_sampling(cfg: Config, refuse) -> None:
    """Balanced sampling and class weights both correct the same imbalance: together they over-correct."""
    d = cfg.dataset
    weighted = d.class_weights != ClassWeights.none
    if d.sampling.value == "balanced" and weighted:
        refuse(f"dataset.sampling=balanced already shows the model every class equally often, and "
               f"dataset.class_weights={d.class_weights!r} would weight the rare classes up a second time.",
               "choose one: dataset.class_weights=none (keep the balanced sampling), or dataset.sampling=shuffle",
               "dataset.sampling")


def _check_class_weights(cfg: Config, refuse) -> None:
    """dataset.class_weights: a name or one positive weight per class (counted again once the data is read)."""
    weights, d = cfg.dataset.class_weights, cfg.dataset
    if isinstance(weights, str):
        if weights not in tuple(ClassWeights):
            refuse(f"dataset.class_weights={weights!r} is not none, balanced or a list of weights.",
                   "set dataset.class_weights=balanced (or [1.0, 2.0, ...], one per class id)", "dataset.class_weights")
        return
    values = list(weights) if isinstance(weights, (list, tuple)) or hasattr(weights, "__len__") else None
    if not values or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in values):
        refuse(f"dataset.class_weights={weights!r} must be none, balanced or a list of positive numbers.",
               "set dataset.class_weights=balanced", "dataset.class_weights")
    if d.num_classes is not None and len(values) != d.num_classes:
        refuse(f"dataset.class_weights has {len(values)} weights and dataset.num_classes={d.num_classes}.",
               f"give one weight per class id 0..{d.num_classes - 1}, or dataset.class_weights=balanced",
               "dataset.class_weights")
