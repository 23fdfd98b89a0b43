"""The local key store: ledger signing key, watermark secret and a C2PA certificate chain.

Everything is generated on first use and kept under the provenance home
(``$BACKDROP_HOME``, else ``$XDG_CONFIG_HOME/comfyui-backdrop``, else ``~/.config/comfyui-backdrop``)::

    keys/                      0700
      ledger_ed25519.pem       0600  Ed25519 key that signs ledger records
      watermark.key            0600  32 random bytes: the watermark codec's secret key
      c2pa_root_ca.pem         0600  self-made root CA certificate (Ed25519), the C2PA trust anchor
      c2pa_root_ca.key.pem     0600  its private key (kept to renew the signing certificate)
      c2pa_signer.pem          0600  C2PA signing certificate issued by the root (Ed25519, emailProtection EKU)
      c2pa_signer.key.pem      0600  its private key
      ledger_witness.json      0600  the ledger's last signed seq (written by the ledger; catches a wiped ledger)

The set is written to a temporary folder and renamed into place in one step, so two processes that
start at once never mix keys: the loser discards its set and loads the winner's. Existing keys are
never replaced. Permissions are checked on POSIX systems; a key folder readable by others is refused.

Keys in memory: :meth:`KeyStore.secrets` returns the raw files a worker needs (``WORKER_KEY_FILES``: not the root
CA's private key) and :meth:`KeyStore.from_secrets` makes a KeyStore from them that never touches the disk, so
keys can reach workers on other machines (e.g. as Ray actor arguments) without being written anywhere. Such a
store has no folder, hence no ledger witness (see ledger.py).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from ..errors import InvalidInputError

HOME_ENV = "BACKDROP_HOME"
KEYS_DIRNAME = "keys"
WATERMARK_KEY_BYTES = 32
CERT_DAYS = 3650
ORGANIZATION = "ComfyUI-Backdrop (local)"

LEDGER_KEY = "ledger_ed25519.pem"
WATERMARK_KEY = "watermark.key"
ROOT_CERT = "c2pa_root_ca.pem"
ROOT_KEY = "c2pa_root_ca.key.pem"
SIGNER_CERT = "c2pa_signer.pem"
SIGNER_KEY = "c2pa_signer.key.pem"
KEY_FILES = (LEDGER_KEY, WATERMARK_KEY, ROOT_CERT, ROOT_KEY, SIGNER_CERT, SIGNER_KEY)
WORKER_KEY_FILES = (LEDGER_KEY, WATERMARK_KEY, ROOT_CERT, SIGNER_CERT, SIGNER_KEY)  # what marking and signing use

_POSIX = os.name == "posix"


def provenance_home() -> Path:
    """``$BACKDROP_HOME``, else ``$XDG_CONFIG_HOME/comfyui-backdrop``, else ``~/.config/comfyui-backdrop``."""
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config).expanduser() / "comfyui-backdrop"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed; the folder itself gets mode 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if _POSIX:
        os.chmod(path, 0o700)
    return path


@dataclass(frozen=True)
class KeyStore:
    """Loaded keys. Use :func:`load_keys` to get one (it creates the keys on first use), or
    :meth:`from_secrets` for keys held in memory (``folder`` is then None)."""

    folder: Path | None
    in_memory: Mapping[str, bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_secrets(cls, secrets: Mapping[str, bytes]) -> KeyStore:
        """A key store over the raw key files in ``secrets`` (from :meth:`secrets`); never reads or writes a disk."""
        missing = [name for name in WORKER_KEY_FILES if name not in secrets]
        if missing:
            raise InvalidInputError(f"the keys handed over lack {', '.join(missing)}; pass KeyStore.secrets() of a "
                                    "complete key store")
        return cls(None, {name: bytes(secrets[name]) for name in WORKER_KEY_FILES})

    def secrets(self) -> dict[str, bytes]:
        """The raw key files a worker needs (ledger key, watermark key, C2PA chain and signing key), by file name.
        Keep them in memory: they are the installation's secrets."""
        return {name: self._read(name) for name in WORKER_KEY_FILES}

    def __getstate__(self) -> dict:
        """Pickle the fields only (loaded key objects are not picklable; they are loaded again on use)."""
        return {"folder": self.folder, "in_memory": self.in_memory}

    @cached_property
    def ledger_signing_key(self):
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        return load_pem_private_key(self._read(LEDGER_KEY), password=None)

    @cached_property
    def ledger_public_key_hex(self) -> str:
        """The ledger public key as 64 hex digits: stored in each record as its signer."""
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        raw = self.ledger_signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return raw.hex()

    @cached_property
    def watermark_key(self) -> bytes:
        key = self._read(WATERMARK_KEY)
        if len(key) != WATERMARK_KEY_BYTES:
            where = WATERMARK_KEY if self.folder is None else self.folder / WATERMARK_KEY
            raise InvalidInputError(f"{where} holds {len(key)} bytes, expected "
                                    f"{WATERMARK_KEY_BYTES}; restore it from a backup (marks made with "
                                    "another key cannot be read)")
        return key

    @cached_property
    def c2pa_root_pem(self) -> str:
        """The root CA certificate (PEM): the trust anchor for reading our C2PA manifests."""
        return self._read(ROOT_CERT).decode("ascii")

    @cached_property
    def c2pa_chain_pem(self) -> str:
        """Signing certificate followed by the root (PEM), as C2PA signers expect."""
        return self._read(SIGNER_CERT).decode("ascii") + self.c2pa_root_pem

    @cached_property
    def c2pa_signer_key_pem(self) -> str:
        return self._read(SIGNER_KEY).decode("ascii")

    @property
    def fingerprint(self) -> str:
        """Short id of the ledger key (first 16 hex digits of the SHA-256 of the public key)."""
        return hashlib.sha256(bytes.fromhex(self.ledger_public_key_hex)).hexdigest()[:16]

    def sign(self, message: bytes) -> bytes:
        """Ed25519 signature of ``message`` with the ledger key."""
        return self.ledger_signing_key.sign(message)

    def _read(self, name: str) -> bytes:
        if self.in_memory is not None:
            try:
                return self.in_memory[name]
            except KeyError:
                raise InvalidInputError(f"the in-memory key store holds no {name}") from None
        return (self.folder / name).read_bytes()


