"""The comparison methods of the Guan et al. survey that do not run as node processes:
Single, Cross, Mix, and the centralised federated baselines FedAvg, FedSGD and FedProx.

    result = run_method("fedavg", sites, "mlp", {"hidden": [64]}, 32, 3, TrainConfig(), rounds=10, seed=0)
    result.sites["site-0"]["accuracy"], result.overall["auc"], result.history[-1]

THE SERVER. FedAvg, FedSGD and FedProx are simulated here, in one process, with a central
server that collects and averages every site's update. They are comparison BASELINES only:
this module is the only place in the project where a central server exists. The project's
own methods (BrainTorrent and the other protocols) are serverless and run as real node
processes; they are not here.

What every method shares, so that rows of the comparison table differ only in the method:
- the same sites (identical per-site splits), the same model and the same initial weights
  (`build_model(model_name, model_params, input_shape, num_classes, seed)`);
- the same training budget: every training sample is seen rounds x `train.epochs` times.
  Single, Cross, Mix, FedAvg and FedProx make `rounds` calls of `train_local`, each of
  `train.epochs` local epochs with a fresh optimizer (as `nodes.baselines` does); FedSGD
  makes rounds x `train.epochs` full-batch gradient steps (one per data pass);
- the same training randomness: site i's training in round r always uses the seed
  `derive_seed(seed, "train", i, r)`, whichever method it is part of (so Cross trains
  exactly the models Single trains, and FedAvg over one site is exactly Single);
- `train.prox_mu` is ignored (set to 0) except by FedProx, which sets it to its own `mu`;
- the same scoring (`scenarios.scoring`): the method's model(s) on each site's OWN test
  split (Cross: on the other sites' test splits), and, when a `held_out` set is given,
  on that federation-wide held-out set (a method with one model per site: the mean over
  its sites' models). Metrics: accuracy, balanced accuracy, sensitivity, specificity and
  AUC for classification (labels [n]); dice and pixel_accuracy for segmentation (masks
  [n, H, W], scores [n, C, H, W]). Means over sites come unweighted and weighted by
  test-split size, with the sites where a metric is undefined named.

Everything is deterministic given `seed` (training forks the global random state, so the
caller's is untouched). How many threads torch uses is the caller's business.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from nodes.metrics import site_means
from nodes.models import build_model
from nodes.training import TrainConfig, check_output, derive_seed, train_local
from swarm.config import Table, setting
from swarm.errors import ConfigError
from swarm.merge import weighted_mean

from .scoring import TASK_METRICS, HeldOut, mean_over, site_metrics

__all__ = [
    "SiteLike", "MethodResult", "METHODS", "METHOD_NAMES", "METHOD_PARAMS", "TASK_METRICS", "run_method",
    "MethodParams", "SingleParams", "CrossParams", "MixParams", "FedAvgParams", "FedSGDParams", "FedProxParams",
    "run_single", "run_cross", "run_mix", "run_fedavg", "run_fedsgd", "run_fedprox",
    "task_of",
]

_DEFAULT_SERVER_LR = 0.5     # FedSGD's server step size (plain gradient descent)
_DEFAULT_MU = 0.01           # FedProx's proximal weight when neither mu nor train.prox_mu is set

Progress = Callable[[dict], None]


class SiteLike(Protocol):
    """What a method needs of a site: training and test tensors. `nodes.data.SiteData`
    fits; so does anything with these attributes (an optional `name` names the site,
    else "site-<index>"). x: [n, features] or images [n, C, H, W]; y: class labels [n] or
    segmentation masks [n, H, W] (int64)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


