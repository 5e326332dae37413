"""Signed manifests of data sets and model files: build, sign, write, read and verify.

A manifest lists files by path relative to a base folder (by default the
folder the manifest is written to), each with its size, SHA-256, chunk hashes
and Merkle root (see :mod:`.hashing`). Folders given to :func:`build_manifest`
expand to every file below them and are recorded too, so verification also
reports files *added* to them. The manifest is signed with Ed25519 over its
canonical JSON bytes (keys sorted, no spaces, ASCII), and written as::

    {"manifest": {"schema": "mlwarden.manifest/1", "files": [...], ...},
     "signature": {"algorithm": "ed25519", "key_id": "...", "value": "<base64>"}}

:func:`verify_manifest` checks the signature first and, only when it holds,
every file, and returns a :class:`VerificationReport` that names each file
added, removed or changed.

Limitations: symbolic links are followed when they stay inside the base
folder and rejected otherwise; file modes, owners and timestamps are not
covered; a signature proves who signed, not that the signer's key is still
trusted (keep public keys out of reach of the people who can change the files).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from tqdm.auto import tqdm

from .. import __version__
from .._validation import check_output_path
from ..errors import IntegrityError, ParameterError
from .hashing import DEFAULT_CHUNK_SIZE, FileDigest, hash_file
from .keys import key_id, verify_signature

__all__ = [
    "SCHEMA",
    "ManifestEntry",
    "Manifest",
    "FileStatus",
    "FileCheck",
    "VerificationReport",
    "build_manifest",
    "sign_manifest",
    "write_manifest",
    "verify_manifest",
    "canonical_json",
]

logger = logging.getLogger(__name__)

SCHEMA = "mlwarden.manifest/1"


@dataclass(frozen=True)
class ManifestEntry:
    """One file of a manifest: its path relative to the base folder and its hashes."""

    path: str
    size: int
    sha256: str
    merkle_root: str
    chunk_hashes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "merkle_root": self.merkle_root,
            "chunk_hashes": list(self.chunk_hashes),
        }


@dataclass(frozen=True)
class Manifest:
    """The signed content: files, the folders they were expanded from, and how they were hashed."""

    files: tuple[ManifestEntry, ...]
    directories: tuple[str, ...] = ()
    chunk_size: int = DEFAULT_CHUNK_SIZE
    created: str = ""
    tool: str = f"mlwarden {__version__}"

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as JSON-ready data (what the signature covers)."""
        return {
            "schema": SCHEMA,
            "created": self.created,
            "tool": self.tool,
            "hash": "sha256",
            "chunk_size": self.chunk_size,
            "directories": list(self.directories),
            "files": [entry.to_dict() for entry in self.files],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and check the ``manifest`` object of a signed manifest file.

        Raises
        ------
        IntegrityError
            If a field is missing, of the wrong type, or a path leaves the base folder.
        """
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            schema = data.get("schema") if isinstance(data, dict) else None
            raise IntegrityError(f"manifest schema is {schema!r}, expected {SCHEMA!r}", value=schema)
        chunk_size = data.get("chunk_size")
        if not _is_count(chunk_size) or chunk_size < 4096:
            raise IntegrityError(f"manifest chunk_size {chunk_size!r} is not an integer >= 4096", value=chunk_size)
        directories = data.get("directories", [])
        if not isinstance(directories, list):
            raise IntegrityError("manifest 'directories' is not a list", value=directories)
        entries = data.get("files")
        if not isinstance(entries, list):
            raise IntegrityError("manifest 'files' is not a list", value=entries)
        return cls(
            files=tuple(_parse_entry(item) for item in entries),
            directories=tuple(_check_relative(item) for item in directories),
            chunk_size=chunk_size,
            created=str(data.get("created", "")),
            tool=str(data.get("tool", "")),
        )


class FileStatus(str, enum.Enum):
    """The verdict of verification on one file."""

    OK = "ok"
    CHANGED = "changed"
    REMOVED = "removed"
    ADDED = "added"


@dataclass(frozen=True)
class FileCheck:
    """The verdict on one file: its path, status and, for a change, what differs."""

    path: str
    status: FileStatus
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status.value, "detail": self.detail}


@dataclass
class VerificationReport:
    """The result of :func:`verify_manifest`.

    Attributes
    ----------
    manifest_path : str
        The manifest verified.
    signature_valid : bool
        Whether the manifest parses and its signature verifies under the given key.
    signature_detail : str
        Why the signature failed, or which key signed it.
    files : list of FileCheck
        One entry per file in the manifest, plus one per file added to a signed
        folder; empty when the signature failed (an unsigned list is not worth checking).
    """

    manifest_path: str
    signature_valid: bool
    signature_detail: str
    files: list[FileCheck] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        """Whether the signature is valid and every file is unchanged, with nothing added."""
        return self.signature_valid and all(check.status is FileStatus.OK for check in self.files)

    def problems(self) -> list[FileCheck]:
        """Return the files that were added, removed or changed."""
        return [check for check in self.files if check.status is not FileStatus.OK]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "mlwarden.verification/1",
            "manifest": self.manifest_path,
            "intact": self.intact,
            "signature_valid": self.signature_valid,
            "signature_detail": self.signature_detail,
            "files": [check.to_dict() for check in self.files],
        }


def canonical_json(data: Any) -> bytes:
    """Return the bytes a signature covers: JSON with sorted keys, no spaces, ASCII only."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def build_manifest(
    paths: Iterable[str | os.PathLike[str]],
    *,
    base_dir: str | os.PathLike[str],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    exclude: Iterable[str | os.PathLike[str]] = (),
    progress: bool | None = None,
) -> Manifest:
    """Hash the files and folders in ``paths`` into an unsigned manifest.

    Parameters
    ----------
    paths : iterable of path-like
        Files and folders inside ``base_dir`` (relative paths are taken from
        the working directory, as on a command line).
    base_dir : path-like
        The folder that manifest paths are relative to.
    chunk_size : int, default 4 MiB
        Bytes per hashed chunk.
    exclude : iterable of path-like
        Files to leave out of folder expansion (the manifest itself).
    progress : bool or None, default None
        Show a progress bar: None shows it only on a terminal.

    Raises
    ------
    ParameterError
        If a path does not exist, is outside ``base_dir``, is a special file,
        or no file is found.
    """
    base = Path(base_dir).resolve()
    excluded = {Path(item).resolve() for item in exclude}
    directories: list[str] = []
    files: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ParameterError(f"build_manifest: {str(raw)!r} not found; check the path", value=str(raw))
        relative = _relative_to_base(path, base)
        if path.is_dir():
            directories.append(relative)
            for member in _walk_files(path, base):
                if member.resolve() not in excluded:
                    files.setdefault(_relative_to_base(member, base), member)
        elif path.is_file():
            files.setdefault(relative, path)
        else:
            raise ParameterError(f"build_manifest: {str(raw)!r} is not a regular file or folder", value=str(raw))
    if not files:
        raise ParameterError("build_manifest: no files to sign; give files or non-empty folders", value=list(paths))
    entries = []
    total = sum(path.stat().st_size for path in files.values())
    with tqdm(total=total, unit="B", unit_scale=True, desc="hashing", disable=None if progress is None else not progress) as bar:
        for relative in sorted(files):
            digest = hash_file(files[relative], chunk_size, progress=bar.update)
            entries.append(_entry(relative, digest))
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    logger.info("hashed %d files (%d bytes) under %s", len(entries), total, base)
    return Manifest(tuple(entries), tuple(sorted(set(directories))), chunk_size, created)


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return the signed document: the manifest and an Ed25519 signature over its canonical JSON."""
    body = manifest.to_dict()
    signature = private_key.sign(canonical_json(body))
    return {
        "manifest": body,
        "signature": {
            "algorithm": "ed25519",
            "key_id": key_id(private_key.public_key()),
            "value": base64.b64encode(signature).decode("ascii"),
        },
    }


def write_manifest(manifest: Manifest, private_key: Ed25519PrivateKey, output: str | os.PathLike[str]) -> Path:
    """Sign ``manifest`` and write it to ``output`` as indented JSON; return the path.

    Raises
    ------
    ParameterError
        If ``output`` is a folder or a parent of it is a file.
    """
    output = check_output_path(output, "write_manifest", name="manifest path")
    if output.is_dir():
        raise ParameterError(f"write_manifest: manifest path {str(output)!r} is a folder; pass a file path", value=str(output))
    output.parent.mkdir(parents=True, exist_ok=True)
    document = sign_manifest(manifest, private_key)
    output.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("wrote manifest of %d files signed by %s to %s", len(manifest.files), document["signature"]["key_id"], output)
    return output


def verify_manifest(
    manifest_path: str | os.PathLike[str],
    public_key: Ed25519PublicKey,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> VerificationReport:
    """Check a signed manifest's signature, then every file it lists.

    Parameters
    ----------
    manifest_path : path-like
        The signed manifest.
    public_key : Ed25519PublicKey
        The key the manifest must be signed with.
    base_dir : path-like, optional
        The folder manifest paths are relative to; the manifest's own folder by default.
    progress : bool or None, default None
        Show a progress bar: None shows it only on a terminal.

    Returns
    -------
    VerificationReport
        ``intact`` is True only when the signature is valid and no file was added,
        removed or changed.

    Raises
    ------
    ParameterError
        If the manifest file does not exist or is not a manifest. A file is not
        a manifest when it does not start with a JSON object, when it is not
        valid JSON and does not name the manifest schema, or when it is JSON
        without a ``manifest`` or ``signature`` field. A file that claims to be
        a manifest but fails the checks is reported as not intact instead.
    """
    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise ParameterError(f"verify_manifest: {str(manifest_path)!r} not found; give a manifest written by `mlwarden sign`", value=str(manifest_path))
    with manifest_path.open("rb") as stream:
        # Only the head is read, so a model file passed by mistake is rejected without reading all of it.
        head = stream.read(4096)
    if not head.lstrip().startswith(b"{"):
        raise _not_a_manifest(manifest_path, "it does not start with a JSON object")
    report = VerificationReport(str(manifest_path), False, "")
    try:
        manifest, signer = _read_signed(manifest_path, public_key)
    except IntegrityError as error:
        report.signature_detail = error.message
        logger.warning("manifest %s rejected: %s", manifest_path, error.message)
        return report
    report.signature_valid = True
    report.signature_detail = f"signed by key {signer}"
    base = Path(base_dir).resolve() if base_dir is not None else manifest_path.resolve().parent
    total = sum(entry.size for entry in manifest.files)
    with tqdm(total=total, unit="B", unit_scale=True, desc="verifying", disable=None if progress is None else not progress) as bar:
        for entry in manifest.files:
            report.files.append(_check_entry(entry, base, manifest.chunk_size, bar.update))
    report.files.extend(_added_files(manifest, base, manifest_path.resolve()))
    logger.info("verified %s: %s", manifest_path, "intact" if report.intact else f"{len(report.problems())} problems")
    return report


def _not_a_manifest(path: Path, reason: str) -> ParameterError:
    return ParameterError(
        f"verify_manifest: {str(path)!r} is not a manifest because {reason}; a manifest is the signed JSON file "
        f"(schema {SCHEMA!r}) that `mlwarden sign PATH... --key KEY --output FILE` writes, so pass that file",
        value=str(path),
    )


def _read_signed(path: Path, public_key: Ed25519PublicKey) -> tuple[Manifest, str]:
    data = path.read_bytes()
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        if SCHEMA.rsplit("/", 1)[0].encode("ascii") not in data:
            raise _not_a_manifest(path, "it is not valid JSON") from None
        # A damaged file that still names the schema is a manifest that was altered.
        raise IntegrityError(f"manifest is not valid JSON: {error}") from None
    if not isinstance(document, dict) or not {"manifest", "signature"} & set(document):
        raise _not_a_manifest(path, "it has neither a 'manifest' nor a 'signature' field")
    if not isinstance(document.get("signature"), dict):
        raise IntegrityError("manifest has no 'signature' object")
    signature = document["signature"]
    if signature.get("algorithm") != "ed25519":
        raise IntegrityError(f"signature algorithm {signature.get('algorithm')!r} is not 'ed25519'")
    expected = key_id(public_key)
    if signature.get("key_id") != expected:
        raise IntegrityError(
            f"manifest was signed by key {signature.get('key_id')!r}, but the given public key is {expected!r}"
        )
    try:
        value = base64.b64decode(str(signature.get("value", "")), validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError("signature value is not base64") from None
    if not verify_signature(public_key, value, canonical_json(document.get("manifest"))):
        raise IntegrityError("signature does not match the manifest: the manifest was altered or signed with another key")
    return Manifest.from_dict(document["manifest"]), expected


def _check_entry(entry: ManifestEntry, base: Path, chunk_size: int, progress: Any) -> FileCheck:
    path = base / entry.path
    if not path.exists() and not path.is_symlink():
        return FileCheck(entry.path, FileStatus.REMOVED, "the file is missing")
    if not Path(os.path.realpath(path)).is_relative_to(base):
        return FileCheck(entry.path, FileStatus.CHANGED, "the path now resolves outside the base folder through a symbolic link")
    if not path.is_file():
        return FileCheck(entry.path, FileStatus.CHANGED, "the path is no longer a regular file")
    size = path.stat().st_size
    if size != entry.size:
        progress(entry.size)
        return FileCheck(entry.path, FileStatus.CHANGED, f"size is {size} bytes, signed {entry.size}")
    digest = hash_file(path, chunk_size, progress=progress)
    if digest.sha256 == entry.sha256 and digest.merkle_root == entry.merkle_root:
        return FileCheck(entry.path, FileStatus.OK)
    changed = [index for index, (new, old) in enumerate(zip(digest.chunk_hashes, entry.chunk_hashes)) if new != old]
    if changed:
        # The manifest keeps only hashes, so the change is located to a chunk, not to a byte.
        first = changed[0] * chunk_size
        detail = (
            f"content differs in {len(changed)} of {len(entry.chunk_hashes)} chunks of {chunk_size} bytes; "
            f"the first changed chunk starts at byte {first}"
        )
    else:
        detail = "content differs"
    return FileCheck(entry.path, FileStatus.CHANGED, detail)


def _added_files(manifest: Manifest, base: Path, manifest_file: Path) -> list[FileCheck]:
    listed = {entry.path for entry in manifest.files}
    added = []
    for directory in manifest.directories:
        folder = base / directory
        if not folder.is_dir():
            continue
        for member in _walk_files(folder, base):
            relative = member.relative_to(base).as_posix()
            if relative not in listed and member.resolve() != manifest_file:
                added.append(FileCheck(relative, FileStatus.ADDED, f"not in the manifest, but inside the signed folder {directory!r}"))
    return sorted(added, key=lambda check: check.path)


def _walk_files(folder: Path, base: Path) -> list[Path]:
    """Return the regular files below ``folder`` (symbolic links to files inside ``base`` included), sorted."""
    found = []
    for root, _, names in os.walk(folder, followlinks=False):
        for name in names:
            path = Path(root) / name
            if path.is_file():
                found.append(path)
    return sorted(found)


def _relative_to_base(path: Path, base: Path) -> str:
    absolute = Path(os.path.abspath(path))
    resolved = path.resolve()
    if not absolute.is_relative_to(base) or not resolved.is_relative_to(base):
        raise ParameterError(
            f"build_manifest: {str(path)!r} is outside the base folder {str(base)!r}; "
            "move the manifest next to the files or pass a base folder that contains them",
            value=str(path),
        )
    relative = absolute.relative_to(base).as_posix()
    return "." if relative == "" else relative


def _entry(relative: str, digest: FileDigest) -> ManifestEntry:
    return ManifestEntry(relative, digest.size, digest.sha256, digest.merkle_root, digest.chunk_hashes)


def _parse_entry(item: Any) -> ManifestEntry:
    if not isinstance(item, dict):
        raise IntegrityError("a manifest file entry is not an object", value=item)
    path = _check_relative(item.get("path"))
    size = item.get("size")
    hashes = item.get("chunk_hashes")
    if not _is_count(size):
        raise IntegrityError(f"manifest entry {path!r} has no valid size", value=size)
    if not isinstance(hashes, list) or not all(_is_hex_digest(value) for value in hashes):
        raise IntegrityError(f"manifest entry {path!r} has no valid chunk_hashes", value=hashes)
    for key in ("sha256", "merkle_root"):
        if not _is_hex_digest(item.get(key)):
            raise IntegrityError(f"manifest entry {path!r} has no valid {key}", value=item.get(key))
    return ManifestEntry(path, size, item["sha256"], item["merkle_root"], tuple(hashes))


def _check_relative(value: Any) -> str:
    # Signed paths are still checked, so a manifest cannot make verification read outside the base folder.
    if not isinstance(value, str) or not value or "\\" in value or "\x00" in value:
        raise IntegrityError(f"manifest path {value!r} is not a relative POSIX path", value=value)
    pure = PurePosixPath(value)
    if pure.is_absolute() or ".." in pure.parts:
        raise IntegrityError(f"manifest path {value!r} leaves the base folder", value=value)
    return value


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_hex_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(char in "0123456789abcdef" for char in value)
