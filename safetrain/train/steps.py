"""The inner loop: the only tf.function code in safetrain.

One train step and one eval step, each run on every replica with `strategy.run` and reduced to
sums, so the Python loop can average correctly over uneven last batches. The train step takes the
data *iterator* and calls `next` inside the graph, as Keras `fit` does: fetching a batch into
Python costs ~0.7 ms per step on a 2-core CPU, 8% of a small CNN's step. The wait for input is
still measured — by timestamps around the in-graph `next`, which is the time the step really
stood waiting for the pipeline. Every train step reports
whether the loss and the gradient norm were finite; the loop reads that to stop or skip
(trainer.on_nan). With `guard_updates` (on_nan=skip_step) a non-finite update is not applied at
all; without it (on_nan=stop) the update is applied unconditionally — the `tf.cond` guard costs
about 5% of a small CNN's step on CPU — and the loop stops at once, before any checkpoint could
save the poisoned weights.

`train_steps(iterator, n)` runs up to n of those steps in one call — a `tf.while_loop` over the
iterator, Keras' `steps_per_execution` and Orbit's `steps_per_loop` — with one host sync per call
instead of one per step (trainer.steps_per_loop). It keeps every guarantee of the single step: it
stops right after the first non-finite step, so the loop stops or skips at that exact step; it
reads each batch as an optional and stops when there is none, so an epoch that ends inside a call
loses no step's update to an OutOfRangeError. It fetches exactly the batches it trains on: a batch
read ahead and dropped would shift the next call's data and break exact resume.
"""

from __future__ import annotations

import functools
from typing import Callable

import tensorflow as tf

from safetrain.train.metrics import MULTI, SINGLE, Collection, train_collection

_SUM = tf.distribute.ReduceOp.SUM
_NOT_MEASURED = -1.0  # input wait under op determinism (not NaN: check_numerics would object)


