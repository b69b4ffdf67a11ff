"""The federation manifest: who the members are and what they agreed to train.

Like a blockchain genesis file, it is identical on every node. The manifest is a JSON
document whose exact bytes are signed by its members (detached signatures in a
`.sigs.json` file beside it). The SHA-256 of version 1 (the genesis) is the federation id
that every log entry and every wire message carries, for the federation's whole life: a
later version names it as `genesis` and names the SHA-256 of the version before it as
`previous` (the rule that makes a later version valid is in swarm.manifest_chain).
Bytes are hashed and signed as stored, never re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .errors import ConfigError, ManifestError, brief
from .identity import SigningKey, parse_public_key_hex, public_key_hex, verify_signature
from .schedule import parse_graphs
from .topology import check_neighbour_lists

MANIFEST_FORMAT = "swarm.manifest/1"
SIGNATURE_DOMAIN = b"swarm.manifest/1\0"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
ENDPOINT_PATTERN = re.compile(r"^tcp://[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_SIGNATURES = 4096  # members of two consecutive versions


@dataclass(frozen=True)
class Member:
    name: str
    signing_key: bytes  # Ed25519 public key, 32 bytes
    transport_key: str  # CurveZMQ public key, z85 (40 characters)
    endpoint: str | None  # where this member's node listens, e.g. tcp://10.0.0.5:7000; None: outbound-only

    @property
    def reachable(self) -> bool:
        """False for an outbound-only site: it binds nothing and dials its neighbours, which
        answer over the connection it opened."""
        return self.endpoint is not None

    def card(self) -> dict[str, Any]:
        card: dict[str, Any] = {
            "name": self.name,
            "signing_key": public_key_hex(self.signing_key),
            "transport_key": self.transport_key,
        }
        # Reachable members keep the card they always had (and so the manifest bytes).
        return card | ({"endpoint": self.endpoint} if self.endpoint is not None else {"reachable": False})

    @classmethod
    def from_card(cls, card: Any, where: str) -> Member:
        if not isinstance(card, dict):
            raise ManifestError(f"{where}: a member must be a JSON object with name, signing_key, transport_key, endpoint")
        expected = {"name", "signing_key", "transport_key", "endpoint"}
        outbound = {"name", "signing_key", "transport_key", "reachable"}
        if set(card) not in (expected, outbound):
            raise ManifestError(f"{where}: member fields must be exactly {sorted(expected)} "
                                f"(an outbound-only site has \"reachable\": false instead of an endpoint), got {sorted(card)}")
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
        if "reachable" in card:
            if card["reachable"] is not False:
                raise ManifestError(f"{where}.reachable: only false is allowed (a reachable member gives its endpoint instead), got {card['reachable']!r}")
            return cls(name, signing_key, transport_key, None)
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
    merge: dict[str, Any] = field(default_factory=dict)  # the merge rule (swarm.merge.parse_merge)
    schedule: dict[str, Any] | None = None  # per-round graphs of a time-varying topology (swarm.schedule)


@dataclass(frozen=True)
class Manifest:
    raw: bytes
    name: str
    version: int
    members: tuple[Member, ...]
    plan: Plan
    threshold: int  # how many of this version's members must sign the next version
    genesis: bytes | None = None  # versions > 1: the federation id (SHA-256 of version 1)
    previous: bytes | None = None  # versions > 1: SHA-256 of the previous version's bytes
    digest: bytes = field(init=False)  # SHA-256 of these bytes: what the next version names
    federation_id: bytes = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(self.raw).digest()
        object.__setattr__(self, "digest", digest)
        object.__setattr__(self, "federation_id", self.genesis if self.genesis is not None else digest)

    def member(self, name: str) -> Member:
        for member in self.members:
            if member.name == name:
                return member
        raise ManifestError(f"site {name!r} is not a member of federation {self.name!r}; check the site name or the manifest")

    def member_or_none(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    def member_by_signing_key(self, key: bytes) -> Member | None:
        return next((m for m in self.members if m.signing_key == key), None)

    def is_member_key(self, key: bytes) -> bool:
        return self.member_by_signing_key(key) is not None


def default_threshold(member_count: int) -> int:
    """A majority of the members: what a new version needs unless the federation chose."""
    return member_count // 2 + 1


def build_manifest(
    name: str,
    members: list[Member],
    plan: dict[str, Any],
    version: int = 1,
    threshold: int | None = None,
    previous: Manifest | None = None,
) -> Manifest:
    """Encode a new manifest (deterministic JSON) and parse it back, so that what we return
    is exactly what any other node will read from the file. A version after the first
    names its `previous` version (and through it the genesis)."""
    if (previous is None) != (version == 1) or (previous is not None and version != previous.version + 1):
        raise ValueError("version 1 has no previous version; version N > 1 follows version N-1")
    document: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "federation": name,
        "version": version,
        "threshold": default_threshold(len(members)) if threshold is None else threshold,
        "members": [m.card() for m in members],
        "plan": plan,
    }
    if previous is not None:
        document |= {"genesis": previous.federation_id.hex(), "previous": previous.digest.hex()}
    raw = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
    return parse_manifest(raw)


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest in `raw`; ManifestError for anything wrong with it. A neighbour's
    `manifest` message lands here, so no other exception may escape."""
    try:
        return _parse_manifest(raw)
    except ManifestError:
        raise
    except Exception as exc:  # e.g. a TypeError deep in a hand-made plan section
        raise ManifestError(f"manifest: malformed ({type(exc).__name__}: {brief(exc)})") from None


