"""Integrity across transmission, storage and the supply chain.

- Signed manifests (:mod:`.manifest`, :mod:`.hashing`, :mod:`.keys`): streamed
  SHA-256 with a Merkle root over chunks, Ed25519 signatures, verification that
  names every file added, removed or changed.
- Authenticated collectors (:mod:`.collectors`, :mod:`.nonces`): per-record
  HMAC-SHA256 with device keys, timestamps and nonces; a verifier that rejects
  forged, altered, stale and replayed records with a reason.
- Safe model loading (:mod:`.model_scan`, :mod:`.pickle_scan`,
  :mod:`.safetensors_check`, :mod:`.onnx_check`, :mod:`.loading`): static scans
  of pickle-based files, safetensors headers and ONNX external data, and
  :func:`load_model`, which rejects what the scan flags.
"""

from .allowlist import Allowlist
from .collectors import (
    DeviceKey,
    RecordRejected,
    RecordVerifier,
    Rejection,
    SignedRecord,
    Verdict,
    sign_record,
)
from .findings import Finding, FindingKind, ImportedGlobal, ScanResult, Severity
from .hashing import DEFAULT_CHUNK_SIZE, FileDigest, hash_file, merkle_root
from .keys import generate_keypair, key_id, load_private_key, load_public_key, write_keypair
from .loading import load_model
from .manifest import (
    FileCheck,
    FileStatus,
    Manifest,
    ManifestEntry,
    VerificationReport,
    build_manifest,
    sign_manifest,
    verify_manifest,
    write_manifest,
)
from .model_scan import scan_file, scan_files, scan_stream
from .nonces import MemoryNonceStore, NonceStore, SQLiteNonceStore
from .pickle_scan import scan_pickle_bytes

__all__ = [
    "Allowlist",
    "DEFAULT_CHUNK_SIZE",
    "DeviceKey",
    "FileCheck",
    "FileDigest",
    "FileStatus",
    "Finding",
    "FindingKind",
    "ImportedGlobal",
    "Manifest",
    "ManifestEntry",
    "MemoryNonceStore",
    "NonceStore",
    "RecordRejected",
    "RecordVerifier",
    "Rejection",
    "SQLiteNonceStore",
    "ScanResult",
    "Severity",
    "SignedRecord",
    "VerificationReport",
    "Verdict",
    "build_manifest",
    "generate_keypair",
    "hash_file",
    "key_id",
    "load_model",
    "load_private_key",
    "load_public_key",
    "merkle_root",
    "scan_file",
    "scan_files",
    "scan_pickle_bytes",
    "scan_stream",
    "sign_manifest",
    "sign_record",
    "verify_manifest",
    "write_keypair",
    "write_manifest",
]
