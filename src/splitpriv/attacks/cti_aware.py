r"""CTI-aware inversion: find the positions that got less noise, then invert them with the right η.

With CTI the customer sends contributing tokens with ``η·m`` (``m`` = ``eta_multiplier`` > 1, less noise) and the
others with ``η``. The vendor knows ``η`` and ``m`` but not the contributing set. d_chi noise has a radius
``r ~ Gamma(d, 1/η)``: mean ``d/η``, standard deviation ``√d/η`` — at d = 384 the radius is concentrated within
~5 % of its mean, so a position's noise radius tells its η almost surely. The attacker estimates the radius:

* k = 0: the distance from ``z`` to its nearest candidate embedding (the true token is a candidate, so this is
  at most ``‖n‖``, and close to it);
* k ≥ 1: ``√max(‖z‖² − E‖x‖², 0)``, with ``E‖x‖²`` the mean squared norm of clean representations of public text
  through the known bottom (``‖z‖² = ‖x‖² + ‖n‖² + 2x·n``).

Detection: the log-likelihood ratio of the radius under the mechanism's two radius laws (noise scaled by ``1/m``
and by 1; :meth:`~splitpriv.privacy.Mechanism.radius_log_prob`, for d_chi ``LLR(r) = d log m − η (m − 1) r``), plus the log prior odds of the share ``π`` of contributing tokens, which the
attacker estimates by EM on the observed radii (only ``π`` is unknown; both component laws are known). The
evaluator reports the detection ROC AUC (sklearn) against the true CTI set.

Inversion: k = 0 — MAP with the per-position η chosen by the detector (``noise_scale = 1/m`` where detected);
k ≥ 1 — the learned inverter trained with a ``π``-share of reduced-noise tokens (it sees the radius in ``z``
itself). Recovery is reported over all tokens and over the contributing tokens (``extra_masks``).
"""

from __future__ import annotations

import math

import torch

from splitpriv.attacks.base import AttackerKnowledge, AttackResult, InversionAttack, real_token_mask, recovery_metrics
from splitpriv.attacks.learned import LearnedInversion, LearnedOptions
from splitpriv.attacks.nearest import MAPInversion, NearestNeighbour
from splitpriv.attacks.observe import clean_hidden, tokenize
from splitpriv.attacks.registry import ATTACKS, Attack, in_model_space
from splitpriv.candidates import target_positions


