"""Artifact integrity: SHA-256 of every byte an artifact holds, recorded at export and checked before loading.

- ONNX folder: `manifest.json` "integrity" lists each file with its size and the SHA-256 of consecutive
  regions that tile it. `model.onnx.data` is cut at each tensor's start (the tensor named in the region), so
  a corrupted byte is reported as the tensor that holds it; other files are one region per 64 MiB.
- GGUF file: the string array `qwen2_edge.integrity.sha256` (llama.cpp ignores keys it does not know):
  element 0 covers the header (metadata and tensor table, with this array's own hex digits read as zeros),
  element 1 + i the data of tensor i (in tensor-table order) up to the next tensor's start. The writer puts
  a placeholder of the final length there and `seal_gguf` patches the digits in place once the data is on
  disk, so nothing moves and writing stays streaming.

Regions are hashed on a thread pool (hashlib releases the GIL), one pass over the bytes. An artifact without
a record (older exports, GGUFs from other tools) is reported as unverified, never refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError

ALGORITHM = "sha256"
GGUF_KEY = "qwen2_edge.integrity.sha256"
_HEX = 64
PLACEHOLDER = "0" * _HEX
CHUNK = 64 << 20  # regions of files without a tensor layout
MANIFEST = "manifest.json"
ONNX_DATA_FILE = "model.onnx.data"


@dataclass(frozen=True)
class Region:
    offset: int
    length: int
    label: str | None = None  # a tensor name, or None for plain bytes

    def describe(self) -> str:
        span = f"bytes {self.offset}-{self.offset + self.length - 1}"
        return f"{self.label} ({span})" if self.label else span


@dataclass
class Verified:
    path: Path
    format: str  # "onnx" | "gguf"
    recorded: bool  # False: the artifact carries no integrity record (nothing was checked)
    bytes: int = 0
    regions: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        if not self.recorded:
            return f"{self.path}: no integrity record (older export or another tool's file): not verified"
        return (
            f"{self.path}: OK ({self.format}, {self.regions} regions, {self.bytes / 2**20:.1f} MiB "
            f"SHA-256 in {self.seconds:.2f} s)"
        )


def _threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _hash_regions(path: Path, regions: list[Region], zeros: list[Region] = ()) -> list[str]:
    """SHA-256 hex of each region of `path`, in order; bytes under `zeros` are hashed as ASCII '0'."""
    if not regions:
        return []
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return [hashlib.sha256().hexdigest() for _ in regions]
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:

                def one(r: Region) -> str:
                    h = hashlib.sha256()
                    end = min(r.offset + r.length, size)
                    inside = [z for z in zeros if r.offset <= z.offset and z.offset + z.length <= end]
                    if inside:  # the header: a copy with the record's own digits read as zeros
                        data = bytearray(view[r.offset : end])
                        for z in inside:
                            data[z.offset - r.offset : z.offset - r.offset + z.length] = b"0" * z.length
                        h.update(data)
                        return h.hexdigest()
                    for start in range(r.offset, end, 16 << 20):  # bounded slices keep the GIL released
                        h.update(view[start : min(start + (16 << 20), end)])
                    return h.hexdigest()

                # largest first, so the pool ends together
                order = sorted(range(len(regions)), key=lambda i: -regions[i].length)
                out: list[str] = [""] * len(regions)
                with ThreadPoolExecutor(_threads()) as pool:
                    for i, digest in zip(order, pool.map(lambda i: one(regions[i]), order), strict=True):
                        out[i] = digest
                return out
            finally:
                view.release()


def _tile(size: int, starts: Iterable[tuple[int, str | None]]) -> list[Region]:
    """Regions covering [0, size) cut at each (offset, label); bytes before the first cut are unlabelled."""
    cuts = sorted({(o, lab) for o, lab in starts if 0 <= o < size}, key=lambda c: c[0])
    if not cuts or cuts[0][0] != 0:
        cuts.insert(0, (0, None))
    regions = []
    for (o, lab), nxt in zip(cuts, [c[0] for c in cuts[1:]] + [size], strict=True):
        if nxt > o:
            regions.append(Region(o, nxt - o, lab))
    return regions


def _chunks(size: int) -> list[Region]:
    return [Region(o, min(CHUNK, size - o)) for o in range(0, size, CHUNK)] or [Region(0, 0)]


# -- ONNX folders ------------------------------------------------------------------------------------


def _onnx_tensor_starts(folder: Path, data_name: str) -> list[tuple[int, str | None]]:
    """(offset, tensor name) of every initializer stored in the external data file `data_name`."""
    import onnx

    try:
        model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    except Exception:  # a corrupt model.onnx: its own region reports it; the data file is cut in chunks
        return []
    starts = []
    tensors = list(model.graph.initializer)
    for node in model.graph.node:  # subgraph-free decoder; Constant attributes can also live outside
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        if info.get("location") == data_name:
            starts.append((int(info.get("offset", 0)), t.name))
    return starts


def _onnx_regions(folder: Path, name: str, size: int) -> list[Region]:
    if name == ONNX_DATA_FILE:
        starts = _onnx_tensor_starts(folder, name)
        if starts:
            return _tile(size, starts)
    return _chunks(size)


def record_onnx_folder(folder: str | Path) -> dict[str, Any]:
    """The manifest's "integrity" entry for every file in `folder` but the manifest itself."""
    folder = Path(folder)
    files = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name == MANIFEST:
            continue
        regions = _onnx_regions(folder, p.name, p.stat().st_size)
        digests = _hash_regions(p, regions)
        files[p.name] = {
            "bytes": p.stat().st_size,
            "regions": [
                {
                    "offset": r.offset,
                    "length": r.length,
                    **({"tensor": r.label} if r.label else {}),
                    ALGORITHM: d,
                }
                for r, d in zip(regions, digests, strict=True)
            ],
        }
    return {"algorithm": ALGORITHM, "files": files}


