"""Safe output: preflight checks, temp-and-rename writes, one-line file-system errors, folder locks.

Every output is written to a temporary sibling and renamed over its destination only when complete, so an
interrupted or failed write leaves nothing half-written and never touches what was already complete. What the
operating system refuses (full, read-only or quota-limited disks, permissions, I/O errors) becomes one
`FileSystemError` line naming the path and the errno's meaning, the CLI's exit code 2.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ArtifactError, FileSystemError, UserError

# What each errno means to someone who has to fix it; the rest use os.strerror.
MEANINGS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error (the disk or the file system failed)",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "is a folder",
    errno.EFBIG: "file too large for the file system",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
    errno.ESTALE: "stale file handle (the file was removed on the server)",
}
# "(os error 28)": how Rust libraries (safetensors, tokenizers) report an OS error inside their own exception.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def error_number(e: BaseException) -> int | None:
    """The errno behind an exception: an OSError's own, or one a library wrapped into its message."""
    if isinstance(e, OSError):
        return e.errno
    m = _RUST_OS_ERROR.search(str(e))
    return int(m.group(1) or m.group(2)) if m else None


def errno_meaning(code: int | None) -> str:
    """'no space left on device (ENOSPC)'."""
    if code is None:
        return "input/output error"
    meaning = MEANINGS.get(code) or os.strerror(code).lower()
    name = errno.errorcode.get(code)
    return f"{meaning} ({name})" if name else meaning


def os_error(e: BaseException, path: str | Path, doing: str = "cannot write") -> FileSystemError:
    """A one-line error for an OS-level failure on `path`: '<path>: cannot write: read-only file system (EROFS)'."""
    return FileSystemError(f"{doing}: {errno_meaning(error_number(e))}", path)


def _blame(e: BaseException, dest: Path, tmp: Path | None) -> FileSystemError:
    """Name the destination for a failure on our temporary (users never see those names), else the file the
    OS named (e.g. a source file a copy could not read), saying which output was being written."""
    name = getattr(e, "filename", None)
    if name is not None:
        p = Path(os.fsdecode(name))
        if (tmp is None or not (p == tmp or tmp in p.parents)) and p != dest:
            return FileSystemError(f"{errno_meaning(error_number(e))} (while writing {dest})", p)
    return os_error(e, dest)


def _is_io_error(e: BaseException) -> bool:
    return isinstance(e, OSError) or error_number(e) is not None


# -- permissions ----------------------------------------------------------------------------------------
def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it races with other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(folder: bool) -> int:
    """The mode a file (0666) or folder (0777) the user creates gets: the umask applied (0644 / 0755 at 022).
    mkstemp / mkdtemp create 0600 / 0700, which a rename would otherwise carry to the artifact."""
    return (0o777 if folder else 0o666) & ~current_umask()


def _apply_default_modes(root: Path) -> None:
    file_mode, dir_mode = default_mode(False), default_mode(True)
    if root.is_file():
        os.chmod(root, file_mode)
        return
    os.chmod(root, dir_mode)
    for base, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(base, d), dir_mode)
        for f in files:
            os.chmod(os.path.join(base, f), file_mode)


# -- preflight ------------------------------------------------------------------------------------------
def _existing_ancestor(folder: Path) -> Path:
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_writable(folder: str | Path) -> None:
    """Fail now, in one line, unless a file can be created in `folder` (or, where it does not exist yet, in
    the nearest existing folder above it, so that it can be created). A real probe file: permission bits
    alone miss read-only mounts, root, ACLs and exhausted inodes."""
    folder = Path(folder)
    base = _existing_ancestor(folder.absolute())
    if not base.is_dir():
        raise FileSystemError("is not a folder, so nothing can be written under it", base)
    try:
        fd, probe = tempfile.mkstemp(prefix=".qwen2-edge-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if base == folder.absolute():
            raise os_error(e, folder, "cannot write into this folder") from None
        raise os_error(e, base, f"cannot create {folder} here") from None


def check_output(path: str | Path, force: bool, folder: bool | None = None) -> Path:
    """Refuse to overwrite an existing output unless force, and an output whose folder cannot be written
    (read-only, no permission, a file in the way); return the path. Nothing is created."""
    p = Path(path)
    if p.exists() and not force:
        raise UserError("already exists (pass --force to overwrite)", p)
    if folder is False and p.is_dir():
        raise UserError("is a folder (expected a file name)", p)
    check_writable(p.parent)
    return p


REPORT_BYTES = 2**20  # a JSON / HTML / PNG report or transcript: measured 10-200 KB


def free_bytes(folder: str | Path) -> int:
    """Bytes an unprivileged process can still write where `folder` is (or will be created)."""
    return shutil.disk_usage(_existing_ancestor(Path(folder).absolute())).free


def check_free_space(folder: str | Path, need_bytes: int) -> None:
    """Fail before writing when the planned outputs cannot fit (with 5% slack). `need_bytes` is an upper
    bound of what is on disk at once, temporaries included (exporters/api.py estimate_bytes)."""
    folder = Path(folder)
    free = free_bytes(folder)
    if need_bytes * 1.05 > free:
        raise FileSystemError(
            f"not enough free space: needs about {_mib(need_bytes)} but only {_mib(free)} are free", folder
        )


def check_stdout(need_bytes: int = 2**16) -> None:
    """Output redirected to a file (`> out.json`) on a full disk: fail before the work, not at the first
    print after it."""
    import stat
    import sys

    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        st = os.fstatvfs(fd)
    except (AttributeError, OSError, ValueError):  # no real file behind stdout (a pipe, a test capture)
        return
    if st.f_bavail * st.f_frsize < need_bytes:
        raise FileSystemError(f"cannot write: {errno_meaning(errno.ENOSPC)}", "standard output")


def preflight(path: str | Path, force: bool, need_bytes: int = 0, folder: bool | None = None) -> Path:
    """Everything that can be checked about an output before the work that produces it."""
    p = check_output(path, force, folder)
    if need_bytes:
        check_free_space(p.parent, need_bytes)
    return p


def _mib(n: int | float) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 10 * 2**20 else f"{n / 2**20:.0f} MiB"


# -- atomic writes --------------------------------------------------------------------------------------
def _make_parent(dest: Path) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, dest.parent, "cannot create the folder") from None


