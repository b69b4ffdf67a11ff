"""Differential privacy for local training: DP-SGD with Opacus, and a site's privacy ledger.

With `dp_noise_multiplier` > 0 in the `[training]` table, `nodes.training.train_local` runs
DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy") through Opacus, an
optional extra (`pip install "swarm-hospitals[dp]"`). Every optimizer step

* draws a Poisson sample of the site's training split: each record is in the batch
  independently with probability q = 1 / ceil(n / batch_size), so a batch holds
  `batch_size` records on average (an empty sample still takes a noise-only step, as the
  analysis requires);
* computes one gradient per record and clips each to L2 norm <= C = `dp_max_grad_norm`;
* adds Gaussian noise N(0, (sigma * C)^2) per coordinate to their sum, sigma =
  `dp_noise_multiplier`, and divides by the expected batch size before the optimizer
  (sgd, adam or adamw, with its weight decay) uses it.

`PrivacyBudget` is the site's ledger: one per site, kept by the caller for the whole run and
passed to every `train_local` call, so the accountant (Opacus' RDP accountant) composes
every step of every round the site trains. `train_local` returns "epsilon", the total at
delta = `dp_delta`, after the round.

What this guarantees. Per site and at the level of one training record: the sequence of
models a site publishes, round after round, is (epsilon, delta)-differentially private with
respect to that site's own training split (adding, removing or changing one record changes
the probability of any outcome by at most a factor e^epsilon, plus delta). Everything
computed from the published models -- neighbours merging them, their further training,
the final federation model -- is post-processing and keeps the guarantee; neighbours'
models that this site pulls depend on its data only through what it published earlier,
which adaptive composition in the accountant covers. The FedProx proximal term and weight
decay depend only on the weights, not on records, and cost nothing.

What it does not cover:
* a patient with k records (several images, visits) is protected at roughly k * epsilon
  (group privacy); one record is the unit;
* rounds trained without DP (dp_noise_multiplier = 0), before or after, are not private at
  all; epsilon reported in such a run is meaningless for those rounds;
* anything else the node publishes computed from its data without noise: the metrics in
  its log entries (training loss, test-split accuracy, AUC, Dice...), its sample count
  (the merge weight), and any choice of hyperparameters made by looking at the data;
* the ledger lives in memory: a node that restarts must restore it
  (`PrivacyBudget.state_dict` / `load_state_dict`) or its epsilon will undercount;
* randomness: noise and sampling come from a torch.Generator seeded from the operating
  system's entropy for every call (never from the plan's seeds, which the whole federation
  knows and would let anyone subtract the noise). torch's generator is not a CSPRNG and
  floating-point Gaussian noise has known weaknesses (Mironov 2012); Opacus' secure_mode
  (torchcsprng) is not used. `PrivacyBudget(seed=...)` makes runs reproducible for
  simulations and voids the guarantee;
* epsilon is an upper bound from the RDP accountant; delta should be well below 1 / n for
  a site with n training records.

Models. Per-sample gradients exist only where no layer mixes the samples of a batch, so
BatchNorm is refused. DP works with: mlp, logreg, cnn with norm = "group" or "none", unet
with norm = "group" or "none" (cnn and unet default to norm = "batch": set the norm in
[model])."""

from __future__ import annotations

import hashlib
import secrets
import warnings
from collections.abc import Mapping
from typing import Any

from torch import nn

from swarm.errors import ConfigError

INSTALL_HINT = 'pip install "swarm-hospitals[dp]"'
# RDP orders beyond Opacus' default (which stops at 63): tighter bounds at large noise.
_EXTRA_ORDERS = [80, 96, 128, 192, 256, 384, 512, 768, 1024]
DP_MODELS = 'mlp, logreg, cnn with norm = "group" or "none", unet with norm = "group" or "none"'


def require_opacus(where: str = "training") -> None:
    """ConfigError (naming `{where}.dp_noise_multiplier`) unless Opacus can be imported."""
    try:
        import opacus  # noqa: F401
        from opacus.optimizers import DPOptimizer  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"{where}.dp_noise_multiplier: differential privacy needs the optional package "
            f"opacus, which is not installed; install it with {INSTALL_HINT} or set "
            f"dp_noise_multiplier = 0"
        ) from None


def check_private_model(model: nn.Module, where: str = "training") -> None:
    """ConfigError unless Opacus can compute per-sample gradients for `model` (no
    BatchNorm); the message names the models that work."""
    require_opacus(where)
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        reasons = sorted({str(error).split(".")[0].strip() for error in errors})
        raise ConfigError(
            f"{where}.dp_noise_multiplier: differential privacy cannot train this model "
            f"({'; '.join(reasons)}); DP-SGD works with {DP_MODELS} -- set norm = \"group\" "
            f"in [model], or dp_noise_multiplier = 0"
        )


class PrivacyBudget:
    """One site's privacy ledger across rounds: keep one per site for the whole run and
    pass it to every `train_local` call.

    `history` is the accountant's record, [(noise_multiplier, sample_rate, steps), ...];
    `epsilon(delta)` composes all of it with Opacus' RDP accountant. `seed`: None (the
    default, and the only private choice) draws fresh noise from the operating system's
    entropy every call; an int makes the noise reproducible -- for simulations only, as
    anyone who knows it can remove the noise."""

    MECHANISM = "rdp"

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"privacy seed: must be an integer or None, got {seed!r}")
        self.seed = seed
        self.history: list[tuple[float, float, int]] = []
        self.rounds = 0  # train_local calls that trained with DP

    @property
    def steps(self) -> int:
        """Noisy optimizer steps so far, over all rounds."""
        return sum(steps for _, _, steps in self.history)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Add `steps` DP-SGD steps at this noise multiplier and sampling rate."""
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            last = self.history[-1]
            self.history[-1] = (last[0], last[1], last[2] + steps)
        else:
            self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def epsilon(self, delta: float) -> float:
        """Total epsilon at `delta` for everything recorded (0.0 before the first step)."""
        if not self.history:
            return 0.0
        require_opacus()
        from opacus.accountants import RDPAccountant

        # At extreme noise levels the best order lies past the orders tried; the bound is
        # then looser than it could be but still a valid upper bound.
        warnings.filterwarnings("ignore", message="Optimal order is the (largest|smallest) alpha", category=UserWarning)
        accountant = RDPAccountant()
        accountant.history = list(self.history)
        return float(accountant.get_epsilon(delta=delta, alphas=list(RDPAccountant.DEFAULT_ALPHAS) + _EXTRA_ORDERS))

    def noise_seed(self, call_seed: int) -> int:
        """The seed of one call's noise and sampling generator: fresh OS entropy, or (with
        `seed` set) a value derived from `seed` and the call's seed."""
        if self.seed is None:
            return secrets.randbits(63)
        text = repr((self.seed, int(call_seed), "dp-noise")).encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1

    def state_dict(self) -> dict[str, Any]:
        """Plain data (JSON / msgpack friendly) to checkpoint the ledger; the seed is not
        included."""
        return {"mechanism": self.MECHANISM, "rounds": self.rounds,
                "history": [list(entry) for entry in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("mechanism") != self.MECHANISM:
            raise ConfigError(f"privacy budget: unknown accountant {state.get('mechanism')!r}, expected 'rdp'")
        self.rounds = int(state["rounds"])
        self.history = [(float(s), float(q), int(k)) for s, q, k in state["history"]]

    def __repr__(self) -> str:
        return f"PrivacyBudget(rounds={self.rounds}, steps={self.steps})"
