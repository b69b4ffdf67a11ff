"""One local round at a one-class hospital, starting from a good shared model: how much of
the held-out AUC and accuracy survive, per optimizer and loss.

Why BrainTorrent oscillated on sparse graphs under label skew (issue 11): a hospital that holds
one class trains its round on that class alone. With Adam (fresh each round, as every node
starts one per round) the vanishing gradients of an easy one-class loss are normalised into
full-size steps, so the round calls every sample that class and, with coupled L2 weight decay,
shrinks every weight; its neighbours then merge that model weighted by its sample count.

    python scripts/one_class_round.py --seed 1 --site 0

measured (imaging-skewed data, seed 1, site 0: 320 images, all class 1; pooled start):
    start: held-out AUC 0.910 ACC 0.782
    adam  weight_decay 1e-4  cross_entropy   AUC 0.849 ACC 0.500  weight norm 0.988x
    adam  weight_decay 0     cross_entropy   AUC 0.854 ACC 0.500  weight norm 1.036x
    adam  weight_decay 1e-4  logit_adjusted  AUC 0.897 ACC 0.502  weight norm 0.804x
    sgd   weight_decay 1e-4  cross_entropy   AUC 0.909 ACC 0.743  weight norm 1.000x
    sgd   weight_decay 1e-4  logit_adjusted  AUC 0.910 ACC 0.782  weight norm 1.000x
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nodes.models import build_model  # noqa: E402
from nodes.sources import data_source  # noqa: E402
from nodes.training import TrainConfig, train_local  # noqa: E402
from scenarios.methods import run_method  # noqa: E402
from scenarios.scoring import site_metrics  # noqa: E402

MODEL = {"channels": [8, 16], "hidden": [32], "norm": "group"}
SETTINGS = [("adam", 0.003, 1e-4, "cross_entropy"), ("adam", 0.003, 0.0, "cross_entropy"),
            ("adam", 0.003, 1e-4, "logit_adjusted"), ("sgd", 0.01, 1e-4, "cross_entropy"),
            ("sgd", 0.01, 1e-4, "logit_adjusted")]


def weight_norm(model: torch.nn.Module) -> float:
    return sum(float(p.detach().norm()) ** 2 for p in model.parameters()) ** 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=1, help="data seed of scenarios/imaging-skewed.toml's data")
    parser.add_argument("--site", type=int, default=0, help="the hospital whose round is replayed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = data_source({"source": "synthetic-imaging", "sites": 8, "alpha": 0.3, "one_class_sites": 1, "classes": 2,
                          "samples_per_site": 150, "quantity_skew": 1.0, "test_samples": 40, "seed": args.seed})
    sites = [source.load_site(k) for k in range(8)]
    held_out = source.global_test()
    pooled = run_method("mix", sites, "cnn", MODEL, (1, 28, 28), 2,
                        TrainConfig(optimizer="sgd", lr=0.01, loss="logit_adjusted"), 20, 0, history=False)
    start = pooled.states["pooled"]
    site = sites[args.site]
    print(f"site {args.site}: {site.train_samples} training images, classes {torch.bincount(site.train_y, minlength=2).tolist()}")
    model = build_model("cnn", MODEL, (1, 28, 28), 2, 0)
    model.load_state_dict(start)
    scores = site_metrics(model, held_out.x, held_out.y, "classification")
    print(f"start: held-out AUC {scores['auc']:.3f} ACC {scores['accuracy']:.3f}")
    norm = weight_norm(model)
    for optimizer, lr, decay, loss in SETTINGS:
        model.load_state_dict(start)
        train_local(model, site, TrainConfig(optimizer=optimizer, lr=lr, weight_decay=decay, loss=loss), seed=1)
        scores = site_metrics(model, held_out.x, held_out.y, "classification")
        print(f"{optimizer:5s} lr {lr:<6} weight_decay {decay:<7} {loss:15s} held-out AUC {scores['auc']:.3f} "
              f"ACC {scores['accuracy']:.3f}  weight norm {weight_norm(model) / norm:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
