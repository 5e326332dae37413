"""Checks of output paths, made before any long work starts so that a bad path never wastes a run."""

from __future__ import annotations

from pathlib import Path

from ..errors import ParameterError

__all__ = ["check_output_dir", "check_output_file"]


def _reject_file_ancestor(path: Path, option: str) -> None:
    """Raise a :class:`ParameterError` when an ancestor of ``path`` is an existing file."""
    for parent in reversed(path.absolute().parents):
        if parent.exists() and not parent.is_dir():
            raise ParameterError(
                f"{option} {path} cannot be created because {parent} is a file; pass a path under a directory",
                value=str(path),
            )


def check_output_dir(path: Path, option: str = "--output") -> Path:
    """Return ``path`` after checking that it is, or can become, a directory.

    Raises
    ------
    ParameterError
        ``path`` or one of its ancestors is an existing file.
    """
    if path.exists() and not path.is_dir():
        raise ParameterError(f"{option} {path} is a file, not a directory; pass a new or existing directory", value=str(path))
    _reject_file_ancestor(path, option)
    return path


def check_output_file(path: Path, option: str = "--output") -> Path:
    """Return ``path`` after checking that a file can be written there.

    Raises
    ------
    ParameterError
        ``path`` is a directory, or one of its ancestors is an existing file.
    """
    if path.is_dir():
        raise ParameterError(f"{option} {path} is a directory; pass a file name such as {path / 'model.safetensors'}", value=str(path))
    _reject_file_ancestor(path, option)
    return path
