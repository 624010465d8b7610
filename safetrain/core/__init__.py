"""Floor 1, the foundation: errors (with phases and statuses), registries, where a run is, and the
one place TensorFlow is first imported. Imports nothing of safetrain's and no TensorFlow, Keras or
Hydra, so every other floor (pipelines/, models/ included) can stand on it."""
