"""The evaluator of one setting: it plays the customer and scores what the attacks recover.

:class:`Evaluation` simulates the customer — fits the CTI set on the dataset's *training* split, draws the noise with
the customer's generator, privatizes the evaluation texts through :func:`~splitpriv.attacks.observe.observe`, runs a
short split training through the harness (:mod:`splitpriv.simulation`) and keeps its wire transcript — and hands an
attack only the vendor's view: public knowledge (:meth:`Evaluation.knowledge`) and what crossed the wire. The truth
(token ids, the CTI set, the labels per step) stays with the evaluator, for scoring.
"""

from __future__ import annotations

from functools import cached_property

import torch

from splitpriv.attacks.base import AttackResult, most_frequent_rate, recovery_metrics, set_recovery
from splitpriv.seeding import derive_seed

TOP_K = 5


def _load(model):
    from splitpriv.models import load_model

    if isinstance(model, tuple) and len(model) == 2:
        return model
    return load_model(model)


class Evaluation:
    """One setting, evaluated: the customer's side (made lazily, once) and the scorer.

    Attacks read the setting (``n_bottom_layers``, ``cti``, ``mechanism``, ``dataset``, ``limit``, ``seed``, ...)
    and ask for what the vendor observes: :meth:`observations`, :meth:`epoch_observations`, :meth:`training_run`
    (a transcript of the wire), with :meth:`knowledge` (public). The truth (``input_ids``, :attr:`contributing`,
    labels per step) is for scoring only.
    """

    def __init__(self, *, dataset="sst2", split="dev", n_bottom_layers=0, mechanism=None, cti=False,
                 cti_multiplier=2.0, limit=200, seed=0, model=None, progress=True, max_length=64,
                 public_splits=("valid", "test"), vendor=None, privatizer=None, bottom=None,
                 customer_train_limit=None):
        from splitpriv.privacy import build_mechanism

        self.dataset, self.split, self.limit, self.seed = dataset, split, limit, seed
        self.n_bottom_layers, self.cti, self.cti_multiplier = int(n_bottom_layers), bool(cti), float(cti_multiplier)
        self.mechanism = build_mechanism(mechanism)
        self.model, self.progress, self.max_length = model, progress, int(max_length)
        self.public_splits, self.vendor = tuple(public_splits), vendor
        self.privatizer_spec, self.shipped_bottom = privatizer, bottom
        self.customer_train_limit = customer_train_limit
        self.customer_seed = derive_seed("customer-noise", seed)
        self.attacker_seed = derive_seed("attacker", seed) % (2 ** 31)
        self._memo: dict = {}

    def memo(self, key, compute):
        """``compute()`` once per ``key`` and evaluation (e.g. an inverter several attacks use)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # ------------------------------------------------------------------------------------ the customer's side
    @cached_property
    def loaded(self):
        return _load(self.model)

    @property
    def tokenizer(self):
        return self.loaded[1]

    @cached_property
    def bottom(self):
        """The bottom as shipped: ``bottom`` if given (e.g. a finished run's, privatizer weights included), else the
        model's first k blocks, with a freshly attached ``privatizer`` (a spec) if one is given."""
        if self.shipped_bottom is not None:
            return self.shipped_bottom
        from splitpriv.parts import split_model

        extra = {} if self.privatizer_spec is None else {"privatizer": self.privatizer_spec}
        return split_model(self.loaded[0], self.n_bottom_layers, **extra).bottom

    @property
    def privatized(self) -> bool:
        """Whether a privatizer is folded into the bottom (its output then lives in the privatizer's space)."""
        from splitpriv.attacks.image_space import privatizer_of

        return privatizer_of(self.bottom) is not None

    @cached_property
    def data(self):
        from splitpriv.data import load_dataset

        return load_dataset(self.dataset, self.split, limit=self.limit, seed=self.seed)

    @cached_property
    def contributing(self):
        """The customer's CTI set, fitted on its *training* data (never shown to the attacks); None without CTI."""
        if not self.cti:
            return None
        from splitpriv.data import load_dataset
        from splitpriv.privacy import ContributingTokens, CTIConfig

        train = load_dataset(self.dataset, "train")
        if train.labels is None:
            raise ValueError(f"CTI needs task labels; {self.dataset!r} train has none")
        return ContributingTokens.fit_texts(train.texts, train.labels, self.tokenizer,
                                            config=CTIConfig(eta_multiplier=self.cti_multiplier),
                                            max_length=self.max_length)

    @cached_property
    def in_domain_texts(self) -> list[str]:
        """Public in-domain text the vendor may hold: the dataset's test split
        (:func:`splitpriv.data.public_in_domain`), none when the evaluation itself is on the test split."""
        from splitpriv.data import public_in_domain

        return [] if self.split == "test" else public_in_domain(self.dataset)

    @cached_property
    def other_public_texts(self) -> list[str]:
        """The training text of the other public datasets here (never the evaluated dataset's, nor the SST-2 sample
        when the customer's data is SST-2): more public text for the attacker, out of domain."""
        from splitpriv.data import DatasetNotFoundError, available_datasets, load_dataset
        from splitpriv.data.loaders import canonical_dataset_name

        own = canonical_dataset_name(self.dataset)
        skip = {own, "sst2-sample", "sst2"} if own in ("sst2", "sst2-sample") else {own}
        out = []
        for name in available_datasets():
            if name not in skip:
                try:
                    out += list(load_dataset(name, "train").texts)
                except (ValueError, DatasetNotFoundError):
                    continue
        return out

    @cached_property
    def unused_train_texts(self) -> list[str]:
        """The dataset's training rows the customer did not use: public in-domain text when the customer trains on
        a ``customer_train_limit``-row sample (the rows outside ``sample_indices(N, limit, seed)``, the subset
        :func:`splitpriv.run.load_data` draws for this seed); ``[]`` when the customer's rows are not a known
        sample (no limit given: the attacker must then assume the whole train split is private)."""
        if not self.customer_train_limit:
            return []
        from splitpriv.data import DatasetNotFoundError, load_dataset
        from splitpriv.data.core import sample_indices

        try:
            full = load_dataset(self.dataset, "train")
        except (ValueError, DatasetNotFoundError):
            return []
        used = set(sample_indices(len(full), int(self.customer_train_limit), self.seed))
        return [t for i, t in enumerate(full.texts) if i not in used]

    def observations(self):
        """What the vendor receives for the evaluation texts: ``(z, mask, input_ids)`` (ids: truth)."""
        from splitpriv.attacks.observe import observe

        def make():
            gen = torch.Generator().manual_seed(self.customer_seed)
            return observe(self.bottom, self.tokenizer, self.mechanism, self.data.texts, generator=gen,
                           cti=self.contributing, max_length=self.max_length)

        return self.memo("observations", make)

    def epoch_observations(self, epochs: int, noise: str):
        """``epochs`` shuffled passes over the evaluation texts as the vendor receives them."""
        from splitpriv.attacks.observe import observe_epochs

        gen = torch.Generator().manual_seed(derive_seed("customer-epochs", self.seed))
        return observe_epochs(self.bottom, self.tokenizer, self.mechanism, self.data.texts, epochs=epochs,
                              generator=gen, noise=noise, cti=self.contributing, max_length=self.max_length)

    @property
    def model_source(self):
        """What the vendor loads its model from: the name given, or a loaded model's own path."""
        if isinstance(self.model, tuple):
            return self.model[0].config.name_or_path
        return self.model

    def training_run(self, texts, labels, *, num_labels: int, head: str, method: str, batch_size: int,
                     epochs: int, label_dp_epsilon=None):
        """A short split training of the customer on ``texts``/``labels`` against a vendor, with its wire
        transcript (:func:`splitpriv.simulation.simulate_training`)."""
        from splitpriv.config import PrivacyConfig
        from splitpriv.simulation import simulate_training

        privacy = PrivacyConfig(mechanism=self.mechanism, cti=self.cti, cti_multiplier=self.cti_multiplier,
                                label_dp_epsilon=label_dp_epsilon).validate()
        return simulate_training(texts, labels, num_labels=num_labels, head=head, n_bottom_layers=self.n_bottom_layers,
                                 privacy=privacy, method=method, batch_size=batch_size, epochs=epochs, seed=self.seed,
                                 max_length=self.max_length, model=self.model_source, progress=self.progress,
                                 vendor=self.vendor)

    def lm_training_run(self, examples, *, n_tail_layers: int, method: str, batch_size: int, epochs: int,
                        grad_clip=None, grad_sigma: float = 0.0):
        """A short causal-LM split training of the customer on encoded ``examples`` (its tail: ``n_tail_layers``
        blocks), with the customer's gradient defence if any, and its transcript
        (:func:`splitpriv.simulation.simulate_lm_training`)."""
        from splitpriv.config import PrivacyConfig
        from splitpriv.simulation import simulate_lm_training

        privacy = PrivacyConfig(mechanism=self.mechanism, grad_clip=grad_clip, grad_sigma=grad_sigma).validate()
        return simulate_lm_training(examples, n_bottom_layers=self.n_bottom_layers, n_tail_layers=n_tail_layers,
                                    privacy=privacy, method=method, batch_size=batch_size, epochs=epochs,
                                    seed=self.seed, max_length=self.max_length, model=self.model_source,
                                    progress=self.progress, vendor=self.vendor)

    def shipped_model(self, num_labels: int):
        """The vendor's base model exactly as it ships it (head initialised under seed 0), frozen."""
        from splitpriv.models import load_model

        net, tokenizer = load_model(self.model_source, num_labels=num_labels, seed=0)
        net.requires_grad_(False)
        return net, tokenizer

    # --------------------------------------------------------------------------------------- the vendor's side
    def knowledge(self, *, public_text: bool = True, loaded=None):
        """What the vendor knows besides the wire: its bottom as shipped (of ``loaded``, default the evaluation's
        model), the tokenizer, the mechanism, the CTI multiplier if CTI is on and (``public_text``) public text."""
        if loaded is None:
            return self.memo(("knowledge", public_text),
                             lambda: self._knowledge(self.bottom, self.tokenizer, public_text))
        from splitpriv.parts import split_model

        return self._knowledge(split_model(loaded[0], self.n_bottom_layers).bottom, loaded[1], public_text)

    def _knowledge(self, bottom, tokenizer, public_text: bool):
        from splitpriv.attacks.base import AttackerKnowledge
        from splitpriv.attacks.image_space import PrivatizedSpace, privatizer_of
        from splitpriv.data import public_corpus

        kn = AttackerKnowledge(bottom=bottom, tokenizer=tokenizer, mechanism=self.mechanism,
                               public_texts=public_corpus(self.public_splits) if public_text else [],
                               cti_multiplier=self.cti_multiplier if self.cti else None, max_length=self.max_length)
        if privatizer_of(bottom) is not None and bottom.n_layers == 0:
            kn._space = PrivatizedSpace(bottom, tokenizer)
        return kn

    # ------------------------------------------------------------------------------------------------ scoring
    def extra(self, ids):
        return {"contributing": self.contributing.is_contributing(ids)} if self.contributing is not None else {}

    def score(self, name: str, attack, extra_metrics: dict | None = None) -> AttackResult:
        """Invert the observations with a fitted inversion ``attack`` and score the guess against the truth (and
        its ``TOP_K`` best guesses when the attack ranks candidates: a ``rank(hidden, mask, k)`` method)."""
        z, mask, ids = self.observations()
        ranked = attack.rank(z, mask, TOP_K) if callable(getattr(attack, "rank", None)) else None
        metrics = recovery_metrics(attack.invert(z, mask), ids, mask, self.tokenizer, self.extra(ids), ranked)
        metrics.update(extra_metrics or {})
        return AttackResult(name, metrics["token_recovery"], metrics)

    def score_sets(self, name: str, attack, extra_metrics: dict | None = None) -> AttackResult:
        """Score a fitted set-level ``attack`` (``rank(z, mask, k)`` -> [N, k] content tokens, ``floor_rank(n, k)``
        its public-frequency guess) by :func:`~splitpriv.attacks.base.set_recovery`; success = set recovery."""
        z, mask, ids = self.observations()
        got = set_recovery(attack.rank(z, mask), ids, mask, self.tokenizer)
        floor = set_recovery(attack.floor_rank(len(ids)), ids, mask, self.tokenizer)["set_recovery"]
        metrics = {**got, "set_floor": floor, "set_advantage": got["set_recovery"] - floor, **(extra_metrics or {})}
        return AttackResult(name, got["set_recovery"], metrics)

    def describe(self) -> dict:
        from splitpriv.data import public_text_origin

        z, mask, ids = self.observations()
        return {
            "dataset": self.data.name, "split": self.data.split, "n_texts": len(self.data),
            "n_bottom_layers": self.n_bottom_layers, "mechanism": self.mechanism.to_config(), "cti": self.cti,
            "cti_multiplier": self.cti_multiplier if self.cti else None,
            "n_contributing_ids": len(self.contributing) if self.cti else None,
            "seed": self.seed, "chance_recovery": most_frequent_rate(ids, mask, self.tokenizer),
            "output_width": int(z.shape[-1]), "privatized": self.privatized,
            "public_text": public_text_origin(), "customer_train_limit": self.customer_train_limit,
        }
