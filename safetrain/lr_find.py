"""`python -m safetrain.lr_find [overrides]`: a learning-rate range test from the run's own config.

The same as `python -m safetrain trainer.lr_find=true ...`: everything before training (config,
data scan, model, precision) runs as in a real run, then the range test
(safetrain/experiment/lr_find.py) instead of training. An entry point: nothing imports it.
"""

from __future__ import annotations

import sys

from safetrain.experiment.app import main as app


def main(argv: list[str] | None = None) -> None:
    app(["trainer.lr_find=true", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
