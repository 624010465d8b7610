"""`python -m safetrain [overrides]` and the `safetrain` command: train one run, or a sweep with -m.

The Hydra app itself is safetrain/experiment/app.py (shared with `python -m safetrain.lr_find`).
An entry point: argv in, exit code out; nothing imports it.
"""

from __future__ import annotations

from safetrain.experiment.app import main

if __name__ == "__main__":
    main()
