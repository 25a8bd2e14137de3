"""Artifact integrity: every export records SHA-256 regions; `verify`, `run`, `check` and `bench` name the
first corrupted region (file + tensor + byte range) and exit 2; artifacts without a record run with a notice.

Guards issue 17: 50 flipped bytes inside model.onnx went unnoticed, `run` printed garbage and `bench` timed it.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from qwen2_edge.cli import main
from qwen2_edge.integrity import GGUF_KEY, PLACEHOLDER, _read_gguf_header, verify_artifact


@pytest.fixture(scope="module")
def artifacts(fixture_dir, tmp_path_factory):
    """An int4 ONNX folder with external data, a q4_0 GGUF (our packer) and a q4_k_m GGUF (llama.cpp's)."""
    from qwen2_edge.exporters.api import export_model, quantize_for_export
    from qwen2_edge.exporters.onnx import export_onnx
    from qwen2_edge.model.checkpoint import open_checkpoint
    from qwen2_edge.quant.scheme import QuantScheme

    root = tmp_path_factory.mktemp("integrity")
    src = fixture_dir("dense")
    ckpt = open_checkpoint(src, need_tokenizer=True)
    onnx = export_onnx(ckpt, root / "int4-onnx", "int4", quantize_for_export(ckpt, QuantScheme(4)),
                       external_data=True).path  # fmt: skip
    q4 = export_model(src, fmt="gguf", quant="q4_0", out=root / "q4_0.gguf").path
    qk = export_model(src, fmt="gguf", quant="q4_k_m", out=root / "q4_k_m.gguf").path
    return {"src": src, "onnx": onnx, "q4_0": q4, "q4_k_m": qk}


def _copy(path, tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    dest = tmp_path / path.name
    (shutil.copytree if path.is_dir() else shutil.copy)(path, dest)
    return dest


def _flip(path, offset: int, n: int = 50) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        old = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xA5 for b in old))


