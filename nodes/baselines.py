"""The comparison rows for a federation: what each hospital gets alone, and what one model
trained on everybody's data together would get (the privacy-violating upper reference).

Both use the same model, the same initial weights (from `seed`) and the same training
budget as the federation: `rounds` calls of `train_local`, each of `train_cfg.epochs` local
epochs with a fresh optimizer, i.e. rounds x epochs epochs in total; the only thing missing
is the merge (local-only) or the site boundaries (pooled). Accuracy is always measured on
each site's own held-out test split, and means are unweighted over sites, as for the
federation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .data import DataConfig, SiteData, load_all_sites
from .models import build_model
from .training import TrainConfig, derive_seed, evaluate, train_local


def _site_row(site: SiteData, metrics: dict) -> dict:
    scores = {key: value for key, value in metrics.items() if key != "samples"}
    return {"site": site.name, **scores, "train_samples": site.train_samples, "test_samples": site.test_samples}


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def local_only(data_cfg: DataConfig | None, model_name: str, model_params: Mapping[str, Any] | None,
               train_cfg: TrainConfig, rounds: int, seed: int,
               sites: Sequence[SiteData] | None = None) -> list[dict]:
    """Per site: a model trained on its own data only, for rounds x epochs epochs, evaluated
    on its own test split. Rows: {"site", "accuracy", "loss", "train_samples", "test_samples"}.

    `sites` may pass already built sites (from `load_all_sites(data_cfg)`) to save work."""
    sites = list(sites) if sites is not None else load_all_sites(data_cfg)
    rows = []
    for index, site in enumerate(sites):
        model = build_model(model_name, model_params, site.input_shape, site.num_classes, seed)
        for r in range(rounds):
            train_local(model, site, train_cfg, derive_seed(seed, "local-only", index, r))
        rows.append(_site_row(site, evaluate(model, site.test_x, site.test_y)))
    return rows


def pool_sites(sites: Sequence[SiteData]) -> SiteData:
    """All sites' training (and test) splits concatenated into one data set."""
    first = sites[0]
    return SiteData(
        name="pooled",
        train_x=torch.cat([s.train_x for s in sites]),
        train_y=torch.cat([s.train_y for s in sites]),
        test_x=torch.cat([s.test_x for s in sites]),
        test_y=torch.cat([s.test_y for s in sites]),
        num_features=first.num_features,
        num_classes=first.num_classes,
    )


def pooled(data_cfg: DataConfig | None, model_name: str, model_params: Mapping[str, Any] | None,
           train_cfg: TrainConfig, rounds: int, seed: int,
           sites: Sequence[SiteData] | None = None) -> dict:
    """One model trained on every site's training data together for rounds x epochs epochs,
    evaluated on each site's test split.

    Returns {"sites": per-site rows as in `local_only`, "mean_accuracy", "mean_loss",
    "train_samples"}."""
    sites = list(sites) if sites is not None else load_all_sites(data_cfg)
    everything = pool_sites(sites)
    model = build_model(model_name, model_params, everything.input_shape, everything.num_classes, seed)
    for r in range(rounds):
        train_local(model, everything, train_cfg, derive_seed(seed, "pooled", r))
    rows = [_site_row(site, evaluate(model, site.test_x, site.test_y)) for site in sites]
    return {
        "sites": rows,
        "mean_accuracy": _mean([row["accuracy"] for row in rows]),
        "mean_loss": _mean([row["loss"] for row in rows]),
        "train_samples": everything.train_samples,
    }


def mean_accuracy(rows: Sequence[Mapping[str, Any]]) -> float:
    """Unweighted mean of the rows' "accuracy" (the number the scenario report compares)."""
    return _mean([float(row["accuracy"]) for row in rows])