@dataclass(frozen=True)
class _Split:
    """A plain SiteLike (the pooled data set of Mix)."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


@dataclass
class MethodResult:
    """What one method run gives.

    sites:   {site name: {metric: value}} -- each site's metrics on its own test split
             (Cross: keyed by TRAINING site, the mean over the other sites' test splits).
    overall: {metric: unweighted mean over `sites`}.
    site_means: `nodes.metrics.site_means` of `sites`, weighted by test-split size:
             {metric: {"mean", "weighted_mean", "defined", "undefined": [sites]}}.
    global_: {metric: value} on the held-out set ({} without one): the one model's score,
             or the unweighted mean over the per-site models.
    global_models: {model name: {metric: value}} on the held-out set: "global"/"pooled" or
             one entry per site's model.
    history: one entry per round, {"round": 1..rounds, metric: mean over sites after that
             round, ..., "train_loss": mean training loss over sites in that round, and
             with a held-out set "global": {metric: value} and "global_models"}
             (only the last round when run with history=False).
    details: method-specific extras, JSON-friendly (Cross: the full "matrix"
             {train site: {test site: metrics}}; FedSGD: "steps", "server_lr"; ...).
    states:  the final weights, {"global": state} for the federated methods, {"pooled":
             state} for Mix, {site name: state} for Single and Cross. Not in `to_dict`."""

    method: str
    task: str
    metrics: tuple[str, ...]
    sites: dict[str, dict[str, float]]
    overall: dict[str, float]
    history: list[dict[str, Any]]
    details: dict[str, Any] = field(default_factory=dict)
    states: dict[str, dict[str, Tensor]] = field(default_factory=dict, repr=False)
    site_means: dict[str, dict[str, Any]] = field(default_factory=dict)
    global_: dict[str, float] = field(default_factory=dict)
    global_models: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "task": self.task,
            "metrics": list(self.metrics),
            "sites": self.sites,
            "overall": self.overall,
            "site_means": self.site_means,
            "global": self.global_,
            "global_models": self.global_models,
            "history": self.history,
            "details": self.details,
        }


# --------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------


def task_of(sites: Sequence[SiteLike]) -> str:
    """"classification" (labels [n]) or "segmentation" (masks [n, H, W] or [n, D, H, W]),
    the same for every site's training and test split; ConfigError otherwise."""
    kinds = {1: "classification", 3: "segmentation", 4: "segmentation"}
    found = set()
    for site in sites:
        for y in (site.train_y, site.test_y):
            kind = kinds.get(int(y.dim()))
            if kind is None:
                raise ConfigError(
                    f"data: labels must be class labels [n] or segmentation masks [n, H, W] or [n, D, H, W], "
                    f"got shape {list(y.shape)}"
                )
            found.add(kind)
    if len(found) != 1:
        raise ConfigError("data: the sites mix class labels [n] and segmentation masks [n, H, W]; use one task")
    return found.pop()


def _site_names(sites: Sequence[SiteLike]) -> list[str]:
    names = [getattr(site, "name", None) for site in sites]
    if all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names):
        return names  # type: ignore[return-value]
    return [f"site-{i}" for i in range(len(sites))]


def _train_seed(seed: int, site: int | str, round_index: int) -> int:
    return derive_seed(seed, "train", site, round_index)


