"""Watermarking with provenance: mark an image and record it in the ledger; verify an image or a file.

**Re-marking policy.** The codec cannot stack two marks under one key (they would garble each other), so
an image that already carries a mark under this installation's key is never marked again. What happens
instead is chosen with ``remark``:

* ``refuse`` (default): raise :class:`AlreadyMarkedError`, naming the existing ID and whether this
  ledger has a record of it. Nothing is written. The message names the setting the user sees
  (``policy_input``: the node's ``if_already_marked``; ``None`` for ``backdrop run``, which has none).
* ``keep``: return the pixels unchanged with the existing ID and its origin record (None if this
  ledger does not know the ID). No record is written.
* ``add-record``: keep the existing mark and append a *further* signed record to that ID (with this
  call's prompt, account... and the hash of these pixels). The ID's first record stays its origin;
  verification lists the later ones. Refused when the ledger has no record of the ID.

**Records follow delivery.** :meth:`ProvenanceService.prepare_mark` embeds the mark and writes nothing;
:meth:`ProvenanceService.recording` appends the records of a whole batch in one ledger transaction that
commits only when the caller's block (saving the file, handing the batch on) succeeds. A failed save or a
refused image anywhere in a batch leaves no record. :meth:`ProvenanceService.mark` does both for one image.

Other bad input: an image smaller than the codec's ``MIN_SIDE`` raises ``ImageTooSmallError`` stating the
minimum; an unmarked image verifies as ``found=False`` with an empty ID; a tampered ledger record is
reported through its signature and chain status.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..provenance.keys import KeyStore, load_keys, provenance_home
from ..provenance.ledger import (
    BROKEN,
    INTACT,
    LEDGER_FILENAME,
    NOT_FOUND,
    VALID,
    DuplicateRecordError,
    Ledger,
    PendingRecord,
)
from ..provenance.ledger_backends import ledger_cache_key, open_ledger
from ..provenance.ledger_postgres import PostgresLedger
from ..provenance.records import (
    ID_BITS,
    IDEMPOTENCY_KEY,
    Record,
    RecordContent,
    WatermarkId,
    format_id,
    new_watermark_id,
    pixel_sha256,
)
from .arrays import ImageTooSmallError
from .codec import DEFAULT_VERSION, MIN_DETECT_SIDE, AlreadyWatermarkedError, Detection, detect, embed, payload_bits
from .localisation import PresenceMap

REMARK_POLICIES = ("refuse", "keep", "add-record")
NOT_MARKED = "not marked"
PIXELS_IDENTICAL = "identical to the marked image"
PIXELS_CHANGED = "changed since marking (crop, resize, re-encode or edit)"


class AlreadyMarkedError(AlreadyWatermarkedError):
    """The image already carries a watermark under this key (see the re-marking policy)."""


@dataclass
class MarkResult:
    image: np.ndarray  # same dtype/shape as the input
    watermark_id: str  # 16 hex digits
    record: Record | None  # None only with remark="keep" when the ledger lacks the existing ID
    status: str  # marked | kept existing mark | added a record to the existing mark


@dataclass
class PendingMark:
    """A mark embedded but not yet recorded: :meth:`ProvenanceService.recording` records it on delivery."""

    image: np.ndarray  # the pixels to deliver (marked, or the input unchanged when an existing mark is kept)
    watermark_id: int
    status: str  # marked | kept existing mark | added a record to the existing mark
    to_record: PendingRecord | None  # None: nothing to record (an existing mark kept)
    origin: Record | None = None  # the existing ID's origin record (kept / added-to marks)


@dataclass
class Verification:
    """Everything known about one image: the mark, its ledger record and (for files) the C2PA manifest."""

    source: str
    found: bool = False
    watermark_id: str = ""  # empty whenever found is False: never a guessed ID
    score: float = 0.0
    false_positive_probability: float = 1.0
    record: dict[str, Any] | None = None  # the ID's origin (first) record
    later_records: list[dict[str, Any]] = field(default_factory=list)  # records added with remark="add-record"
    signature: str = NOT_MARKED  # valid | invalid | untrusted signer | no record | not marked
    chain: str = NOT_MARKED  # intact | broken | no record | not marked
    problems: list[str] = field(default_factory=list)
    pixels: str = ""  # identical / changed since marking (only with a record)
    c2pa: dict[str, Any] | None = None  # files only: ManifestInfo fields + summary
    message: str = ""  # e.g. too small to carry a mark
    details: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # the image could not be checked at all (missing file, not an image...)
    watermark_version: int = 0  # codec version of the mark read from the pixels (0: none found)
    presence: PresenceMap | None = field(default=None, repr=False)  # where the mark is (verify_*(localise=True))
    size: tuple[int, int] = (0, 0)  # (height, width) of the pixels checked

    def presence_mask(self) -> np.ndarray:
        """float32 [H, W] in 0..1: 1 where the mark was read, 0 elsewhere (all 0 when none was found)."""
        height, width = self.size
        if self.presence is None:
            return np.zeros((max(1, height), max(1, width)), np.float32)
        return self.presence.mask(height or None, width or None)

    def presence_png(self) -> bytes:
        """``presence_mask`` as an 8-bit gray PNG (255 where the mark reads): the ``backdrop verify --map`` image."""
        import io

        from PIL import Image

        pixels = np.clip(np.rint(self.presence_mask() * 255.0), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buffer, "PNG")
        return buffer.getvalue()

    @property
    def tampered(self) -> bool:
        return self.found and self.record is not None and (self.signature != VALID or self.chain != INTACT)

    def to_json_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        data = asdict(dataclasses.replace(self, presence=None))
        data["details"] = _jsonable(self.details)
        data["tampered"] = self.tampered
        data["presence"] = None if self.presence is None else {
            "marked_fraction": self.presence.marked_fraction, "cell_px": self.presence.cell_px,
            "z": np.round(self.presence.z, 2).tolist()}
        return data

    def summary(self) -> str:
        lines = [f"{self.source}:" + (" TAMPERED" if self.tampered else "")]
        if self.error:
            lines.append(f"  not checked: {self.error}")
        elif self.found:
            lines.append(f"  watermark {self.watermark_id} (codec v{self.watermark_version}, score {self.score:.1f}, "
                         f"false-positive probability {self.false_positive_probability:.1e})")
            if self.presence is not None:
                lines.append(f"  mark present in {self.presence.marked_fraction:.0%} of the image")
            if self.record is None:
                lines.append("  ledger: no record with this ID in this ledger")
            else:
                lines.append(f"  record: {self.record['created_at']} account={self.record['account']!r} "
                             f"seed={self.record['seed']} prompt={_short(self.record['prompt'])!r}")
                lines.extend(f"  later record: {r['created_at']} account={r['account']!r} "
                             f"prompt={_short(r['prompt'])!r}" for r in self.later_records)
                lines.append(f"  signature: {self.signature}; chain: {self.chain}; pixels: {self.pixels}")
                lines.extend(f"  problem: {p}" for p in self.problems)
        else:
            lines.append("  no watermark found" + (f" ({self.message})" if self.message else ""))
        if self.c2pa is not None:
            lines.append(f"  c2pa: {self.c2pa['summary']}")
            if self.c2pa.get("watermark_ids"):
                lines.append(f"  c2pa soft binding: {', '.join(self.c2pa['watermark_ids'])}")
        return "\n".join(lines)


class ProvenanceService:
    """Keys + ledger + codec under one provenance home (see provenance.keys for the layout)."""

    def __init__(self, home: str | os.PathLike | None = None, create_keys: bool = True, *,
                 keys: KeyStore | None = None, ledger: str | os.PathLike | None = None) -> None:
        """``create_keys=False`` (checking only) never generates keys: a home without them raises NoKeysError.

        ``keys``: use these (e.g. ``KeyStore.from_secrets`` in a worker) instead of the home's key folder; nothing
        is read from or written to disk for them. ``ledger``: the ledger's location (a ``postgresql://`` URL or an
        SQLite file, see ledger_backends.open_ledger) instead of ``<home>/ledger.sqlite3``.
        """
        self.home = Path(home).expanduser() if home is not None else provenance_home()
        self.keys: KeyStore = keys if keys is not None else load_keys(home, create=create_keys)
        self.ledger: Ledger | PostgresLedger = open_ledger(
            self.home / LEDGER_FILENAME if ledger is None else ledger, self.keys)

    # ---- marking -------------------------------------------------------------------------------------
    def mark(self, image: np.ndarray, content: RecordContent, *, remark: str = "refuse", strength: float = 1.0,
             protect: np.ndarray | None = None, policy_input: str | None = "remark",
             watermark_version: int = DEFAULT_VERSION) -> MarkResult:
        """Embed a fresh ID and append its signed record (the record's image hash is of the marked pixels).

        ``protect``: optional HxW mask (bool, or float where > 0.5 counts) of pixels that must stay
        bit-exact, e.g. the product. The mark is embedded everywhere else, then read back; if the rest
        of the image is too small to carry it, nothing is recorded and InvalidInputError says so.
        The input array is never modified. See the module docstring for ``remark``. The record is written
        at once: to record only once the image is delivered, use :meth:`prepare_mark` and :meth:`recording`.
        """
        pending = self.prepare_mark(image, content, remark=remark, strength=strength, protect=protect,
                                    policy_input=policy_input, watermark_version=watermark_version)
        with self.recording([pending]) as (result,):
            return result

    def prepare_mark(self, image: np.ndarray, content: RecordContent, *, remark: str = "refuse",
                     strength: float = 1.0, protect: np.ndarray | None = None,
                     policy_input: str | None = "remark", watermark_version: int = DEFAULT_VERSION) -> PendingMark:
        """Everything :meth:`mark` does except writing the record: embed, check, and say what to record.

        Raises (and so records nothing) for a refused re-mark, an image too small to carry a mark, or a
        protected area that leaves too little room. ``policy_input`` is the name of the re-marking setting
        as the user sees it, used in the refusal message (``None``: the caller offers no such setting).
        ``watermark_version``: the codec version to mark with (1, 2 or 3); the record states it (see records.py).
        """
        if remark not in REMARK_POLICIES:
            raise InvalidInputError(f"unknown re-marking policy {remark!r}; use one of {', '.join(REMARK_POLICIES)}")
        keep = None if protect is None else _protect_mask(protect, np.asarray(image).shape[:2])
        existing = self.detect(image)
        if existing.found:  # an added record states the version of the mark it describes
            content = dataclasses.replace(content, watermark_version=existing.version)
            return self._already_marked(image, existing.payload, content, remark, policy_input)
        wid = self._unused_id(min(ID_BITS, payload_bits(watermark_version)))
        try:
            marked = embed(image, wid, self.keys.watermark_key, strength=strength, version=watermark_version)
        except AlreadyWatermarkedError as exc:  # the codec's own check can see marks detect() missed
            return self._already_marked(image, exc.existing_payload, content, remark, policy_input)
        if keep is not None and keep.any():
            marked = np.where(keep if marked.ndim == 2 else keep[..., None], np.asarray(image), marked)
            check = detect(marked, self.keys.watermark_key)
            if not (check.found and check.payload == wid):
                raise ImageTooSmallError(
                    f"the mark did not read back once the protected product ({keep.mean():.0%} of the image) was "
                    "restored: the rest is too small to carry a readable watermark at this size and strength. "
                    "Use a larger image, a higher strength, or protect less")
        content = dataclasses.replace(content, watermark_version=watermark_version)
        return PendingMark(marked, wid, "marked", PendingRecord(content, pixel_sha256(marked), wid))

    @contextlib.contextmanager
    def recording(self, pending: Sequence[PendingMark]) -> Iterator[list[MarkResult]]:
        """Record a batch of prepared marks when the block delivering them succeeds: all or nothing.

        Yields one MarkResult per pending mark (records signed, not yet committed). An exception in the
        block rolls every record back; leaving it commits them all.
        """
        to_record = [p.to_record for p in pending if p.to_record is not None]
        with self.ledger.appending(to_record) as records:
            written = iter(records)
            yield [MarkResult(p.image, format_id(p.watermark_id),
                              next(written) if p.to_record is not None else p.origin, p.status) for p in pending]

    def _already_marked(self, image: np.ndarray, existing_id: int, content: RecordContent, remark: str,
                        policy_input: str | None = "remark") -> PendingMark:
        origin = self.ledger.get(existing_id)
        if remark == "keep":
            return PendingMark(np.array(image, copy=True), existing_id, "kept existing mark", None, origin)
        if remark == "add-record" and origin is not None:
            return PendingMark(np.array(image, copy=True), existing_id, "added a record to the existing mark",
                               PendingRecord(content, pixel_sha256(image), existing_id, add_to_existing=True), origin)
        raise AlreadyMarkedError(already_marked_message(format_id(existing_id), origin is not None, policy_input),
                                 existing_id)

    def _unused_id(self, bits: int) -> int:
        """A random ``bits``-bit ID the ledger does not hold yet (v3 marks carry 40-bit IDs: 10^12 of them, so
        the check matters there; an ID taken between this check and the insert is refused by the ledger)."""
        while True:
            wid = new_watermark_id(bits)
            if not self.ledger.contains(wid):
                return wid

    # ---- verification --------------------------------------------------------------------------------
    def detect(self, image: np.ndarray, localise: bool = False) -> Detection:
        """The codec's Detection under this installation's key (found=False below the detector's minimum);
        ``localise``: with the presence map of a found mark."""
        height, width = np.asarray(image).shape[:2]
        if min(height, width) < MIN_DETECT_SIDE:
            return Detection(found=False, payload=None, false_positive_probability=1.0, score=0.0,
                             details={"reason": f"{width}x{height} is too small to read a watermark from; each "
                                                f"side must be at least {MIN_DETECT_SIDE} px"})
        return detect(image, self.keys.watermark_key, localise=localise)

    def verify_image(self, image: np.ndarray, source: str = "image", localise: bool = False) -> Verification:
        """Detect the mark, then look up and check its records (signature, chain, pixel hash).
        ``localise``: also map where the mark is (``Verification.presence``)."""
        result = Verification(source=source, size=tuple(np.asarray(image).shape[:2]))
        detection = self.detect(image, localise=localise)
        result.score = float(detection.score)
        result.false_positive_probability = float(detection.false_positive_probability)
        result.details = dict(detection.details)
        result.message = str(result.details.pop("reason", ""))
        if not detection.found or detection.payload is None:
            return result
        result.found, result.watermark_id = True, format_id(detection.payload)
        result.watermark_version, result.presence = detection.version, detection.presence
        checked = self.ledger.check_id(detection.payload)
        if not checked:
            result.signature = result.chain = NOT_FOUND
            lost = self.ledger.integrity_problems()
            result.problems.extend(lost or ["this ledger has no record with this ID (made by another installation "
                                            "sharing the key, or the record was deleted)"])
            return result
        (origin, _), later = checked[0], checked[1:]
        result.record = origin.to_json_dict()
        result.later_records = [record.to_json_dict() for record, _ in later]
        result.signature = VALID if all(c.signature == VALID for _, c in checked) else next(
            c.signature for _, c in checked if c.signature != VALID)
        result.chain = INTACT if all(c.chain == INTACT for _, c in checked) else BROKEN
        for record, check in checked:
            label = "record" if record is origin else f"later record seq {record.seq}"
            result.problems.extend(f"{label}: {p}" for p in check.problems)
            if check.signature != VALID:
                result.problems.append(f"{label}: signature {check.signature}")
        hashes = {record.image_sha256 for record, _ in checked}
        result.pixels = PIXELS_IDENTICAL if pixel_sha256(image) in hashes else PIXELS_CHANGED
        return result

    def verify_file(self, path: str | os.PathLike, localise: bool = False) -> Verification:
        """:meth:`verify_image` on a file's pixels, plus its C2PA manifest (PNG, JPEG, WebP)."""
        from ..imaging import read_image, to_integer
        from ..provenance.c2pa_manifest import MIME_TYPES, read_manifest

        path = Path(path)
        loaded = read_image(path)
        pixels = to_integer(loaded.rgb, 8)
        if loaded.alpha is not None:
            pixels = np.dstack([pixels, to_integer(loaded.alpha, 8)])
        result = self.verify_image(pixels, source=str(path), localise=localise)
        if path.suffix.lower().lstrip(".") in MIME_TYPES:
            info = read_manifest(path, keys=self.keys)
            result.c2pa = {**info.__dict__, "summary": info.summary}
            if info.present and result.found and info.watermark_ids and result.watermark_id not in info.watermark_ids:
                result.problems.append(f"the C2PA soft binding names {', '.join(info.watermark_ids)}, not the "
                                       f"watermark read from the pixels ({result.watermark_id})")
        return result

    def provenance_for(self, image: np.ndarray) -> tuple[int | None, str | None]:
        """(watermark ID, record hash) for an image about to be saved: what its C2PA manifest should bind.
        The ID is a WatermarkId carrying the codec version, which the manifest's soft binding names."""
        detection = self.detect(image)
        if not detection.found or detection.payload is None:
            return None, None
        record = self.ledger.get(detection.payload)
        return WatermarkId(detection.payload, detection.version), (record.record_hash if record else None)


_services: dict[tuple[Path, str | None], ProvenanceService] = {}
_services_lock = threading.Lock()


def get_service(home: str | os.PathLike | None = None, ledger: str | os.PathLike | None = None) -> ProvenanceService:
    """A shared service per (provenance home, ledger location) (keys are read once). ``ledger``: see
    :class:`ProvenanceService`; None is the home's ``ledger.sqlite3``."""
    path = (Path(home) if home is not None else provenance_home()).expanduser().resolve()
    key = (path, None if ledger is None else ledger_cache_key(ledger))
    with _services_lock:
        if key not in _services:
            _services[key] = ProvenanceService(path, ledger=ledger)
        return _services[key]


@contextlib.contextmanager
def marked_for_delivery(image_uint8: np.ndarray, content: RecordContent, protect: np.ndarray | None = None,
                        home: str | os.PathLike | None = None, ledger: str | os.PathLike | None = None,
                        idempotency_key: str | None = None, service: ProvenanceService | None = None,
                        watermark_version: int = DEFAULT_VERSION
                        ) -> Iterator[tuple[np.ndarray, Record, ProvenanceService]]:
    """For ``backdrop run``: yields (marked image, its record, the service); save the image inside the block.

    The record is committed only when the block succeeds, so a failed save leaves no record. An image that
    already carries a mark is refused (``backdrop run`` has no re-marking setting). ``protect`` is the product mask
    to keep bit-exact. ``ledger``: record into that ledger (see :class:`ProvenanceService`). ``idempotency_key``
    (one per input x settings x variation) goes into the record's signed metadata; when it is already recorded,
    ``ledger_chain.DuplicateRecordError`` (with the ``existing`` record) is raised before the block runs.
    ``service``: use this one (e.g. built with keys held in memory in a worker) instead of
    ``get_service(home, ledger)``. ``watermark_version``: the codec version to mark with (1, 2 or 3).
    """
    service = service if service is not None else get_service(home, ledger)
    if idempotency_key is not None:
        existing = service.ledger.find_idempotent(idempotency_key)  # the insert checks again, under the lock
        if existing is not None:
            raise DuplicateRecordError(f"idempotency key {idempotency_key!r} is already recorded (ID "
                                       f"{existing.id_hex}, seq {existing.seq}); nothing was marked", existing)
        content = dataclasses.replace(content, metadata={**content.metadata, IDEMPOTENCY_KEY: idempotency_key})
    pending = service.prepare_mark(image_uint8, content, remark="refuse", protect=protect, policy_input=None,
                                   watermark_version=watermark_version)
    with service.recording([pending]) as (result,):
        yield result.image, result.record, service


def already_marked_message(wid: str, has_record: bool, policy_input: str | None) -> str:
    """Why a second mark is refused and what to do, in the words of the setting the user sees."""
    where = "its record is in this ledger" if has_record else "this ledger has no record of it"
    if policy_input is None:
        hint = ("start from the unmarked original: a photo that already carries a mark cannot be marked again "
                "(a ComfyUI BackdropWatermark node can keep the mark or add a record to it)")
    elif has_record:
        hint = (f"set {policy_input} to 'keep' to keep that mark, or to 'add-record' to add a record to it")
    else:
        hint = f"set {policy_input} to 'keep' to keep that mark, or mark the unmarked original"
    return f"the image already carries watermark {wid} ({where}); a second mark is refused: {hint}"


def mark_for_run(image_uint8: np.ndarray, content: RecordContent, protect: np.ndarray | None = None,
                 remark: str = "refuse", home: str | os.PathLike | None = None) -> tuple[np.ndarray, Record]:
    """Watermark one output and record it at once (``content``'s models/loras map names to SHA-256, see
    provenance.file_hashes); ``protect`` is the product mask to keep bit-exact. Returns (marked image, same
    dtype as the input, and its record). To record only once the file is saved, use
    :func:`marked_for_delivery` (``backdrop run`` does)."""
    result = get_service(home).mark(image_uint8, content, remark=remark, protect=protect)
    if result.record is None:
        raise InvalidInputError(f"the image keeps its existing watermark {result.watermark_id}, which this ledger "
                                "does not know")
    return result.image, result.record


def _protect_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    keep = np.asarray(mask)
    if keep.shape != tuple(shape[:2]):
        raise InvalidInputError(f"the protect mask is {keep.shape}, the image {tuple(shape[:2])}; they must match")
    return keep > 0.5 if keep.dtype != bool else keep


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
