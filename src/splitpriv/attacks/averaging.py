r"""Averaging attack: link a sentence's observations across epochs, average away the noise, then invert.

When the customer draws fresh noise at every step, the vendor sees each training sentence once per epoch, each
time with new noise. It does not know which observation of epoch ``e`` is which sentence of epoch ``0`` (the
customer shuffles), but it can *link* them:

* the mask (hence the length) is sent in the clear, so only observations of equal length can match;
* within a length bucket, the cost of pairing reference ``i`` with observation ``j`` is
  ``Σ_positions ‖a_i − z_j‖²`` (``a_i`` = the running mean of the observations already linked to ``i``): for the
  right pair only noise remains, for a wrong one ``‖x_i − x_j‖²`` summed over all positions is added;
* the pairing is one-to-one per bucket: Hungarian assignment (``scipy.optimize.linear_sum_assignment``).

Epochs are linked one after the other to the running means (which get less noisy as epochs are added), then
every epoch is re-linked once against the leave-one-out mean of the others. Averaging ``E`` linked d_chi
observations shrinks the noise per coordinate from variance ``(d+1)/η²`` to ``(d+1)/(E η²)``; the attack then
inverts the averages with the best base attack: MAP (likelihood of the averaged noise, approximately Gaussian
with that variance) at k = 0, the learned inverter trained on ``E``-draw averages at k ≥ 1.

With ``noise="once"`` (the customer privatizes each text once and resends it), the ``E`` observations are
identical: linking is perfect and averaging gains nothing. :func:`averaging_attack` reports both the linking
accuracy and the recovery of a single observation for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from splitpriv.attacks.base import AttackerKnowledge, AttackResult, InversionAttack, recovery_metrics
from splitpriv.attacks.learned import LearnedInversion, LearnedOptions, shared_inverter
from splitpriv.attacks.nearest import MAPInversion
from splitpriv.attacks.observe import EpochObservations
from splitpriv.attacks.registry import ATTACKS, Attack, in_model_space
from splitpriv.privacy import Gaussian, Mechanism


def averaged_mechanism(mechanism: Mechanism, d: int, n_average: int) -> Mechanism:
    """The noise model of the mean of ``n_average`` draws: Gaussian with the averaged variance (CLT)."""
    var = mechanism.coordinate_variance(d)
    if var == 0.0 or n_average <= 1:
        return mechanism
    return Gaussian(sigma=(var / n_average) ** 0.5)


def _bucket_cost(ref: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
    """Squared L2 between flattened sequences: ref [a, L*d], obs [b, L*d] -> [a, b]."""
    return (ref.pow(2).sum(1, keepdim=True) - 2 * ref @ obs.T + obs.pow(2).sum(1)).clamp_min(0)


def link_epochs(z: list[torch.Tensor], mask: list[torch.Tensor], *, refine: bool = True) -> list[torch.Tensor]:
    """``links[e][i]`` = the index in epoch ``e`` of the observation linked to epoch 0's observation ``i``.

    Uses only what the vendor sees (representations and masks). ``links[0]`` is the identity.
    """
    from scipy.optimize import linear_sum_assignment

    n = z[0].shape[0]
    lengths = [m.sum(1) for m in mask]
    for e, length in enumerate(lengths[1:], 1):
        if not torch.equal(length.sort().values, lengths[0].sort().values):
            raise ValueError(f"epoch {e} does not contain the same multiset of lengths as epoch 0")
    links = [torch.arange(n)] + [torch.full((n,), -1, dtype=torch.long) for _ in z[1:]]
    buckets = [(int(L), (lengths[0] == L).nonzero(as_tuple=True)[0]) for L in lengths[0].unique().tolist()]

    def flat(e, idx, L):
        return z[e][idx, :L].reshape(len(idx), -1).double()

    def assign(e, ref_means):
        for (L, ref_idx), ref in zip(buckets, ref_means):
            obs_idx = (lengths[e] == L).nonzero(as_tuple=True)[0]
            rows, cols = linear_sum_assignment(_bucket_cost(ref, flat(e, obs_idx, L)).numpy())
            links[e][ref_idx[torch.as_tensor(rows)]] = obs_idx[torch.as_tensor(cols)]

    sums = [flat(0, idx, L) for L, idx in buckets]
    for e in range(1, len(z)):
        assign(e, [s / e for s in sums])
        for b, (L, idx) in enumerate(buckets):
            sums[b] += flat(e, links[e][idx], L)
    if refine and len(z) > 2:
        for e in range(1, len(z)):  # re-link each epoch against the leave-one-out mean of the others
            loo = [(s - flat(e, links[e][idx], L)) / (len(z) - 1) for s, (L, idx) in zip(sums, buckets)]
            assign(e, loo)
            sums = [sum(flat(f, links[f][idx], L) for f in range(len(z))) for L, idx in buckets]
    return links


def average_linked(z: list[torch.Tensor], links: list[torch.Tensor]) -> torch.Tensor:
    """Mean over epochs of the observations linked to each of epoch 0's observations [N, T, d]."""
    return torch.stack([z[e][links[e]] for e in range(len(z))]).mean(0)