class CTIAwareInversion(InversionAttack):
    """Detect reduced-noise positions from the noise radius, then invert with per-position η (see module doc)."""

    name = "cti"

    def __init__(self, multiplier: float | None = None, prior_share: float | None = None,
                 learned_kw: dict | None = None, progress: bool = False):
        self.multiplier = multiplier
        self.prior_share = prior_share  # None: estimate by EM
        self.learned_kw = dict(learned_kw or {})
        self.progress = progress

    def fit(self, knowledge: AttackerKnowledge) -> "CTIAwareInversion":
        super().fit(knowledge)
        mech = knowledge.mechanism
        self.m = float(self.multiplier or knowledge.cti_multiplier or 0.0)
        if self.m <= 0:
            raise ValueError("the CTI-aware attack needs the CTI eta multiplier (AttackerKnowledge.cti_multiplier)")
        self.noisy = not mech.is_noiseless
        if self.noisy:
            mech.require("radius", user="attack 'cti'")
        self.k = knowledge.n_bottom_layers
        if self.k == 0:
            self.nn = NearestNeighbour().fit(knowledge)
            self.map = MAPInversion().fit(knowledge)
        else:
            ids, mask, tt = tokenize(knowledge.tokenizer, knowledge.public_texts[:256], knowledge.max_length)
            h = clean_hidden(knowledge.bottom, ids, mask, tt)
            self.mean_sq_norm = float(h[mask.bool()].pow(2).sum(-1).mean())
            kw = {"cti_mix": self.prior_share or 0.1, "progress": self.progress, **self.learned_kw}
            self.inverter = LearnedInversion(**kw).fit(knowledge)
        return self

    # ------------------------------------------------------------------------------------------- detection
    @torch.no_grad()
    def radius(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Estimated noise radius of every position [N, T] (0 at padding)."""
        out = torch.zeros(attention_mask.shape)
        mask = attention_mask.bool()
        if self.k == 0:
            rows, cols = mask.nonzero(as_tuple=True)
            z = hidden[rows, cols].float()
            r = [self.nn.space.sqdist(z[s:s + 512], cols[s:s + 512]).min(1).values.sqrt()
                 for s in range(0, len(rows), 512)]
            out[rows, cols] = torch.cat(r) if r else torch.zeros(0)
        else:
            sq = hidden.float().pow(2).sum(-1) - self.mean_sq_norm
            out = torch.where(mask, sq.clamp_min(0).sqrt(), out)
        return out

    def llr(self, r: torch.Tensor, d: int) -> torch.Tensor:
        """log p(r | noise × 1/m) − log p(r | noise × 1) for radii ``r`` (float64, returned as ``r``'s dtype; a
        radius of 0 is taken as the smallest positive one, where both laws' densities are finite)."""
        law = self.knowledge.mechanism.radius_log_prob
        r64 = r.double().clamp_min(torch.finfo(torch.float64).tiny)
        return (law(r64, d, 1.0 / self.m) - law(r64, d, 1.0)).to(r.dtype)

    @torch.no_grad()
    def detect(self, hidden: torch.Tensor, attention_mask: torch.Tensor):
        """``(score [N, T], contributing [N, T] bool, share π)``: score = LLR (higher = less noise)."""
        mask = attention_mask.bool()
        if not self.noisy:
            return torch.zeros(mask.shape), torch.zeros_like(mask), 0.0
        score = self.llr(self.radius(hidden, attention_mask), hidden.shape[-1])
        s = score[mask].double()
        if self.prior_share is not None:
            pi = float(self.prior_share)
        else:
            pi = 0.1
            for _ in range(50):  # EM on the share only: both component laws are known
                post = torch.sigmoid(s + math.log(pi / (1 - pi)))
                pi = float(post.mean().clamp(1e-4, 1 - 1e-4))
        decide = mask & (score + math.log(pi / (1 - pi)) > 0)
        return score, decide, pi

    # ------------------------------------------------------------------------------------------- inversion
    @torch.no_grad()
    def invert(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        _, decide, pi = self.detect(hidden, attention_mask)
        self.last_detection, self.estimated_share = decide, pi
        if self.k > 0:
            return self.inverter.invert(hidden, attention_mask)
        if not self.noisy:
            return self.nn.invert(hidden, attention_mask)
        scale = torch.where(decide, 1.0 / self.m, 1.0)
        return self.map.invert(hidden, attention_mask, noise_scale=scale)


def cti_attack(knowledge: AttackerKnowledge, hidden: torch.Tensor, attention_mask: torch.Tensor,
               input_ids: torch.Tensor, contributing: torch.Tensor, *, progress: bool = False,
               learned_kw: dict | None = None) -> AttackResult:
    """Run :class:`CTIAwareInversion` and score it (evaluator side: ``contributing`` is the true CTI set)."""
    from sklearn.metrics import roc_auc_score

    tok = knowledge.tokenizer
    attack = CTIAwareInversion(learned_kw=learned_kw, progress=progress).fit(knowledge)
    pred = attack.invert(hidden, attention_mask)
    extra = {"contributing": contributing}
    metrics = recovery_metrics(pred, input_ids, attention_mask, tok, extra)
    rows, cols = target_positions(tok, attention_mask)
    real = real_token_mask(input_ids, attention_mask, tok)
    sel = torch.zeros_like(real)
    sel[rows, cols] = True
    sel &= real
    truth = contributing[sel]
    score, decide, pi = attack.detect(hidden, attention_mask)
    both = bool(truth.any()) and bool((~truth).any())
    metrics.update(
        detection_auc=float(roc_auc_score(truth.numpy(), score[sel].numpy())) if both and attack.noisy else float("nan"),
        detection_accuracy=float((decide[sel] == truth).float().mean()) if sel.any() else float("nan"),
        estimated_contributing_share=pi,
        true_contributing_share=float(truth.float().mean()) if sel.any() else float("nan"),
        eta_multiplier=attack.m,
    )
    if attack.k == 0 and attack.noisy:  # the same MAP without detection: what CTI-awareness adds
        unaware = recovery_metrics(attack.map.invert(hidden, attention_mask), input_ids, attention_mask, tok, extra)
        metrics["unaware_recovery"] = unaware["token_recovery"]
        metrics["unaware_contributing_recovery"] = unaware["contributing_recovery"]
    return AttackResult("cti", metrics["token_recovery"], metrics)


def needs_cti(setting) -> str | None:
    """Applicability of the CTI-aware attack: the customer must use CTI (and no privatizer)."""
    return in_model_space(setting) or (
        None if setting.cti else "it detects CTI's reduced-noise tokens, and this setting has no CTI")


@ATTACKS.register("cti")
class CTIEntry(Attack):
    description = "detect CTI's reduced-noise positions from the noise radius, invert them with that noise (any k)"
    Options = LearnedOptions
    applies = staticmethod(needs_cti)

    @staticmethod
    def run(evaluation, options):
        z, mask, ids = evaluation.observations()
        return cti_attack(evaluation.knowledge(), z, mask, ids, evaluation.contributing.is_contributing(ids),
                          progress=evaluation.progress,
                          learned_kw={**options.inverter_kw(), "seed": evaluation.attacker_seed})
