"""Merge rules: how a node combines its own model with the models it pulled from peers.

One rule per module, all with the interface of `MergeRule` (`base.py`):

    mean          weighted mean, BrainTorrent's merge (not robust)     n >= 1
    median        coordinate-wise median                               n >= 2f+1
    trimmed_mean  coordinate-wise mean without the f lowest / highest  n >= 2f+1
    krum          the candidate closest to its n-f-2 nearest others    n >= 2f+3
    multi_krum    weighted mean of the m best Krum candidates          n >= 2f+3, n >= m+f
    clipping      self-centred clipping with an adaptive radius        n >= 3
                  (or with a fixed radius tau, for pairwise gossip)    n >= 2
    dos           softmax(-outlier score) weighted mean                n >= 3

n counts the models in one merge, the node's own included; f is the number of Byzantine ones
to tolerate. In a graph what counts is each neighbourhood: `check_neighbourhood` refuses, at
load time, a rule that a node's degree cannot support. A plan chooses the rule in a table:

    [merge]
    rule = "multi_krum"
    f = 1
    m = 3
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import model_validator
from torch import Tensor

from ..config import Table, refuse, setting
from ..errors import ConfigError
from .base import Candidates, MergeRule
from .clipping import SelfCentredClipping
from .dos import DOS
from .krum import Krum, MultiKrum
from .mean import Mean, weighted_mean
from .median import Median
from .trimmed_mean import TrimmedMean

MERGE_RULES: dict[str, type[MergeRule]] = {
    rule.name: rule for rule in (Mean, Median, TrimmedMean, Krum, MultiKrum, SelfCentredClipping, DOS)
}

__all__ = [
    "DOS", "MERGE_RULES", "Krum", "Mean", "Median", "MergeRule", "MergeSpec", "MultiKrum",
    "SelfCentredClipping", "TrimmedMean", "check_neighbourhood", "parse_merge", "weighted_mean",
]


RuleName = Literal[tuple(MERGE_RULES)]


class MergeSpec(Table):
    """The `[merge]` table: which rule, the f it tolerates, multi-Krum's m (None: n - f) and
    clipping's fixed radius tau (None: adaptive)."""

    TABLE: ClassVar[str] = "merge"

    rule: RuleName = setting("mean", example="median")
    f: int = setting(0, ge=0, example=1)
    m: int | None = setting(None, ge=1, example=3)
    tau: float | None = setting(None, gt=0.0, example=1.0)

    def __init__(self, *args: Any, **values: Any) -> None:
        """Also positionally, in field order: MergeSpec("krum", 1)."""
        super().__init__(**dict(zip(type(self).model_fields, args)), **values)

    @model_validator(mode="after")
    def _settings_of_the_rule(self) -> MergeSpec:
        if self.f and not MERGE_RULES[self.rule].uses_f:
            using_f = [name for name, cls in MERGE_RULES.items() if cls.uses_f]
            raise refuse("f", f"rule {self.rule} does not use f, got f = {self.f!r}; "
                              f"remove f, or choose a rule that does: {', '.join(using_f)}")
        if self.m is not None and self.rule != MultiKrum.name:
            raise refuse("m", f"only rule {MultiKrum.name} uses m, got rule = {self.rule!r}; remove m")
        if self.tau is not None and self.rule != SelfCentredClipping.name:
            raise refuse("tau", f"only rule {SelfCentredClipping.name} uses tau, got rule = {self.rule!r}; remove tau")
        return self

    def build(self) -> MergeRule:
        if self.m is not None:
            return MERGE_RULES[self.rule](m=self.m)
        if self.tau is not None:
            return MERGE_RULES[self.rule](tau=self.tau)
        return MERGE_RULES[self.rule]()

    def merge(self, candidates: Candidates) -> dict[str, Tensor]:
        """Merge with this rule and f; candidate 0 is the node's own model."""
        return self.build().merge(candidates, self.f)

    def describe(self) -> str:
        """e.g. "krum with f = 1", "multi_krum with f = 1, m = 3", "dos"."""
        settings = [f"f = {self.f}"] if MERGE_RULES[self.rule].uses_f else []
        settings += [] if self.m is None else [f"m = {self.m}"]
        settings += [] if self.tau is None else [f"tau = {self.tau:g}"]
        return self.rule + (f" with {', '.join(settings)}" if settings else "")


def parse_merge(table: Mapping[str, Any], where: str = "merge") -> MergeSpec:
    """A plan's merge table (keys rule, f, m, tau; all optional); ConfigError names the field, the
    bad value and the valid choices."""
    return MergeSpec.from_dict(table, where)


def check_neighbourhood(spec: MergeSpec, candidates: int, who: str, where: str = "merge") -> None:
    """ConfigError unless `who`, merging at most `candidates` models (itself and its
    neighbours), has enough of them for the rule and f of `spec`."""
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"check_neighbourhood: candidates must be an integer >= 1, got {candidates!r}")
    rule = spec.build()
    needed = rule.minimum_candidates(spec.f)
    if candidates >= needed:
        return
    neighbours = candidates - 1
    raise ConfigError(
        f"{where}.rule {spec.describe()} needs at least {needed} models per merge ({rule.requirement}); "
        f"{who} merges at most {candidates} (itself and {neighbours} neighbour{'' if neighbours == 1 else 's'}): "
        f"{_remedies(spec, candidates)}"
    )


def _remedies(spec: MergeSpec, candidates: int) -> str:
    rule = spec.build()
    remedies = []
    if rule.uses_f:
        lower_f = next((f for f in range(spec.f - 1, -1, -1) if rule.minimum_candidates(f) <= candidates), None)
        if lower_f is not None:
            remedies.append(f"lower f to {lower_f}")
    # Rules that take f must still tolerate one bad model, or they protect nothing.
    fitting = [name for name, cls in MERGE_RULES.items()
               if name not in (spec.rule, Mean.name)
               and cls().minimum_candidates(max(spec.f, 1) if cls.uses_f else 0) <= candidates]
    if fitting:
        remedies.append("choose " + _one_of(fitting))
    remedies.append("use a denser topology")
    return remedies[0] if len(remedies) == 1 else ", ".join(remedies[:-1]) + ", or " + remedies[-1]


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
