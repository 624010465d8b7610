"""Model specs: typed layer specs, shape inference and the Keras builder.

    from safetrain.models.parse import parse_layers
    from safetrain.models.shapes import infer
    plan = infer(parse_layers(cfg.model.layers), (28, 28, 1), num_classes=10)
    print(plan.table())            # shapes, params, FLOPs: plain Python, no TensorFlow
    model = models.build.build_model(plan)   # imports Keras; checked against the plan

Importing the package registers every built-in layer type.
"""

if __name__ == "models":  # imported by the folder's name (python run from the repository): a second copy
    raise ImportError(
        "the folder models/ installs as safetrain.models; importing it as `models` would load a second copy "
        "whose registrations (layers, sources) safetrain never sees. Import safetrain.models instead, e.g. "
        "`from safetrain.models.custom import custom_layer`")


from safetrain.models import blocks, custom, sequence, spec  # noqa: F401  (registration)
from safetrain.models import custom_layers  # noqa: F401,E402  (the project's own layers; imports Keras only if used)