def linking_accuracy(links: list[torch.Tensor], order: list[torch.Tensor]) -> float:
    """Share of links (epochs ≥ 1) that join two observations of the same text (evaluator-only: uses ``order``)."""
    if len(links) < 2:
        return 1.0
    hits = [(order[e][links[e]] == order[0]).float().mean() for e in range(1, len(links))]
    return float(torch.stack(hits).mean())


class AveragingAttack:
    """Link, average, invert. ``base`` is the inversion attack for the averaged vectors (see module docstring);
    ``single`` (optional) inverts one observation, for comparison."""

    name = "average"

    def __init__(self, base: InversionAttack, single: InversionAttack | None = None, refine: bool = True):
        self.base, self.single, self.refine = base, single, refine

    def run(self, obs: EpochObservations, tokenizer, extra_masks: dict | None = None) -> AttackResult:
        links = link_epochs(obs.z, obs.mask, refine=self.refine)
        avg = average_linked(obs.z, links)
        mask0, truth = obs.mask[0], obs.input_ids[obs.order[0]]
        extra0 = {k: v[obs.order[0]] for k, v in (extra_masks or {}).items()}
        pred = self.base.invert(avg, mask0)
        metrics = recovery_metrics(pred, truth, mask0, tokenizer, extra0)
        metrics.update(linking_accuracy=linking_accuracy(links, obs.order), epochs=obs.epochs, noise=obs.noise,
                       base_attack=self.base.name)
        if self.single is not None:
            single = recovery_metrics(self.single.invert(obs.z[0], mask0), truth, mask0, tokenizer, extra0)
            metrics["single_observation_recovery"] = single["token_recovery"]
            metrics["single_observation_content_recovery"] = single["content_recovery"]
        return AttackResult(self.name, metrics["token_recovery"], metrics)


def effective_draws(mechanism: Mechanism, obs: EpochObservations) -> int:
    """How many independent noise draws an average of ``obs``'s epochs holds (1 without noise or noise once)."""
    return 1 if obs.noise == "once" or mechanism.is_noiseless else obs.epochs


def averaging_attack(knowledge: AttackerKnowledge, obs: EpochObservations, *, extra_masks=None,
                     base: str | InversionAttack | None = None, progress: bool = False,
                     **learned_kw) -> AttackResult:
    """The averaging attack with the best base attack for the split depth: MAP at k = 0, learned at k ≥ 1
    (trained on averages of :func:`effective_draws` draws). ``base`` may also be a fitted attack to reuse."""
    d = obs.z[0].shape[-1]
    e = effective_draws(knowledge.mechanism, obs)
    single = None
    if isinstance(base, InversionAttack):
        avg_attack = base
    elif (base or ("map" if knowledge.n_bottom_layers == 0 else "learned")) == "map":
        avg_attack = MAPInversion(mechanism=averaged_mechanism(knowledge.mechanism, d, e)).fit(knowledge)
        single = MAPInversion().fit(knowledge)
    elif base in (None, "learned"):
        avg_attack = LearnedInversion(n_average=e, progress=progress, **learned_kw).fit(knowledge)
    else:
        raise ValueError(f"base must be 'map', 'learned' or a fitted attack, got {base!r}")
    return AveragingAttack(avg_attack, single).run(obs, knowledge.tokenizer, extra_masks)


@dataclass(frozen=True)
class AveragingOptions(LearnedOptions):
    epochs: int = field(default=3, metadata={"help": "observations of each text the vendor gets (training epochs)"})
    noise: str = field(default="fresh", metadata={
        "help": "fresh: the customer draws new noise every step; once: it privatizes each text once"})


@ATTACKS.register("average")
class AveragingEntry(Attack):
    description = "link a text's observations across epochs, average away the noise, invert (any k)"
    Options = AveragingOptions
    applies = staticmethod(in_model_space)

    @staticmethod
    def run(evaluation, options):
        obs = evaluation.epoch_observations(options.epochs, options.noise)
        base = None
        if evaluation.n_bottom_layers > 0:
            base = shared_inverter(evaluation, options, effective_draws(evaluation.mechanism, obs))
        return averaging_attack(evaluation.knowledge(), obs, extra_masks=evaluation.extra(obs.input_ids), base=base)
