"""Typed errors of the annotation database. Every error names the thing (file, reader, assignment) and the cause."""
from __future__ import annotations

from pathlib import Path


class AnnotationDbError(Exception):
    """Base class of every error raised by annotations_db."""


class NotFound(AnnotationDbError):
    """A reader, case, study, assignment or model version that does not exist."""


class AccessDenied(AnnotationDbError):
    """A reader tried to read or write an assignment or answer that is not theirs."""


class InvalidEvent(AnnotationDbError):
    """An interaction event of an unknown kind or with a malformed payload."""


class AlreadySubmitted(AnnotationDbError):
    """A second answer for an assignment in a study that does not allow revisits."""


class StudyDesignError(AnnotationDbError):
    """A study that cannot be built as asked (unknown design, no readers, duplicate arms...)."""


class ImportFileError(AnnotationDbError):
    """One input file could not be imported; ``path`` names it and ``cause`` says why."""

    def __init__(self, path: Path | str, cause: str) -> None:
        self.path = Path(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class PathOutsideRoot(ImportFileError):
    """A path in an import list that resolves outside the import root (path traversal)."""


class UnreadableFile(ImportFileError):
    """A file that exists but cannot be decoded or read."""


class BadCsv(ImportFileError):
    """A CSV whose columns or rows do not fit the expected layout (missing columns, duplicates)."""


class UnknownClass(BadCsv):
    """A CSV with class columns that are not in the label set."""


class BadProbability(BadCsv):
    """A predictions CSV cell that is not a finite probability in [0, 1]; ``line`` and ``column`` name the cell."""

    def __init__(self, path: Path | str, line: int, column: str, value: str) -> None:
        self.line, self.column, self.value = line, column, value
        super().__init__(path, f"line {line}, column {column!r}: a probability must be a finite number in [0, 1], "
                               f"got {value!r}")


class BadThresholds(ImportFileError):
    """A supplier thresholds file (CSV class,threshold or JSON {class: threshold}) that cannot be used."""


class ImportFailed(AnnotationDbError):
    """A strict import that found errors; nothing was written. ``errors`` lists every per-file error."""

    def __init__(self, errors: list[ImportFileError]) -> None:
        self.errors = errors
        lines = "\n".join(f"  {error}" for error in errors[:20])
        super().__init__(f"import aborted, nothing written: {len(errors)} error(s)\n{lines}")


class ExportError(AnnotationDbError):
    """An export that cannot be written (unknown study, mask without source geometry...)."""
