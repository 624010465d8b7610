from safetrain.cli import main

main()
