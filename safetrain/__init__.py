"""safetrain: a TensorFlow training framework whose pipelines, models and loop fail early and clearly.

    python -m safetrain                              # digits_cnn, offline, >= 95% test accuracy
    python -m safetrain +experiment=mnist_cnn        # TFDS mnist
    python -m safetrain +debug=tiny                  # a few steps, for smoke tests
    python -m safetrain -m trainer.batch_size=64,256 # a sweep (Hydra multirun)
    tensorboard --logdir outputs                     # scalars, shape table, env report

Importing this package does not import TensorFlow; `safetrain.experiment.train` does.
"""

__version__ = "0.1.0"
