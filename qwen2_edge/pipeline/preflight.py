"""Before a pipeline runs: can its folder be written, is there room for what it will write, is it in use."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..fsutil import REPORT_BYTES, check_free_space, check_writable, exclusive_lock
from .config import PipelineConfig

MARKER = ".qwen2-edge"
LOCK = "lock"  # inside MARKER; --force clears the marker but never this file (fsutil.exclusive_lock)
REPORTS = 7  # check.json/html, bench.json, report.json/html, summary.md, stage records


def student_spec(cfg: PipelineConfig):
    """(ModelSpec, tokenizer bytes) of the float model the pipeline quantizes: --model's, or the student
    --teacher will be distilled into (from the spec and the teacher's config.json; nothing is trained)."""
    from ..exporters.estimate import tokenizer_bytes
    from ..model.builtin import resolve_model_path

    if cfg.model:
        from ..model.checkpoint import open_checkpoint

        ckpt = open_checkpoint(cfg.model, need_tokenizer=True)
        return ckpt.spec, tokenizer_bytes(ckpt.path)
    from ..distill.student import DEFAULT_STUDENT, StudentSpec, resolve_config
    from ..errors import read_json_object
    from ..model.spec import read_spec, spec_from_dict

    teacher = resolve_model_path(cfg.teacher)
    read_spec(teacher)  # a bad teacher config is the distiller's one-line error, not ours
    spec = StudentSpec.from_json(cfg.student) if cfg.student else DEFAULT_STUDENT
    config = resolve_config(spec, read_json_object(teacher / "config.json", "config.json"))
    return spec_from_dict(config), tokenizer_bytes(teacher)


def needed_bytes(cfg: PipelineConfig, plan: list[tuple[str, str, str]]) -> int:
    """Upper bound of what this run adds to the folder: the student (if not distilled yet), every artifact
    not written yet, the largest export temporary, and the reports. Outputs that exist are cached or
    replaced one at a time; a replacement that does not fit is still a one-line error when it happens."""
    from ..exporters.api import make_policy
    from ..exporters.estimate import estimate_parts
    from ..model.params import count_params
    from .run import ARTIFACT_SUFFIX

    spec, tok = student_spec(cfg)
    need = 0
    if not cfg.model and not (cfg.out / "student" / "config.json").is_file():
        need += 4 * count_params(spec).total + tok
    policy = make_policy(cfg.policy)
    temps = [0]
    for fmt, q, fq in plan:
        final, temp = estimate_parts(spec, fmt, fq, policy, None, tok)
        temps.append(temp)
        if not (cfg.out / "artifacts" / f"{q}{ARTIFACT_SUFFIX[fmt]}").exists():
            need += final
    return need + max(temps) + REPORTS * REPORT_BYTES


def check_room(cfg: PipelineConfig, plan: list[tuple[str, str, str]]) -> None:
    """The folder can be written (or created) and has room: one line, exit 2, before any stage."""
    check_writable(cfg.out)
    check_free_space(cfg.out, needed_bytes(cfg, plan))


def owner_line(command: str) -> str:
    return (
        f"pid {os.getpid()} on {socket.gethostname()}, qwen2-edge {command}, "
        f"started {time.strftime('%Y-%m-%d %H:%M:%S')}"
    )


@contextlib.contextmanager
def locked_folder(cfg: PipelineConfig, command: str, echo: Callable[[str], None] = print) -> Iterator[None]:
    """Prepare the pipeline folder and hold it for this run: a second pipeline or demo into the same folder
    fails at once naming this one; a lock left by a killed run is taken over (said in one line).

    A pipeline folder resumes; a foreign non-empty folder needs --force; --force recomputes (forgets the
    stage records, keeps the lock)."""
    import shutil

    from ..errors import UserError
    from ..fsutil import os_error

    out = Path(cfg.out)
    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not marker.exists() and not cfg.force:
        raise UserError("folder is not empty and is not a qwen2-edge pipeline folder (pass --force to use it)", out)
    try:
        marker.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, marker, "cannot create the folder") from None
    with exclusive_lock(marker / LOCK, owner_line(command), out) as stale:
        if stale:
            echo(f"taking over {out}: the run that held it ({stale}) is gone")
        if cfg.force:
            for entry in marker.iterdir():
                if entry.name != LOCK:
                    if entry.is_dir():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
        yield
