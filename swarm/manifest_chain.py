"""Versions of the federation manifest: when version k+1 may replace version k.

TUF's root rotation rule, by member name. Version k+1 is valid after version k when
- it is version k+1 of the same federation: same name, `genesis` = the federation id (the
  SHA-256 of version 1, which stays the id for the federation's whole life), and `previous`
  = the SHA-256 of version k's exact bytes;
- at least threshold(k) members of version k signed it with the keys version k lists for
  them: a compromised or lost key can only be replaced by the other members, never by itself;
- every member that is new in version k+1, or whose signing key changed, signed it with
  the key version k+1 lists for it: nobody is made a member, or given a key, without
  showing that it holds that key.

A member that rotates its key signs twice: with its new key (its consent, in `signatures`)
and, to count towards the threshold, with its old one (in `old_key_signatures`). A
signature made with the old key where the new one is needed does not count.

Version 1 is the genesis: every member signs it (SignedManifest.verify)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, ManifestError
from .manifest import Manifest, Member, SignedManifest, build_manifest, default_threshold
from .topology import resolve_topology

EXPLICIT = "explicit"  # a topology of hand-written neighbour lists (nodes.plan.EXPLICIT)


@dataclass(frozen=True)
class Approval:
    """Who signed version `version`, measured against the version before it."""

    version: int
    needed: int  # threshold of the previous version
    previous_members: tuple[str, ...]
    approvers: tuple[str, ...]  # previous members whose signature with their previous key verifies
    must_sign: tuple[str, ...]  # members that join or change their signing key in this version
    missing: tuple[str, ...]  # of must_sign, those without a valid signature with their new key
    joining: tuple[str, ...] = ()  # of must_sign, those new in this version

    @property
    def ok(self) -> bool:
        return len(self.approvers) >= self.needed and not self.missing

    def problems(self) -> list[str]:
        """What is missing, one sentence each (empty when the version is valid)."""
        out = []
        if len(self.approvers) < self.needed:
            have = ", ".join(self.approvers) or "nobody"
            out.append(
                f"version {self.version} needs {self.needed} of the {len(self.previous_members)} members of version {self.version - 1}; "
                f"have {len(self.approvers)}: {have}"
            )
        for name in self.missing:
            change = "joins" if name in self.joining else "changes its signing key"
            out.append(f"{name} {change} in version {self.version} and must sign it with its new key")
        return out

    def newcomers(self) -> str:
        """The members that signed for themselves, e.g. "hospital-d (joining), hospital-b (new key)"."""
        return ", ".join(f"{name} ({'joining' if name in self.joining else 'new key'})" for name in self.must_sign)


def check_link(previous: Manifest, manifest: Manifest) -> None:
    """Raise ManifestError unless `manifest` names `previous` as the version it follows."""
    if manifest.version != previous.version + 1:
        raise ManifestError(
            f"manifest.version: version {manifest.version} cannot follow version {previous.version}; "
            f"install the versions in order (the next one is {previous.version + 1})"
        )
    if manifest.name != previous.name:
        raise ManifestError(f"manifest.federation: {manifest.name!r} is not federation {previous.name!r}; a federation keeps its name")
    if manifest.genesis != previous.federation_id:
        raise ManifestError(
            f"manifest.genesis: belongs to another federation (not {previous.federation_id.hex()[:16]}...); propose from this federation's manifest"
        )
    if manifest.previous != previous.digest:
        raise ManifestError(
            f"manifest.previous: does not name version {previous.version} of this federation ({previous.digest.hex()[:16]}...); "
            f"propose it again with `swarm-node federation propose --from` the installed version {previous.version}"
        )


def approval(previous: Manifest, signed: SignedManifest) -> Approval:
    """Count the valid signatures on `signed` against `previous` (the version before it).
    A signature that is present but does not verify, or one by a stranger, is an error:
    someone changed the file after signing, or forged it."""
    manifest = signed.manifest
    check_link(previous, manifest)
    known = {m.name for m in previous.members} | {m.name for m in manifest.members}
    strangers = sorted((set(signed.signatures) | set(signed.old_key_signatures)) - known)
    if strangers:
        raise ManifestError(f"manifest: signatures from {strangers[0]!r}, a member of neither version {previous.version} nor {manifest.version}; remove it from the .sigs.json file")
    approvers = []
    for old in previous.members:
        new = manifest.member_or_none(old.name)
        rotated = new is not None and new.signing_key != old.signing_key
        # A rotated member approves with its old key in old_key_signatures; everyone else
        # signs once, with the key both versions list (or the old one, when removed).
        found = (signed.old_key_signatures if rotated else signed.signatures).get(old.name)
        if found is None:
            continue
        if not signed.signature_valid(old.name, old.signing_key, old_key=rotated):
            raise ManifestError(f"manifest: the signature of {old.name!r} does not verify with its key in version {previous.version}; the manifest was changed after signing or the signature is forged")
        approvers.append(old.name)
    must_sign, missing = [], []
    for member in manifest.members:
        old = previous.member_or_none(member.name)
        if old is not None and old.signing_key == member.signing_key:
            continue
        must_sign.append(member.name)
        # A signature with any other key (the old one, after a rotation) does not count.
        if not signed.signature_valid(member.name, member.signing_key):
            missing.append(member.name)
    extra_old = sorted(set(signed.old_key_signatures) - set(must_sign))
    if extra_old:
        raise ManifestError(f"manifest: an old-key signature by {extra_old[0]!r}, whose signing key does not change in version {manifest.version}; remove it from the .sigs.json file")
    joining = tuple(name for name in must_sign if previous.member_or_none(name) is None)
    return Approval(manifest.version, previous.threshold, tuple(m.name for m in previous.members), tuple(approvers), tuple(must_sign), tuple(missing), joining)


def check_next_version(previous: Manifest, signed: SignedManifest) -> Approval:
    """Raise ManifestError unless `signed` is a valid successor of `previous`."""
    result = approval(previous, signed)
    if not result.ok:
        raise ManifestError("manifest: " + "; ".join(result.problems()) + "; run `swarm-node federation sign` at those sites")
    return result


def check_keys_not_reused(earlier: Sequence[Manifest], manifest: Manifest) -> None:
    """A signing key that some version replaced never comes back, for its member or any
    other: a member's log may only move forward through its keys (swarm.log.chain), and an
    old key may be in someone else's hands."""
    current = {m.signing_key: m.name for m in manifest.members}
    for version in earlier:
        for member in version.members:
            now = current.get(member.signing_key)
            if now is None:
                continue
            if now != member.name or key_history([*earlier, manifest], member.name)[-1] != member.signing_key:
                raise ManifestError(
                    f"manifest.members: {now}'s signing key was {member.name}'s in version {version.version} and later replaced; "
                    "a replaced key never comes back: create new keys with `swarm-node init`"
                )


