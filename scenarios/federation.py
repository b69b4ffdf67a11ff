"""Setting up a whole federation on this machine, the way real sites would: each hospital
gets its own site directory and keys (`swarm-node init`), the plan and member cards become a
manifest, every member signs it, and each site installs the signed manifest."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

from nodes.launch import install_manifest
from nodes.site import SiteDir, init_site
from swarm.identity import load_site_keys
from swarm.transport.zeromq import free_tcp_ports
from swarm.manifest import Manifest, Member, SignedManifest, build_manifest, save_manifest

from .config import ScenarioConfig


@dataclass(frozen=True)
class Federation:
    manifest: Manifest
    manifest_path: Path
    sites: dict[str, Path]  # member name -> site directory
    attackers: frozenset[str] = frozenset()  # the simulated Byzantine sites


def site_names(count: int) -> list[str]:
    if count <= 26:
        return [f"hospital-{letter}" for letter in string.ascii_lowercase[:count]]
    return [f"hospital-{i:03d}" for i in range(count)]


def create_federation(config: ScenarioConfig, out: Path, endpoints: list[str] | None = None) -> Federation:
    """`endpoints`, one per site in site order, come from where the workers will run (a Ray
    cluster's hosts); without them every site listens on the scenario's host here."""
    names = site_names(config.nodes)
    if endpoints is None:
        endpoints = [f"tcp://{config.host}:{port}" for port in free_tcp_ports(config.host, config.nodes)]
    if len(endpoints) != len(names):
        raise ValueError(f"{len(endpoints)} endpoints for {len(names)} sites")
    sites_root = out / "sites"
    plan = config.plan_for(names)
    attackers = config.attackers(names, plan["neighbours"])
    members = []
    for index, (name, endpoint) in enumerate(zip(names, endpoints)):
        data = config.data | {"sites": config.nodes, "site": index}
        outbound = index in config.outbound_only  # binds nothing; its neighbours answer over its connections
        init_site(sites_root / name, name, None if outbound else endpoint, None, data, attackers.get(name))
        card = json.loads(SiteDir(sites_root / name).member_path.read_text())
        members.append(Member.from_card(card, name))
    manifest = build_manifest(config.name, members, plan)
    signed = SignedManifest(manifest, {})
    for name in names:
        signed.sign(name, load_site_keys(SiteDir(sites_root / name).keys_dir).signing)
    manifest_path = out / "manifest.json"
    save_manifest(manifest_path, signed)
    for name in names:
        install_manifest(manifest_path, sites_root / name)
    return Federation(manifest, manifest_path, {name: sites_root / name for name in names}, frozenset(attackers))
