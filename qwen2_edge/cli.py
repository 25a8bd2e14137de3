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
    from .fsutil import check_stdout, errno_meaning

    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so temp outputs are removed and nothing half-written is left.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    stdout, sys.stdout = sys.stdout, _NamedStdout(sys.stdout)
    try:
        check_stdout()
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a full or failing stdout (`> /full/disk/file`) is reported here, not at exit
        return code
    except UserError as e:
        print(f"qwen2-edge {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"qwen2-edge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _drop_stdout()
        return 0
    except OSError as e:
        # Last line of defense: write sites convert their own errors (and remove their temporaries); what
        # else the OS refused is still one line naming the file, exit 2, not a traceback.
        what = errno_meaning(e.errno) if e.filename is None else f"{e.filename}: {errno_meaning(e.errno)}"
        if e.filename == "standard output":
            _drop_stdout()
        print(f"qwen2-edge {args.command}: error: {what}", file=sys.stderr)
        return 2
    finally:
        sys.stdout = stdout


class _NamedStdout:
    """sys.stdout whose write errors name it: they surface in any print, with no file name of their own."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def _call(self, fn, *a):
        try:
            return fn(*a)
        except BrokenPipeError:
            raise
        except OSError as e:
            e.filename = "standard output"
            raise

    def write(self, text: str) -> int:
        return self._call(self._stream.write, text)

    def flush(self) -> None:
        self._call(self._stream.flush)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _drop_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for a stdout that cannot take it would otherwise
    fail again at interpreter exit, as a traceback."""
    import contextlib
    import os

    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
