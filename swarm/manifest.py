"""The federation manifest: who the members are and what they agreed to train.

Like a blockchain genesis file, it is identical on every node. The manifest is a JSON
document whose exact bytes are signed by every member (detached signatures in a
`.sigs.json` file beside it) and whose SHA-256 is the federation id that every log entry
and every wire message carries. Bytes are hashed and signed as stored, never re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .errors import ConfigError, ManifestError
from .identity import SigningKey, parse_public_key_hex, public_key_hex, verify_signature
from .schedule import parse_graphs
from .topology import check_neighbour_lists

MANIFEST_FORMAT = "swarm.manifest/1"
SIGNATURE_DOMAIN = b"swarm.manifest/1\0"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
ENDPOINT_PATTERN = re.compile(r"^tcp://[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Member:
    name: str
    signing_key: bytes  # Ed25519 public key, 32 bytes
    transport_key: str  # CurveZMQ public key, z85 (40 characters)
    endpoint: str  # where this member's node listens, e.g. tcp://10.0.0.5:7000

    def card(self) -> dict[str, str]:
        return {
            "name": self.name,
            "signing_key": public_key_hex(self.signing_key),
            "transport_key": self.transport_key,
            "endpoint": self.endpoint,
        }

    @classmethod
    def from_card(cls, card: Any, where: str) -> Member:
        if not isinstance(card, dict):
            raise ManifestError(f"{where}: a member must be a JSON object with name, signing_key, transport_key, endpoint")
        expected = {"name", "signing_key", "transport_key", "endpoint"}
        if set(card) != expected:
            raise ManifestError(f"{where}: member fields must be exactly {sorted(expected)}, got {sorted(card)}")
        name = card["name"]
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise ManifestError(f"{where}.name: {name!r} is not a valid site name (example: hospital-a)")
        try:
            signing_key = parse_public_key_hex(card["signing_key"])
        except (ValueError, TypeError):
            raise ManifestError(f"{where}.signing_key: not a 64-character hex Ed25519 public key") from None
        transport_key = card["transport_key"]
        if not isinstance(transport_key, str) or len(transport_key) != 40:
            raise ManifestError(f"{where}.transport_key: not a 40-character z85 CurveZMQ public key")
        endpoint = card["endpoint"]
        if not isinstance(endpoint, str) or not ENDPOINT_PATTERN.match(endpoint):
            raise ManifestError(f"{where}.endpoint: {endpoint!r} is not a TCP endpoint (example: tcp://10.0.0.5:7000)")
        return cls(name, signing_key, transport_key, endpoint)


@dataclass(frozen=True)
class Plan:
    """The agreed training plan. Sections other than the ones checked here (model, training,
    task, protocol parameters) are validated by the node, which knows their meaning."""

    rounds: int
    protocol: dict[str, Any]
    topology: dict[str, Any]
    neighbours: dict[str, tuple[str, ...]]
    model: dict[str, Any]
    training: dict[str, Any]
    task: dict[str, Any]
    schedule: dict[str, Any] | None = None  # per-round graphs of a time-varying topology (swarm.schedule)


@dataclass(frozen=True)
class Manifest:
    raw: bytes
    name: str
    version: int
    members: tuple[Member, ...]
    plan: Plan
    federation_id: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "federation_id", hashlib.sha256(self.raw).digest())

    def member(self, name: str) -> Member:
        for member in self.members:
            if member.name == name:
                return member
        raise ManifestError(f"site {name!r} is not a member of federation {self.name!r}; check the site name or the manifest")

    def member_by_signing_key(self, key: bytes) -> Member | None:
        return next((m for m in self.members if m.signing_key == key), None)

    def is_member_key(self, key: bytes) -> bool:
        return self.member_by_signing_key(key) is not None


def build_manifest(name: str, members: list[Member], plan: dict[str, Any], version: int = 1) -> Manifest:
    """Encode a new manifest (deterministic JSON) and parse it back, so that what we return
    is exactly what any other node will read from the file."""
    document = {
        "format": MANIFEST_FORMAT,
        "federation": name,
        "version": version,
        "members": [m.card() for m in members],
        "plan": plan,
    }
    raw = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    return parse_manifest(raw)


def parse_manifest(raw: bytes) -> Manifest:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"manifest: not valid JSON ({exc}); recreate it with `swarm-node federation create`") from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"manifest.format: expected {MANIFEST_FORMAT!r}; is this a swarm federation manifest?")
    name = document.get("federation")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ManifestError(f"manifest.federation: {name!r} is not a valid federation name (example: brain-mri-2026)")
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ManifestError(f"manifest.version: must be an integer >= 1, got {version!r}")
    raw_members = document.get("members")
    if not isinstance(raw_members, list) or len(raw_members) < 2:
        raise ManifestError("manifest.members: a federation needs a list of at least 2 members")
    members = tuple(Member.from_card(card, f"manifest.members[{i}]") for i, card in enumerate(raw_members))
    _check_unique(members)
    plan = _parse_plan(document.get("plan"), [m.name for m in members])
    return Manifest(raw=raw, name=name, version=version, members=members, plan=plan)


def _check_unique(members: tuple[Member, ...]) -> None:
    for attribute in ("name", "signing_key", "transport_key", "endpoint"):
        values = [getattr(m, attribute) for m in members]
        if len(set(values)) != len(values):
            raise ManifestError(f"manifest.members: two members share the same {attribute}; each site needs its own")


def _parse_plan(plan: Any, member_names: list[str]) -> Plan:
    if not isinstance(plan, dict):
        raise ManifestError("manifest.plan: missing; the plan names the model, protocol, topology and rounds")
    rounds = plan.get("rounds")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ManifestError(f"manifest.plan.rounds: must be an integer >= 1, got {rounds!r}")
    sections = {}
    for key in ("protocol", "topology", "model", "training", "task"):
        value = plan.get(key, {})
        if not isinstance(value, dict):
            raise ManifestError(f"manifest.plan.{key}: must be a table/object, got {type(value).__name__}")
        sections[key] = value
    raw_neighbours = plan.get("neighbours")
    if not isinstance(raw_neighbours, dict) or set(raw_neighbours) != set(member_names):
        raise ManifestError("manifest.plan.neighbours: must list the neighbours of every member, and only members")
    neighbours: dict[str, tuple[str, ...]] = {}
    for member, peers in raw_neighbours.items():
        if not isinstance(peers, list) or not all(isinstance(p, str) for p in peers) or not peers:
            raise ManifestError(f"manifest.plan.neighbours.{member}: must be a non-empty list of member names")
        neighbours[member] = tuple(peers)
    # Same rule as when the plan was built: the (union) graph must be connected unless allowed.
    allow_disconnected = sections["topology"].get("allow_disconnected") is True
    schedule = plan.get("schedule")
    try:
        check_neighbour_lists({k: list(v) for k, v in neighbours.items()}, allow_disconnected)
        if schedule is not None:
            parse_graphs(schedule, neighbours)
    except ConfigError as exc:
        raise ManifestError(f"manifest.{exc}") from None
    return Plan(rounds=rounds, neighbours=neighbours, schedule=schedule, **sections)


# -- signatures ---------------------------------------------------------------------------


@dataclass
class SignedManifest:
    manifest: Manifest
    signatures: dict[str, bytes]  # member name -> Ed25519 signature over the manifest bytes

    def verify(self) -> None:
        """Raise ManifestError unless every member has signed these exact bytes (genesis rule:
        all founding members agree; later versions will use a threshold of the previous one)."""
        for member in self.manifest.members:
            signature = self.signatures.get(member.name)
            if signature is None:
                raise ManifestError(
                    f"manifest: {member.name!r} has not signed; run `swarm-node federation sign MANIFEST --site DIR` at that site"
                )
            if not verify_signature(member.signing_key, signature, SIGNATURE_DOMAIN + self.manifest.raw):
                raise ManifestError(
                    f"manifest: the signature of {member.name!r} does not verify; the manifest was changed after signing or the signature is forged"
                )
        unknown = set(self.signatures) - {m.name for m in self.manifest.members}
        if unknown:
            raise ManifestError(f"manifest: signatures from non-members {sorted(unknown)}; remove them from the .sigs.json file")

    def sign(self, name: str, key: SigningKey) -> None:
        member = self.manifest.member(name)
        if member.signing_key != key.public:
            raise ManifestError(f"manifest: this site's signing key is not the one listed for {name!r}; wrong --site directory?")
        self.signatures[name] = key.sign(SIGNATURE_DOMAIN + self.manifest.raw)


def signatures_path(manifest_path: Path) -> Path:
    return manifest_path.with_name(manifest_path.name + ".sigs.json")


def load_manifest(path: Path) -> SignedManifest:
    """Read a manifest and its detached signatures (missing signatures file = none yet)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest not found; create one with `swarm-node federation create` or pass the right path") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read manifest ({exc.strerror})") from None
    manifest = parse_manifest(raw)
    return SignedManifest(manifest, _load_signatures(signatures_path(path), manifest))


def _load_signatures(path: Path, manifest: Manifest) -> dict[str, bytes]:
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_bytes())
        if document["federation_id"] != manifest.federation_id.hex():
            raise ManifestError(f"{path}: these signatures belong to another manifest (federation id differs); delete the file and sign again")
        return {str(name): bytes.fromhex(sig) for name, sig in document["signatures"].items()}
    except ManifestError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ManifestError(f"{path}: malformed signatures file; delete it and have every member sign again") from None


def save_manifest(path: Path, signed: SignedManifest) -> None:
    path = Path(path)
    write_atomic(path, signed.manifest.raw)
    save_signatures(path, signed)


def save_signatures(manifest_path: Path, signed: SignedManifest) -> None:
    document = {
        "federation_id": signed.manifest.federation_id.hex(),
        "signatures": {name: sig.hex() for name, sig in sorted(signed.signatures.items())},
    }
    write_atomic(signatures_path(Path(manifest_path)), (json.dumps(document, indent=2) + "\n").encode())