def _state_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Run:
    """One method run's context: the sites, the model recipe, the budget, and the
    per-round history and progress reporting."""

    def __init__(self, method: str, sites: Sequence[SiteLike], model_name: str,
                 model_params: Mapping[str, Any] | None, input_shape: int | Sequence[int],
                 num_classes: int, train: TrainConfig, rounds: int, seed: int,
                 history: bool, progress: Progress | None, held_out: HeldOut | None = None) -> None:
        self.method = method
        self.held_out = held_out
        self.sites = list(sites)
        self.names = _site_names(self.sites)
        self.task = task_of(self.sites)
        self.metric_names = TASK_METRICS[self.task]
        self.model_name = model_name
        self.model_params = dict(model_params or {})
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.train = train.replace(prox_mu=0.0)
        self.train_prox_mu = float(train.prox_mu)   # FedProx's default mu
        self.rounds = rounds
        self.seed = seed
        self.want_history = history
        self.progress = progress
        self.history: list[dict[str, Any]] = []
        self.last_rows: dict[str, dict[str, float]] = {}
        self.last_global: dict[str, dict[str, float]] = {}

    def model(self) -> nn.Module:
        """The common initial model (identical weights for every method)."""
        return build_model(self.model_name, self.model_params, self.input_shape, self.num_classes, self.seed)

    def evaluate(self, model: nn.Module, site: SiteLike) -> dict[str, float]:
        return site_metrics(model, site.test_x, site.test_y, self.task)

    def last_round(self, r: int) -> bool:
        return r == self.rounds - 1

    def record(self, r: int, models: Mapping[str, nn.Module], losses: Sequence[float],
               site_rows: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """History entry for round r (0-based). `models` are the method's models after the
        round: {"global" or "pooled": model} or {site name: model}. Each site is scored
        with its own model, or the one model, on its own test split (unless `site_rows`
        gives the rows, as Cross does), and every model on the held-out set."""
        entry: dict[str, Any] = {"round": r + 1}
        if self.wants_eval(r):
            per_site = set(models) == set(self.names)
            rows = dict(site_rows) if site_rows is not None else {
                name: self.evaluate(models[name] if per_site else next(iter(models.values())), site)
                for name, site in zip(self.names, self.sites)
            }
            self.last_rows = {name: dict(row) for name, row in rows.items()}
            entry.update(mean_over(list(rows.values()), self.metric_names))
            if self.held_out is not None:
                self.last_global = {name: site_metrics(model, self.held_out.x, self.held_out.y, self.task)
                                    for name, model in models.items()}
                entry["global"] = mean_over(list(self.last_global.values()), self.metric_names)
                entry["global_models"] = self.last_global
        finite = [v for v in losses if not math.isnan(v)]
        entry["train_loss"] = math.fsum(finite) / len(finite) if finite else math.nan
        if self.wants_eval(r):
            self.history.append(entry)
        if self.progress is not None:
            self.progress({"method": self.method, "rounds": self.rounds, **entry})

    def wants_eval(self, r: int) -> bool:
        return self.want_history or self.last_round(r)

    def result(self, details: dict[str, Any] | None = None,
               states: dict[str, dict[str, Tensor]] | None = None) -> MethodResult:
        sites = self.last_rows
        test_sizes = {name: float(int(site.test_y.shape[0])) for name, site in zip(self.names, self.sites)}
        return MethodResult(
            method=self.method, task=self.task, metrics=self.metric_names, sites=sites,
            overall=mean_over(list(sites.values()), self.metric_names),
            history=self.history, details=details or {}, states=states or {},
            site_means=site_means(sites, test_sizes, self.metric_names),
            global_=mean_over(list(self.last_global.values()), self.metric_names) if self.last_global else {},
            global_models=self.last_global,
        )


# --------------------------------------------------------------------------------------
# Single, Cross, Mix
# --------------------------------------------------------------------------------------


def _single(run: _Run) -> MethodResult:
    """Single (local only): each site trains its own model on its own training split for
    rounds x epochs epochs and is tested on its own test split. No exchange at all."""
    models = [run.model() for _ in run.sites]
    for r in range(run.rounds):
        losses = [train_local(m, s, run.train, _train_seed(run.seed, i, r))["loss"]
                  for i, (m, s) in enumerate(zip(models, run.sites))]
        run.record(r, dict(zip(run.names, models)), losses)
    return run.result(states={n: _state_copy(m) for n, m in zip(run.names, models)})


def _cross(run: _Run) -> MethodResult:
    """Cross: a model trained on one site only (exactly Single's model for that site) is
    tested on every OTHER site's test split, never on its own. `sites[name]` is, per
    training site, the mean over the other sites; `details["matrix"]` holds every
    (training site, test site) pair. Needs at least two sites."""
    if len(run.sites) < 2:
        raise ConfigError(f"compare.methods: cross needs at least 2 sites (train on one, test on the "
                          f"others), got {len(run.sites)}")
    models = [run.model() for _ in run.sites]
    matrix: dict[str, dict[str, dict[str, float]]] = {}
    for r in range(run.rounds):
        losses = [train_local(m, s, run.train, _train_seed(run.seed, i, r))["loss"]
                  for i, (m, s) in enumerate(zip(models, run.sites))]
        if run.wants_eval(r):
            matrix = {
                run.names[i]: {run.names[j]: run.evaluate(model, other)
                               for j, other in enumerate(run.sites) if j != i}
                for i, model in enumerate(models)
            }
        rows = {name: mean_over(list(row.values()), run.metric_names) for name, row in matrix.items()}
        run.record(r, dict(zip(run.names, models)), losses, site_rows=rows)
    return run.result(details={"matrix": matrix}, states={n: _state_copy(m) for n, m in zip(run.names, models)})


def _mix(run: _Run) -> MethodResult:
    """Mix (pooled): one model trained on every site's training data in one place (the
    privacy-violating upper reference), tested on each site's own test split."""
    pooled = _Split(
        name="pooled",
        train_x=torch.cat([s.train_x for s in run.sites]),
        train_y=torch.cat([s.train_y for s in run.sites]),
        test_x=run.sites[0].test_x[:0],
        test_y=run.sites[0].test_y[:0],
    )
    model = run.model()
    for r in range(run.rounds):
        loss = train_local(model, pooled, run.train, _train_seed(run.seed, "pooled", r))["loss"]
        run.record(r, {"pooled": model}, [loss])
    return run.result(details={"train_samples": int(pooled.train_y.shape[0])}, states={"pooled": _state_copy(model)})


# --------------------------------------------------------------------------------------
# The simulated-server baselines: FedAvg, FedProx, FedSGD
# --------------------------------------------------------------------------------------


def _federated_averaging(run: _Run, train: TrainConfig) -> MethodResult:
    model = run.model()
    worker = run.model()
    for r in range(run.rounds):
        global_state = _state_copy(model)
        updates: list[tuple[float, dict[str, Tensor]]] = []
        losses = []
        for i, site in enumerate(run.sites):
            worker.load_state_dict(global_state)
            report = train_local(worker, site, train, _train_seed(run.seed, i, r))
            losses.append(report["loss"])
            if report["samples"] > 0:
                updates.append((float(report["samples"]), _state_copy(worker)))
        if updates:  # the server: average weighted by training samples
            model.load_state_dict(weighted_mean(updates))
        run.record(r, {"global": model}, losses)
    return run.result(states={"global": _state_copy(model)})


def _fedavg(run: _Run) -> MethodResult:
    """FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data") with a SIMULATED CENTRAL SERVER -- a comparison baseline, and the
    only place a server exists in this project. Each round every site starts from the
    global model, trains `train.epochs` local epochs (`train_local`, fresh optimizer), and
    the server replaces the global model by the average of the sites' models weighted by
    their training-sample counts (`swarm.merge.weighted_mean`; floating buffers such as
    BatchNorm statistics are averaged too). The global model is tested on every site's
    own test split. With one site this is exactly Single."""
    return _federated_averaging(run, run.train)


def _fedprox(run: _Run, mu: float | None) -> MethodResult:
    """FedProx (Li et al. 2020, "Federated Optimization in Heterogeneous Networks"): FedAvg
    -- the same SIMULATED CENTRAL SERVER baseline, the only place a server exists in this
    project -- whose local training adds (mu/2) ||w - w_global||^2 (`train_local` with
    `TrainConfig.prox_mu = mu`). `mu` defaults to `train.prox_mu` when that is > 0, else
    0.01. With mu = 0 this is exactly FedAvg."""
    if mu is None:
        mu = run.train_prox_mu if run.train_prox_mu > 0 else _DEFAULT_MU
    result = _federated_averaging(run, run.train.replace(prox_mu=float(mu)))
    result.details["mu"] = float(mu)
    return result


def _site_gradient(worker: nn.Module, params: list[nn.Parameter], site: SiteLike, seed: int,
                   batch_size: int | None, chunk_size: int) -> tuple[list[Tensor], float, int]:
    """Gradient of the mean cross-entropy over the site's training data (or a random
    `batch_size` subset of it) at the worker's weights, accumulated over chunks."""
    x, y = site.train_x, site.train_y
    n = int(y.shape[0])
    if batch_size is not None and batch_size < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "batch")))[:batch_size]
        x, y, n = x[idx], y[idx], batch_size
    worker.train()
    worker.zero_grad(set_to_none=True)
    total = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "model-randomness"))
        for start in range(0, n, chunk_size):
            xb, yb = x[start:start + chunk_size], y[start:start + chunk_size]
            scores = worker(xb)
            check_output(scores, yb)
            loss = nn.functional.cross_entropy(scores, yb) * (int(yb.shape[0]) / n)
            loss.backward()
            total += float(loss.detach())
    grads = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    return grads, total, n


