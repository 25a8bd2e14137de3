"""qwen2-edge verify ARTIFACT...: check each artifact's bytes against the SHA-256 recorded at export."""

from __future__ import annotations

import argparse

HELP = (
    "check ONNX folders and GGUF files against the SHA-256 recorded at export (exit 0: all intact; "
    "1: some carry no record; 2: corrupted, naming the file and first bad region)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help="ONNX folder or .gguf file")


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import UserError
    from ..integrity import verify_artifact

    code = 0
    for path in args.artifacts:
        try:
            v = verify_artifact(path)
        except UserError as e:  # go on with the others, so one run names every bad artifact
            print(f"qwen2-edge verify: error: {e}", file=sys.stderr)
            code = 2
            continue
        if v is None:
            print(f"qwen2-edge verify: error: {path}: not an exported artifact (ONNX folder or GGUF file)",
                  file=sys.stderr)  # fmt: skip
            code = 2
            continue
        print(v.line())
        if not v.recorded:
            code = max(code, 1)
    return code
