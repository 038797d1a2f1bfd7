"""Attacks that measure empirical privacy: how much of the customer's text the vendor recovers from the wire.

Threat model. The vendor is **honest-but-curious** (it runs the protocol faithfully) and **white-box**:

* it knows the bottom's *initial* weights (it shipped them), the tokenizer, the privacy mechanism and its
  parameters (η, σ, the CTI η multiplier);
* it sees everything on the wire: the privatized token representations (padding zeroed), the attention masks
  (hence every sequence's length), the gradients returned to it and its own outputs;
* it has public text (WikiText-2) and, for attribute inference, a small labelled auxiliary sample.

It does **not** see the customer's text, labels, noise seed, CTI token set, or the customer's updated bottom.

Every inversion attack maps what the vendor receives to token ids; the evaluator (which alone knows the true ids
and, with CTI, the contributing set) scores the guess with :func:`~splitpriv.attacks.base.recovery_metrics`.
Empirical privacy of a setting = ``1 − max success`` over the applicable attacks (:func:`run_attack` with
``"all"``): a setting is only as private as its strongest known attack says.

Attacks (one module each; common interface :class:`~splitpriv.attacks.base.InversionAttack`):

* :mod:`.nearest` — nearest neighbour and MAP (likelihood + public token prior) against the embedding layer's
  outputs, k = 0;
* :mod:`.optimization` — gradient search over relaxed tokens through the attacker's copy of the bottom, any k;
* :mod:`.learned` — an inverter trained on public text through the known bottom and mechanism, any k;
* :mod:`.averaging` — link a sentence's observations across epochs (fresh noise), average, invert;
* :mod:`.cti_aware` — detect CTI's reduced-noise positions from the noise radius, invert with the right η;
* :mod:`.observe` — what the vendor observes (through :func:`splitpriv.privacy.privatize`, the customer's path);
* :mod:`.runner` — :func:`run_attack`, one setting end to end, JSON out.
"""

from splitpriv.attacks.averaging import AveragingAttack, averaging_attack, link_epochs
from splitpriv.attacks.base import (
    AttackerKnowledge,
    AttackResult,
    InversionAttack,
    empirical_privacy,
    recovery_metrics,
)
from splitpriv.attacks.cti_aware import CTIAwareInversion, cti_attack
from splitpriv.attacks.learned import LearnedInversion
from splitpriv.attacks.nearest import CandidateSpace, MAPInversion, NearestNeighbour
from splitpriv.attacks.observe import EpochObservations, observe, observe_epochs
from splitpriv.attacks.optimization import OptimizationInversion
from splitpriv.attacks.runner import ATTACKS, INVERSION_ATTACKS, applicable, run_attack

__all__ = [
    "ATTACKS",
    "INVERSION_ATTACKS",
    "AttackResult",
    "AttackerKnowledge",
    "AveragingAttack",
    "CTIAwareInversion",
    "CandidateSpace",
    "EpochObservations",
    "InversionAttack",
    "LearnedInversion",
    "MAPInversion",
    "NearestNeighbour",
    "OptimizationInversion",
    "applicable",
    "averaging_attack",
    "cti_attack",
    "empirical_privacy",
    "link_epochs",
    "observe",
    "observe_epochs",
    "recovery_metrics",
    "run_attack",
]
