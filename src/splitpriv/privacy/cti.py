r"""Contributing Token Identification (CTI): less noise on the few tokens that carry the task's label signal.

SAP (Shen et al., 2023) observes that a handful of tokens decide most classification tasks (sentiment words for
SST-2) and perturbs them less than the rest. The paper's exact token score (described as TF-IDF-inspired) is not
reproduced here; :class:`ContributingTokens` uses the documented score below.

Score. Count occurrences :math:`n_{t,c}` of token id :math:`t` in the customer's training texts of class :math:`c`
(special tokens such as ``[CLS]``/``[SEP]``/``[PAD]``/``<s>``/``</s>`` excluded), :math:`N_c = \sum_t n_{t,c}`,
:math:`V` = the distinct non-special ids seen, smoothing :math:`\alpha`:

.. math::
    p(t\mid c) = \frac{n_{t,c} + \alpha}{N_c + \alpha |V|}, \qquad
    \delta_t(c, c') = \log p(t\mid c) - \log p(t\mid c'), \qquad
    \mathrm{se}_t(c, c') = \sqrt{\frac{1}{n_{t,c}+\alpha} + \frac{1}{n_{t,c'}+\alpha}},

.. math::
    \mathrm{score}(t) = \max_{c \ne c'} \big(|\delta_t(c, c')| - z\,\mathrm{se}_t(c, c')\big),

the lower end of an approximate two-sided confidence interval (``confidence_z`` = 1.96 ≈ 95 %) for the absolute
log frequency ratio (``se`` is the delta-method standard error of a log Poisson count). With :math:`z = 0` this is
the plain smoothed log ratio, which ranks rare class-exclusive ids (word pieces seen ten times) above frequent,
strongly polar words; the :math:`z\,\mathrm{se}` penalty asks for evidence as well as effect size. Ids with total
count below ``min_count`` are ignored; the top ``floor(fraction * |V|)`` ids with a positive score are selected
(fewer if fewer qualify).

Privacy notes.

* The per-token :math:`\eta` depends **only on the token id**, never on the label of the sample being sent: at
  inference there is no label, and a label-dependent :math:`\eta` would leak the label through the noise
  magnitude. The apply-time API therefore takes no label.
* The selected set is fitted on the customer's labelled data and is itself a (small) statistic of that data; the
  vendor is assumed to know it (it must, to know each token's :math:`\eta`).
* A token-dependent :math:`\eta` weakens the :math:`d_\chi` guarantee: the bound
  :math:`p(z\mid x) \le e^{\eta\lVert x-x'\rVert} p(z\mid x')` holds between tokens with the same :math:`\eta`.
  Between a contributing and a non-contributing token the density ratio is unbounded in :math:`z` (the noise
  magnitude differs), so the vendor can tell, better than chance, whether a position holds a contributing token;
  and contributing tokens, with :math:`\eta` times ``eta_multiplier``, get a proportionally weaker bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["CTIConfig", "ContributingTokens"]

FORMAT_VERSION = 1


@dataclass
class CTIConfig:
    """CTI hyper-parameters.

    fraction: share of the distinct (non-special) token ids seen in training that may be selected, ``0 < f < 1``.
    eta_multiplier: contributing tokens get ``eta * eta_multiplier`` (``> 1`` means less noise), ``> 0``.
    min_count: ids seen fewer times in total are never selected.
    smoothing: additive (Laplace) smoothing ``alpha > 0`` of the per-class frequencies.
    confidence_z: ``z`` of the confidence penalty in the score, ``>= 0`` (0 = plain log ratio).
    """

    fraction: float = 0.005
    eta_multiplier: float = 2.0
    min_count: int = 5
    smoothing: float = 1.0
    confidence_z: float = 1.96

    def __post_init__(self):
        if not _finite_number(self.fraction) or not 0 < self.fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction!r}")
        if not _finite_number(self.eta_multiplier) or self.eta_multiplier <= 0:
            raise ValueError(f"eta_multiplier must be a finite number > 0, got {self.eta_multiplier!r}")
        if isinstance(self.min_count, bool) or not isinstance(self.min_count, int) or self.min_count < 0:
            raise ValueError(f"min_count must be an integer >= 0, got {self.min_count!r}")
        if not _finite_number(self.smoothing) or self.smoothing <= 0:
            raise ValueError(f"smoothing must be a finite number > 0, got {self.smoothing!r}")
        if not _finite_number(self.confidence_z) or self.confidence_z < 0:
            raise ValueError(f"confidence_z must be a finite number >= 0, got {self.confidence_z!r}")


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _as_id_list(seq) -> list[int]:
    if isinstance(seq, Tensor):
        if seq.dim() != 1:
            raise ValueError(f"each input_ids entry must be 1-D, got shape {tuple(seq.shape)}")
        if seq.is_floating_point():
            raise ValueError("input_ids must be integer token ids")
        return seq.tolist()
    ids = list(seq)
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int):
            raise ValueError(f"input_ids must be integer token ids, got {t!r}")
    return ids


class ContributingTokens:
    """The selected contributing token ids, their scores, and the per-token η multiplier they imply.

    Use :meth:`noise_scale` as the ``noise_scale`` of any :class:`~splitpriv.privacy.Mechanism`, or
    :meth:`token_eta` as a per-token ``eta`` for :class:`~splitpriv.privacy.DChi`. See the module docstring
    for the score and for what a token-dependent η does to the guarantee.
    """

    def __init__(self, token_ids: Tensor, scores: Tensor, config: CTIConfig | None = None, num_seen_ids: int = 0):
        token_ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
        if token_ids.shape != scores.shape:
            raise ValueError(f"{token_ids.numel()} token ids but {scores.numel()} scores")
        if token_ids.unique().numel() != token_ids.numel():
            raise ValueError("token_ids contains duplicates")
        self.token_ids = token_ids
        self.scores = scores
        self.config = config if config is not None else CTIConfig()
        self.num_seen_ids = int(num_seen_ids)

    @classmethod
    def fit(
        cls,
        input_ids: Sequence[Sequence[int]] | Sequence[Tensor],
        labels: Sequence[int],
        *,
        config: CTIConfig | None = None,
        special_ids: Iterable[int] = (),
    ) -> "ContributingTokens":
        """Select contributing tokens from tokenised training texts ``input_ids`` and their class ``labels``."""
        config = config if config is not None else CTIConfig()
        if isinstance(labels, Tensor):
            labels = labels.tolist()
        labels = list(labels)
        if len(input_ids) != len(labels):
            raise ValueError(f"{len(input_ids)} texts but {len(labels)} labels")
        if len(labels) == 0:
            raise ValueError("no training texts")
        try:
            classes = sorted(set(labels))
        except TypeError:
            classes = sorted(set(labels), key=repr)
        if len(classes) < 2:
            raise ValueError(f"need at least 2 classes to find contributing tokens, got {classes}")
        class_index = {c: i for i, c in enumerate(classes)}
        special = torch.as_tensor(sorted({int(s) for s in special_ids}), dtype=torch.long)

        flat_ids, flat_cls = [], []
        for seq, label in zip(input_ids, labels):
            ids = _as_id_list(seq)
            flat_ids.extend(ids)
            flat_cls.extend([class_index[label]] * len(ids))
        ids_t = torch.as_tensor(flat_ids, dtype=torch.long)
        cls_t = torch.as_tensor(flat_cls, dtype=torch.long)
        if ids_t.numel() and ids_t.min() < 0:
            raise ValueError("input_ids contains negative token ids")
        keep = ~torch.isin(ids_t, special)
        ids_t, cls_t = ids_t[keep], cls_t[keep]
        if ids_t.numel() == 0:
            raise ValueError("no non-special tokens in the training texts")

        seen, inverse = torch.unique(ids_t, return_inverse=True)
        n_seen, n_cls = seen.numel(), len(classes)
        counts = torch.zeros(n_seen, n_cls, dtype=torch.float64)
        counts.index_put_((inverse, cls_t), torch.ones_like(inverse, dtype=torch.float64), accumulate=True)

        scores = cls._score(counts, config)
        scores[counts.sum(1) < config.min_count] = -math.inf
        k = min(int(config.fraction * n_seen), int((scores > 0).sum()))
        top = torch.argsort(scores, descending=True, stable=True)[:k]
        return cls(seen[top], scores[top], config, num_seen_ids=n_seen)

    @staticmethod
    def _score(counts: Tensor, config: CTIConfig) -> Tensor:
        alpha, n_seen = config.smoothing, counts.shape[0]
        log_p = torch.log(counts + alpha) - torch.log(counts.sum(0, keepdim=True) + alpha * n_seen)
        inv = 1.0 / (counts + alpha)
        best = torch.full((n_seen,), -math.inf, dtype=torch.float64)
        n_cls = counts.shape[1]
        for a in range(n_cls):
            for b in range(a + 1, n_cls):
                delta = (log_p[:, a] - log_p[:, b]).abs()
                se = torch.sqrt(inv[:, a] + inv[:, b])
                best = torch.maximum(best, delta - config.confidence_z * se)
        return best

    @classmethod
    def fit_texts(
        cls,
        texts: Sequence[str],
        labels: Sequence[int],
        tokenizer,
        *,
        config: CTIConfig | None = None,
        max_length: int = 128,
    ) -> "ContributingTokens":
        """Tokenise ``texts`` with a Hugging Face ``tokenizer`` (as the bottom model will) and :meth:`fit`."""
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("texts must be strings")
        encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        return cls.fit(encoded, labels, config=config, special_ids=tokenizer.all_special_ids)

    def is_contributing(self, input_ids) -> Tensor:
        """Bool tensor of ``input_ids``'s shape: whether each id is a contributing token."""
        ids = torch.as_tensor(input_ids)
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
        return torch.isin(ids, self.token_ids.to(ids.device))

    def eta_multiplier(self, input_ids) -> Tensor:
        """Float tensor of ``input_ids``'s shape: ``config.eta_multiplier`` on contributing ids, else 1.0."""
        hit = self.is_contributing(input_ids)
        return torch.where(
            hit,
            torch.tensor(float(self.config.eta_multiplier), device=hit.device),
            torch.tensor(1.0, device=hit.device),
        )

    def noise_scale(self, input_ids) -> Tensor:
        """``1 / eta_multiplier(input_ids)``, for the ``noise_scale`` argument of any mechanism."""
        return 1.0 / self.eta_multiplier(input_ids)

    def token_eta(self, input_ids, eta: float) -> Tensor:
        """Per-token η, ``eta * eta_multiplier(input_ids)``, for ``DChi(eta=...)``."""
        if not _finite_number(eta) or eta <= 0:
            raise ValueError(f"eta must be a finite number > 0, got {eta!r}")
        return float(eta) * self.eta_multiplier(input_ids)

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "token_ids": self.token_ids.tolist(),
            "scores": self.scores.tolist(),
            "num_seen_ids": self.num_seen_ids,
            "config": asdict(self.config),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ContributingTokens":
        for key in ("token_ids", "scores", "config"):
            if key not in data:
                raise ValueError(f"contributing-token record lacks {key!r}")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported contributing-token format_version {version}")
        return cls(
            torch.tensor(data["token_ids"], dtype=torch.long),
            torch.tensor(data["scores"], dtype=torch.float64),
            CTIConfig(**data["config"]),
            num_seen_ids=data.get("num_seen_ids", 0),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "ContributingTokens":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __len__(self) -> int:
        return self.token_ids.numel()

    def __repr__(self) -> str:
        return (
            f"ContributingTokens({len(self)} of {self.num_seen_ids} seen ids, "
            f"eta_multiplier={self.config.eta_multiplier})"
        )
