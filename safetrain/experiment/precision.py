"""The run's precision under hardware.precision=auto: a trial on its own model (or the cached
decision of one), else the table. Explicit policies were checked by the table and stay as asked.

Two moments: `math_mode_before_tensorflow` (TensorFlow-free) runs before TensorFlow starts and
sets oneDNN's bfloat16 math mode when an earlier trial of this model on this CPU chose it; `decide`
runs once the data and the real model plan are known, and measures (safetrain.train.precision_trial)
or reuses the cache (safetrain.train.precision_cache).
"""

from __future__ import annotations

import json
import logging
import os

from safetrain.config.schema import Config, Precision, StrategyKind
from safetrain.models.shapes import ModelPlan
from safetrain.train.budget import parse_budget
from safetrain.train.hardware import cpu_device_key, device_key, gpu_memory_mib, read_cpuinfo
from safetrain.train.precision_cache import ONEDNN_MATH_ENV, PrecisionCache, cache_path, trial_key

log = logging.getLogger("safetrain")

TRIAL_BATCHES = 8  # the run's first training batches, held in memory and cycled by every candidate


def _model_signature(cfg: Config) -> dict:
    b = cfg.model.backbone
    backbone = None if b.name is None else {"name": b.name, "pooling": b.pooling.value, "trainable": b.trainable,
                                            "fine_tune_from_epoch": b.fine_tune_from_epoch}
    return json.loads(json.dumps({"layers": cfg.model.layers, "backbone": backbone,
                                  "jit_compile": cfg.trainer.jit_compile}, default=str))


def _key(cfg: Config, device: str, replicas: int) -> dict:
    image = cfg.dataset.image
    return trial_key(device, _model_signature(cfg), cfg.trainer.batch_size // replicas,
                     (image.height, image.width, image.channels, image.dtype.value))


def _trials_apply(cfg: Config) -> bool:
    return cfg.hardware.precision is Precision.auto and cfg.hardware.precision_trial


def math_mode_before_tensorflow(cfg: Config) -> str | None:
    """Set TF_SET_ONEDNN_FPMATH_MODE=BF16 when a cached trial of this model on this CPU chose
    oneDNN's bfloat16 math (it must be in the environment before TensorFlow starts); returns what
    was set, or None. Never overrides a value you set yourself; not on GPU machines or clusters."""
    if not _trials_apply(cfg) or ONEDNN_MATH_ENV in os.environ or os.environ.get("TF_CONFIG"):
        return None
    mirrored = cfg.hardware.strategy is StrategyKind.mirrored and cfg.hardware.logical_cpus
    replicas = cfg.hardware.logical_cpus if mirrored else 1
    found = PrecisionCache(cache_path(cfg.dataset.data_dir)).get(_key(cfg, cpu_device_key(read_cpuinfo()), replicas))
    if found and found.get("chosen") == "onednn_bf16" and not gpu_memory_mib():  # a GPU run has its own key
        os.environ[ONEDNN_MATH_ENV] = "BF16"
        return "BF16"
    return None


def decide(cfg: Config, plan: ModelPlan, data, hardware, math_mode: str | None):
    """The run's final precision: (policy, reason, the trial or None). `math_mode`: the oneDNN
    math mode TensorFlow started with (TF_SET_ONEDNN_FPMATH_MODE), if any."""
    from safetrain.train import precision_trial as pt

    if not _trials_apply(cfg):
        return hardware.policy, hardware.reason, None
    if hardware.cluster is not None:
        return hardware.policy, hardware.reason + " (no precision trial in a multi-worker run: the table decides)", None
    names = pt.candidates(hardware.devices, trains_backbone=plan.backbone is not None and plan.backbone.trains_ever())
    if len(names) < 2:
        return hardware.policy, hardware.reason, None
    cache = PrecisionCache(cache_path(cfg.dataset.data_dir))
    key = _key(cfg, device_key(hardware.devices, read_cpuinfo()), hardware.replicas)
    found = cache.get(key)
    budget_s = parse_budget(cfg.trainer.time_budget)
    if found is not None and not _worth_measuring_again(pt.Trial.from_record(found), cfg, data):
        trial = pt.Trial.from_record(found)
    elif found is None and not pt.affordable(budget_s):
        least = pt.MIN_BUDGET_S / pt.TIME_BUDGET_SHARE
        return hardware.policy, (hardware.reason + f" (no precision trial: it would take over "
                                 f"{pt.TIME_BUDGET_SHARE:.0%} of trainer.time_budget={cfg.trainer.time_budget}; a run "
                                 f"of this model with a budget of {least:.0f} s or more, or none, measures it once "
                                 f"and later runs reuse the decision)"), None
    elif math_mode:
        return hardware.policy, (hardware.reason + f" (no precision trial: {ONEDNN_MATH_ENV}={math_mode} is set, so "
                                 f"float32 would not be measured as float32)"), None
    else:
        try:
            trial = pt.run_trial(names, _inputs(cfg, plan, data, hardware))
        except pt.TrialFailed as err:  # the run itself will meet (and diagnose) the same failure
            log.warning("warning: the precision trial could not run float32 (%s); the table decides", err)
            return hardware.policy, hardware.reason + " (the precision trial failed: see the log)", None
        cache.put(key, trial.record())
    policy, reason = _apply(trial, math_mode)
    return policy, reason, trial


