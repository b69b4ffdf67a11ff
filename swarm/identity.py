"""Site identity: the Ed25519 key that signs the update log and the CurveZMQ key pair that
encrypts and authenticates transport.

A site's keys live in one directory (mode 0700):

    signing.key     Ed25519 private key, PEM PKCS8, unencrypted      (0600)
    signing.pub     the 32-byte public key in hex                    (0644)
    transport.key   the CurveZMQ secret and public key in z85        (0600)
    transport.pub   the CurveZMQ public key in z85                   (0644)

Keys are created once and never overwritten: a hospital's signing key is its identity in
every log it has ever written, so replacing it by accident would orphan that history.
"""

from __future__ import annotations

import binascii
import logging
import stat
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import zmq
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .atomic import fsync_dir, write_atomic
from .errors import KeyFileError

log = logging.getLogger(__name__)

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
Z85_KEY_LEN = 40

SIGNING_KEY_FILE = "signing.key"
SIGNING_PUB_FILE = "signing.pub"
TRANSPORT_KEY_FILE = "transport.key"
TRANSPORT_PUB_FILE = "transport.pub"
KEY_FILES = (SIGNING_KEY_FILE, SIGNING_PUB_FILE, TRANSPORT_KEY_FILE, TRANSPORT_PUB_FILE)

_INIT_HINT = "create a site's keys with `swarm-node init --site SITE_DIR`"
_Z85_ALPHABET = frozenset(
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)


class SigningKey:
    """An Ed25519 private key. `repr` shows only the public half, so a key never ends up in
    a log line by accident."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError(f"expected an Ed25519PrivateKey, got {type(key).__name__}")
        self._key = key
        self._public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> SigningKey:
        """From the 32-byte raw private key (seed); ValueError if it is not 32 bytes."""
        if not isinstance(data, (bytes, bytearray)) or len(data) != 32:
            raise ValueError("an Ed25519 private key is exactly 32 raw bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(bytes(data)))

    @property
    def public(self) -> bytes:
        """The 32-byte raw public key."""
        return self._public

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature over `data`."""
        return self._key.sign(data)

    def _to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def __repr__(self) -> str:
        return f"SigningKey(public={self._public.hex()})"


@lru_cache(maxsize=4096)
def _public_key(public: bytes) -> Ed25519PublicKey:
    # Parsing a public key costs about as much as half a verify; a federation has few keys.
    return Ed25519PublicKey.from_public_bytes(public)


def verify_signature(public: bytes, signature: bytes, data: bytes) -> bool:
    """True when `signature` is `public`'s Ed25519 signature over `data`. Never raises: any
    malformed key, signature or argument is simply not a valid signature."""
    try:
        if (
            not isinstance(public, bytes)
            or len(public) != PUBLIC_KEY_BYTES
            or not isinstance(signature, bytes)
            or len(signature) != SIGNATURE_BYTES
        ):
            return False
        _public_key(public).verify(signature, data)
        return True
    except InvalidSignature:
        return False
    except Exception:  # noqa: BLE001 -- a malformed untrusted key must never crash the caller
        return False


def public_key_hex(public: bytes) -> str:
    """Hex text of a 32-byte public key (as in signing.pub and the manifest)."""
    if not isinstance(public, (bytes, bytearray)) or len(public) != PUBLIC_KEY_BYTES:
        raise ValueError("an Ed25519 public key is exactly 32 bytes")
    return bytes(public).hex()


def parse_public_key_hex(text: str) -> bytes:
    """The 32 bytes of a hex public key; surrounding whitespace is ignored."""
    if not isinstance(text, str):
        raise ValueError("a public key in hex must be text")
    text = text.strip()
    if len(text) != 2 * PUBLIC_KEY_BYTES:
        raise ValueError(
            f"a public key in hex has {2 * PUBLIC_KEY_BYTES} hex digits, got {len(text)}"
        )
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError("a public key in hex may contain only 0-9 and a-f") from None


@dataclass(frozen=True)
class SiteKeys:
    """Everything secret a site holds. The transport secret is left out of `repr`."""

    signing: SigningKey
    transport_public: bytes
    transport_secret: bytes = field(repr=False)


def _is_z85_key(value: bytes) -> bool:
    return len(value) == Z85_KEY_LEN and set(value) <= _Z85_ALPHABET


def _transport_key_text(public: bytes, secret: bytes) -> bytes:
    return (
        b"# swarm CurveZMQ transport key pair (z85). Keep this file private.\n"
        b"secret = " + secret + b"\n"
        b"public = " + public + b"\n"
    )


