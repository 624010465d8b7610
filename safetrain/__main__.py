"""`python -m safetrain`: see safetrain/cli.py."""

from safetrain.experiment.app import main

main()
