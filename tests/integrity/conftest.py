"""Fixtures of the integrity tests: the scanner corpus (built once per session) and its sentinel file."""

from __future__ import annotations

from pathlib import Path

import pytest

from .corpus import CorpusFile, build_corpus


@pytest.fixture(scope="session")
def corpus_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scan-corpus")


@pytest.fixture(scope="session")
def sentinel(corpus_folder: Path) -> Path:
    """The file that any corpus payload would create if it ever ran."""
    return corpus_folder / "SENTINEL"


@pytest.fixture(scope="session")
def corpus(corpus_folder: Path, sentinel: Path) -> dict[str, CorpusFile]:
    files = build_corpus(corpus_folder / "files", sentinel)
    return {item.name: item for item in files}