def _worth_measuring_again(trial, cfg: Config, data) -> bool:
    """A cached trial that left candidates out for its budget is measured again by a run whose
    budget (from the cached float32 rate) is clearly larger."""
    from safetrain.train import precision_trial as pt

    rate = trial.candidates.get(pt.FLOAT32)
    if not trial.incomplete or not rate:
        return False
    t = cfg.trainer
    run_steps = data.steps_per_epoch * t.epochs
    planned_s = min(run_steps, t.max_steps or run_steps) * t.batch_size / rate
    budget_s = parse_budget(t.time_budget)
    return pt.affordable(budget_s) and pt.budget(planned_s, budget_s) > 1.2 * trial.budget_s


def _apply(trial, math_mode: str | None) -> tuple[str, str]:
    """The policy this run trains in, and why, from the trial's choice."""
    from safetrain.train import precision_trial as pt

    how = "cached trial" if trial.cached else f"trial, {trial.seconds:.1f} s"
    speed = trial.speedup(trial.chosen)
    measured = f"{speed:.2f}x float32's examples/s" if speed and trial.chosen != pt.FLOAT32 else ""
    if trial.chosen == pt.ONEDNN_BF16:
        if math_mode == "BF16":
            return "float32", (f"auto ({how}): oneDNN bfloat16 math ({ONEDNN_MATH_ENV}=BF16, set before TensorFlow "
                               f"started), {measured}")
        # This process started with float32 math: the mode applies from the next run on.
        rest = {n: r for n, r in trial.candidates.items() if n != pt.ONEDNN_BF16 and n not in trial.rejected and r}
        now = max(rest, key=rest.get) if rest else pt.FLOAT32
        return pt.POLICY[now], (f"auto ({how}): oneDNN bfloat16 math measured fastest ({measured}); it must be set "
                                f"before TensorFlow starts, so it applies from the next run of this model; this "
                                f"run trains in {now}")
    if trial.chosen == pt.FLOAT32:  # every other candidate was rejected, each for its reason
        others = "; ".join(f"{n}: {why}" for n, why in trial.rejected.items())
        return "float32", f"auto ({how}): float32" + (f" ({others})" if others else "")
    return pt.POLICY[trial.chosen], f"auto ({how}): {trial.chosen}, {measured}"


def _inputs(cfg: Config, plan: ModelPlan, data, hardware):
    """The batches and builders every candidate trains with."""
    import numpy as np

    from safetrain.config.schema import OptimizerConfig, TrainerConfig
    from safetrain.train import precision_trial as pt
    from safetrain.train.task import build_task

    batches = list(data.train_plain(1).take(min(TRIAL_BATCHES, data.steps_per_epoch)))
    images = np.stack([b[0].numpy() for b in batches])
    labels = np.stack([b[1].numpy() for b in batches])
    o, t = cfg.optimizer, cfg.trainer
    # A constant rate for every candidate (a warmup would hide the loss comparison), the run's kind
    # of optimizer, loss and compilation; the worker rebuilds exactly this.
    spec = {"optimizer": {"name": o.name, "learning_rate": o.learning_rate, "clipnorm": o.clipnorm,
                          "weight_decay": o.weight_decay},
            "trainer": {"loss": t.loss, "label_smoothing": t.label_smoothing, "seed": t.seed, "ema": t.ema,
                        "jit_compile": t.jit_compile}}

    def build(policy: str):
        return build_task(plan, optimizer=OptimizerConfig(**spec["optimizer"]),
                          trainer=TrainerConfig(**spec["trainer"]),
                          strategy=hardware.strategy, steps_per_epoch=1, policy=policy,
                          input_dtype=data.spec.dtype)

    worker = None
    if plan.backbone is None and hardware.replicas == 1:
        worker = {**spec, "layers": [dict(layer) for layer in cfg.model.layers], "input_shape": list(data.spec.shape),
                  "num_classes": data.source.num_classes, "input_dtype": data.spec.dtype,
                  "multi_label": data.source.multi_label}
    run_steps = data.steps_per_epoch * t.epochs
    return pt.TrialInputs(images=images, labels=labels, build=build, strategy=hardware.strategy,
                          planned_steps=min(run_steps, t.max_steps or run_steps), worker_spec=worker,
                          time_budget_s=parse_budget(t.time_budget))