def _fedsgd(run: _Run, server_lr: float, batch_size: int | None, chunk_size: int) -> MethodResult:
    """FedSGD (McMahan et al. 2017) with a SIMULATED CENTRAL SERVER -- a comparison
    baseline, and the only place a server exists in this project. Each communication
    round every site computes ONE gradient of its mean training loss at the global weights,
    on its full local training split (or on a random `batch_size` subset); the server
    averages the gradients weighted by the sites' sample counts, adds the L2 term
    `train.weight_decay * w`, and takes one plain gradient-descent step
    w <- w - server_lr * g. Floating buffers (BatchNorm statistics, updated by each site's
    forward pass) are averaged weighted by samples.

    Budget: one full-batch step is one pass over the data, so each of the `rounds`
    comparison rounds is `train.epochs` communication rounds (rounds x epochs steps in
    all, `details["steps"]`); history is recorded per comparison round. The gradient is
    accumulated over chunks of `chunk_size` samples (memory only: with BatchNorm each
    chunk uses its own batch statistics). `train.lr`, `optimizer`, `momentum` and
    `batch_size` are not used."""
    model = run.model()
    worker = run.model()
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    worker_params = dict(worker.named_parameters())
    worker_trainable = [worker_params[name] for name in names]
    buffer_names = [name for name, b in model.named_buffers() if b.is_floating_point()]
    weight_decay = run.train.weight_decay
    step = 0
    for r in range(run.rounds):
        losses: list[float] = []
        for _ in range(run.train.epochs):
            global_state = _state_copy(model)
            weighted: list[tuple[float, list[Tensor]]] = []
            buffers: list[tuple[float, dict[str, Tensor]]] = []
            step_losses = []
            for i, site in enumerate(run.sites):
                if int(site.train_y.shape[0]) == 0:
                    continue
                worker.load_state_dict(global_state)
                grads, loss, _ = _site_gradient(worker, worker_trainable, site,
                                                _train_seed(run.seed, i, step), batch_size, chunk_size)
                weighted.append((float(int(site.train_y.shape[0])), grads))
                step_losses.append(loss)
                if buffer_names:
                    state = worker.state_dict()
                    own = {b: state[b].detach().clone() for b in buffer_names}
                    buffers.append((float(int(site.train_y.shape[0])), own))
            if weighted:  # the server: sample-weighted mean gradient, one descent step
                total = math.fsum(w for w, _ in weighted)
                with torch.no_grad():
                    for k, name in enumerate(names):
                        p = params[name]
                        g = sum((w / total) * grads[k].to(torch.float64) for w, grads in weighted)
                        if weight_decay:
                            g = g + weight_decay * p.detach().to(torch.float64)
                        p.copy_((p.detach().to(torch.float64) - server_lr * g).to(p.dtype))
                    if buffers:
                        merged = weighted_mean(buffers)
                        state_buffers = dict(model.named_buffers())
                        for b in buffer_names:
                            state_buffers[b].copy_(merged[b])
            step += 1
            finite = [v for v in step_losses if not math.isnan(v)]
            losses.append(math.fsum(finite) / len(finite) if finite else math.nan)
        run.record(r, {"global": model}, losses[-1:])
    return run.result(details={"steps": step, "server_lr": server_lr, "batch_size": batch_size},
                      states={"global": _state_copy(model)})


