"""The one exception type for bad input files."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """Bad input data, located as precisely as possible.

    Attributes:
        path: the offending file (or directory), as a string.
        line: 1-based line number in the file; for Parquet files the 1-based row number
            (the problem text then says "row"). ``None`` when the whole file is at fault.
        field: the field or column at fault, in the file's own naming, or ``None``.
        problem: what is wrong, in words.

    ``str(err)`` is ``"{path}:{line}: field '{field}': {problem}"`` with the parts that are
    ``None`` left out.
    """

    def __init__(
        self,
        path: str | Path,
        line: int | None = None,
        field: str | None = None,
        problem: str = "invalid data",
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        super().__init__(self._format())

    def _format(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        if self.field is not None:
            return f"{where}: field '{self.field}': {self.problem}"
        return f"{where}: {self.problem}"

    def __reduce__(self):  # keep the attributes when pickled (e.g. across processes)
        return (type(self), (self.path, self.line, self.field, self.problem))
