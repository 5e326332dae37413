"""Ed25519 signing keys for manifests: generation, PEM files and key ids.

Private keys are written as PKCS#8 PEM with file mode 0600, optionally
encrypted with a passphrase; public keys as SubjectPublicKeyInfo PEM. A key id
is the first 16 hex digits of the SHA-256 of the raw 32-byte public key, so a
manifest can name the key that signed it without carrying the key.

Reference: Bernstein, Duif, Lange, Schwabe, Yang (2012), "High-speed
high-security signatures"; RFC 8032 (Ed25519). Keys come from the
``cryptography`` package.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .._validation import check_output_path
from ..errors import ParameterError

__all__ = [
    "generate_keypair",
    "write_keypair",
    "load_private_key",
    "load_public_key",
    "key_id",
    "verify_signature",
]

logger = logging.getLogger(__name__)


def generate_keypair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    """Return a new Ed25519 private key and its public key."""
    private_key = Ed25519PrivateKey.generate()
    return private_key, private_key.public_key()


def key_id(public_key: Ed25519PublicKey) -> str:
    """Return the first 16 hex digits of the SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def write_keypair(
    private_path: str | os.PathLike[str],
    public_path: str | os.PathLike[str],
    *,
    passphrase: bytes | None = None,
    overwrite: bool = False,
) -> str:
    """Generate a key pair, write both PEM files and return the key id.

    Parameters
    ----------
    private_path, public_path : path-like
        Where to write the private key (mode 0600) and the public key (mode 0644).
    passphrase : bytes, optional
        Encrypts the private key (PKCS#8 with the best available encryption).
    overwrite : bool, default False
        Replace existing files; without it an existing file raises.

    Raises
    ------
    ParameterError
        If a file exists and ``overwrite`` is False, a path is a folder, or a
        parent of a path is a file. Nothing is written then.
    """
    private_path, public_path = Path(private_path), Path(public_path)
    for path in (private_path, public_path):
        check_output_path(path, "write_keypair", name="key file")
        if path.is_dir():
            raise ParameterError(f"write_keypair: key file {str(path)!r} is a folder; pass a file path", value=str(path))
        if path.exists() and not overwrite:
            raise ParameterError(
                f"write_keypair: {str(path)!r} already exists; choose another path or pass overwrite=True",
                value=str(path),
            )
    private_key, public_key = generate_keypair()
    encryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    private_pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_file(private_path, private_pem, 0o600)
    _write_file(public_path, public_pem, 0o644)
    identifier = key_id(public_key)
    logger.info("wrote key pair %s to %s and %s", identifier, private_path, public_path)
    return identifier


def load_private_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from a PEM file.

    Raises
    ------
    ParameterError
        If the file is missing, is not a PEM private key, is encrypted and no
        (or a wrong) passphrase was given, or holds another kind of key.
    """
    path = Path(path)
    data = _read_key_file(path, "load_private_key")
    if b"PRIVATE KEY" not in data and b"PUBLIC KEY" in data:
        raise ParameterError(
            f"load_private_key: {str(path)!r} is a public key; give the private key (the .key file from keygen)",
            value=str(path),
        )
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as error:
        raise ParameterError(
            f"load_private_key: {str(path)!r} is encrypted; give its passphrase ({error})", value=str(path)
        ) from None
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ParameterError(
            f"load_private_key: {str(path)!r} is not a readable PEM private key or the passphrase is wrong ({error})",
            value=str(path),
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ParameterError(
            f"load_private_key: {str(path)!r} holds a {type(key).__name__}, not an Ed25519 key; "
            "make one with `mlwarden keygen`",
            value=str(path),
        )
    # Warn only once the file is known to be a private key, so a wrong file gets its error alone.
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("private key %s can be read by other users; run chmod 600 on it", path)
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read an Ed25519 public key from a PEM file.

    Raises
    ------
    ParameterError
        If the file is missing, is not a PEM public key, or holds another kind of key.
    """
    path = Path(path)
    data = _read_key_file(path, "load_public_key")
    if b"PRIVATE KEY" in data:
        raise ParameterError(
            f"load_public_key: {str(path)!r} is a private key; give the public key (the .pub file from keygen)",
            value=str(path),
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ParameterError(
            f"load_public_key: {str(path)!r} is not a readable PEM public key ({error})", value=str(path)
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ParameterError(
            f"load_public_key: {str(path)!r} holds a {type(key).__name__}, not an Ed25519 key", value=str(path)
        )
    return key


def _read_key_file(path: Path, owner: str) -> bytes:
    if not path.is_file():
        raise ParameterError(f"{owner}: key file {str(path)!r} not found; make keys with `mlwarden keygen`", value=str(path))
    return path.read_bytes()


def _write_file(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_CREAT applies the mode to new files; fchmod also fixes the mode of a file being replaced.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(descriptor, mode)
        os.write(descriptor, data)
    finally:
        os.close(descriptor)


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Return whether ``signature`` is a valid Ed25519 signature of ``message`` under ``public_key``."""
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        return False
    return True

