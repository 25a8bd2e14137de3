"""qwen2-edge command line. Thin: parse, then one library call per subcommand."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

# name -> module under qwen2_edge.commands. Adding a command is one row here plus its module.
COMMANDS: dict[str, str] = {
    "inspect": "inspect",
    "export": "export",
    "check": "check",
    "run": "run",
    "distill": "distill",
    "bench": "bench",
    "pipeline": "pipeline",
    "demo": "demo",
    "quant-scan": "quant_scan",
    "verify": "verify",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen2-edge", description="Distill, quantize, export and validate Qwen2 models for edge CPUs."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"qwen2_edge.commands.{module}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    from .errors import UserError

    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so temp outputs are removed and nothing half-written is left.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"qwen2-edge {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"qwen2-edge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
