"""Floor 4, what trains one model: the tf.function steps, the plain-Python loop and its periodic
actions, checkpoints, the best epoch, EMA, fine-tuning, schedules, optimizers, throughput, signals,
hardware, the cluster, and `task` (model + optimizer + steps, built once). Stands on core, config
and models; the package import loads no TensorFlow (validation reads some of its tables)."""
