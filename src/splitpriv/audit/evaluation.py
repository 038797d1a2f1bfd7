"""The attack suite's evaluator on the customer's own file: :class:`CustomerEvaluation`.

It is :class:`~splitpriv.attacks.evaluation.Evaluation` with the customer's texts in place of a named dataset, so
every registered attack runs on them unchanged. Beside that it fits the customer's task words (CTI's contributing
tokens on its labelled texts) to score them apart, and keeps each inversion attack's guesses for the report's
sample. The vendor holds no public text of the customer's domain (only WikiText-2).
"""

from __future__ import annotations

import inspect
import time
from functools import cached_property

from splitpriv.attacks.evaluation import Evaluation
from splitpriv.attacks.registry import ATTACKS, names_of_kind


class _Recorder:
    """An inversion attack whose last guess is kept (every other attribute is the attack's own)."""

    def __init__(self, attack):
        self.attack, self.guess = attack, None

    def invert(self, hidden, attention_mask):
        self.guess = self.attack.invert(hidden, attention_mask)
        return self.guess

    def __getattr__(self, name):
        return getattr(self.__dict__["attack"], name)


class CustomerEvaluation(Evaluation):
    """One setting evaluated on ``data`` (a :class:`~splitpriv.data.TextDataset` read from the customer's file);
    ``privatizer``: a spec or config folded into the bottom (the evaluator's own ``privatizer``)."""

    def __init__(self, data, *, privatizer=None, **kw):
        if privatizer is not None:
            if "privatizer" not in inspect.signature(Evaluation.__init__).parameters:
                raise ValueError("this version of the attack suite cannot evaluate a privatizer")
            kw["privatizer"] = privatizer
        super().__init__(dataset=data.name, split=data.split, limit=len(data), **kw)
        self.customer_data = data
        self.guesses: dict = {}

    @property
    def data(self):
        return self.customer_data

    @property
    def in_domain_texts(self) -> list[str]:
        return []

    def _fit_cti(self, **config):
        from splitpriv.privacy import ContributingTokens, CTIConfig

        if self.data.labels is None:
            raise ValueError("CTI needs the customer's task labels: name them with --label-column")
        return ContributingTokens.fit_texts(self.data.texts, self.data.labels, self.tokenizer,
                                            config=CTIConfig(eta_multiplier=self.cti_multiplier, **config),
                                            max_length=self.max_length)

    @cached_property
    def contributing(self):
        """The customer's CTI set, fitted on its own labelled texts (what it would train with); None without CTI."""
        return self._fit_cti() if self.cti else None

    @cached_property
    def task_words(self):
        """The tokens that carry the customer's task: CTI's selection on its labelled texts, None without labels.
        A file too small for CTI's share of the vocabulary to select any gets up to 5 (same score, same minimum
        count)."""
        if self.data.labels is None:
            return None
        selected = self.contributing if self.cti else self._fit_cti()
        if len(selected) == 0 and selected.num_seen_ids:
            selected = self._fit_cti(fraction=min(0.5, 5 / selected.num_seen_ids))
        return selected

    def extra(self, ids):
        out = super().extra(ids)
        if self.task_words is not None:
            out["task"] = self.task_words.is_contributing(ids)
        return out

    def score(self, name, attack, extra_metrics=None):
        recorder = _Recorder(attack)
        result = super().score(name, recorder, extra_metrics)
        self.guesses[name] = recorder.guess
        return result


def applicable_inversion(evaluation, among=None) -> tuple[list[str], dict[str, str]]:
    """The registered inversion attacks (of ``among``, if given) that apply to ``evaluation``, and why the others
    do not."""
    names = [n for n in names_of_kind("inversion") if among is None or n in among]
    reasons = {n: ATTACKS.get(n).applies(evaluation) for n in names}
    return [n for n in names if reasons[n] is None], {n: r for n, r in reasons.items() if r is not None}


def attack_options(name: str, given: dict):
    """``name``'s ``Options`` from the options given to the audit (each attack takes those it declares)."""
    entry = ATTACKS.get(name)
    return entry.options({k: v for k, v in given.items() if k in entry.option_names()})


def run_attacks(evaluation, names, given: dict, *, progress: bool, desc: str) -> dict[str, dict]:
    """Each attack of ``names`` on ``evaluation``: ``{name: its result dict + "seconds"}``."""
    from tqdm.auto import tqdm

    results = {}
    for name in tqdm(names, desc=desc, disable=not progress, leave=False):
        t0 = time.perf_counter()
        result = ATTACKS.get(name).run(evaluation, attack_options(name, given)).to_dict()
        results[name] = {**result, "seconds": time.perf_counter() - t0}
    return results
