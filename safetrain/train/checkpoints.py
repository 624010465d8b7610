"""Checkpoints: model, optimizer, dropout RNG state and the data position (step, epoch, batch).

`tf.train.CheckpointManager` under <run dir>/checkpoints. A rerun in the same run dir restores
the latest one and continues from the saved position. The data iterator's whole state is its
position: each epoch's order is a function of (seed, epoch) (pipelines/build.py), so (epoch,
batches done) reproduces it without saving a shuffle buffer. Keras keeps each dropout layer's
RNG in a seed-generator variable that `tf.train.Checkpoint` does not track through the model;
it is added explicitly, so a resumed run draws the same dropout masks as an uninterrupted one.

A latest checkpoint that cannot be read (truncated, corrupt, a crash mid-write) is skipped with
a warning for the previous one. `run_spec.json` beside the checkpoints records the settings that
define the weights' shapes and meaning; a resume that changes one is refused, naming it.

In a multi-worker run only the chief keeps checkpoints. The others still take part in every save
(reading a mirrored or sync-on-read variable can be a collective op all workers must join), but
write to a private temporary directory that is deleted at once — TensorFlow's documented pattern.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from pathlib import Path

import tensorflow as tf

from safetrain.core.errors import SpecError
from safetrain.core.run_state import Position

log = logging.getLogger("safetrain")

SPEC_FILE = "run_spec.json"


class Checkpoints:
    def __init__(self, directory: Path, model, optimizer, max_to_keep: int = 3, writer: bool = True,
                 batch_size: int = 0, run_spec: dict | None = None, extra: dict | None = None) -> None:
        """`batch_size`: the global batch this run uses. A checkpoint saved with another one (a
        rerun with a new trainer.batch_size, or on_oom=halve_batch) resumes at the same example:
        batches done are converted, rounding down. `run_spec`: {config key: value} of the
        settings a resume must not change. `extra`: more state to save and restore by name (a
        fine-tuned backbone's optimizer; the actions' state comes through `track`)."""
        self.directory = Path(directory)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch = tf.Variable(1, dtype=tf.int64, trainable=False, name="epoch")
        self.in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="in_epoch")
        self.batch_size = tf.Variable(batch_size, dtype=tf.int64, trainable=False, name="batch_size")
        rng = [v for v in model.variables if v.path.endswith("seed_generator_state")]
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self.step,
                                              epoch=self.epoch, in_epoch=self.in_epoch,
                                              batch_size=self.batch_size, rng=rng, **(extra or {}))
        self.manager = self._manager(max_to_keep)
        self.writer = writer
        self.run_spec = run_spec or {}
        self.last_saved_step: int | None = None
        self.save_seconds = 0.0  # the last save's (trainer.time_budget keeps one for where training ends)
        self.warnings: list[str] = []  # skipped unreadable checkpoints, for errors.jsonl

    def track(self, state: dict) -> None:
        """More state to save and restore by name — a periodic action's (safetrain.train.actions:
        `checkpointed()`); call before the first restore."""
        for name, value in state.items():
            setattr(self.checkpoint, name, value)

    def _manager(self, max_to_keep: int) -> tf.train.CheckpointManager:
        try:
            return tf.train.CheckpointManager(self.checkpoint, str(self.directory), max_to_keep=max_to_keep)
        except (tf.errors.OpError, ValueError) as err:  # the `checkpoint` index file itself is damaged
            state = self.directory / "checkpoint"
            state.rename(state.with_name("checkpoint.unreadable"))
            log.warning("warning: %s was unreadable (%s); moved aside, the checkpoints are found by name",
                        state, type(err).__name__)
            return tf.train.CheckpointManager(self.checkpoint, str(self.directory), max_to_keep=max_to_keep)

    def _candidates(self) -> list[str]:
        """Checkpoint prefixes, newest first: by their step number, not only the index file."""
        found = {int(m.group(1)): str(p.with_suffix(""))
                 for p in self.directory.glob("ckpt-*.index") if (m := re.fullmatch(r"ckpt-(\d+)\.index", p.name))}
        return [found[n] for n in sorted(found, reverse=True)]

    def restore(self) -> Position:
        """Where the newest readable checkpoint left off; the start when there is none."""
        candidates = self._candidates()
        if not candidates:
            return Position()
        self._check_run_spec()
        current = int(self.batch_size.numpy())
        for prefix in candidates:
            try:
                self.checkpoint.restore(prefix).assert_existing_objects_matched()
                break
            except Exception as err:  # noqa: BLE001 - truncated files raise IndexError, OpError, ValueError...
                reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
                warning = f"checkpoint {Path(prefix).name} is unreadable ({type(err).__name__}: {reason}); " \
                          f"falling back to the previous one"
                self.warnings.append(warning)
                log.warning("warning: %s", warning)
        else:
            raise SpecError(f"no checkpoint in {self.directory} can be read ({len(candidates)} tried)",
                            hint=f"move {self.directory} aside to start this run from scratch",
                            config_key="hydra.run.dir")
        saved, in_epoch = int(self.batch_size.numpy()), int(self.in_epoch.numpy())
        if saved and current and saved != current and in_epoch:
            in_epoch = in_epoch * saved // current
            log.info("the checkpoint was saved with batch size %d, this run uses %d: continuing at batch %d "
                     "of the epoch (same examples)", saved, current, in_epoch)
        self.batch_size.assign(current)
        return Position(int(self.step.numpy()), int(self.epoch.numpy()), in_epoch)

    def _check_run_spec(self) -> None:
        path = self.directory / SPEC_FILE
        if not self.run_spec or not path.exists():
            return
        saved = json.loads(path.read_text())
        changed = [key for key in self.run_spec if key in saved and saved[key] != self.run_spec[key]]
        if changed:
            key = changed[0]
            raise SpecError(
                f"the checkpoints in {self.directory} were trained with {key}={saved[key]!r}, but this run has "
                f"{key}={self.run_spec[key]!r}: resuming would load weights of another shape or meaning"
                + (f" (also changed: {', '.join(changed[1:])})" if changed[1:] else ""),
                hint=f"set {key}={saved[key]!r} to resume, or use a new hydra.run.dir to start a new run",
                config_key=key)

    def save(self, at: Position) -> None:
        if at.step == self.last_saved_step and int(self.epoch.numpy()) == at.epoch:
            return
        began = time.perf_counter()
        self.step.assign(at.step)
        self.epoch.assign(at.epoch)
        self.in_epoch.assign(at.in_epoch)
        if self.writer:
            self.manager.save(checkpoint_number=at.step)
            spec = self.directory / SPEC_FILE
            if self.run_spec and not spec.exists():
                tmp = spec.with_name(f".{SPEC_FILE}.tmp")
                tmp.write_text(json.dumps(self.run_spec, indent=2, sort_keys=True) + "\n")
                tmp.replace(spec)
        else:
            with tempfile.TemporaryDirectory(prefix="safetrain-worker-ckpt-") as scratch:
                self.checkpoint.write(str(Path(scratch) / "ckpt"))
        self.last_saved_step = at.step
        self.save_seconds = time.perf_counter() - began
