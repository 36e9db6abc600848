"""Atomic writes: a crash while writing leaves the previous file or folder, and no temp litter."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from jrr_pipeline.ml import io
from jrr_pipeline.ml.io import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    previous_versions,
    replace_dir_atomic,
)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_file_writes_create_parents_replace_and_are_shared_readable(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    atomic_write_text(tmp_path / "t.txt", "é\n")
    assert (tmp_path / "t.txt").read_bytes() == "é\n".encode()
    assert names(path.parent) == ["b.bin"]


def test_json_options(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    atomic_write_json(path, {"b": 1, "a": "é"})
    assert path.read_text() == json.dumps({"a": "é", "b": 1}, indent=2)  # sorted, ASCII, no "\n"
    atomic_write_json(path, {"b": 1, "a": "é"}, indent=1, sort_keys=False, ensure_ascii=False,
                      newline=True)
    assert path.read_text(encoding="utf-8") == '{\n "b": 1,\n "a": "é"\n}\n'


def test_a_crash_while_writing_a_file_keeps_the_previous_one(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "report.json"
    atomic_write_text(path, "old")

    def crash(fd: int) -> None:
        raise KeyboardInterrupt("killed before the data reached the disk")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert names(tmp_path) == ["report.json"]


def test_a_crash_inside_atomic_directory_keeps_the_previous_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        assert tmp.is_dir() and tmp.parent == target.parent.absolute() and not list(tmp.iterdir())
        (tmp / "w.txt").write_text("v1")
    with pytest.raises(OSError, match="disk full"), atomic_directory(target) as tmp:
        (tmp / "w.txt").write_text("partial")
        raise OSError("disk full")
    assert (target / "w.txt").read_text() == "v1"
    assert names(tmp_path) == ["model"]
    with atomic_directory(target) as tmp:
        (tmp / "w.txt").write_text("v2")
    assert (target / "w.txt").read_text() == "v2"
    assert names(tmp_path) == ["model"]  # the old copy is gone too


def test_a_failed_swap_puts_the_previous_folder_back(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "index"
    with atomic_directory(target) as tmp:
        (tmp / "w.txt").write_text("v1")
    real_replace = os.replace

    def fail_moving_the_new_one_in(src, dst):
        if ".tmp-" in str(src):
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", fail_moving_the_new_one_in)
    with pytest.raises(OSError, match="rename failed"), atomic_directory(target) as tmp:
        (tmp / "w.txt").write_text("v2")
    assert (target / "w.txt").read_text() == "v1"
    assert names(tmp_path) == ["index"]


def test_atomic_directory_refuses_to_replace_a_file(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("a file")
    with pytest.raises(NotADirectoryError), atomic_directory(tmp_path / "x"):
        pass
    assert (tmp_path / "x").read_text() == "a file"


def test_replace_dir_atomic_gives_the_writer_a_path_to_create(tmp_path: Path) -> None:
    target = tmp_path / "model"

    def good(content: str):
        def write(path: Path) -> None:
            path.mkdir()  # fails if the path already exists
            (path / "w.txt").write_text(content)
        return write

    replace_dir_atomic(target, good("v1"))
    replace_dir_atomic(target, good("v2"))
    assert (target / "w.txt").read_text() == "v2"

    def broken(path: Path) -> None:
        path.mkdir()
        (path / "w.txt").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_dir_atomic(target, broken)
    with pytest.raises(RuntimeError, match="did not create"):
        replace_dir_atomic(target, lambda path: None)
    assert (target / "w.txt").read_text() == "v2"
    assert names(tmp_path) == ["model"]


def test_previous_versions_finds_what_a_crash_between_the_renames_leaves(tmp_path: Path) -> None:
    (tmp_path / ".model.old-1234abcd").mkdir()
    (tmp_path / ".modelx.old-1").mkdir()
    assert previous_versions(tmp_path / "model") == [tmp_path / ".model.old-1234abcd"]
