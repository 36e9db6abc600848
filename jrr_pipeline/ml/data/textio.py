"""Low-level reading shared by the readers: UTF-8 line streams, chunked frames, small parsers.

Files are read as bytes and decoded line by line so that a bad byte can be reported with its
line and offset, and so that memory stays bounded by the final frames (rows are collected in
Python lists only up to ``CHUNK_ROWS`` before being packed into a polars chunk).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import polars as pl
from tqdm.auto import tqdm

from ..settings.base import shown
from .errors import DataFormatError

BOM = b"\xef\xbb\xbf"
CHUNK_ROWS = 250_000
_PROGRESS_EVERY = 1 << 16  # lines between progress-bar updates (tqdm is slow per call)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

SPLIT_ALIASES = {"train": "train", "dev": "dev", "validation": "dev", "val": "dev", "test": "test"}
SPLIT_ORDER = {"train": 0, "dev": 1, "test": 2}  # the order files of each split are read in
LINE = pl.UInt32  # dtype of the internal `_line` column
SRC = pl.UInt16  # dtype of the internal `_src` column (index into the list of files read)


def split_rank(split: str | None) -> int:
    """Position of a normalised split in SPLIT_ORDER; anything else after all of them."""
    return SPLIT_ORDER.get(split or "", len(SPLIT_ORDER))


def require_file(path: Path) -> Path:
    """Return ``path`` if it is an existing file, else raise a DataFormatError naming it."""
    if not path.is_file():
        raise DataFormatError(path, None, None, f"required file {not_a_file(path)}")
    return path


def not_a_file(path: Path) -> str:
    """Why ``path`` is not a readable file: missing, a directory, a broken link or a link loop."""
    if path.is_symlink() and not path.exists():
        try:
            path.stat()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a symbolic link loop"
        return f"is a broken symbolic link (to {os.readlink(path)})"
    return "is not a file" if path.exists() else "does not exist"


def decoded_lines(path: Path, progress: bool = False) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for every line of ``path``, line ending kept.

    A leading UTF-8 BOM is dropped. Invalid UTF-8 raises a DataFormatError with the line and
    the byte offset (within the line and within the file).
    """
    require_file(path)
    size = path.stat().st_size
    if size == 0:
        raise DataFormatError(path, None, None, "file is empty")
    offset = 0
    pending = 0
    with (
        open(path, "rb") as fh,
        tqdm(
            total=size, unit="B", unit_scale=True, desc=path.name, disable=not progress,
            leave=False,
        ) as bar,
    ):
        for number, raw in enumerate(fh, 1):
            start = 0
            if number == 1 and raw.startswith(BOM):
                start = len(BOM)
            try:
                text = raw[start:].decode("utf-8")
            except UnicodeDecodeError as exc:
                at = start + exc.start
                raise DataFormatError(
                    path, number, None,
                    f"invalid UTF-8 byte 0x{raw[at]:02x} at byte {at} of the line "
                    f"(byte {offset + at} of the file)",
                ) from None
            offset += len(raw)
            if number % _PROGRESS_EVERY == 0:
                bar.update(offset - pending)
                pending = offset
            yield number, text
        bar.update(offset - pending)


def content_lines(path: Path, progress: bool = False) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for the non-blank lines, line ending (LF or CRLF) removed.

    Blank lines are tolerated only at the end of the file; a file without any non-blank line
    is an error.
    """
    blank_at = 0
    seen = False
    for number, text in decoded_lines(path, progress):
        text = text.rstrip("\r\n")
        if not text or text.isspace():
            blank_at = blank_at or number
            continue
        if blank_at:
            raise DataFormatError(
                path, blank_at, None, "blank line inside the file (only trailing ones are allowed)"
            )
        seen = True
        yield number, text
    if not seen:
        raise DataFormatError(path, None, None, "file is empty (only blank lines)")


def parse_int(text: str) -> int | None:
    """Parse a base-10 int32 such as ``"2"`` or ``"-1"``; ``None`` if ``text`` is not one."""
    text = text.strip()
    if not text or "_" in text or not text.lstrip("+-").isascii():
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if _INT32_MIN <= value <= _INT32_MAX else None


def int_problem(text: str, what: str = "relevance") -> str:
    """Why ``text`` is not what :func:`parse_int` accepts, in words."""
    number = text.strip()
    if number.lstrip("+-").isascii() and number.lstrip("+-").isdigit():
        number = number if len(number) <= 20 else number[:20] + "..."
        return f"{what} {number} is out of range (a 32-bit integer, {_INT32_MIN}..{_INT32_MAX})"
    return f"{what} must be an integer, got {shown(text)}"


def normalize_split(name: str) -> str | None:
    """Map a split name to train / dev / test (validation and val mean dev); ``None`` if unknown."""
    return SPLIT_ALIASES.get(name.strip().lower())


class ChunkedColumns:
    """Collect rows column-wise in Python lists and pack them into polars chunks.

    Readers bind ``cols[name].append`` once and call :meth:`maybe_flush` per row; the lists are
    cleared (not replaced) on flush, so bound methods stay valid.
    """

    def __init__(self, schema: dict[str, pl.DataType]) -> None:
        self.schema = schema
        self.cols: dict[str, list] = {name: [] for name in schema}
        self._chunks: list[pl.DataFrame] = []
        self._first = next(iter(self.cols.values()))

    def maybe_flush(self) -> None:
        """Pack the collected rows into a chunk once there are ``CHUNK_ROWS`` of them."""
        if len(self._first) >= CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._first:
            self._chunks.append(pl.DataFrame(self.cols, schema=self.schema))
            for values in self.cols.values():
                values.clear()

    def finish(self) -> pl.DataFrame:
        """Return all rows collected so far as one frame (in insertion order)."""
        self._flush()
        if not self._chunks:
            return pl.DataFrame(schema=self.schema)
        frame = pl.concat(self._chunks, how="vertical", rechunk=False)
        self._chunks = []
        return frame
