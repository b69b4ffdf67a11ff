"""Site keys: created private, never overwritten, loaded with errors that name the file."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from swarm.errors import KeyFileError
from swarm.identity import (
    SiteKeys,
    SigningKey,
    create_site_keys,
    load_site_keys,
    parse_public_key_hex,
    public_key_hex,
    verify_signature,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "site" / "keys"


def test_create_then_load_round_trip(keys_dir: Path) -> None:
    created = create_site_keys(keys_dir)
    loaded = load_site_keys(keys_dir)
    assert loaded.signing.public == created.signing.public
    assert loaded.transport_public == created.transport_public
    assert loaded.transport_secret == created.transport_secret
    assert len(loaded.transport_public) == len(loaded.transport_secret) == 40
    # The loaded key signs what the created key's public half verifies.
    assert verify_signature(created.signing.public, loaded.signing.sign(b"x"), b"x")
    assert (keys_dir / "signing.pub").read_text().strip() == public_key_hex(created.signing.public)
    assert (keys_dir / "transport.pub").read_bytes().strip() == created.transport_public


def test_private_files_and_directory_modes(keys_dir: Path) -> None:
    old = os.umask(0o022)
    try:
        create_site_keys(keys_dir)
    finally:
        os.umask(old)
    assert mode(keys_dir) == 0o700
    assert mode(keys_dir / "signing.key") == 0o600
    assert mode(keys_dir / "transport.key") == 0o600
    assert mode(keys_dir / "signing.pub") == 0o644
    assert mode(keys_dir / "transport.pub") == 0o644
    assert b"PRIVATE KEY" in (keys_dir / "signing.key").read_bytes()


def test_existing_keys_directory_is_made_private(keys_dir: Path) -> None:
    keys_dir.mkdir(parents=True, mode=0o755)
    keys_dir.chmod(0o755)
    create_site_keys(keys_dir)
    assert mode(keys_dir) == 0o700


@pytest.mark.parametrize("name", ["signing.key", "signing.pub", "transport.key", "transport.pub"])
def test_refuses_to_overwrite_any_key(keys_dir: Path, name: str) -> None:
    create_site_keys(keys_dir)
    before = {p.name: p.read_bytes() for p in keys_dir.iterdir()}
    for other in keys_dir.iterdir():
        if other.name != name:
            other.unlink()
    with pytest.raises(KeyFileError, match=name):
        create_site_keys(keys_dir)
    assert (keys_dir / name).read_bytes() == before[name]


@pytest.mark.parametrize("name", ["signing.key", "transport.key"])
def test_missing_private_key_names_file_and_fix(keys_dir: Path, name: str) -> None:
    create_site_keys(keys_dir)
    (keys_dir / name).unlink()
    with pytest.raises(KeyFileError, match=rf"{name}.*missing.*swarm-node init"):
        load_site_keys(keys_dir)


def test_missing_directory(keys_dir: Path) -> None:
    with pytest.raises(KeyFileError, match="swarm-node init"):
        load_site_keys(keys_dir)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("signing.key", b"not a pem file"),
        ("signing.key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        ("transport.key", b"secret = short\npublic = short\n"),
        ("transport.key", b""),
    ],
)
def test_corrupt_private_key_names_file(keys_dir: Path, name: str, content: bytes) -> None:
    create_site_keys(keys_dir)
    (keys_dir / name).write_bytes(content)
    with pytest.raises(KeyFileError, match=name):
        load_site_keys(keys_dir)


def test_rsa_key_is_not_a_signing_key(keys_dir: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    create_site_keys(keys_dir)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    (keys_dir / "signing.key").write_bytes(other)
    with pytest.raises(KeyFileError, match="signing.key.*not an Ed25519"):
        load_site_keys(keys_dir)


def test_transport_key_pair_must_match(keys_dir: Path) -> None:
    import zmq

    create_site_keys(keys_dir)
    public_a, _ = zmq.curve_keypair()
    _, secret_b = zmq.curve_keypair()
    (keys_dir / "transport.key").write_bytes(b"secret = " + secret_b + b"\npublic = " + public_a)
    (keys_dir / "transport.pub").write_bytes(public_a + b"\n")  # consistent with the lie
    with pytest.raises(KeyFileError, match="transport.key"):
        load_site_keys(keys_dir)


def test_public_file_must_match_private_key(keys_dir: Path) -> None:
    create_site_keys(keys_dir)
    (keys_dir / "signing.pub").write_text(public_key_hex(SigningKey.generate().public))
    with pytest.raises(KeyFileError, match="signing.pub"):
        load_site_keys(keys_dir)


def test_warns_when_private_key_is_readable_by_others(
        keys_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    create_site_keys(keys_dir)
    (keys_dir / "signing.key").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="swarm.identity"):
        load_site_keys(keys_dir)
    assert any("signing.key" in r.getMessage() and "chmod 600" in r.getMessage()
               for r in caplog.records)


def test_secrets_stay_out_of_repr(keys_dir: Path) -> None:
    keys = create_site_keys(keys_dir)
    text = repr(keys)
    assert keys.transport_secret.decode() not in text
    assert isinstance(keys, SiteKeys)


def test_sign_and_verify() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"model digest")
    assert len(key.public) == 32 and len(sig) == 64
    assert verify_signature(key.public, sig, b"model digest")
    again = SigningKey.from_private_bytes(bytes(range(32)))
    assert again.public == SigningKey.from_private_bytes(bytes(range(32))).public


def test_verify_signature_rejects_everything_else() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    sig = key.sign(b"data")
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    assert not verify_signature(key.public, sig, b"datA")  # tampered data
    assert not verify_signature(other.public, sig, b"data")  # wrong key
    assert not verify_signature(key.public, flipped, b"data")  # tampered signature
    for public, signature in [
        (b"", sig), (b"\xff" * 32, sig), (key.public[:31], sig), (key.public, b""),
        (key.public, sig[:63]), (key.public, b"\x00" * 64), (None, sig), (key.public, "s" * 64),
    ]:
        assert verify_signature(public, signature, b"data") is False  # type: ignore[arg-type]


def test_public_key_hex_round_trip_and_errors() -> None:
    public = SigningKey.generate().public
    assert parse_public_key_hex(public_key_hex(public) + "\n") == public
    for bad in ["", "ab", "zz" * 32, public.hex() + "00"]:
        with pytest.raises(ValueError):
            parse_public_key_hex(bad)
    with pytest.raises(ValueError):
        public_key_hex(public[:31])
    with pytest.raises(ValueError):
        SigningKey.from_private_bytes(b"short")
