"""TensorBoard output: one lazily created writer per run, always flushed on the way out.

TensorFlow is imported when the first summary is written, not with this module, so the run
record (safetrain.record.run_record) stays importable before validation has passed.
"""

from __future__ import annotations

from pathlib import Path


class Summaries:
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._writer = None

    @property
    def writer(self):
        if self._writer is None:
            import tensorflow as tf

            self._writer = tf.summary.create_file_writer(str(self.logdir))
        return self._writer

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        import tensorflow as tf

        with self.writer.as_default(step=step):
            for tag, value in values.items():
                if value is not None:
                    tf.summary.scalar(tag, float(value))

    def text(self, tag: str, body: str, step: int = 0, code: bool = True) -> None:
        """Tables and reports as preformatted text (TensorBoard renders text as Markdown)."""
        import tensorflow as tf

        with self.writer.as_default(step=step):
            tf.summary.text(tag, f"```\n{body}\n```" if code else body)

    def image(self, tag: str, image, step: int = 0) -> None:
        """One (H, W, 3) float image in [0, 1]."""
        import tensorflow as tf

        with self.writer.as_default(step=step):
            tf.summary.image(tag, tf.convert_to_tensor(image, tf.float32)[None], max_outputs=1)

    def hparams(self, values: dict[str, float | int | str | bool]) -> None:
        """The run's main settings for TensorBoard's HParams dashboard (compare sweep jobs)."""
        from tensorboard.plugins.hparams import api as hp

        with self.writer.as_default():
            hp.hparams(values)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
