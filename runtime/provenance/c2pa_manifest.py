"""C2PA manifests (c2pa-python) for PNG, JPEG and WebP: signing and reading back.

The manifest carries:

* ``c2pa.actions``: ``c2pa.created`` (digital source type: composite with trained algorithmic media by
  default, i.e. a real product photo on a generated background) and, when the image holds a
  watermark, ``c2pa.watermarked.bound``;
* ``c2pa.soft-binding``: alg ``com.comfyui-backdrop.watermark.<codec version>`` (``.1``, ``.2`` or ``.3``), one
  block whose value is the watermark ID (16 hex digits), so the manifest can be recovered from the pixels
  through the ledger; readers accept every version;
* ``com.comfyui-backdrop.provenance``: the watermark ID and the hash of its ledger record (no prompt:
  the record stays private in the local ledger).

Manifests are signed with the local Ed25519 signing certificate (see keys.py). Read back with this
installation's root CA as a trust anchor the validation state is ``Trusted``; anyone else sees
``Valid`` with the failure code ``signingCredential.untrusted`` (the signature checks out, but the
self-made root is on no public trust list). Nothing is fetched from the network while reading.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInputError
from .keys import KeyStore
from .records import WATERMARK_VERSIONS, format_id

SOFT_BINDING_PREFIX = "com.comfyui-backdrop.watermark."
SOFT_BINDING_ALG = SOFT_BINDING_PREFIX + "1"  # the v1 codec's name (what manifests said before v2)
PROVENANCE_LABEL = "com.comfyui-backdrop.provenance"
WATERMARK_ACTION = "c2pa.watermarked.bound"
DEFAULT_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
MIME_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp"}
GENERATOR = {"name": "ComfyUI-Backdrop", "version": "0.1.0"}

TRUSTED, VALID, INVALID, ABSENT = "Trusted", "Valid", "Invalid", "none"


@dataclass
class ManifestInfo:
    """What the active manifest of a file says, and whether it validates."""

    present: bool
    state: str = ABSENT  # Trusted | Valid | Invalid | none
    watermark_ids: list[str] = field(default_factory=list)  # soft-binding values with our alg
    watermark_versions: list[int] = field(default_factory=list)  # codec version per soft-binding value
    actions: list[str] = field(default_factory=list)
    record_hash: str | None = None
    signer: str | None = None
    failures: list[str] = field(default_factory=list)  # validation failure codes

    @property
    def summary(self) -> str:
        if not self.present:
            return "no C2PA manifest"
        if self.state == TRUSTED:
            return "C2PA manifest trusted (signed by this installation's local root CA)"
        if self.state == VALID:
            return ("C2PA manifest valid, signer not trusted here (signature intact; "
                    + ", ".join(self.failures or ["signingCredential.untrusted"]) + ")")
        return "C2PA manifest INVALID (" + ", ".join(self.failures or ["unknown failure"]) + ")"


def mime_type(fmt_or_path: str | Path) -> str:
    """MIME type for ``png``/``jpeg``/``webp`` or a path with such a suffix."""
    key = str(fmt_or_path).lower().rsplit(".", 1)[-1]
    if key not in MIME_TYPES:
        raise InvalidInputError(f"C2PA manifests are written for PNG, JPEG and WebP, not {fmt_or_path!s}")
    return MIME_TYPES[key]


def soft_binding_alg(watermark_version: int = 1) -> str:
    """The soft-binding algorithm name of a codec version: ``com.comfyui-backdrop.watermark.<version>``."""
    if isinstance(watermark_version, bool) or watermark_version not in WATERMARK_VERSIONS:
        raise InvalidInputError(f"unknown watermark codec version {watermark_version!r}")
    return f"{SOFT_BINDING_PREFIX}{watermark_version}"


def binding_version(alg: str) -> int | None:
    """The codec version a soft-binding algorithm name names, or None when it is not ours."""
    if isinstance(alg, str) and alg.startswith(SOFT_BINDING_PREFIX) and alg[len(SOFT_BINDING_PREFIX):].isdigit():
        return int(alg[len(SOFT_BINDING_PREFIX):])
    return None


def sign_asset(asset: bytes, fmt: str, keys: KeyStore, *, title: str, watermark_id: int | None = None,
               record_hash: str | None = None, source_type: str = DEFAULT_SOURCE_TYPE,
               watermark_version: int | None = None) -> bytes:
    """Return ``asset`` (an encoded PNG/JPEG/WebP) with a signed C2PA manifest embedded.

    The pixels are untouched: only metadata boxes/chunks are added. ``watermark_version``: the codec version
    of the mark, named by the soft binding's algorithm (default: the ``watermark_version`` a
    records.WatermarkId carries, as ProvenanceService.provenance_for returns it, else 1).
    """
    import c2pa

    if watermark_version is None:
        watermark_version = getattr(watermark_id, "watermark_version", 1)
    mime = mime_type(fmt)
    manifest = build_manifest_definition(title, watermark_id, record_hash, source_type, watermark_version)
    settings = {"builder": {"thumbnail": {"enabled": False}, "claim_generator_info": GENERATOR},
                "verify": {"verify_after_sign": True, "remote_manifest_fetch": False, "ocsp_fetch": False},
                "trust": {"user_anchors": keys.c2pa_root_pem}}
    info = c2pa.C2paSignerInfo("ed25519", keys.c2pa_chain_pem.encode("ascii"),
                               keys.c2pa_signer_key_pem.encode("ascii"), None)
    dest = io.BytesIO()
    try:
        with c2pa.Context.from_dict(settings) as context, c2pa.Signer.from_info(info) as signer, \
                c2pa.Builder(manifest, context=context) as builder:
            builder.sign(signer, mime, io.BytesIO(asset), dest)
    except c2pa.C2paError as exc:
        raise InvalidInputError(f"could not embed the C2PA manifest in the {fmt} file: {exc}") from exc
    return dest.getvalue()


def build_manifest_definition(title: str, watermark_id: int | None, record_hash: str | None,
                              source_type: str = DEFAULT_SOURCE_TYPE, watermark_version: int = 1) -> dict:
    actions = [{"action": "c2pa.created", "digitalSourceType": source_type,
                "softwareAgent": {"name": GENERATOR["name"], "version": GENERATOR["version"]}}]
    assertions: list[dict] = []
    if watermark_id is not None:
        wid = format_id(watermark_id)
        alg = soft_binding_alg(watermark_version)
        actions.append({"action": WATERMARK_ACTION,
                        "parameters": {"description": f"invisible watermark {wid} ({alg})"}})
        assertions.append({"label": "c2pa.soft-binding",
                           "data": {"alg": alg, "blocks": [{"scope": {}, "value": wid}]}})
        assertions.append({"label": PROVENANCE_LABEL,
                           "data": {"watermark_id": wid, "ledger_record_sha256": record_hash}})
    assertions.insert(0, {"label": "c2pa.actions", "data": {"actions": actions}})
    return {"claim_generator_info": [GENERATOR], "title": title, "assertions": assertions}


def read_manifest(source: bytes | str | Path, fmt: str | None = None, keys: KeyStore | None = None) -> ManifestInfo:
    """Read and validate the active manifest of an encoded image (bytes with ``fmt``) or a file.

    With ``keys``, this installation's root CA is a trust anchor (state ``Trusted``); without, our own
    manifests read as ``Valid`` + ``signingCredential.untrusted``.
    """
    import c2pa

    if isinstance(source, (str, Path)):
        from ..image_gate import read_file_bytes

        path = Path(source)
        data, fmt = read_file_bytes(path), fmt or path.suffix  # regular files within the image size limit only
    else:
        data = source
    mime = mime_type(fmt or "")
    settings: dict = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if keys is not None:
        settings["trust"] = {"user_anchors": keys.c2pa_root_pem}
    try:
        with c2pa.Context.from_dict(settings) as context:
            reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, context)
            if reader is None:
                return ManifestInfo(present=False)
            with reader:
                store = json.loads(reader.json())
    except c2pa.C2paError as exc:
        return ManifestInfo(present=True, state=INVALID, failures=[f"unreadable: {exc}"])
    return _summarise(store)


def _summarise(store: dict) -> ManifestInfo:
    active = store.get("manifests", {}).get(store.get("active_manifest") or "", {})
    info = ManifestInfo(present=bool(active), state=store.get("validation_state") or INVALID)
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    info.failures = [f.get("code", "?") for f in results.get("failure", [])]
    info.signer = (active.get("signature_info") or {}).get("common_name")
    for assertion in active.get("assertions", []):
        label, data = assertion.get("label", ""), assertion.get("data") or {}
        if label.startswith("c2pa.actions"):
            info.actions.extend(a.get("action", "") for a in data.get("actions", []))
        elif label == "c2pa.soft-binding" and binding_version(data.get("alg")) is not None:
            for block in data.get("blocks", []):
                info.watermark_ids.append(str(block.get("value", "")))
                info.watermark_versions.append(binding_version(data.get("alg")))
        elif label == PROVENANCE_LABEL:
            info.record_hash = data.get("ledger_record_sha256")
    return info
