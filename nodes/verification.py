"""What a neighbour's model must pass before the protocol hears of it, each check once.

An offer: the sender is not quarantined; its entries' signatures (opened once, in
`VersionStore.check_peer_entries`) and their place in its chain; the leaf hashes against
the digest signed in the last entry, under the plan's tensor specs (`Transfers.start`). The
pulled model: every leaf against its hash as it arrived (swarm.transfer), then finite
weights; only then are the entries logged. Two entries one member signed for the same
seq are evidence of equivocation (swarm.evidence), checked here too.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from swarm.errors import LogError, RejectedMessage
from swarm.evidence import EvidenceStore, ForkEvidence, check_fork
from swarm.tensors import first_non_finite, rebuild_state

from .store import ForkDetected, VersionStore
from .transfers import Pull, Transfers


class Verifier:
    def __init__(self, store: VersionStore, evidence: EvidenceStore, transfers: Transfers) -> None:
        self.store = store
        self.evidence = evidence
        self.transfers = transfers

    def offer(self, peer: str, req: int | None, entries: Sequence[bytes], leaves: Sequence[bytes]) -> Pull:
        """Check an offer and begin (or resume) pulling its model. Raises RejectedMessage or
        LogError, or ForkDetected when an entry contradicts one we hold."""
        if peer in self.evidence.quarantined:
            raise RejectedMessage("quarantined", f"{peer} signed two different histories; see {self.evidence.directory}")
        new_entries, last = self.store.check_peer_entries(peer, entries)
        return self.transfers.start(peer, req, new_entries, last, leaves)

    def model(self, pull: Pull) -> dict[str, Tensor]:
        """A complete pull's tensors, once their weights are finite; its entries are logged.
        Raises RejectedMessage or LogError (the log moved on while the tensors travelled)."""
        state = rebuild_state(pull.transfer.model())
        bad = first_non_finite(state)
        if bad is not None:
            raise RejectedMessage("non_finite_weights", f"tensor {bad!r} holds NaN or Inf")
        self.store.append_peer_entries(pull.peer, pull.entries)
        return state

    def fork(self, peer: str, fork: ForkDetected) -> ForkEvidence:
        """Evidence from an entry `peer` sent that contradicts one we hold; LogError
        ("author_mismatch") when it is not the sender's own signature: a forgery, not a fork."""
        try:
            evidence = check_fork(fork.held, fork.received, self.store.manifest)
            if evidence.author != peer:
                raise LogError("bad_evidence", "the conflicting entry is not the sender's")
        except LogError as exc:
            raise LogError("author_mismatch", exc.detail) from None
        return evidence

    def evidence_from(self, entries: Sequence[bytes]) -> ForkEvidence:
        """Evidence a neighbour passed on; LogError ("bad_evidence" or why) if it proves nothing."""
        return check_fork(entries[0], entries[1], self.store.manifest)
