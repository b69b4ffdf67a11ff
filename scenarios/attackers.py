"""Which hospitals of a scenario are Byzantine: the scenario's `[attack]` table.

    [attack]
    kind = "alie"          # scenarios.attacks: label_flip, sign_flip, gaussian, alie, ipm,
                           # scaled_replacement, free_riding
    share = 0.2            # fraction of the sites (rounded, at least 1), or
    # count = 3            # a number of sites, or
    # sites = [2, 7]       # the sites' indices (0 = hospital-a / hospital-000)
    placement = "spread"   # "spread": evenly over the site order; "random": seeded sample
    seed = 0               # for placement = "random"
    z = 1.5                # the kind's own parameters (see scenarios.attacks)

Each chosen site gets the kind and its parameters as `[attack]` in its site.toml; the other
sites never learn who they are, exactly as in a real federation."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from swarm.config import get_float, get_int, get_str
from swarm.errors import ConfigError

from .attacks import ATTACKS, parse_attack

PLACEMENT_KEYS = {"kind", "share", "count", "sites", "placement", "seed"}


def pick_attackers(table: Mapping[str, Any], names: list[str], neighbours: Mapping[str, list[str]]) -> dict[str, dict[str, Any]]:
    """site name -> its `[attack]` table; {} when the scenario has no attack."""
    if not table:
        return {}
    kind = get_str(table, "kind", "attack", choices=tuple(ATTACKS))
    site_table = {"kind": kind} | {k: v for k, v in table.items() if k not in PLACEMENT_KEYS}
    parse_attack(site_table, "attack")  # the kind's parameters; refuses unknown keys
    chosen = _indices(table, len(names))
    return {names[i]: dict(site_table) for i in chosen}


def _indices(table: Mapping[str, Any], n: int) -> list[int]:
    given = [key for key in ("share", "count", "sites") if key in table]
    if len(given) != 1:
        raise ConfigError("attack: give exactly one of share, count or sites (example: share = 0.2)")
    if "sites" in table:
        sites = table["sites"]
        if not isinstance(sites, list) or not sites or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in sites):
            raise ConfigError(f"attack.sites: must be a non-empty list of site indices from 0 to {n - 1}, got {sites!r}")
        if len(set(sites)) != len(sites):
            raise ConfigError("attack.sites: lists a site twice")
        return sorted(sites)
    if "share" in table:
        share = get_float(table, "share", "attack", minimum=0.0, maximum=1.0, min_open=True, max_open=True, example=0.2)
        count = max(1, round(share * n))
    else:
        count = get_int(table, "count", "attack", minimum=1, maximum=n - 1, example=1)
    if count >= n:
        raise ConfigError(f"attack: {count} Byzantine sites out of {n} leaves no honest site; lower share or count")
    placement = get_str(table, "placement", "attack", default="spread", choices=("spread", "random"))
    if placement == "random":
        return sorted(random.Random(get_int(table, "seed", "attack", default=0)).sample(range(n), count))
    if "seed" in table:
        raise ConfigError('attack.seed: only used with placement = "random"; remove it or set placement = "random"')
    return [(i * n) // count for i in range(count)]


def byzantine_share(attackers: set[str], neighbours: Mapping[str, list[str]]) -> dict[str, float]:
    """For each honest site, the Byzantine fraction of the models it merges (itself and its
    neighbours): what a robust rule has to survive."""
    return {
        name: sum(peer in attackers for peer in peers) / (len(peers) + 1)
        for name, peers in neighbours.items()
        if name not in attackers
    }
