"""qwen2-edge run ARTIFACT_OR_MODEL_DIR [--prompt TEXT | --chat]: generate from any artifact, streamed."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator

from .common import add_kv_cache, add_no_verify, kv_cache_arg, positive_int_arg, verify_artifacts

HELP = "generate text from an ONNX folder, GGUF file or checkpoint (prompt or interactive chat), streamed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="ARTIFACT_OR_MODEL_DIR",
        help="ONNX folder, .gguf file, checkpoint dir, builtin:teacher or hub id org/name[@revision]",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--prompt", help="complete this text (no chat template)")
    mode.add_argument("--chat", action="store_true", help="interactive chat with the model's chat template")
    p.add_argument("--system", default=None, help="--chat: system message (default: the template's)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k cut")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    add_kv_cache(p, "KV-cache precision (default: the runtime's own: llama.cpp f16, onnxruntime f32)")
    p.add_argument(
        "--ctx",
        metavar="N",
        default=None,
        help="positions the session holds (prompt + generation; default: the runtime's choice)",
    )
    p.add_argument(
        "--transcript", metavar="OUT.json", help="--chat: save the conversation with its token ids"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing --transcript file")
    add_no_verify(p)


@contextlib.contextmanager
def _runtime_errors(session) -> Iterator[None]:
    """A runtime refusing the work (a conversation longer than its context) ends with one line, exit 2."""
    from ..errors import UserError

    try:
        yield
    except ValueError as e:
        sys.stdout.write("\n")
        raise UserError(f"{session.runtime}: {e}", session.path) from None


def _write(text: str) -> None:
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def _read_line(interactive: bool) -> str | None:
    """One user turn; None at end of input (Ctrl-D) or Ctrl-C at the prompt."""
    try:
        if interactive:
            return input("> ")
        line = sys.stdin.readline()
        return line.rstrip("\n") if line else None
    except (EOFError, KeyboardInterrupt):
        return None


def _chat(session, args, sampler) -> int:
    from ..errors import UserError
    from ..runtimes.streaming import Chat

    chat = Chat(session, max_new_tokens=args.max_new_tokens, sampler=sampler, system=args.system)
    try:
        session.chat_ids([{"role": "user", "content": "x"}])
    except (NotImplementedError, UserError) as e:
        raise UserError(f"cannot chat: {e}", session.path) from None
    interactive = sys.stdin.isatty()
    if interactive:
        print("chat: /reset starts over, Ctrl-D leaves, Ctrl-C stops a reply", file=sys.stderr)
    while (line := _read_line(interactive)) is not None:
        if not line.strip():
            continue
        if line.strip() == "/reset":
            chat.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        turn = chat.say(line, _write)
        _write("\n")
        print(turn.stats.line(), file=sys.stderr)
    if interactive:
        print(file=sys.stderr)
    if args.transcript:
        _save_transcript(chat, args.transcript, args.force)
    return 0


def _save_transcript(chat, path: str, force: bool) -> None:
    from ..fsutil import atomic_file

    doc = {
        "messages": chat.messages,
        "turns": [
            {
                "user": t.user,
                "reply": t.reply,
                "context_ids": t.context_ids,
                "generated_ids": t.generated_ids,
                "reused_tokens": t.stats.reused_tokens,
                "stopped_by": t.stats.stopped_by,
            }
            for t in chat.turns
        ],
    }
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..fsutil import REPORT_BYTES, preflight
    from ..runtimes.options import RuntimeOptions
    from ..runtimes.registry import open_session, resolve_kv_cache
    from ..runtimes.sampling import Sampler
    from ..runtimes.streaming import stream_generate

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    try:
        sampler = Sampler(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.system is not None and not args.chat:
        raise UserError("--system needs --chat")
    if args.transcript:
        if not args.chat:
            raise UserError("--transcript needs --chat")
        preflight(args.transcript, args.force, REPORT_BYTES, folder=False)
    options = RuntimeOptions(
        threads=args.threads, kv_cache=kv_cache_arg(args), n_ctx=positive_int_arg("--ctx", args.ctx)
    )
    resolve_kv_cache(args.model, options.kv_cache)  # a cache type the runtime lacks: refused before loading
    verify_artifacts(args, [args.model])
    session = open_session(args.model, options=options)  # a bad path fails before reading stdin
    prompt = args.prompt
    if prompt is None and not args.chat:
        if sys.stdin.isatty():
            args.chat = True  # nothing to complete: talk
        else:
            prompt = sys.stdin.read()
    with session, _runtime_errors(session):
        if args.chat:
            return _chat(session, args, sampler)
        ids = session.encode(prompt)
        if not ids:
            raise UserError("the prompt is empty")
        _, stats = stream_generate(session, ids, args.max_new_tokens, sampler, _write)
        _write("\n")
        print(stats.line(), file=sys.stderr)
        return 130 if stats.stopped_by == "interrupt" else 0