def _cli(args, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_onnx_manifest_tiles_every_file_and_names_tensors(artifacts):
    record = json.loads((artifacts["onnx"] / "manifest.json").read_text())["integrity"]
    files = record["files"]
    assert record["algorithm"] == "sha256"
    assert {"model.onnx", "model.onnx.data", "tokenizer.json", "genai_config.json"} <= set(files)
    assert "manifest.json" not in files
    for name, entry in files.items():
        regions = entry["regions"]
        assert entry["bytes"] == (artifacts["onnx"] / name).stat().st_size
        assert [r["offset"] for r in regions] == [0] + [r["offset"] + r["length"] for r in regions[:-1]]
        assert sum(r["length"] for r in regions) == entry["bytes"]  # every byte is covered exactly once
    data = files["model.onnx.data"]["regions"]
    assert all("tensor" in r for r in data) and len(data) > 10


@pytest.mark.parametrize("kind", ["onnx", "q4_0", "q4_k_m"])
def test_fresh_exports_verify(kind, artifacts, capsys):
    rc, out, err = _cli(["verify", str(artifacts[kind])], capsys)
    assert rc == 0, err
    assert re.search(r": OK \((onnx|gguf), \d+ regions, [\d.]+ MiB SHA-256 in [\d.]+ s\)", out)


def test_gguf_record_survives_llamacpp_and_is_ignored_by_it(artifacts, capsys):
    # q4_k_m is rewritten by llama.cpp's quantizer from our f16 file: the key is copied and then sealed.
    for kind in ("q4_0", "q4_k_m"):
        h = _read_gguf_header(artifacts[kind])
        assert h.digits is not None and len(h.digits) == 1 + len(h.tensors)
        rc, out, err = _cli(["run", str(artifacts[kind]), "--prompt", "ab", "--max-new-tokens", "3"], capsys)
        assert rc == 0, err
        assert "integrity" not in err


def test_corrupted_onnx_tensor_named_by_every_command(artifacts, tmp_path, capsys):
    art = _copy(artifacts["onnx"], tmp_path)
    regions = json.loads((art / "manifest.json").read_text())["integrity"]["files"]["model.onnx.data"]["regions"]
    target = next(r for r in regions if r["tensor"].startswith("model.layers.1.") and r["length"] > 200)
    _flip(art / "model.onnx.data", target["offset"] + 100)
    end = target["offset"] + target["length"] - 1
    want = (f"{art / 'model.onnx.data'}: corrupted: tensor {target['tensor']} (bytes {target['offset']}-{end}) "
            "does not match its recorded SHA-256")  # fmt: skip
    src = str(artifacts["src"])
    for args in (["verify", str(art)], ["run", str(art), "--prompt", "ab"], ["check", src, str(art)],
                 ["bench", str(art)]):  # fmt: skip
        rc, out, err = _cli(args, capsys)
        assert rc == 2, (args, err)
        assert err.strip() == f"qwen2-edge {args[0]}: error: {want}", args
        assert "Traceback" not in err
    rc, out, err = _cli(["run", str(art), "--prompt", "ab", "--max-new-tokens", "2", "--no-verify"], capsys)
    assert rc == 0  # the user's choice: loaded unchecked


def test_corrupted_onnx_graph_and_truncated_data(artifacts, tmp_path, capsys):
    art = _copy(artifacts["onnx"], tmp_path)
    _flip(art / "model.onnx", 200, 4)
    rc, _, err = _cli(["verify", str(art)], capsys)
    assert rc == 2 and f"{art / 'model.onnx'}: corrupted: bytes 0-" in err
    art2 = _copy(artifacts["onnx"], tmp_path / "t")
    data = art2 / "model.onnx.data"
    size = data.stat().st_size
    with data.open("r+b") as f:
        f.truncate(size - 100)
    rc, _, err = _cli(["verify", str(art2)], capsys)
    assert rc == 2 and f"{data}: truncated: tensor " in err and f"the file ends at byte {size - 100}" in err


def test_corrupted_gguf_tensor_and_header_named(artifacts, tmp_path, capsys):
    art = _copy(artifacts["q4_0"], tmp_path)
    h = _read_gguf_header(art)
    name, off, n = h.tensors[3]
    _flip(art, off + n // 2, 8)
    rc, _, err = _cli(["verify", str(art)], capsys)
    assert rc == 2
    assert f"{art}: corrupted: tensor {name} (bytes {off}-" in err
    rc, _, err = _cli(["run", str(art), "--prompt", "ab"], capsys)
    assert rc == 2 and f"tensor {name}" in err

    # A metadata value that still parses (a letter of general.name): the header region is named.
    art2 = _copy(artifacts["q4_0"], tmp_path / "h")
    raw = art2.read_bytes()
    at = raw.index(b"general.name") + len("general.name") + 4 + 8  # key, value type, string length
    with art2.open("r+b") as f:
        f.seek(at)
        f.write(b"X" if raw[at : at + 1] != b"X" else b"Y")
    rc, _, err = _cli(["verify", str(art2)], capsys)
    assert rc == 2 and "corrupted: header (metadata and tensor table) (bytes 0-" in err


def test_truncated_gguf_names_the_tensor_cut(artifacts, tmp_path, capsys):
    art = _copy(artifacts["q4_0"], tmp_path)
    size = art.stat().st_size
    with art.open("r+b") as f:
        f.truncate(size - 40)
    rc, _, err = _cli(["verify", str(art)], capsys)
    assert rc == 2 and "truncated: tensor " in err and "ends beyond the end of the file" in err


def test_artifacts_without_a_record_run_with_a_notice(artifacts, tmp_path, capsys):
    art = _copy(artifacts["onnx"], tmp_path)
    manifest = json.loads((art / "manifest.json").read_text())
    del manifest["integrity"]  # as written before integrity records existed
    (art / "manifest.json").write_text(json.dumps(manifest))
    rc, out, err = _cli(["run", str(art), "--prompt", "ab", "--max-new-tokens", "2"], capsys)
    assert rc == 0
    assert f"note: {art}: no integrity record (older export or another tool's file): not verified" in err
    rc, out, _ = _cli(["verify", str(art)], capsys)
    assert rc == 1 and "no integrity record" in out

    # A GGUF from another tool: no key at all.
    import numpy as np
    from gguf import GGUFWriter

    other = tmp_path / "other.gguf"
    w = GGUFWriter(str(other), "llama")
    w.add_tensor("t", np.arange(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert _read_gguf_header(other).digits is None
    v = verify_artifact(other)
    assert v is not None and not v.recorded
    # An unsealed placeholder (an interrupted or intermediate file) counts as no record, not as corruption.
    sealed = _copy(artifacts["q4_0"], tmp_path / "u")
    with sealed.open("r+b") as f:
        for d in _read_gguf_header(sealed).digits:
            f.seek(d.offset)
            f.write(PLACEHOLDER.encode())
    assert not verify_artifact(sealed).recorded


def test_verify_reports_every_artifact_then_exits_2(artifacts, tmp_path, capsys):
    bad = _copy(artifacts["q4_0"], tmp_path)
    _flip(bad, bad.stat().st_size - 10, 4)
    rc, out, err = _cli(["verify", str(bad), str(artifacts["onnx"]), str(tmp_path / "missing.gguf"),
                         str(artifacts["src"])], capsys)  # fmt: skip
    assert rc == 2
    assert f"{artifacts['onnx']}: OK" in out
    lines = err.strip().splitlines()
    assert len(lines) == 3 and "corrupted: tensor" in lines[0] and "no such file" in lines[1]
    assert "not an exported artifact" in lines[2]
    assert GGUF_KEY == "qwen2_edge.integrity.sha256"
