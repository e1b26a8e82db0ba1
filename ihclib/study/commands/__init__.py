"""The study's subcommands of `ihclib` (train, check-data), registered by ihclib.cli."""
