"""Provenance records: fields, canonical bytes, hashes, watermark IDs and pixel hashes.

A record's hash is the SHA-256 of its canonical JSON (sorted keys, no spaces, UTF-8) covering every
field except the hash and the signature themselves. The canonical form includes the record's
position (``seq``) and the previous record's hash, so editing, deleting or reordering records
breaks either the hash, the signature or the chain.

The watermark codec version that made a mark is stated in the record's metadata under
``WATERMARK_VERSION_KEY`` (written only for versions after 1), so it is hashed and signed like everything
else while records made before versions existed (and v1 records) keep their exact bytes and read as v1:
``Record.watermark_version``. An idempotency key (``metadata["idempotency_key"]``, see ledger_chain.py) is
stored the same way.

Watermark IDs are random 63-bit integers (1 .. 2**63-1; they fit the codec's 64-bit payload and
SQLite's signed 64-bit INTEGER), drawn with ``secrets`` and retried on the rare collision. Random IDs
reveal nothing about how many images an installation made. They are shown as 16 hex digits.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ..errors import InvalidInputError

RECORD_VERSION = 1
ID_BITS = 63
GENESIS_HASH = "0" * 64
SIGNATURE_DOMAIN = b"comfyui-backdrop/ledger-record/v1\n"
MAX_METADATA_DEPTH = 32  # nesting levels of a record's metadata (a dict of lists of dicts... counts each level)
WATERMARK_VERSION_KEY = "watermark_version"  # metadata key naming the codec version of the mark (absent: 1)
WATERMARK_VERSIONS = (1, 2, 3)
IDEMPOTENCY_KEY = "idempotency_key"  # metadata key: one record per input x settings x variation (see ledger_chain)


class WatermarkId(int):
    """A watermark ID (an int everywhere) that also carries the codec version of its mark, so a C2PA manifest
    written from it names the right soft-binding algorithm (see c2pa_manifest.sign_asset)."""

    watermark_version: int

    def __new__(cls, value: int, watermark_version: int = 1) -> WatermarkId:
        obj = super().__new__(cls, value)
        obj.watermark_version = watermark_version
        return obj


def new_watermark_id(bits: int = ID_BITS) -> int:
    """A random ID in 1 .. 2**bits-1 (``bits`` <= ID_BITS; codec v3 carries 40)."""
    if not 1 <= bits <= ID_BITS:
        raise InvalidInputError(f"a watermark ID has 1..{ID_BITS} bits, not {bits}")
    while True:
        value = secrets.randbits(bits)
        if value:
            return value


def format_id(value: int) -> str:
    """16 lowercase hex digits, the form shown to people and written into C2PA manifests."""
    return f"{int(value):016x}"


def parse_id(text: str | int) -> int:
    """Inverse of :func:`format_id` (also accepts an int); refuses anything that is not a valid ID."""
    if isinstance(text, int):
        value = text
    else:
        cleaned = str(text).strip().lower().removeprefix("0x")
        if not cleaned or len(cleaned) > 16 or any(c not in "0123456789abcdef" for c in cleaned):
            raise InvalidInputError(f"{text!r} is not a watermark ID (expected up to 16 hex digits)")
        value = int(cleaned, 16)
    if not 0 < value < 2**ID_BITS:
        raise InvalidInputError(f"{text!r} is outside the watermark ID range 1..2**63-1")
    return value


def pixel_sha256(image: np.ndarray) -> str:
    """SHA-256 of an image's 8-bit pixels, prefixed by its shape (``"HxWxC:"``).

    The hash is always taken on 8-bit values: uint16 and float (0..1) images are rounded to 8 bits the
    way the writers and readers do (``imaging.to_integer``), so the hash of a marked IMAGE equals the
    hash of the PNG that BackdropSave or ``backdrop run`` writes from it and ``verify`` reads back.
    """
    arr = np.asarray(image)
    if arr.dtype == np.uint16:
        arr = arr.astype(np.float64) / 65535.0
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(np.asarray(arr, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    header = "x".join(str(d) for d in arr.shape).encode("ascii") + b":"
    return hashlib.sha256(header + np.ascontiguousarray(arr).tobytes()).hexdigest()


@dataclass
class RecordContent:
    """What the caller states about an image. Everything here is covered by the hash and signature."""

    account: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    models: dict[str, str] = field(default_factory=dict)  # model name -> sha256 (or "" if unknown)
    loras: dict[str, str] = field(default_factory=dict)  # LoRA name -> sha256
    metadata: dict[str, Any] = field(default_factory=dict)  # anything JSON-serialisable
    # codec version of the mark; None: not stated (v1). Versions after 1 go into the metadata (see the module doc)
    watermark_version: int | None = None

    def __post_init__(self) -> None:
        for name in ("account", "prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise InvalidInputError(f"{name} must be text, got {type(getattr(self, name)).__name__}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise InvalidInputError(f"seed must be an integer or None, got {self.seed!r}")
        for name in ("models", "loras"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in value.items()):
                raise InvalidInputError(f"{name} must map names to hash strings, got {value!r}")
        if not isinstance(self.metadata, dict):
            raise InvalidInputError(f"metadata must be a JSON object (a dict), got {type(self.metadata).__name__}")
        check_metadata_depth(self.metadata)
        try:
            json.dumps(self.metadata, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}") from exc
        version = self.watermark_version
        if version is not None:
            if isinstance(version, bool) or version not in WATERMARK_VERSIONS:
                raise InvalidInputError(f"watermark_version must be one of {WATERMARK_VERSIONS}, got {version!r}")
            if version != 1:
                self.metadata = {**self.metadata, WATERMARK_VERSION_KEY: version}


@dataclass(frozen=True)
class Record:
    """One signed, chained ledger entry."""

    seq: int
    id: int
    created_at: str  # UTC, ISO 8601 with microseconds, e.g. 2025-01-31T12:00:00.123456+00:00
    account: str
    prompt: str
    negative_prompt: str
    seed: int | None
    models: dict[str, str]
    loras: dict[str, str]
    image_sha256: str
    metadata: dict[str, Any]
    signer: str  # Ed25519 public key, 64 hex digits
    prev_hash: str
    record_hash: str
    signature: str  # hex

    @property
    def id_hex(self) -> str:
        return format_id(self.id)

    @property
    def watermark_version(self) -> int:
        """The codec version that made the mark: the metadata's statement, else 1 (records older than versions)."""
        value = self.metadata.get(WATERMARK_VERSION_KEY, 1) if isinstance(self.metadata, dict) else 1
        return value if isinstance(value, int) and not isinstance(value, bool) and value in WATERMARK_VERSIONS else 1

    @property
    def idempotency_key(self) -> str | None:
        """The metadata's idempotency key (a string), else None."""
        value = self.metadata.get(IDEMPOTENCY_KEY) if isinstance(self.metadata, dict) else None
        return value if isinstance(value, str) else None

    def hashed_fields(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("record_hash", "signature")}
        data["v"] = RECORD_VERSION
        data["seed"] = None if self.seed is None else str(self.seed)  # seeds may exceed JSON-safe ints
        return data

    def computed_hash(self) -> str:
        return record_hash(self.hashed_fields())

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (IDs as hex strings) for reports and node outputs."""
        data = asdict(self)
        data["id"] = self.id_hex
        data["watermark_version"] = self.watermark_version
        return data


def json_depth(value: Any) -> int:
    """Nesting depth of a JSON-like value (a scalar is 0, ``{}`` and ``[]`` are 1), counted without recursion,
    so absurdly deep input cannot overflow the stack."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def check_metadata_depth(metadata: Any, what: str = "metadata") -> None:
    """Refuse metadata nested deeper than ``MAX_METADATA_DEPTH`` with a message instead of a RecursionError."""
    depth = json_depth(metadata)
    if depth > MAX_METADATA_DEPTH:
        raise InvalidInputError(f"{what} is nested {depth} levels deep; records take at most {MAX_METADATA_DEPTH} "
                                "levels. Flatten it (for example store the deep part as a string)")


def canonical_bytes(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def record_hash(hashed_fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(hashed_fields)).hexdigest()


def signed_message(record_hash_hex: str) -> bytes:
    """What the ledger key signs: a domain tag plus the record hash."""
    return SIGNATURE_DOMAIN + record_hash_hex.encode("ascii")
