"""This project's own layers: register them here with @custom_layer and use them by name.

This module is imported with the `models` package, so `{type: NAME, ...}` in a config finds what
is registered here, without import paths in configs. The decorator, an example and what the
preflight checks are in models/custom.py. Import it as the package installs it:

    from safetrain.models.custom import custom_layer

(`from models.custom import ...` is refused: it would load a second copy of the module, whose
registrations safetrain never sees.)
"""