@contextlib.contextmanager
def atomic_file(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block completes. Any OS error
    on the way becomes a one-line FileSystemError; the temporary is always removed."""
    dest = Path(path)
    if dest.exists() and not force:
        raise UserError("already exists (pass --force to overwrite)", dest)
    _make_parent(dest)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
        os.close(fd)
    except OSError as e:
        raise os_error(e, dest) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _apply_default_modes(tmp_path)
        os.replace(tmp_path, dest)
    except Exception as e:
        if isinstance(e, UserError) or not _is_io_error(e):
            raise
        raise _blame(e, dest, tmp_path) from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it replaces `path` only if the block completes. Any OS error
    on the way becomes a one-line FileSystemError; the temporary folder is always removed, and an existing
    `path` survives any failure."""
    dest = Path(path)
    if dest.exists() and not force:
        raise UserError("already exists (pass --force to overwrite)", dest)
    _make_parent(dest)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    except OSError as e:
        raise os_error(e, dest) from None
    try:
        yield tmp
        _apply_default_modes(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            try:
                os.replace(tmp, dest)
            except OSError:
                os.replace(old, dest)  # put the complete old artifact back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except Exception as e:
        if isinstance(e, UserError) or not _is_io_error(e):
            raise
        raise _blame(e, dest, tmp) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | Path, text: str, force: bool = True) -> None:
    """A small text output (JSON, Markdown), atomically."""
    with atomic_file(path, force=force) as tmp:
        tmp.write_text(text, encoding="utf-8")


# -- exclusive folder use -------------------------------------------------------------------------------
@contextlib.contextmanager
def exclusive_lock(lock_file: str | Path, owner: str, folder: str | Path) -> Iterator[str]:
    """Hold an exclusive lock for the block, or fail at once naming the run that holds it.

    flock(2): the kernel releases the lock when its holder exits, however it exits (SIGKILL included), so a
    lock left by a killed run is free again; its owner line is still in the file and is yielded (else '')
    so the caller can say it took it over. The file is emptied, never removed, on release: removing it could
    let two runs lock two different files."""
    import fcntl

    lock_file = Path(lock_file)
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise os_error(e, lock_file, "cannot create the lock file") from None
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise UserError(
                f"in use by another qwen2-edge run ({holder}); wait for it to finish or stop it", folder
            ) from None
        except OSError:
            pass  # a file system without flock (some network mounts): run unlocked, as before
        previous = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() if locked else ""
        if locked:
            os.ftruncate(fd, 0)
            os.pwrite(fd, owner.encode(), 0)
        yield previous
    finally:
        if locked:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)


# -- reading --------------------------------------------------------------------------------------------
class FileWatch:
    """Notices a file truncated in place while a runtime has it memory-mapped (reading past the new end would
    kill the process with SIGBUS): `check()` before each use turns it into a one-line ArtifactError. A file
    replaced by rename (how every qwen2-edge output is written) or deleted keeps its mapped inode: fine."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size

    def check(self) -> None:
        if self.fd < 0:
            return
        size = os.fstat(self.fd).st_size
        if size < self.size:
            raise ArtifactError(
                f"truncated while open ({size} of {self.size} bytes left); the session cannot continue: "
                "export or copy the file again",
                self.path,
            )

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
