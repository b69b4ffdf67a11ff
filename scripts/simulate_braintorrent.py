#!/usr/bin/env python3
"""Research/tuning script: BrainTorrent on a ring, simulated in one process, against the
local-only and pooled baselines, for several seeds.

Each round, every node in a random order: merges its own model with its neighbours' latest
published models whose version changed since it last merged them (weighted by training
samples, `swarm.merge.weighted_mean`), trains `epochs` local epochs, publishes. After the
last round each node's model is evaluated on its own site's test split.

    python scripts/simulate_braintorrent.py                      # quickstart defaults
    python scripts/simulate_braintorrent.py --seeds 0-9 --rounds 20 --epochs 2 \\
        --data label_skew=0.7 --data samples_per_site=200 --hidden 64,64

This is not a test: it is how the quickstart defaults in nodes/data.py (DataConfig) and
nodes/training.py (TrainConfig), and the rounds and model below, were chosen. With those
defaults (6-site ring, mlp [64, 64], 20 rounds of 1 epoch, Adam lr 0.003, batch 32), mean
test accuracy over sites, in %, 1 torch thread:

    seed   swarm   local  pooled  sw-loc pool-sw
       0   71.80   63.93   73.13   +7.87   +1.33
       1   71.70   65.47   70.87   +6.23   -0.83
       2   72.37   65.77   73.23   +6.60   +0.87
       3   74.80   64.63   77.23  +10.17   +2.43
       4   70.20   60.33   69.80   +9.87   -0.40
    mean   72.17   64.03   72.85   +8.15   +0.68
    seeds 0-19: swarm 72.62, local 64.19, pooled 72.67 (gain +8.44, worst +6.23;
    gap to pooled +0.05, worst +2.43); --sync: gain +8.43, worst gap +3.27.

Training costs ~3-5 ms CPU per site per round (plus ~1 s once per process for torch's
first optimizer step), so 20 rounds x 6 sites is well under a second of training."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import tomllib
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodes.data import DataConfig, load_all_sites  # noqa: E402
from nodes.models import build_model  # noqa: E402
from nodes.training import TrainConfig, derive_seed, evaluate, train_local  # noqa: E402
from scenarios.methods import run_method  # noqa: E402
from swarm.merge import weighted_mean  # noqa: E402

# The recommended quickstart plan; the data set and training defaults are DataConfig()
# and TrainConfig().
QUICKSTART_ROUNDS = 20
QUICKSTART_MODEL = "mlp"
QUICKSTART_MODEL_PARAMS = {"hidden": [64, 64]}


def ring(n: int) -> list[list[int]]:
    return [sorted({(i - 1) % n, (i + 1) % n} - {i}) for i in range(n)]


def simulate(sites, neighbours, model_name, model_params, train_cfg, rounds, seed, sync=False):
    """BrainTorrent on the given graph; returns (per-site rows, train CPU seconds per call).

    sync=False: within a round nodes go one after another in a random order, so a node may
    already see a neighbour's model from this round. sync=True: every node merges what its
    neighbours published in the previous round (all nodes train at the same time)."""
    n = len(sites)
    models = [build_model(model_name, model_params, s.num_features, s.num_classes, seed) for s in sites]
    published = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    versions = [0] * n
    last_merged = [dict.fromkeys(neighbours[i], 0) for i in range(n)]
    order_rng = random.Random(derive_seed(seed, "order"))
    cpu_per_call = []
    for r in range(rounds):
        order = list(range(n))
        order_rng.shuffle(order)
        visible = ([dict(p) for p in published], list(versions)) if sync else (published, versions)
        for i in order:
            seen_states, seen_versions = visible
            fresh = [j for j in neighbours[i] if seen_versions[j] > last_merged[i][j]]
            if fresh:
                states = [(sites[i].train_samples, models[i].state_dict())]
                states += [(sites[j].train_samples, seen_states[j]) for j in fresh]
                models[i].load_state_dict(weighted_mean(states))
                for j in fresh:
                    last_merged[i][j] = seen_versions[j]
            t0 = time.process_time()
            train_local(models[i], sites[i], train_cfg, derive_seed(seed, "train", i, r))
            cpu_per_call.append(time.process_time() - t0)
            published[i] = {k: v.clone() for k, v in models[i].state_dict().items()}
            versions[i] += 1
    rows = []
    for site, model in zip(sites, models):
        m = evaluate(model, site.test_x, site.test_y)
        rows.append({"site": site.name, "accuracy": m["accuracy"], "loss": m["loss"]})
    return rows, cpu_per_call


def parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            seeds += list(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    return seeds


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out.update(tomllib.loads(f"{key.strip()} = {value.strip()}"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,3,7")
    ap.add_argument("--rounds", type=int, default=QUICKSTART_ROUNDS)
    ap.add_argument("--model", default=QUICKSTART_MODEL)
    ap.add_argument("--hidden", default=",".join(map(str, QUICKSTART_MODEL_PARAMS["hidden"])),
                    help="mlp hidden widths, comma-separated")
    ap.add_argument("--data", action="append", default=[], metavar="KEY=VALUE",
                    help="[data] override in TOML syntax, repeatable")
    ap.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                    help="[train] override in TOML syntax, repeatable")
    ap.add_argument("--per-site", action="store_true", help="also print per-site accuracies")
    ap.add_argument("--sync", action="store_true",
                    help="synchronous rounds: nodes merge what neighbours published last round")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    train_cfg = TrainConfig.from_dict(parse_overrides(args.train))
    model_params = {} if args.model == "logreg" else {"hidden": [int(h) for h in args.hidden.split(",")]}
    base_data = parse_overrides(args.data)
    seeds = parse_seeds(args.seeds)
    print(f"data: {asdict(DataConfig.from_dict(base_data))}")
    print(f"train: {asdict(train_cfg)}  rounds={args.rounds}  model={args.model} {model_params}")
    print(f"{'seed':>4} {'swarm':>7} {'local':>7} {'pooled':>7} {'sw-loc':>7} {'pool-sw':>7} "
          f"{'train/site/round':>17} {'wall':>6}")
    results = []
    cpu_all: list[float] = []
    for seed in seeds:
        t0 = time.perf_counter()
        data_cfg = DataConfig.from_dict({**base_data, "seed": seed})
        sites = load_all_sites(data_cfg)
        swarm_rows, cpu = simulate(sites, ring(len(sites)), args.model, model_params, train_cfg,
                                   args.rounds, seed, sync=args.sync)
        shape = (sites[0].input_shape, sites[0].num_classes)
        local = run_method("single", sites, args.model, model_params, *shape, train_cfg, args.rounds, seed, history=False)
        pool = run_method("mix", sites, args.model, model_params, *shape, train_cfg, args.rounds, seed, history=False)
        s = statistics.mean(row["accuracy"] for row in swarm_rows)
        lo, po = local.overall["accuracy"], pool.overall["accuracy"]
        results.append((s, lo, po))
        cpu_all += cpu
        print(f"{seed:>4} {100 * s:7.2f} {100 * lo:7.2f} {100 * po:7.2f} {100 * (s - lo):+7.2f} "
              f"{100 * (po - s):+7.2f} {1000 * statistics.mean(cpu):14.1f} ms {time.perf_counter() - t0:5.1f}s",
              flush=True)
        if args.per_site:
            for a, site in zip(swarm_rows, sites):
                print(f"     {site.name:>8} n={site.train_samples:4d}/{site.test_samples:4d} "
                      f"swarm {100 * a['accuracy']:6.2f} local {100 * local.sites[site.name]['accuracy']:6.2f} "
                      f"pooled {100 * pool.sites[site.name]['accuracy']:6.2f}  classes {torch.bincount(site.train_y, minlength=site.num_classes).tolist()}")
    s, lo, po = (statistics.mean(col) for col in zip(*results))
    worst_gain = min(r[0] - r[1] for r in results)
    worst_gap = max(r[2] - r[0] for r in results)
    print(f"mean {100 * s:7.2f} {100 * lo:7.2f} {100 * po:7.2f} {100 * (s - lo):+7.2f} {100 * (po - s):+7.2f}")
    print(f"worst seed: swarm-local {100 * worst_gain:+.2f}, pooled-swarm {100 * worst_gap:+.2f}; "
          f"train CPU per site per round: mean {1000 * statistics.mean(cpu_all):.1f} ms, "
          f"max {1000 * max(cpu_all):.1f} ms; whole federation "
          f"{args.rounds * len(sites) * statistics.mean(cpu_all):.1f} s CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