# --------------------------------------------------------------------------------------
# Registry and entry point
# --------------------------------------------------------------------------------------

MethodFn = Callable[..., MethodResult]

_IMPLEMENTATIONS: dict[str, Callable[..., MethodResult]] = {
    "single": _single,
    "cross": _cross,
    "mix": _mix,
    "fedavg": _fedavg,
    "fedsgd": _fedsgd,
    "fedprox": _fedprox,
}
METHOD_NAMES: tuple[str, ...] = tuple(_IMPLEMENTATIONS)


class MethodParams(Table):
    """A method's parameters: its `[compare.<method>]` table, or run_method's keyword
    arguments; a subclass per method (METHOD), with none for single, cross, mix and fedavg."""

    TABLE: ClassVar[str] = "compare"
    METHOD: ClassVar[str] = ""
    # Said of the method, whose parameters differ, rather than as an unknown key of a table.
    UNKNOWN_KEY: ClassVar[str] = "unknown parameter for method {table.METHOD!r} (known: {known})"


class SingleParams(MethodParams):
    METHOD: ClassVar[str] = "single"


class CrossParams(MethodParams):
    METHOD: ClassVar[str] = "cross"


class MixParams(MethodParams):
    METHOD: ClassVar[str] = "mix"


class FedAvgParams(MethodParams):
    METHOD: ClassVar[str] = "fedavg"


