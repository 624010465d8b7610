"""This project's own layers: register them here with @custom_layer and use them by name.

Imported with the `models` package, so `{type: NAME, ...}` in a config finds them; see
models/custom.py for the decorator and what the preflight checks. Example:

    import keras
    from models.custom import custom_layer

    @custom_layer("scaled_tanh")
    class ScaledTanh(keras.layers.Layer):
        def __init__(self, scale: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self.scale = scale

        def call(self, x):
            return keras.ops.tanh(x) * self.scale
"""