def _parse_manifest(raw: bytes) -> Manifest:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest: larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        document = json.loads(raw)
    # A neighbour may send "[[[[..." (RecursionError) or an int of more than 4300 digits
    # (a plain ValueError); JSONDecodeError and UnicodeDecodeError are ValueErrors too.
    except (ValueError, RecursionError) as exc:
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
    threshold = _parse_threshold(document.get("threshold"), len(members))
    genesis, previous = _parse_links(document, version)
    plan = _parse_plan(document.get("plan"), [m.name for m in members])
    check_reachability({m.name for m in members if not m.reachable}, plan.neighbours)
    return Manifest(raw=raw, name=name, version=version, members=members, plan=plan, threshold=threshold, genesis=genesis, previous=previous)


def _parse_threshold(threshold: Any, member_count: int) -> int:
    if threshold is None:  # written before manifests had versions: a majority
        return default_threshold(member_count)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= member_count:
        raise ManifestError(
            f"manifest.threshold: must be an integer from 1 to the {member_count} members, got {threshold!r} "
            f"(example: {default_threshold(member_count)}, a majority)"
        )
    return threshold


def _parse_links(document: dict[str, Any], version: int) -> tuple[bytes | None, bytes | None]:
    """(genesis, previous) of a version > 1; a genesis manifest has neither."""
    if version == 1:
        extra = sorted({"genesis", "previous"} & set(document))
        if extra:
            raise ManifestError(f"manifest.{extra[0]}: only versions after the first name a {extra[0]}; version 1 is the genesis")
        return None, None
    links = []
    for key in ("genesis", "previous"):
        value = document.get(key)
        try:
            if not isinstance(value, str) or len(value) != 64:
                raise ValueError
            links.append(bytes.fromhex(value))
        except ValueError:
            raise ManifestError(f"manifest.{key}: version {version} needs the 64-hex-digit SHA-256 of the {'genesis manifest' if key == 'genesis' else 'previous version'}; recreate it with `swarm-node federation propose`") from None
    return links[0], links[1]


def _check_unique(members: tuple[Member, ...]) -> None:
    for attribute in ("name", "signing_key", "transport_key", "endpoint"):
        values = [getattr(m, attribute) for m in members if getattr(m, attribute) is not None]
        if len(set(values)) != len(values):
            raise ManifestError(f"manifest.members: two members share the same {attribute}; each site needs its own")


def check_reachability(outbound: Collection[str], neighbours: Mapping[str, Sequence[str]], where: str = "manifest.plan.neighbours") -> None:
    """An outbound-only site talks only over connections it opens itself: each of its
    neighbours must be reachable. ManifestError, naming the site and the fix, otherwise."""
    for name in sorted(outbound):
        peers = neighbours[name]
        if all(peer in outbound for peer in peers):
            raise ManifestError(
                f"{where}.{name}: {name} is outbound-only (reachable = false) and has no reachable neighbour; "
                "give it a neighbour that accepts connections, or make it reachable (an endpoint in its member card)")
        both = sorted(peer for peer in peers if peer in outbound)
        if both:
            raise ManifestError(
                f"{where}.{name}: {name} and {both[0]} are both outbound-only (reachable = false) and cannot "
                "connect to each other; list explicit neighbours so that no two outbound-only sites are neighbours, or make one reachable")


