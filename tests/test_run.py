"""`qwen2-edge run`: streamed generation identical across runtimes, chat through the template, bad paths."""

from __future__ import annotations

import io
import json

import pytest
import torch

from qwen2_edge.cli import main

PROMPT = "def parse_args(argv):\n    "


def run_cli(args: list[str], capsys, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    capsys.readouterr()  # drop earlier output (fixture creation prints progress bars)
    rc = main(["run", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_greedy_prompt_streams_transformers_generate_text(fixture_dir, hf_model, capsys):
    path = fixture_dir("dense")
    rc, out, err = run_cli([str(path), "--prompt", PROMPT, "--max-new-tokens", "12"], capsys)
    assert rc == 0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        gen = hf_model(path).generate(
            torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(ids) :]
    assert out == tok.decode(gen) + "\n"
    stats = err.strip().splitlines()[-1]
    assert f"prompt {len(ids)} tokens" in stats and "generated 12 tokens" in stats and "tokens/s" in stats


def test_sampling_is_seeded(fixture_dir, capsys):
    path = str(fixture_dir("dense_untied"))
    sample = [
        "--prompt",
        PROMPT,
        "--max-new-tokens",
        "16",
        "--temperature",
        "1.5",
        "--top-k",
        "100",
        "--top-p",
        "0.95",
    ]
    a = run_cli([path, *sample, "--seed", "1"], capsys)[1]
    b = run_cli([path, *sample, "--seed", "1"], capsys)[1]
    c = run_cli([path, *sample, "--seed", "2"], capsys)[1]
    assert a == b and a != c


def test_chat_two_turns_through_stdin_matches_apply_chat_template(fixture_dir, tmp_path, capsys, monkeypatch):
    # dense_untied answers a one-token reply that re-tokenizes to itself, so the KV cache is kept.
    path = fixture_dir("dense_untied")
    transcript = tmp_path / "chat.json"
    rc, out, err = run_cli(
        [str(path), "--chat", "--max-new-tokens", "1", "--transcript", str(transcript)],
        capsys,
        stdin="hello there\n\nwhat is 2+2?\n",  # the blank line is skipped
        monkeypatch=monkeypatch,
    )
    assert rc == 0
    doc = json.loads(transcript.read_text())
    turns = doc["turns"]
    assert [t["user"] for t in turns] == ["hello there", "what is 2+2?"]
    assert out == "".join(t["reply"] + "\n" for t in turns)
    assert len(err.strip().splitlines()) == 2  # one stats line per turn

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    msgs = [{"role": "user", "content": "hello there"}]
    expected1 = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    msgs += [{"role": "assistant", "content": turns[0]["reply"]}, {"role": "user", "content": "what is 2+2?"}]
    expected2 = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    as_list = lambda x: list(x["input_ids"] if hasattr(x, "keys") else x)  # noqa: E731
    assert turns[0]["context_ids"] == as_list(expected1)
    assert turns[1]["context_ids"] == as_list(expected2)
    assert doc["messages"] == [*msgs, {"role": "assistant", "content": turns[1]["reply"]}]
    # The second turn reused the cache (everything of turn 1 except its last, never-fed token) ...
    first = turns[0]["context_ids"] + turns[0]["generated_ids"]
    assert turns[1]["context_ids"][: len(first)] == first, "fixture reply no longer round-trips"
    assert turns[1]["reused_tokens"] == len(first) - 1
    # ... and generated exactly what a fresh prefill of the whole conversation generates.
    from qwen2_edge.runtimes import open_session

    assert open_session(path).greedy(turns[1]["context_ids"], 1) == turns[1]["generated_ids"]


def test_chat_reset_starts_over(fixture_dir, tmp_path, capsys, monkeypatch):
    path = fixture_dir("dense_untied")
    transcript = tmp_path / "chat.json"
    rc, _, err = run_cli(
        [str(path), "--chat", "--max-new-tokens", "2", "--transcript", str(transcript)],
        capsys, stdin="hello\n/reset\nhello\n", monkeypatch=monkeypatch,
    )  # fmt: skip
    assert rc == 0 and "[conversation reset]" in err
    t1, t2 = json.loads(transcript.read_text())["turns"]
    assert t1["context_ids"] == t2["context_ids"] and t1["generated_ids"] == t2["generated_ids"]
    assert t2["reused_tokens"] == 0


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["{tmp}/missing"], "no such file or directory"),
        (["{tmp}/junk.bin", "--prompt", "x"], "not a recognized model artifact"),
        (["builtin:nope", "--prompt", "x"], "unknown built-in model"),
        (["{fixture}", "--prompt", "x", "--temperature", "-1"], "temperature"),
        (["{fixture}", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, fixture_dir, tmp_path, capsys):
    (tmp_path / "junk.bin").write_bytes(b"\0" * 32)
    fixture = fixture_dir("dense")
    capsys.readouterr()  # making the fixture may print progress bars
    args = [a.format(tmp=tmp_path, fixture=fixture) for a in argv]
    rc, out, err = run_cli(args, capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("qwen2-edge run: error:")


# -- every runtime: the same greedy text (and the same sampled text) from an f32 export ------------------
@pytest.mark.parametrize("fmt,ext", [("onnx", ""), ("gguf", ".gguf")])
def test_f32_exports_generate_the_same_text(fmt, ext, fixture_dir, tmp_path, capsys):
    from qwen2_edge.runtimes.registry import RUNTIMES

    if not any(e.format == fmt for e in RUNTIMES):
        pytest.skip(f"no {fmt} runtime registered on this branch yet")
    from qwen2_edge.exporters.api import export_model

    path = fixture_dir("dense")
    art = export_model(path, fmt=fmt, quant="f32", out=tmp_path / f"dense{ext}").path
    for extra in ([], ["--temperature", "0.9", "--top-k", "50", "--seed", "7"]):
        args = ["--prompt", PROMPT, "--max-new-tokens", "16", *extra]
        ref = run_cli([str(path), *args], capsys)
        got = run_cli([str(art), *args], capsys)
        assert got[0] == ref[0] == 0
        assert got[1] == ref[1]


@pytest.mark.parametrize("fmt,ext", [("onnx", ""), ("gguf", ".gguf")])
def test_f32_exports_chat_like_the_reference(fmt, ext, fixture_dir, tmp_path, capsys, monkeypatch):
    """Chat template (tokenizer_config.json / the GGUF's own), KV reuse and replies agree across runtimes."""
    from qwen2_edge.runtimes.registry import RUNTIMES

    if not any(e.format == fmt for e in RUNTIMES):
        pytest.skip(f"no {fmt} runtime registered on this branch yet")
    from qwen2_edge.exporters.api import export_model

    path = fixture_dir("dense_untied")
    art = export_model(path, fmt=fmt, quant="f32", out=tmp_path / f"du{ext}").path
    docs = []
    for i, model in enumerate((path, art)):
        t = tmp_path / f"t{i}.json"
        args = [str(model), "--chat", "--max-new-tokens", "1", "--transcript", str(t)]
        assert run_cli(args, capsys, stdin="hello there\nwhat is 2+2?\n", monkeypatch=monkeypatch)[0] == 0
        docs.append(json.loads(t.read_text()))
    ref, got = docs
    assert got == ref  # same messages, same context ids, same replies, same cache reuse
    assert got["turns"][1]["reused_tokens"] > 0


def test_text_stream_emits_only_complete_utf8(fixture_dir):
    from qwen2_edge.model.tokenizer import TextTokenizer
    from qwen2_edge.runtimes.streaming import TextStream

    tok = TextTokenizer(fixture_dir("dense"))
    text = "héllo wörld — ✓ 日本語 🙂 done"
    ids = tok.encode(text)
    assert len(ids) > len(text.encode()) // 2  # byte-level pieces: multi-byte chars span tokens
    stream = TextStream(tok.decode)
    pieces = [stream.push(t) for t in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(p == "" for p in pieces) > 0  # some tokens were held back until their character completed


def test_ctrl_c_stops_generation_cleanly(fixture_dir):
    from qwen2_edge.runtimes import open_session
    from qwen2_edge.runtimes.streaming import Chat, stream_generate

    session = open_session(fixture_dir("dense_untied"))
    seen: list[str] = []

    def interrupt_after_three(piece: str) -> None:  # what a terminal's SIGINT does mid-stream
        seen.append(piece)
        if len(seen) == 3:
            raise KeyboardInterrupt

    ids, stats = stream_generate(session, session.encode(PROMPT), 50, on_text=interrupt_after_three)
    assert stats.stopped_by == "interrupt" and stats.generated_tokens == len(ids) == 3
    # In chat, an interrupted turn keeps the partial reply and forgets the (possibly torn) KV cache.
    chat = Chat(session, max_new_tokens=50)
    seen.clear()
    turn = chat.say("hello", interrupt_after_three)
    assert turn.stats.stopped_by == "interrupt" and session.n_cached == 0
    assert chat.messages[-1] == {"role": "assistant", "content": turn.reply}
    seen.clear()
    assert chat.say("again", lambda s: None).stats.reused_tokens == 0


def test_generation_stops_at_a_stop_token_and_hides_it(fixture_dir):
    from qwen2_edge.runtimes import open_session
    from qwen2_edge.runtimes.streaming import stream_generate

    session = open_session(fixture_dir("dense_untied"))
    prompt = session.encode(PROMPT)
    free = session.greedy(prompt, 6)
    stop = free[3]
    pieces: list[str] = []
    ids, stats = stream_generate(session, prompt, 50, on_text=pieces.append, stop_ids={stop})
    assert ids == free[: free.index(stop) + 1] and stats.stopped_by == "stop"
    assert "".join(pieces) == session.decode(ids[:-1])  # the stop token itself is not printed
    assert session.tokenizer.token_id("<|im_end|>") in session.stop_ids()
    assert set(session.spec.eos_token_id) <= session.stop_ids()


def test_prompt_longer_than_the_runtime_context_exits_2(fixture_dir, tmp_path, capsys):
    from qwen2_edge.exporters.api import export_model

    gguf = export_model(fixture_dir("dense"), fmt="gguf", quant="f32", out=tmp_path / "d.gguf").path
    capsys.readouterr()
    rc, _, err = run_cli([str(gguf), "--prompt", "a b " * 5000, "--max-new-tokens", "2"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "exceeds the context" in lines[0]