class FedSGDParams(MethodParams):
    METHOD: ClassVar[str] = "fedsgd"
    server_lr: float = setting(_DEFAULT_SERVER_LR, gt=0.0, requirement="a finite number > 0")
    batch_size: int | None = setting(None, ge=1, requirement="an integer >= 1 (or absent)", example=256)  # None: the full local batch
    chunk_size: int = setting(1024, ge=1)


class FedProxParams(MethodParams):
    METHOD: ClassVar[str] = "fedprox"
    mu: float | None = setting(None, ge=0.0, requirement="a finite number >= 0", example=_DEFAULT_MU)  # None: train.prox_mu if > 0, else 0.01


METHOD_PARAMS: dict[str, type[MethodParams]] = {cls.METHOD: cls for cls in (SingleParams, CrossParams, MixParams, FedAvgParams, FedSGDParams, FedProxParams)}


class _Budget(Table):
    """run_method's rounds, named as in the scenario's [compare] table."""

    TABLE: ClassVar[str] = "compare"
    rounds: int = setting(ge=1, example=10)


def run_method(name: str, sites: Sequence[SiteLike], model_name: str,
               model_params: Mapping[str, Any] | None, input_shape: int | Sequence[int],
               num_classes: int, train: TrainConfig, rounds: int, seed: int, *,
               history: bool = True, progress: Progress | None = None,
               held_out: HeldOut | None = None, **method_params: Any) -> MethodResult:
    """Run comparison method `name` (one of METHOD_NAMES) on `sites` and return its
    MethodResult. See the module docstring for what every method shares.

    input_shape: features (int) or (C, H, W); num_classes: model outputs. `train`: the
    local training settings (epochs per round, optimizer, ...); `rounds`: rounds, so the
    budget is rounds x train.epochs passes over the data. `history=False` evaluates only
    after the last round (history holds that round only). `progress`, if given, is called after
    every round with {"method", "rounds", "round", metric means..., "train_loss"} (metrics
    only where that round was evaluated). `held_out`: the federation-wide test set (x, y)
    every model is also scored on (`MethodResult.global_`).

    method_params: fedsgd: server_lr (0.5), batch_size (None: full local batch),
    chunk_size (1024); fedprox: mu (train.prox_mu if > 0, else 0.01).

    ConfigError for an unknown method (field `compare.methods`), an unknown or bad method
    parameter, no sites, rounds < 1, labels that are neither [n] nor [n, H, W], or a model
    that does not fit the labels."""
    if not isinstance(name, str) or name not in _IMPLEMENTATIONS:
        raise ConfigError(
            f"compare.methods: unknown method {name!r}; known: {', '.join(METHOD_NAMES)} "
            f'(example: methods = ["single", "mix", "fedavg"])'
        )
    params = METHOD_PARAMS[name].from_dict(method_params, f"compare.{name}")
    sites = list(sites)
    if not sites:
        raise ConfigError("compare.sites: no sites to run the comparison on")
    rounds = _Budget.from_dict({"rounds": rounds}).rounds
    run = _Run(name, sites, model_name, model_params, input_shape, num_classes, train, rounds, seed,
               history, progress, held_out)
    return _IMPLEMENTATIONS[name](run, **params.fields())


def _entry(name: str) -> MethodFn:
    def method(sites: Sequence[SiteLike], model_name: str, model_params: Mapping[str, Any] | None,
               input_shape: int | Sequence[int], num_classes: int, train: TrainConfig, rounds: int,
               seed: int, **kwargs: Any) -> MethodResult:
        return run_method(name, sites, model_name, model_params, input_shape, num_classes, train,
                          rounds, seed, **kwargs)
    method.__name__ = method.__qualname__ = f"run_{name}"
    method.__doc__ = (f"run_method({name!r}, ...): same arguments after the name.\n\n"
                      + (_IMPLEMENTATIONS[name].__doc__ or ""))
    return method


# name -> callable(sites, model_name, model_params, input_shape, num_classes, train, rounds,
# seed, *, history=True, progress=None, **method_params) -> MethodResult
METHODS: dict[str, MethodFn] = {name: _entry(name) for name in _IMPLEMENTATIONS}
run_single = METHODS["single"]
run_cross = METHODS["cross"]
run_mix = METHODS["mix"]
run_fedavg = METHODS["fedavg"]
run_fedsgd = METHODS["fedsgd"]
run_fedprox = METHODS["fedprox"]