def _parse_plan(plan: Any, member_names: list[str]) -> Plan:
    if not isinstance(plan, dict):
        raise ManifestError("manifest.plan: missing; the plan names the model, protocol, topology and rounds")
    rounds = plan.get("rounds")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ManifestError(f"manifest.plan.rounds: must be an integer >= 1, got {rounds!r}")
    sections = {}
    for key in ("protocol", "topology", "model", "training", "task", "merge"):
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
    # Members whose signing key changes in this version, signed with the previous version's key.
    old_key_signatures: dict[str, bytes] = field(default_factory=dict)

    def verify(self) -> None:
        """Raise ManifestError unless every member has signed these exact bytes (genesis rule:
        all founding members agree). A later version is checked against the version before
        it: swarm.manifest_chain.check_next_version."""
        if self.manifest.version != 1:
            raise ManifestError(
                f"manifest.version: version {self.manifest.version} is verified against version {self.manifest.version - 1}; pass the earlier versions (--history)"
            )
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
        unknown = (set(self.signatures) | set(self.old_key_signatures)) - {m.name for m in self.manifest.members}
        if unknown:
            raise ManifestError(f"manifest: signatures from non-members {sorted(unknown)}; remove them from the .sigs.json file")

    def sign(self, name: str, key: SigningKey, previous: Manifest | None = None) -> str:
        """Sign as member `name` with `key`: the key this version lists for it or, given the
        `previous` version, the key that one lists (a member that this version removes, or
        one that rotates its key and approves with its old one). Says which it was."""
        member = self.manifest.member_or_none(name)
        old = previous.member_or_none(name) if previous is not None else None
        if member is None and old is None:
            hint = "" if previous else " (a removed member signs where the previous version is installed)"
            raise ManifestError(f"site {name!r} is not a member of federation {self.manifest.name!r} version {self.manifest.version}{hint}")
        signature = key.sign(SIGNATURE_DOMAIN + self.manifest.raw)
        if member is not None and member.signing_key == key.public:
            self.signatures[name] = signature
            return "its key"
        if old is not None and old.signing_key == key.public:
            if member is None:
                self.signatures[name] = signature
                return "its key (leaving)"
            self.old_key_signatures[name] = signature
            return f"its old key of version {previous.version}"
        raise ManifestError(f"manifest: this site's signing key is not the one listed for {name!r}; wrong --site directory?")

    def signature_valid(self, name: str, key: bytes, old_key: bool = False) -> bool:
        signature = (self.old_key_signatures if old_key else self.signatures).get(name)
        return signature is not None and verify_signature(key, signature, SIGNATURE_DOMAIN + self.manifest.raw)


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
    sigs = signatures_path(path)
    return with_signatures(manifest, sigs.read_bytes(), str(sigs)) if sigs.exists() else SignedManifest(manifest, {})


def with_signatures(manifest: Manifest, raw: bytes, where: str) -> SignedManifest:
    """`manifest` with the signatures of a .sigs.json document (from a file or a neighbour)."""
    try:
        document = json.loads(raw)
        if document["federation_id"] != manifest.federation_id.hex() or document.get("manifest", manifest.digest.hex()) != manifest.digest.hex():
            raise ManifestError(f"{where}: these signatures belong to another manifest (federation id or manifest hash differs); delete the file and sign again")
        tables = [{str(name): bytes.fromhex(sig) for name, sig in document.get(key, {}).items()} for key in ("signatures", "old_key_signatures")]
        if "signatures" not in document or sum(map(len, tables)) > MAX_SIGNATURES or any(len(sig) != 64 for table in tables for sig in table.values()):
            raise ValueError("no signatures, too many, or one of the wrong size")
        return SignedManifest(manifest, *tables)
    except ManifestError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ManifestError(f"{where}: malformed signatures file; delete it and have every member sign again") from None


def save_manifest(path: Path, signed: SignedManifest) -> None:
    path = Path(path)
    write_atomic(path, signed.manifest.raw)
    save_signatures(path, signed)


def save_signatures(manifest_path: Path, signed: SignedManifest) -> None:
    write_atomic(signatures_path(Path(manifest_path)), signatures_document(signed))


def signatures_document(signed: SignedManifest) -> bytes:
    """The .sigs.json bytes: the federation id, which version's bytes (SHA-256), and the
    signatures by member name."""
    document: dict[str, Any] = {
        "federation_id": signed.manifest.federation_id.hex(),
        "manifest": signed.manifest.digest.hex(),
        "signatures": {name: sig.hex() for name, sig in sorted(signed.signatures.items())},
    }
    if signed.old_key_signatures:
        document["old_key_signatures"] = {name: sig.hex() for name, sig in sorted(signed.old_key_signatures.items())}
    return (json.dumps(document, indent=2) + "\n").encode()
