"""The built-in corpus: source and docstrings of the running interpreter's standard library.

Every machine with Python has it, so nothing third-party is committed. Training and held-out text come
from fixed, disjoint module lists; modules missing from this interpreter are skipped.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

# Held-out evaluation text (never trained on).
HELDOUT_MODULES = (
    "argparse.py", "textwrap.py", "difflib.py", "fractions.py", "statistics.py",
    "heapq.py", "bisect.py", "calendar.py", "shlex.py", "graphlib.py",
)  # fmt: skip
# Training text.
TRAIN_MODULES = (
    "abc.py", "ast.py", "base64.py", "bdb.py", "cmd.py", "code.py", "codecs.py", "colorsys.py",
    "configparser.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "datetime.py",
    "decimal.py", "dis.py", "doctest.py", "enum.py", "filecmp.py", "fileinput.py", "fnmatch.py",
    "ftplib.py", "functools.py", "getopt.py", "gettext.py", "glob.py", "gzip.py", "hashlib.py",
    "hmac.py", "imaplib.py", "inspect.py", "io.py", "ipaddress.py", "keyword.py", "linecache.py",
    "locale.py", "lzma.py", "mailbox.py", "mimetypes.py", "netrc.py", "numbers.py", "operator.py",
    "optparse.py", "os.py", "pathlib.py", "pdb.py", "pickle.py", "pkgutil.py", "platform.py",
    "plistlib.py", "poplib.py", "pprint.py", "profile.py", "pstats.py", "queue.py", "quopri.py",
    "random.py", "reprlib.py", "sched.py", "secrets.py", "selectors.py", "shelve.py", "shutil.py",
    "signal.py", "smtplib.py", "socket.py", "socketserver.py", "ssl.py", "stat.py", "string.py",
    "subprocess.py", "symtable.py", "tabnanny.py", "tarfile.py", "tempfile.py", "threading.py",
    "timeit.py", "token.py", "tokenize.py", "trace.py", "traceback.py", "tracemalloc.py",
    "types.py", "typing.py", "uuid.py", "warnings.py", "wave.py", "weakref.py", "webbrowser.py",
    "zipapp.py", "zipfile.py", "zipimport.py",
    "asyncio", "collections", "concurrent", "email", "html", "http", "importlib", "json",
    "logging", "multiprocessing", "unittest", "urllib", "xml", "sqlite3", "wsgiref", "xmlrpc",
)  # fmt: skip


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _read_modules(names: tuple[str, ...]) -> list[str]:
    root = stdlib_dir()
    texts: list[str] = []
    for name in names:
        p = root / name
        files = (
            sorted(f for f in p.rglob("*.py") if "test" not in f.relative_to(root).parts)
            if p.is_dir()
            else [p]
        )
        for f in files:
            if f.is_file():
                texts.append(f.read_text(encoding="utf-8", errors="replace"))
    return texts


def train_texts() -> list[str]:
    """Training documents (one per source file), in a fixed order."""
    return _read_modules(TRAIN_MODULES)


def heldout_texts() -> list[str]:
    """Held-out documents, disjoint from training."""
    return _read_modules(HELDOUT_MODULES)


def heldout_text() -> str:
    return "\n\n".join(heldout_texts())