class Steps:
    def __init__(self, *, strategy, model, optimizer, loss_fn, eval_spec,
                 jit_compile: bool = False, guard_updates: bool = False, time_input: bool = True,
                 on_missing_gradients: Callable[[list[str]], Exception] | None = None,
                 class_weights: list[float] | None = None, fine_tune=None, check_finite: bool = True,
                 eval_metrics: Collection | None = None, multi_label: bool = False, eval_loss_fn=None) -> None:
        """`eval_spec`: the distributed eval dataset's element spec (a fixed signature, so the
        last, smaller eval batch does not retrace). With `jit_compile` only the per-replica
        computation is compiled: XLA cannot compile the iterator's `next`.

        `train_probe` is `train` plus each variable's largest absolute gradient, for the loop's
        dead-gradient check over the first steps; `on_missing_gradients(paths)` builds the error
        for trainable variables that get no gradient at all (see missing_gradients_error).
        `time_input=False` leaves out the timestamps (op determinism refuses `tf.timestamp`);
        `input_wait_s` is then -1.

        `fine_tune`: (optimizer, variables) — the backbone's own optimizer and the variables it
        updates (safetrain.train.fine_tune); every other trainable variable goes to `optimizer`. Which
        variables are trainable is read once here, so each freeze state gets its own Steps.

        `check_finite=False` drops the NaN/Inf check (every step counts as finite): only for
        scripts/bench.py's checks-off baseline, which measures what the checks cost.

        Each step returns its metrics' sums (safetrain.train.metrics): `train_metrics` (loss and
        accuracy) from the train steps, `eval_metrics` (loss, trainer.metrics and the metrics that
        choose the best epoch) from the eval step.

        `multi_label`: the head is a sigmoid per label (dataset.task=multi_label): the metrics
        read 0/1 label rows, `probabilities` is the sigmoid, and `class_weights` are per-label
        positive weights that the loss itself applies (optimizers.binary_crossentropy); `eval_loss_fn`
        is then the same loss unweighted, so evaluation stays unweighted as for classes."""
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.eval_loss_fn = eval_loss_fn or loss_fn
        # dataset.class_weights: each training example's loss times its class's weight (soft labels
        # from MixUp/CutMix: the label-weighted mean of the weights); evaluation stays unweighted.
        self.multi_label = multi_label
        self.class_weights = tf.constant(class_weights, tf.float32) if class_weights and not multi_label else None
        self.guard_updates = guard_updates
        self.check_finite = check_finite
        self.time_input = time_input
        self.on_missing_gradients = on_missing_gradients
        self.missing_gradients: list[str] = []
        num_classes = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else 0
        task = MULTI if multi_label else SINGLE
        self.train_metrics = train_collection(num_classes, task)
        self.eval_metrics = eval_metrics or train_collection(num_classes, task)
        self.variable_paths = [v.path for v in model.trainable_variables]
        self.fine_tune_optimizer = fine_tune[0] if fine_tune else None
        self._fine_tune_ids = frozenset(id(v) for v in fine_tune[1]) if fine_tune else frozenset()
        self._replica_steps = {}
        for probe in (False, True):
            step = functools.partial(self._replica_train, probe=probe)
            self._replica_steps[probe] = tf.function(step, jit_compile=True) if jit_compile else step
        self.train = tf.function(functools.partial(self._train, probe=False), reduce_retracing=True)
        self.train_probe = tf.function(functools.partial(self._train, probe=True), reduce_retracing=True)
        self.train_steps = tf.function(self._train_steps, reduce_retracing=True)
        self.eval = tf.function(self._eval, input_signature=eval_spec, jit_compile=jit_compile)
        self.logits = graph_logits(self.model)

    def _train(self, iterator, probe: bool):
        if self.time_input:
            started = tf.timestamp()
            with tf.control_dependencies([started]):
                images, labels = next(iterator)
            with tf.control_dependencies(tf.nest.flatten((images, labels), expand_composites=True)):
                wait = tf.timestamp() - started
        else:
            images, labels = next(iterator)
            wait = tf.constant(_NOT_MEASURED, tf.float64)
        return {**self._step(images, labels, probe), "input_wait_s": wait}

    def _step(self, images, labels, probe: bool = False):
        out = self.strategy.run(self._replica_steps[probe], args=(images, labels))
        result = {key: self.strategy.reduce(_SUM, out[key], axis=None) for key in self.train_metrics.state()}
        result["finite"] = self.strategy.reduce(_SUM, out["finite"], axis=None) == self.strategy.num_replicas_in_sync
        if probe:  # summed over replicas: zero exactly when zero on every replica
            result["grad_abs_max"] = self.strategy.reduce(_SUM, out["grad_abs_max"], axis=None)
        return result

    def _train_steps(self, iterator, steps):
        """Up to `steps` (an int32 tensor: no retrace per value) train steps. Returns the sums over
        the finite steps run (the train metrics' state, count, input_wait_s), `steps` run, `finite`
        (of the last one: False means it was non-finite and the call stopped there) and that step's
        `last_loss_sum`. Fewer steps than asked with `finite` true: the data ran out."""
        zero = tf.constant(0, tf.int32)
        state = (zero, tf.constant(True), tf.constant(True), self.train_metrics.zeros(),
                 tf.constant(0.0, tf.float64), tf.constant(0.0))

        def more(done, finite, has_data, *_):
            return tf.logical_and(tf.logical_and(done < steps, finite), has_data)

        def step(done, finite, has_data, sums, wait, last_loss):
            started = tf.timestamp() if self.time_input else None
            with tf.control_dependencies([started] if started is not None else []):
                batch = iterator.get_next_as_optional()
                present = batch.has_value()
            with tf.control_dependencies([present]):
                waited = tf.timestamp() - started if started is not None else tf.constant(0.0, tf.float64)

            def run():
                out = self._step(*batch.get_value())
                ok = out["finite"]
                kept = {key: total + tf.where(ok, tf.cast(out[key], total.dtype), tf.zeros_like(total))
                        for key, total in sums.items()}
                return done + 1, ok, tf.constant(True), kept, wait + waited, out["loss_sum"]

            def out_of_data():
                return done, finite, tf.constant(False), sums, wait, last_loss

            return tf.cond(present, run, out_of_data)

        done, finite, _, sums, wait, last_loss = tf.while_loop(more, step, state)
        if not self.time_input:
            wait = tf.constant(_NOT_MEASURED, tf.float64)
        return {**sums, "finite": finite, "steps": done, "last_loss_sum": last_loss, "input_wait_s": wait}

    def _replica_train(self, images, labels, probe: bool = False):
        model, optimizer = self.model, self.optimizer
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = self.loss_fn(labels, logits)
            if self.class_weights is not None:
                per_example = tf.cast(per_example, tf.float32) * _example_weights(labels, self.class_weights)
            loss = tf.nn.compute_average_loss(per_example)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled = optimizer.scale_loss(loss)  # identity unless a LossScaleOptimizer (float16)
        variables = model.trainable_variables
        grads = tape.gradient(scaled, variables)
        # Known while tracing. Raising here would reach the user wrapped in autograph's StagingError,
        # so record it, update only the variables that have gradients, and let the loop stop after
        # this first step (before any checkpoint).
        self.missing_gradients = [v.path for g, v in zip(grads, variables) if g is None]
        probe_max = [tf.zeros([]) if g is None else tf.reduce_max(tf.abs(tf.cast(g, tf.float32))) for g in grads] \
            if probe else None
        if self.missing_gradients:
            kept = [(g, v) for g, v in zip(grads, variables) if g is not None]
            grads, variables = [g for g, _ in kept], [v for _, v in kept]
        finite = tf.logical_and(tf.math.is_finite(loss),
                                tf.math.is_finite(tf.linalg.global_norm([g for g in grads if g is not None]))) \
            if self.check_finite else tf.constant(True)
        if self.guard_updates:
            tf.cond(finite, lambda: self._apply(grads, variables), tf.no_op)
        else:
            self._apply(grads, variables)
        out = {**self.train_metrics.update(labels, logits, per_example), "finite": tf.cast(finite, tf.int32)}
        if probe:
            out["grad_abs_max"] = tf.stack(probe_max)
        return out

    def missing_gradients_error(self) -> Exception | None:
        """After the first traced step: the error for variables that got no gradient, if any."""
        if not self.missing_gradients:
            return None
        if self.on_missing_gradients:
            return self.on_missing_gradients(self.missing_gradients)
        return ValueError(f"no gradient for {self.missing_gradients}")

    def _apply(self, grads, variables):
        pairs = list(zip(grads, variables))
        tuned = [(g, v) for g, v in pairs if id(v) in self._fine_tune_ids]
        self.optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) not in self._fine_tune_ids])
        if tuned:
            self.fine_tune_optimizer.apply_gradients(tuned)
        return tf.no_op()

    def _eval(self, images, labels):
        out = self.strategy.run(self._replica_eval, args=(images, labels))
        return {k: self.strategy.reduce(_SUM, v, axis=None) for k, v in out.items()}

    def _replica_eval(self, images, labels):
        logits = self.model(images, training=False)
        return self.eval_metrics.update(labels, logits, self.eval_loss_fn(labels, logits))


def graph_logits(model) -> Callable:
    """The head's logits (float32) for a batch, computed as a graph: the results' per-example view
    (`Steps.logits`: the analysis makes them probabilities, with the temperature fitted on eval) and
    the reference every export format is proven against (safetrain.experiment.export), as the
    SavedModel's graph and Keras' `predict` serve it. Not the eager call: in a graph Grappler fuses
    a convolution or matmul with its bias and activation into one oneDNN kernel, which under
    mixed_bfloat16 rounds to bfloat16 once where eager rounds after each op (on a Zen 5 EPYC: 0.03
    apart in logits, 0.018 in probability after a 0.45 temperature, for the same weights)."""
    return tf.function(lambda images: tf.cast(model(images, training=False), tf.float32), reduce_retracing=True)


def _example_weights(labels, class_weights):
    if labels.shape.rank == 2:  # one-hot or mixed rows
        return tf.linalg.matvec(tf.cast(labels, tf.float32), class_weights)
    return tf.gather(class_weights, tf.cast(labels, tf.int32))
