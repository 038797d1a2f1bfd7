"""Attacks that measure empirical privacy: how much of the customer's text the vendor recovers from the wire.

Threat model. The vendor is **honest-but-curious** (it runs the protocol faithfully) and **white-box**:

* it knows the bottom's *initial* weights (it shipped them), the tokenizer, the privacy mechanism and its
  parameters (η, σ, the CTI η multiplier), and the *final* weights of any privatizer folded into the bottom
  (Kerckhoffs: it trained, shipped or could reconstruct it);
* it sees everything on the wire: the privatized token representations (padding zeroed), the attention masks
  (hence every sequence's length), the gradients returned to it and its own outputs;
* it has public text (WikiText-2, plus the dataset's public test sentences for ``floor`` and ``adaptive``) and,
  for attribute inference, a small labelled auxiliary sample.

It does **not** see the customer's text, labels, noise seed, CTI token set, or the customer's updated bottom.

Every inversion attack maps what the vendor receives to token ids; the evaluator
(:mod:`.evaluation`, which alone knows the true ids and, with CTI, the contributing set) scores the guess with
:func:`~splitpriv.attacks.base.recovery_metrics`. Empirical privacy of a setting = ``1 − max success`` over the
applicable attacks (:func:`run_attack` with ``"all"``): a setting is only as private as its strongest known attack
says.

One module per attack, each registering itself in :data:`splitpriv.attacks.registry.ATTACKS` (name, description,
options, kind, what it applies to, ``run``); a new attack is one new module here:

* :mod:`.floor` — ``floor``: the prior-only floor, the most probable public token per position from the mask alone;
* :mod:`.nearest` — ``nn`` and ``map``: nearest neighbour and MAP against the embedding layer's outputs, k = 0
  (on the candidate kernel :mod:`splitpriv.candidates`, which the vendor's denoiser shares);
* :mod:`.optimization` — ``opt``: gradient search over relaxed tokens through the attacker's copy of the bottom;
* :mod:`.learned` — ``learned``: an inverter trained on public text through the known bottom and mechanism;
* :mod:`.adaptive` — ``adaptive``: a generic inverter trained from scratch through the bottom as shipped (any
  privatizer, any width), on public and in-domain public text (loop and ranked decoding shared with ``learned`` in
  :mod:`.training`);
* :mod:`.image_space` — with a privatizer at k = 0, nn/map/opt decode against its image of every token;
* :mod:`.averaging` — ``average``: link a sentence's observations across epochs (fresh noise), average, invert;
* :mod:`.cti_aware` — ``cti``: detect CTI's reduced-noise positions from the noise radius, invert accordingly;
* :mod:`.set_level` — ``set``: which content words a sentence contains, from all its vectors (set recovery vs the
  public-frequency guess);
* :mod:`.linear_map` — ``linear``: a ridge map from the received vectors to the embedding rows, fitted on public
  text through the bottom as shipped (any family, k, privatizer; ``learned`` starts from it where it fits better);
* :mod:`.attribute` — ``aia``: author attributes from pooled representations;
* :mod:`.label` — ``label``: training labels from the gradients in a training run's wire transcript (:mod:`.wire`);
* :mod:`.response` — ``response``: a causal-LM customer's response tokens from the gradients it returns, through the
  tail the vendor shipped;
* :mod:`.observe` — what the vendor observes (through :func:`splitpriv.privacy.privatize`, the customer's path);
* :mod:`.runner` — :func:`run_attack`, one setting end to end, JSON out; :func:`attack_specs` for the grid.
"""

# The order of these imports is the registry's order (help texts, ``"all"``, result tables): floor, nn, map, opt,
# learned, adaptive, average, cti, set, linear, aia, label, response.
from splitpriv.attacks.floor import PriorFloor  # isort: skip
from splitpriv.attacks.nearest import CandidateSpace, MAPInversion, NearestNeighbour  # isort: skip
from splitpriv.attacks.optimization import OptimizationInversion  # isort: skip
from splitpriv.attacks.learned import LearnedInversion  # isort: skip
from splitpriv.attacks.adaptive import AdaptiveInversion  # isort: skip
from splitpriv.attacks.averaging import AveragingAttack, averaging_attack, link_epochs  # isort: skip
from splitpriv.attacks.cti_aware import CTIAwareInversion, cti_attack  # isort: skip
from splitpriv.attacks.set_level import SetInference  # isort: skip
from splitpriv.attacks.linear_map import LinearMapInversion  # isort: skip  # noqa: F401
from splitpriv.attacks import attribute, label, response  # isort: skip  # noqa: F401
from splitpriv.attacks.base import (
    AttackerKnowledge,
    AttackResult,
    InversionAttack,
    empirical_privacy,
    recovery_metrics,
)
from splitpriv.attacks.observe import EpochObservations, observe, observe_epochs
from splitpriv.attacks.registry import attack_option_help
from splitpriv.attacks.runner import applicable, attack_specs, run_attack

__all__ = [
    "ATTACKS",
    "INVERSION_ATTACKS",
    "AdaptiveInversion",
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
    "PriorFloor",
    "SetInference",
    "applicable",
    "attack_option_help",
    "attack_specs",
    "averaging_attack",
    "cti_attack",
    "empirical_privacy",
    "link_epochs",
    "observe",
    "observe_epochs",
    "recovery_metrics",
    "run_attack",
]


def __getattr__(name: str):
    """``ATTACKS`` / ``INVERSION_ATTACKS``: tuples of attack names, computed from the registry on first use."""
    if name in ("ATTACKS", "INVERSION_ATTACKS", "OTHER_ATTACKS"):
        from splitpriv.attacks import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
