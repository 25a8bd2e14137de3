"""Hub model ids (`org/name[@revision]`) resolved offline from a Hugging Face cache built on disk here, in
huggingface_hub's real layout (models--org--name/{blobs, refs/<branch>, snapshots/<commit>/<file> -> blob}),
with every socket connection made to fail: offline resolution must not open the network."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest

from qwen2_edge.cli import main
from qwen2_edge.model.hub import ALLOW_PATTERNS, IGNORE_PATTERNS, parse_hub_id

MAIN_SHA = "0123456789abcdef0123456789abcdef01234567"
V1_SHA = "89abcdef0123456789abcdef0123456789abcdef"


def _add_snapshot(repo_dir, sha, src):
    """Blobs named by content hash, snapshot entries as relative symlinks to them (as huggingface_hub does)."""
    blobs = repo_dir / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    snap = repo_dir / "snapshots" / sha
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        data = f.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / f.name).symlink_to(f"../../blobs/{blob.name}")
    return snap


@pytest.fixture
def hub_cache(tmp_path, fixture_dir, monkeypatch):
    home = tmp_path / "hf_home"
    repo = home / "hub" / "models--tiny-org--tiny-qwen"
    main_snap = _add_snapshot(repo, MAIN_SHA, fixture_dir("dense"))
    v1_snap = _add_snapshot(repo, V1_SHA, fixture_dir("qwen25"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN_SHA)
    (repo / "refs" / "v1").write_text(V1_SHA)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.chdir(tmp_path)  # no local folder named tiny-org/...
    return {"main": main_snap, "v1": v1_snap}


def test_hub_id_resolves_offline_without_network(hub_cache, capsys):
    from qwen2_edge.model.checkpoint import open_checkpoint
    from qwen2_edge.runtimes.registry import open_session

    assert open_checkpoint("tiny-org/tiny-qwen").path == hub_cache["main"]
    assert open_checkpoint("tiny-org/tiny-qwen@v1").path == hub_cache["v1"]
    assert open_checkpoint(f"tiny-org/tiny-qwen@{V1_SHA}").path == hub_cache["v1"]
    assert main(["inspect", "tiny-org/tiny-qwen@v1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["hidden_size"] == 96  # the qwen25 fixture, not main's dense one (64)
    with open_session("tiny-org/tiny-qwen") as s:  # `run` and `check` open models this way
        assert s.runtime == "transformers" and s.path == hub_cache["main"]
        assert s.logits([1, 2, 3]).shape == (3, 384)


@pytest.mark.parametrize("model", ["tiny-org/no-such-model", "tiny-org/tiny-qwen@no-such-branch"])
def test_unknown_hub_id_offline_is_one_line_exit_2(model, hub_cache, capsys):
    assert main(["inspect", model]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no cached snapshot" in err and "HF_HUB_OFFLINE=1" in err and model in err


def test_local_folder_wins_over_hub_id(hub_cache, fixture_dir, tmp_path):
    import shutil

    from qwen2_edge.model.checkpoint import open_checkpoint

    shutil.copytree(fixture_dir("dense_untied"), tmp_path / "tiny-org" / "tiny-qwen")
    assert (
        open_checkpoint("tiny-org/tiny-qwen").path.resolve()
        == (tmp_path / "tiny-org" / "tiny-qwen").resolve()
    )


def test_download_patterns_never_take_pickles():
    from huggingface_hub.utils import filter_repo_objects

    files = [
        "config.json", "generation_config.json", "model.safetensors", "model-00001-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
        "pytorch_model.bin", "pytorch_model-00001-of-00002.bin", "training_args.bin", "optimizer.pt",
        "rng_state.pth", "model.ckpt", "data.pkl", "flax_model.msgpack", "tf_model.h5", "onnx/model.onnx",
    ]  # fmt: skip
    kept = set(
        filter_repo_objects(files, allow_patterns=list(ALLOW_PATTERNS), ignore_patterns=list(IGNORE_PATTERNS))
    )
    assert kept == {
        "config.json", "generation_config.json", "model.safetensors", "model-00001-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", ("Qwen/Qwen2.5-0.5B-Instruct", None)),
        ("Qwen/Qwen3-0.6B@main", ("Qwen/Qwen3-0.6B", "main")),
        (f"Qwen/Qwen3-30B-A3B@{MAIN_SHA}", ("Qwen/Qwen3-30B-A3B", MAIN_SHA)),
        ("/abs/path", None),
        ("./rel/dir", None),
        ("a/b/c", None),
        ("student.gguf", None),
        ("out/model.gguf", None),
        ("builtin:teacher", None),
    ],
)
def test_parse_hub_id(text, parsed):
    assert parse_hub_id(text) == parsed