def verify_chain(versions: Sequence[SignedManifest]) -> list[Approval]:
    """Check versions 1..N in order: the genesis rule for 1, the rotation rule for each next."""
    if not versions or versions[0].manifest.version != 1:
        raise ManifestError("manifest history: must start at version 1, the genesis manifest; pass it with --history")
    versions[0].verify()
    approvals = []
    for index in range(1, len(versions)):
        check_keys_not_reused([v.manifest for v in versions[:index]], versions[index].manifest)
        approvals.append(check_next_version(versions[index - 1].manifest, versions[index]))
    return approvals


def key_history(versions: Sequence[Manifest], name: str) -> tuple[bytes, ...]:
    """The signing keys member `name` has had, oldest first (its log is signed with them in
    this order; see swarm.log.chain)."""
    keys: list[bytes] = []
    for manifest in versions:
        member = manifest.member_or_none(name)
        if member is not None and member.signing_key not in keys:
            keys.append(member.signing_key)
    return tuple(keys)


# -- proposing the next version ---------------------------------------------------------------


def propose(
    current: Manifest,
    add: Sequence[Member] = (),
    remove: Sequence[str] = (),
    rotate: Sequence[Member] = (),
    plan: dict[str, Any] | None = None,
    threshold: int | None = None,
) -> Manifest:
    """Version current+1 with members added, removed or given new cards (keys, endpoint),
    and the plan replaced or, when the members change, its topology resolved again.
    Unsigned: each signer runs `swarm-node federation sign`."""
    members = list(current.members)
    names = [m.name for m in members]
    for name in remove:
        if name not in names:
            raise ManifestError(f"--remove {name}: not a member of version {current.version} (members: {', '.join(names)})")
        index = names.index(name)
        del members[index], names[index]
    for card in rotate:
        if card.name not in names:
            raise ManifestError(f"--rotate: {card.name!r} is not a member of version {current.version}; use --add for a new member")
        if members[names.index(card.name)] == card:
            raise ManifestError(f"--rotate: the card of {card.name!r} is the one version {current.version} lists; pass its new member.json")
        members[names.index(card.name)] = card
    for card in add:
        if card.name in names:
            raise ManifestError(f"--add: {card.name!r} is a member already; use --rotate to change its card")
        members.append(card)
        names.append(card.name)
    if len(members) < 2:
        raise ManifestError(f"--remove: a federation needs at least 2 members; version {current.version + 1} would have {len(members)}")
    if plan is None:
        plan = json.loads(current.raw)["plan"]
        if set(names) != {m.name for m in current.members} or names != [m.name for m in current.members]:
            plan = _plan_for_members(plan, names)
    if threshold is None:
        threshold = default_threshold(len(members)) if current.threshold == default_threshold(len(current.members)) else min(current.threshold, len(members))
    proposed = build_manifest(current.name, members, plan, current.version + 1, threshold, current)
    if _body(proposed) == _body(current):
        raise ManifestError("propose: nothing changes; pass --add, --remove, --rotate, --plan or --threshold")
    return proposed


def _plan_for_members(plan: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The same plan for a new member list: its topology resolved again over `names`."""
    topology = plan.get("topology", {})
    if topology.get("name") == EXPLICIT:
        raise ManifestError("--plan: this plan lists its neighbours by hand (topology explicit); pass --plan PLAN.toml with lists for the new members")
    try:
        neighbours, schedule = resolve_topology(topology, names, plan["rounds"])
    except ConfigError as exc:
        raise ManifestError(f"--plan: the plan's topology does not fit the new members ({exc}); pass --plan PLAN.toml") from None
    resolved = {key: value for key, value in plan.items() if key != "schedule"} | {"neighbours": neighbours}
    return resolved | ({"schedule": schedule} if schedule is not None else {})


def _body(manifest: Manifest) -> dict[str, Any]:
    document = json.loads(manifest.raw)
    for key in ("version", "genesis", "previous"):
        document.pop(key, None)
    return document