def verify_onnx_folder(folder: str | Path) -> Verified:
    from .errors import read_json_object

    folder = Path(folder)
    t0 = time.perf_counter()
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return Verified(folder, "onnx", recorded=False)
    manifest = read_json_object(manifest_path, "manifest", ArtifactError)
    record = manifest.get("integrity")
    if record is None:
        return Verified(folder, "onnx", recorded=False)
    if (
        not isinstance(record, dict)
        or record.get("algorithm") != ALGORITHM
        or not isinstance(record.get("files"), dict)
    ):
        raise ArtifactError("manifest.json: integrity record is malformed", folder)
    total = n = 0
    for name, entry in record["files"].items():
        path = folder / name
        try:
            regions = [
                Region(
                    int(r["offset"]), int(r["length"]), f"tensor {r['tensor']}" if r.get("tensor") else None
                )
                for r in entry["regions"]
            ]
            digests = [str(r[ALGORITHM]) for r in entry["regions"]]
            want = int(entry["bytes"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"manifest.json: integrity record of {name} is malformed", folder) from None
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise ArtifactError(
                f"manifest.json: integrity record names a file outside the folder: {name!r}", folder
            )
        if not path.is_file():
            raise ArtifactError("missing (listed in manifest.json)", path)
        size = path.stat().st_size
        got = _hash_regions(path, regions)
        bad = _first_bad(regions, digests, got)
        if bad is not None:
            raise ArtifactError(_bad_message(bad, size, want), path)
        if size != want:
            raise ArtifactError(f"is {size} bytes, the manifest records {want}", path)
        total += size
        n += len(regions)
    return Verified(folder, "onnx", True, total, n, time.perf_counter() - t0)


def _first_bad(regions: list[Region], want: list[str], got: list[str]) -> Region | None:
    for r, w, g in zip(regions, want, got, strict=True):
        if w != g:
            return r
    return None


def _bad_message(r: Region, size: int, want_size: int | None = None) -> str:
    if size < r.offset + r.length:
        return f"truncated: {r.describe()} recorded, the file ends at byte {size}"
    return f"corrupted: {r.describe()} does not match its recorded SHA-256"


# -- GGUF files --------------------------------------------------------------------------------------

# GGUF value type -> byte size of a scalar (8: string, 9: array are walked).
_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


@dataclass
class _GGUFHeader:
    data_start: int
    tensors: list[tuple[str, int, int]]  # (name, absolute offset, bytes), tensor-table order
    digits: list[Region] | None  # where GGUF_KEY's strings lie (None: no record)


class _Cursor:
    """A bounds-checked walk over the header bytes (gguf.GGUFReader builds a numpy view per string: 7-15 s
    for a 151,936-token vocabulary on 2 busy cores, against ~0.1 s here)."""

    def __init__(self, buf, path: Path) -> None:
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise ArtifactError(f"truncated or corrupt GGUF header (a field at byte {start} runs past the end)",
                                self.path)  # fmt: skip
        self.pos += n
        return start

    def u32(self) -> int:
        return int.from_bytes(self.buf[self.take(4) : self.pos], "little")

    def u64(self) -> int:
        return int.from_bytes(self.buf[self.take(8) : self.pos], "little")

    def string(self) -> tuple[int, int]:
        n = self.u64()
        return self.take(n), n

    def skip_value(self, vtype: int) -> None:
        if vtype == 8:
            self.string()
        elif vtype == 9:
            itype, count = self.u32(), self.u64()
            if itype == 8:
                buf, pos, size = self.buf, self.pos, self.size
                for _ in range(count):  # the vocabulary: the hot loop, kept flat
                    if pos + 8 > size:
                        break
                    pos += 8 + int.from_bytes(buf[pos : pos + 8], "little")
                self.pos = pos
                self.take(0)
            elif itype in _SCALAR:
                self.take(_SCALAR[itype] * count)
            else:
                for _ in range(count):
                    self.skip_value(itype)
        elif vtype in _SCALAR:
            self.take(_SCALAR[vtype])
        else:
            raise ArtifactError(f"corrupt GGUF header (unknown value type {vtype} at byte {self.pos - 4})",
                                self.path)  # fmt: skip


def _read_gguf_header(path: Path) -> _GGUFHeader:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    size = path.stat().st_size
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else _empty() as mm:
        c = _Cursor(mm, path)
        if bytes(mm[c.take(4) : c.pos]) != b"GGUF":
            raise ArtifactError("not a GGUF file (bad magic; expected 'GGUF')", path)
        version = c.u32()
        if version not in (2, 3):
            raise ArtifactError(f"unsupported GGUF version {version}", path)
        n_tensors, n_kv = c.u64(), c.u64()
        alignment, digits = 32, None
        for _ in range(n_kv):
            start, n = c.string()
            key = bytes(mm[start : start + n])
            vtype = c.u32()
            if key == GGUF_KEY.encode() and vtype == 9 and c.u32() == 8:
                digits = []
                for _ in range(c.u64()):
                    digits.append(Region(*c.string()))
            elif key == b"general.alignment" and vtype == 4:
                alignment = c.u32() or 32
            else:
                c.skip_value(vtype)
        tensors = []
        for _ in range(n_tensors):
            start, n = c.string()
            name = bytes(mm[start : start + n]).decode("utf-8", "replace")
            n_dims = c.u32()
            if n_dims > 8:
                raise ArtifactError(f"corrupt GGUF tensor table ({name}: {n_dims} dimensions)", path)
            numel = 1
            for _ in range(n_dims):
                numel *= c.u64()
            ttype, offset = c.u32(), c.u64()
            try:
                block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
            except (ValueError, KeyError):
                raise ArtifactError(
                    f"corrupt GGUF tensor table ({name}: unknown type {ttype})", path
                ) from None
            tensors.append((name, offset, numel // block * type_size))
        data_start = -(-c.pos // alignment) * alignment
    tensors = [(name, data_start + off, n) for name, off, n in tensors]
    for name, off, n in tensors:
        if off + n > size:
            raise ArtifactError(f"truncated: tensor {name} (bytes {off}-{off + n - 1}) ends beyond the end of "
                                f"the file ({size} bytes)", path)  # fmt: skip
    return _GGUFHeader(data_start, tensors, digits)


@contextlib.contextmanager
def _empty():
    yield b""


def _gguf_regions(h: _GGUFHeader, size: int) -> list[Region]:
    """The header, then each tensor in table order up to the next tensor's start (its alignment padding)."""
    starts = sorted(off for _, off, _ in h.tensors)
    ends = dict(zip(starts, starts[1:] + [size], strict=True))
    regions = [Region(0, h.data_start, "header (metadata and tensor table)")]
    for name, off, n in h.tensors:
        regions.append(Region(off, max(ends[off] - off, n), f"tensor {name}"))
    return regions


def gguf_placeholder(n_tensors: int) -> list[str]:
    """The value the writer records under GGUF_KEY before the data exists: the final length, all zeros."""
    return [PLACEHOLDER] * (1 + n_tensors)


def seal_gguf(path: str | Path) -> None:
    """Patch the SHA-256 digits into the placeholder `write_gguf` left under GGUF_KEY (same length: nothing
    moves). The header digest reads the digits as zeros, so it does not depend on them."""
    path = Path(path)
    h = _read_gguf_header(path)
    regions = _gguf_regions(h, path.stat().st_size)
    if h.digits is None or len(h.digits) != len(regions) or any(d.length != _HEX for d in h.digits):
        raise ArtifactError(f"no {GGUF_KEY} placeholder for {len(regions)} regions to seal", path)
    digests = _hash_regions(path, regions, h.digits)
    with path.open("r+b") as f:
        for where, digest in zip(h.digits, digests, strict=True):
            f.seek(where.offset)
            f.write(digest.encode("ascii"))


def verify_gguf(path: str | Path) -> Verified:
    path = Path(path)
    t0 = time.perf_counter()
    h = _read_gguf_header(path)
    size = path.stat().st_size
    if h.digits is None:
        return Verified(path, "gguf", recorded=False)
    regions = _gguf_regions(h, size)
    with path.open("rb") as f:
        want = []
        for d in h.digits:
            f.seek(d.offset)
            want.append(f.read(d.length).decode("ascii", "replace"))
    if len(want) != len(regions):
        raise ArtifactError(
            f"{GGUF_KEY} holds {len(want)} digests for {len(regions)} regions (header + tensors)", path
        )
    if all(w == PLACEHOLDER for w in want):
        return Verified(path, "gguf", recorded=False)  # written but never sealed (e.g. an intermediate)
    bad = _first_bad(regions, want, _hash_regions(path, regions, h.digits))
    if bad is not None:
        raise ArtifactError(_bad_message(bad, size), path)
    return Verified(path, "gguf", True, size, len(regions), time.perf_counter() - t0)


# -- any artifact ------------------------------------------------------------------------------------


def verify_artifact(path: str | Path) -> Verified | None:
    """Check an ONNX folder or GGUF file against its record; None for a path that is neither (a checkpoint
    directory, builtin:teacher). Raises ArtifactError naming the file and first bad region."""
    from .model.builtin import PREFIX
    from .runtimes.registry import detect_format

    if str(path).startswith(PREFIX):
        return None
    entry = detect_format(path)
    if entry.format == "onnx":
        return verify_onnx_folder(path)
    if entry.format == "gguf":
        return verify_gguf(path)
    return None


def verify_before_load(paths: Iterable[str | Path], skip: bool, notice: Callable[[str], None]) -> None:
    """What `run`, `check` and `bench` do before loading: verify each artifact (skip: --no-verify), a
    one-line notice for one without a record, ArtifactError (exit 2) for a corrupted one."""
    if skip:
        return
    for p in paths:
        v = verify_artifact(p)
        if v is not None and not v.recorded:
            notice(f"note: {v.line()}")
