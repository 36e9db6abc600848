"""Atomic writes: a reader (or a crash) sees the previous file or folder or the new one, never half.

A file is written to a hidden temp file beside it (``.<name>.tmp-*``), fsynced and renamed over it.
A folder is built in a hidden temp folder beside it and swapped in with two renames (old aside,
new in); between them only the hidden ``.<name>.old-*`` sibling holds the previous folder, which
``previous_versions`` finds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

FILE_MODE = 0o644  # mkstemp creates 0600; written files are meant to be shared like any other


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then os.replace it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """``atomic_write_bytes`` of ``text`` encoded."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2,
                      sort_keys: bool = True, ensure_ascii: bool = True,
                      newline: bool = False) -> None:
    """``obj`` as ``json.dumps`` with these options (plus "\\n" when ``newline``), atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
    atomic_write_text(path, text + "\n" if newline else text)


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temp folder beside ``directory``; on success it replaces ``directory``.

    On an exception inside the block the temp folder is removed and an existing ``directory`` is
    left untouched; if the final rename fails, the previous folder is put back.
    """
    target = Path(directory).absolute()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target}: exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old: Path | None = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def replace_dir_atomic(target: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """``atomic_directory`` for writers that create the folder themselves: ``write(path)`` gets
    a path that does not exist yet and must create it (as ``save_pretrained``-style savers do)."""
    with atomic_directory(target) as tmp:
        tmp.rmdir()
        write(tmp)
        if not tmp.is_dir():
            raise RuntimeError(f"writer did not create the directory {tmp}")


def previous_versions(directory: str | os.PathLike[str]) -> list[Path]:
    """Copies of ``directory`` that a crash between the two renames of a swap left aside."""
    target = Path(directory)
    return sorted(target.parent.glob(f".{target.name}.old-*"))


def directory_manifest(directory: str | os.PathLike[str]) -> str:
    """A checksum of a folder's listing: every file's relative path and size (contents are not
    read, so it is cheap for checkpoints). A deleted, added or truncated file changes it."""
    root = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:16]
