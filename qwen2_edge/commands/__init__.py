"""CLI subcommands, one module each: `add_arguments(parser)` and `run(args) -> int`.

Modules keep heavy imports inside `run`, so `qwen2-edge --help` stays fast.
"""