class NoKeysError(InvalidInputError):
    """The provenance home has no key folder (and the caller must not create one, e.g. ``backdrop verify``)."""


def load_keys(home: str | os.PathLike | None = None, create: bool = True) -> KeyStore:
    """The key store under ``home`` (default :func:`provenance_home`), generated once on first use.

    ``create=False`` (for commands that only check, such as ``backdrop verify``) never generates keys: a home
    without a key folder raises :class:`NoKeysError` naming where it looked.
    """
    explicit = home is not None
    home = Path(home).expanduser() if home is not None else provenance_home()
    folder = home / KEYS_DIRNAME
    if not folder.exists():
        if not create:
            raise NoKeysError(_no_keys_message(home, folder, explicit))
        _create_key_folder(home, folder)
    _check_key_folder(folder)
    return KeyStore(folder)


def _no_keys_message(home: Path, folder: Path, explicit: bool) -> str:
    where = ("as given" if explicit else f"from ${HOME_ENV}" if os.environ.get(HOME_ENV) else
             f"the default; ${HOME_ENV} is not set")
    state = "does not exist" if not home.exists() else "has no keys/ folder"
    return (f"no provenance keys: the home {home} ({where}) {state}; looked for {folder}. Images can only be "
            f"checked with the keys that marked them: give the folder that holds keys/ and ledger.sqlite3 "
            f"(--home, or ${HOME_ENV})")


def _create_key_folder(home: Path, folder: Path) -> None:
    ensure_private_dir(home)
    staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=home))  # mkdtemp makes it 0700
    try:
        for name, payload in _generate_key_set().items():
            _write_private(staging / name, payload)
        try:
            os.rename(staging, folder)  # atomic; fails if another process got there first
        except OSError:
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_private(path: Path, payload: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def _check_key_folder(folder: Path) -> None:
    missing = [name for name in KEY_FILES if not (folder / name).is_file()]
    if missing:
        raise InvalidInputError(f"the key folder {folder} is incomplete (missing {', '.join(missing)}); restore "
                                "it from a backup, or move it away to generate new keys (marks and records made "
                                "with the old keys will then no longer verify)")
    if not _POSIX or sys.platform == "cygwin":
        return
    loose = [p.name or str(p) for p in (folder, *(folder / n for n in KEY_FILES))
             if stat.S_IMODE(p.stat().st_mode) & 0o077]
    if loose:
        raise InvalidInputError(f"key files in {folder} are readable by other users ({', '.join(loose)}); fix with: "
                                f"chmod 700 '{folder}' && chmod 600 '{folder}'/*")


def _generate_key_set() -> dict[str, bytes]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    ledger_key = Ed25519PrivateKey.generate()
    root_key, signer_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    root_cert, signer_cert = _certificate_chain(root_key, signer_key)
    return {
        LEDGER_KEY: _private_pem(ledger_key),
        WATERMARK_KEY: secrets.token_bytes(WATERMARK_KEY_BYTES),
        ROOT_CERT: root_cert,
        ROOT_KEY: _private_pem(root_key),
        SIGNER_CERT: signer_cert,
        SIGNER_KEY: _private_pem(signer_key),
    }


def _private_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificate_chain(root_key, signer_key) -> tuple[bytes, bytes]:
    """A root CA and a leaf that satisfies C2PA's certificate profile (digitalSignature, EKU, AKI/SKI)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    install = secrets.token_hex(4)
    now = _dt.datetime.now(_dt.timezone.utc)
    start, end = now - _dt.timedelta(minutes=5), now + _dt.timedelta(days=CERT_DAYS)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common} {install}"),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)])

    def usage(sign_certs: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=not sign_certs, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=sign_certs,
                             crl_sign=sign_certs, encipher_only=False, decipher_only=False)

    root_name = name("Backdrop local root CA")
    root = (x509.CertificateBuilder().subject_name(root_name).issuer_name(root_name)
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage(sign_certs=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, None))
    leaf = (x509.CertificateBuilder().subject_name(name("Backdrop C2PA signer")).issuer_name(root_name)
            .public_key(signer_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(sign_certs=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(signer_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, None))
    return root.public_bytes(Encoding.PEM), leaf.public_bytes(Encoding.PEM)
