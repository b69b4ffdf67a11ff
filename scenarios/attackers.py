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
from typing import Any, ClassVar, Literal

from pydantic import field_validator, model_validator

from swarm.config import Table, invalid, invalid_value, refuse, setting
from swarm.errors import ConfigError

from .attacks import attack_table


class Placement(Table):
    """Which sites of a scenario's `[attack]` table are Byzantine; its other keys are the
    site's own `[attack]` table (kind and parameters: scenarios.attacks). count and sites
    are bounded by the number of sites, so `indices` checks their values."""

    TABLE: ClassVar[str] = "attack"
    share: float | None = setting(None, gt=0.0, lt=1.0, example=0.2)
    count: int | None = setting(None, example=1)
    sites: list[int] | None = None
    placement: Literal["spread", "random"] = "spread"
    seed: int | None = setting(None, ge=0, le=2**62, example=0)  # for placement = "random" (default 0)

    @field_validator("sites", mode="before")
    @classmethod
    def _site_list(cls, sites: Any) -> Any:
        # The whole list in the message, as when an index is out of range (`indices`).
        if not isinstance(sites, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in sites):
            raise invalid_value("", "a non-empty list of site indices", sites, [2])
        return sites

    @model_validator(mode="after")
    def _one_choice(self) -> Placement:
        if sum(value is not None for value in (self.share, self.count, self.sites)) != 1:
            raise refuse("", "give exactly one of share, count or sites (example: share = 0.2)")
        if self.sites is not None and len(set(self.sites)) != len(self.sites):
            raise refuse("sites", "lists a site twice")
        if self.placement != "random" and self.seed is not None:
            raise refuse("seed", 'only used with placement = "random"; remove it or set placement = "random"')
        return self

    def indices(self, n: int) -> list[int]:
        """The Byzantine sites among `n` (0-based)."""
        if self.sites is not None:
            if not self.sites or not all(0 <= i < n for i in self.sites):
                raise ConfigError(f"attack.sites: must be a non-empty list of site indices from 0 to {n - 1}, got {self.sites!r}")
            return sorted(self.sites)
        if self.count is not None and not 1 <= self.count <= n - 1:
            raise invalid("attack", "count", f"an integer from 1 to {n - 1}", self.count, 1)
        count = self.count if self.count is not None else max(1, round(self.share * n))
        if count >= n:
            raise ConfigError(f"attack: {count} Byzantine sites out of {n} leaves no honest site; lower share or count")
        if self.placement == "random":
            return sorted(random.Random(self.seed or 0).sample(range(n), count))
        return [(i * n) // count for i in range(count)]


PLACEMENT_KEYS = set(Placement.model_fields)


def pick_attackers(table: Mapping[str, Any], names: list[str], neighbours: Mapping[str, list[str]]) -> dict[str, dict[str, Any]]:
    """site name -> its `[attack]` table; {} when the scenario has no attack."""
    if not table:
        return {}
    # The site's table (kind and parameters) first: an unknown kind or key is named before the placement.
    site_table = {k: v for k, v in table.items() if k not in PLACEMENT_KEYS}
    site_table = {"kind": attack_table(site_table, "attack").kind} | site_table  # kind first in site.toml
    chosen = Placement.from_dict({k: v for k, v in table.items() if k in PLACEMENT_KEYS}, "attack").indices(len(names))
    return {names[i]: dict(site_table) for i in chosen}


def byzantine_share(attackers: set[str], neighbours: Mapping[str, list[str]]) -> dict[str, float]:
    """For each honest site, the Byzantine fraction of the models it merges (itself and its
    neighbours): what a robust rule has to survive."""
    return {
        name: sum(peer in attackers for peer in peers) / (len(peers) + 1)
        for name, peers in neighbours.items()
        if name not in attackers
    }
