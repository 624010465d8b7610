"""`python -m safetrain`: see safetrain/cli.py."""

import time

_STARTED = time.monotonic()  # before Hydra and the config: trainer.time_budget counts the whole command

from safetrain.core.run_state import command_started  # noqa: E402

command_started(_STARTED)

from safetrain.experiment.app import main  # noqa: E402

main()
