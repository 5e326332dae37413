"""Results of scanning model files: severities, findings, imported globals and per-file verdicts.

Scanners only produce these plain records; the command line and reports render
them. A file is *flagged* when any finding reaches :attr:`Severity.HIGH`, which
includes every file that could not be scanned completely: a scanner that gives
up must not call the file clean.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Severity", "FindingKind", "Finding", "ImportedGlobal", "ScanResult"]


class Severity(enum.IntEnum):
    """How serious a finding is; :attr:`HIGH` and above flag the file."""

    INFO = 0
    WARNING = 1
    HIGH = 2
    CRITICAL = 3

    def __str__(self) -> str:
        return self.name.lower()


class FindingKind(str, enum.Enum):
    """What a finding is about."""

    DANGEROUS_GLOBAL = "dangerous-global"
    """A global known to run commands, evaluate code, open files or load another payload."""
    UNLISTED_GLOBAL = "unlisted-global"
    """A global outside the allow-list."""
    UNRESOLVED_GLOBAL = "unresolved-global"
    """A ``STACK_GLOBAL`` whose module or name is not a string constant of the pickle."""
    COMPUTED_CALL = "computed-call"
    """A call whose callable is not a global, for example the result of another call."""
    UNEXPECTED_ARGUMENTS = "unexpected-arguments"
    """An allowed global called with arguments outside what it is allowed for."""
    EXTENSION_CODE = "extension-code"
    """An ``EXT1``/``EXT2``/``EXT4`` opcode, which imports through the copyreg extension registry."""
    NESTED_PAYLOAD = "nested-payload"
    """A second payload handed to a deserializer from inside the pickle."""
    MALFORMED = "malformed"
    """Bytes that do not parse as the format they claim to be."""
    UNSUPPORTED = "unsupported"
    """A format or compression that mlwarden cannot inspect."""
    TORCHSCRIPT = "torchscript"
    """A TorchScript archive, whose code ``torch.jit.load`` compiles and runs."""
    BAD_HEADER = "bad-header"
    """A safetensors header with offsets, sizes or keys that do not describe the file."""
    EXTERNAL_DATA = "external-data"
    """An ONNX external-data reference that escapes the model's folder or points past a file's end."""
    DUPLICATE_MEMBER = "duplicate-member"
    """A zip archive with two members of the same name, which readers resolve differently."""


@dataclass(frozen=True)
class Finding:
    """One problem found in a file.

    Attributes
    ----------
    kind : FindingKind
        What the finding is about.
    severity : Severity
        How serious it is; ``HIGH`` and above flag the file.
    message : str
        One sentence for a person: what was found and why it matters.
    location : str
        Where in the file: a zip member, the index of a pickle in a stream, a byte offset.
    """

    kind: FindingKind
    severity: Severity
    message: str
    location: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the finding as JSON-ready data."""
        return {
            "kind": self.kind.value,
            "severity": str(self.severity),
            "message": self.message,
            "location": self.location,
        }


@dataclass(frozen=True)
class ImportedGlobal:
    """A global that a pickle imports, with where it was imported and whether it is allowed.

    Attributes
    ----------
    module, name : str
        The import as the unpickler resolves it (Python 2 names already mapped to Python 3).
    opcode : str
        ``GLOBAL``, ``STACK_GLOBAL`` or ``INST``.
    location : str
        Where the import happens (member, pickle index and byte offset).
    allowed : bool
        Whether the allow-list accepts it.
    dangerous : bool
        Whether it is a known way to run code, open files or load another payload.
    """

    module: str
    name: str
    opcode: str
    location: str
    allowed: bool
    dangerous: bool

    @property
    def qualified_name(self) -> str:
        """``module.name``, as written in allow-lists."""
        return f"{self.module}.{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """Return the import as JSON-ready data."""
        return {
            "module": self.module,
            "name": self.name,
            "opcode": self.opcode,
            "location": self.location,
            "allowed": self.allowed,
            "dangerous": self.dangerous,
        }


@dataclass
class ScanResult:
    """Everything a scan learned about one file.

    Attributes
    ----------
    path : str
        The file scanned.
    format : str
        The format recognised from the file's bytes: ``torch-zip``, ``torchscript``,
        ``torch-legacy``, ``torch-tar``, ``zip``, ``pickle``, ``joblib``, ``numpy``,
        ``safetensors``, ``onnx`` or ``unknown``.
    globals : list of ImportedGlobal
        Every global imported by every pickle in the file, in stream order.
    findings : list of Finding
        Every problem found.
    """

    path: str
    format: str
    globals: list[ImportedGlobal] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """Whether any finding is of severity ``HIGH`` or above."""
        return any(finding.severity >= Severity.HIGH for finding in self.findings)

    @property
    def max_severity(self) -> Severity | None:
        """The highest severity among the findings, or None without findings."""
        return max((finding.severity for finding in self.findings), default=None)

    def unlisted_globals(self) -> list[str]:
        """Return the distinct ``module.name`` of globals outside the allow-list, in first-seen order."""
        return list(dict.fromkeys(item.qualified_name for item in self.globals if not item.allowed))

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-ready data."""
        return {
            "path": self.path,
            "format": self.format,
            "flagged": self.flagged,
            "globals": [item.to_dict() for item in self.globals],
            "findings": [finding.to_dict() for finding in self.findings],
        }
