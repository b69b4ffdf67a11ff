"""What the `swarm-node federation` commands do with manifest files: create a plan from
TOML, propose the next version, sign, verify and describe any version. Each returns the
lines to print; mistakes raise ManifestError/UsageError (one line, exit 2)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ConfigDict

from swarm.config import Table, read_toml
from swarm.errors import ManifestError, UsageError
from swarm.identity import load_site_keys
from swarm.manifest import Manifest, Member, SignedManifest, load_manifest, save_manifest
from swarm.manifest_chain import approval, propose, verify_chain
from swarm.manifest_history import ManifestHistory, load_versions

from .site import SiteDir


def read_card(path: Path) -> Member:
    try:
        card = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{path}: not valid JSON") from None
    return Member.from_card(card, str(path))


class PlanFile(Table):
    """A plan TOML file's tables, each kept as written for build_plan to check (as
    plan.rounds, topology.name, ...). Tables it does not know are ignored, as before."""

    model_config = ConfigDict(extra="ignore")

    plan: dict[str, Any] = {}  # rounds (default 20)
    topology: dict[str, Any] = {}
    protocol: dict[str, Any] = {}
    model: dict[str, Any] = {}
    training: dict[str, Any] = {}
    task: dict[str, Any] = {}
    neighbours: dict[str, Any] = {}
    merge: dict[str, Any] = {}


def plan_from_toml(plan_path: Path, member_names: list[str]) -> dict[str, Any]:
    """The plan document for `member_names` from a plan TOML file (see docs/plan-example.toml)."""
    from .plan import build_plan

    tables = PlanFile.from_dict(read_toml(plan_path, "plan"), "")
    return build_plan(
        member_names,
        tables.plan.get("rounds", 20),
        tables.topology,
        tables.protocol,
        tables.model,
        tables.training,
        tables.task,
        tables.neighbours,
        merge=tables.merge,
        weights_dir=Path(plan_path).parent,  # [model] init_weights is found beside the plan file
    )


def propose_version(
    current_path: Path,
    out: Path,
    add: Sequence[Path] = (),
    remove: Sequence[str] = (),
    rotate: Sequence[Path] = (),
    plan_path: Path | None = None,
    threshold: int | None = None,
) -> list[str]:
    current = load_manifest(current_path).manifest
    added = [read_card(path) for path in add]
    rotated = [read_card(path) for path in rotate]
    names = [m.name for m in current.members if m.name not in remove] + [m.name for m in added]
    plan = plan_from_toml(plan_path, names) if plan_path is not None else None
    manifest = propose(current, added, remove, rotated, plan, threshold)
    save_manifest(out, SignedManifest(manifest, {}))
    newcomers = approval(current, SignedManifest(manifest, {})).newcomers()
    also = f", and also {newcomers}" if newcomers else ""
    return [
        f"wrote {out}: version {manifest.version} of {manifest.name} ({_changes(current, manifest)}), unsigned",
        f"it needs {current.threshold} of the {len(current.members)} members of version {current.version} to sign{also}; "
        f"each runs `swarm-node federation sign {out} --site DIR`",
    ]


def _changes(old: Manifest, new: Manifest) -> str:
    old_names, new_names = {m.name for m in old.members}, {m.name for m in new.members}
    parts = [f"{what}: {', '.join(sorted(names))}" for what, names in (("removes", old_names - new_names), ("adds", new_names - old_names)) if names]
    changed = sorted(m.name for m in new.members if m.name in old_names and old.member(m.name) != m)
    if changed:
        parts.append(f"new cards: {', '.join(changed)}")
    if old.threshold != new.threshold:
        parts.append(f"threshold {old.threshold} -> {new.threshold}")
    if old.plan.neighbours != new.plan.neighbours or old.plan.schedule != new.plan.schedule:
        parts.append("new neighbour lists")
    if _without_graphs(old) != _without_graphs(new):
        parts.append("new plan")
    return "; ".join(parts) or "no changes"


def _without_graphs(manifest: Manifest) -> dict[str, Any]:
    plan = json.loads(manifest.raw)["plan"]
    return {key: value for key, value in plan.items() if key not in ("neighbours", "schedule")}


def sign_manifest(manifest_path: Path, site_dir: Path) -> str:
    """Sign MANIFEST as this site. For a later version the site's installed previous
    version says which key is which (a removed member, or a rotated key's old half)."""
    site = SiteDir(site_dir)
    config = site.load_config()
    keys = load_site_keys(site.keys_dir)
    signed = load_manifest(manifest_path)
    previous = _installed_version(site, signed.manifest.version - 1)
    how = signed.sign(config.name, keys.signing, previous)
    save_manifest(manifest_path, signed)
    if signed.manifest.version == 1:
        missing = [m.name for m in signed.manifest.members if m.name not in signed.signatures]
        return f"signed as {config.name}; still to sign: {', '.join(missing) or 'nobody'}"
    if previous is None:
        return f"signed as {config.name} with {how}; version {signed.manifest.version - 1} is not installed here, so check with `swarm-node federation verify {manifest_path} --history DIR`"
    result = approval(previous, signed)
    return f"signed as {config.name} with {how}; " + ("; ".join(result.problems()) if not result.ok else "enough signatures: install it at every site")


def _installed_version(site: SiteDir, number: int) -> Manifest | None:
    if number < 1 or not site.manifest_path.exists():
        return None
    held = ManifestHistory.open(site.manifest_path, site.evidence_dir).version(number)
    return held.manifest if held is not None else None


def verify_manifest(manifest_path: Path, history: Sequence[Path]) -> str:
    signed = load_manifest(manifest_path)
    manifest = signed.manifest
    if manifest.version == 1:
        signed.verify()
        return f"OK {manifest.name} version 1: {len(manifest.members)} members, all signed; federation id {manifest.federation_id.hex()}"
    if not history:
        raise ManifestError(
            f"manifest.version: version {manifest.version} is checked against version {manifest.version - 1}; "
            "pass the earlier versions with --history (a site's federation/ directory, or the files)"
        )
    earlier = [v for v in load_versions(list(history)) if v.manifest.version < manifest.version]
    verify_chain([*earlier, signed])
    result = approval(earlier[-1].manifest, signed)
    joined = f", plus {result.newcomers()}" if result.must_sign else ""
    return (
        f"OK {manifest.name} version {manifest.version}: signed by {len(result.approvers)} of the {len(result.previous_members)} members "
        f"of version {manifest.version - 1} ({', '.join(result.approvers)}; {result.needed} needed){joined}; federation id {manifest.federation_id.hex()}"
    )


def describe_manifest(manifest_path: Path) -> list[str]:
    signed = load_manifest(manifest_path)
    manifest = signed.manifest
    lines = [f"federation {manifest.name} version {manifest.version}, id {manifest.federation_id.hex()}"]
    if manifest.previous is not None:
        lines.append(f"previous: version {manifest.version - 1}, sha256 {manifest.previous.hex()}")
    lines.append(f"threshold: {manifest.threshold} of its {len(manifest.members)} members must sign version {manifest.version + 1}; this version's sha256 {manifest.digest.hex()}")
    for member in manifest.members:
        mark = "signed" if member.name in signed.signatures else "NOT SIGNED"
        neighbours = ", ".join(manifest.plan.neighbours[member.name])
        lines.append(f"  {member.name:<16} {member.endpoint or 'outbound-only':<26} {mark:<10} neighbours: {neighbours}")
    others = sorted(set(signed.signatures) - {m.name for m in manifest.members})
    old_keys = sorted(signed.old_key_signatures)
    signers = sorted(signed.signatures) + [f"{name} (old key)" for name in old_keys]
    lines.append(f"signed by: {', '.join(signers) or 'nobody'}" + (f" (leaving: {', '.join(others)})" if others else ""))
    plan = manifest.plan
    lines.append(f"plan: {plan.rounds} rounds, protocol {plan.protocol}, topology {plan.topology}, model {plan.model}, training {plan.training}")
    return lines