def create_site_keys(keys_dir: Path) -> SiteKeys:
    """Create a new site identity in `keys_dir`; refuses if any key file is already there."""
    keys_dir = Path(keys_dir)
    existing = [name for name in KEY_FILES if (keys_dir / name).exists()]
    if existing:
        raise KeyFileError(
            f"{keys_dir / existing[0]} already exists; refusing to overwrite a site key. "
            "This site already has an identity: load it instead, or move the old keys "
            "away first if you really mean to replace this site's identity"
        )
    _make_private_dir(keys_dir)
    signing = SigningKey.generate()
    transport_public, transport_secret = zmq.curve_keypair()
    # Private files first: load_site_keys needs only those, so a crash between writes never
    # leaves public files that describe a key which does not exist.
    write_atomic(keys_dir / TRANSPORT_KEY_FILE,
                 _transport_key_text(transport_public, transport_secret), mode=0o600)
    write_atomic(keys_dir / SIGNING_KEY_FILE, signing._to_pem(), mode=0o600)
    write_atomic(keys_dir / SIGNING_PUB_FILE, public_key_hex(signing.public).encode() + b"\n")
    write_atomic(keys_dir / TRANSPORT_PUB_FILE, transport_public + b"\n")
    return SiteKeys(signing, transport_public, transport_secret)


def _make_private_dir(keys_dir: Path) -> None:
    created = not keys_dir.exists()
    try:
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys_dir.chmod(0o700)  # mkdir's mode is filtered by the umask; an old dir may be wider
    except OSError as exc:
        raise KeyFileError(
            f"cannot create the keys directory {keys_dir}: {exc.strerror}; "
            "check that its parent exists and is writable"
        ) from None
    if created:
        fsync_dir(keys_dir.parent)


def load_site_keys(keys_dir: Path) -> SiteKeys:
    """Load the keys `create_site_keys` wrote; KeyFileError names the bad file and the fix."""
    keys_dir = Path(keys_dir)
    if not keys_dir.is_dir():
        raise KeyFileError(f"no keys directory at {keys_dir}; {_INIT_HINT}")
    signing = _load_signing_key(keys_dir / SIGNING_KEY_FILE)
    transport_public, transport_secret = _load_transport_key(keys_dir / TRANSPORT_KEY_FILE)
    _check_public_file(keys_dir / SIGNING_PUB_FILE, public_key_hex(signing.public).encode())
    _check_public_file(keys_dir / TRANSPORT_PUB_FILE, transport_public)
    return SiteKeys(signing, transport_public, transport_secret)


def _read_key_file(path: Path, private: bool) -> bytes:
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} is missing; {_INIT_HINT}") from None
    except OSError as exc:
        raise KeyFileError(
            f"cannot read key file {path}: {exc.strerror}; check its owner and permissions"
        ) from None
    if private and stat.S_IMODE(mode) & 0o077:
        log.warning(
            "private key file %s is accessible by group or others (mode %o); "
            "run `chmod 600 %s`", path, stat.S_IMODE(mode), path,
        )
    return data


def _load_signing_key(path: Path) -> SigningKey:
    data = _read_key_file(path, private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise KeyFileError(
            f"{path} is not an unencrypted PEM PKCS8 private key ({exc}); restore it from "
            f"your backup, or {_INIT_HINT} in a new site directory"
        ) from None
    except Exception as exc:  # noqa: BLE001 -- e.g. an unsupported algorithm from OpenSSL
        raise KeyFileError(f"{path} cannot be loaded as a private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(
            f"{path} holds a {type(key).__name__}, not an Ed25519 key; restore the site's "
            f"signing key from your backup, or {_INIT_HINT} in a new site directory"
        )
    return SigningKey(key)


def _load_transport_key(path: Path) -> tuple[bytes, bytes]:
    data = _read_key_file(path, private=True)
    fields: dict[bytes, bytes] = {}
    for line in data.splitlines():
        line = line.strip()
        if line and not line.startswith(b"#") and b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.strip()] = value.strip()
    secret, public = fields.get(b"secret", b""), fields.get(b"public", b"")
    if not (_is_z85_key(secret) and _is_z85_key(public)):
        raise KeyFileError(
            f"{path} must hold `secret = <40 z85 characters>` and `public = <40 z85 "
            f"characters>`; restore it from your backup, or {_INIT_HINT} in a new site directory"
        )
    if zmq.curve_public(secret) != public:
        raise KeyFileError(
            f"{path}: the public key does not belong to the secret key; restore the file "
            "from your backup"
        )
    return public, secret


def _check_public_file(path: Path, expected: bytes) -> None:
    """A .pub file is what other sites put in the manifest, so it must match the secret."""
    if not path.exists():
        log.warning("public key file %s is missing; the private keys are intact", path)
        return
    data = _read_key_file(path, private=False)
    if data.strip() != expected:
        raise KeyFileError(
            f"{path} does not match the site's private key; regenerate it from the private "
            "key or restore both files from the same backup"
        )
