"""``run_attack``: one attack (or all applicable inversion attacks) on one setting, as a JSON-able dict.

The runner plays both sides: it simulates the customer (fits the CTI set on the dataset's *training* split, draws
the noise with the customer's generator, privatizes the evaluation texts through :func:`observe`), hands the
attacks only the vendor's view (:class:`AttackerKnowledge` + what is on the wire) and scores their guesses against
the true tokens. Empirical privacy of a setting is ``1 − max(success)`` over the applicable inversion attacks.

Applicability: ``nn``/``map`` only at k = 0 (they invert embedding-layer outputs), ``opt``/``learned``/``average``
at any k, ``cti`` only with ``cti=True``. ``aia`` and ``label`` delegate to :mod:`splitpriv.attacks.attribute` and
:mod:`splitpriv.attacks.label`; ``all`` runs the applicable inversion attacks (token recovery is comparable
across them; attribute and label inference measure something else and are run on their own).

Keyword options (``**kw``) of the inversion attacks, with defaults:

* ``max_length=64`` — tokenizer truncation (customer and attacker);
* ``public_splits=("valid", "test")`` — WikiText-2 splits the vendor uses as public text;
* ``n_public=2000``, ``learned_epochs=2``, ``arch="transformer"``, ``learned_batch_size=32`` — learned inverter;
* ``steps=200``, ``top_k=256``, ``n_prior=64``, ``opt_batch_size=16``, ``init="nn"`` — optimization attack;
* ``epochs=3``, ``noise="fresh"`` — averaging attack (observations per text and how the customer draws noise);
* ``nn_search="exact"`` — nearest-neighbour search (``"ivf"`` is approximate, for throughput).

Command line (prints JSON; ``--table`` runs the grid of the report)::

    python -m splitpriv.attacks.runner all --k 0 --mechanism dchi --eta 10 --limit 200
    python -m splitpriv.attacks.runner --table --limit 200
"""

from __future__ import annotations

import inspect
import json
import math
import time

import torch

from splitpriv.attacks.base import AttackerKnowledge, AttackResult, most_frequent_rate, recovery_metrics
from splitpriv.seeding import derive_seed

INVERSION_ATTACKS = ("nn", "map", "opt", "learned", "average", "cti")
OTHER_ATTACKS = ("aia", "label")
ATTACKS = (*INVERSION_ATTACKS, *OTHER_ATTACKS, "all")

_DEFAULTS = {
    "max_length": 64,
    "public_splits": ("valid", "test"),
    "n_public": 2000,
    "learned_epochs": 2,
    "arch": "transformer",
    "learned_batch_size": 32,
    "steps": 200,
    "top_k": 256,
    "n_prior": 64,
    "opt_batch_size": 16,
    "init": "nn",
    "epochs": 3,
    "noise": "fresh",
    "nn_search": "exact",
}


def applicable(attack: str, n_bottom_layers: int, cti: bool) -> bool:
    """Whether an inversion attack applies to a setting (see module docstring)."""
    if attack in ("nn", "map"):
        return n_bottom_layers == 0
    if attack == "cti":
        return bool(cti)
    return attack in INVERSION_ATTACKS


def _load(model):
    from splitpriv.models import load_model

    if isinstance(model, tuple) and len(model) == 2:
        return model
    return load_model(model)


def _mechanism(mechanism, eta, sigma, scale):
    from splitpriv.privacy.mechanisms import Mechanism, build_mechanism

    if isinstance(mechanism, Mechanism):
        return mechanism
    params = {k: v for k, v in {"eta": eta, "sigma": sigma, "scale": scale}.items() if v is not None}
    return build_mechanism(mechanism, **params)


def _jsonable(x):
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    return x


def _delegate(attack: str, params: dict, kw: dict) -> dict:
    """Call ``run_attribute_attack`` / ``run_label_attack`` with the parameters it accepts."""
    import importlib

    module, func = {"aia": ("splitpriv.attacks.attribute", "run_attribute_attack"),
                    "label": ("splitpriv.attacks.label", "run_label_attack")}[attack]
    try:
        fn = getattr(importlib.import_module(module), func)
    except ModuleNotFoundError as err:
        if err.name != module:
            raise
        raise RuntimeError(f"attack {attack!r} needs {module}.{func}, but {module} is not available") from None
    except AttributeError:
        raise RuntimeError(f"attack {attack!r} needs {module}.{func}, which {module} does not define") from None
    args = {**params, **kw}
    if isinstance(args.get("model"), tuple):  # those runners load models by name
        args.pop("model")
    sig = inspect.signature(fn)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        args = {k: v for k, v in args.items() if k in sig.parameters}
    result = fn(**args)
    out = result.to_dict() if isinstance(result, AttackResult) else dict(result)
    out.setdefault("attack", attack)
    return out


def run_attack(attack: str, *, dataset="sst2", split="dev", n_bottom_layers=0, mechanism="none", eta=None,
               sigma=None, scale=None, cti=False, cti_multiplier=2.0, limit=200, seed=0, model=None, progress=True,
               **kw) -> dict:
    """Run ``attack`` (one of :data:`ATTACKS`) on ``limit`` texts of ``dataset``/``split``; a JSON-able dict with
    at least ``attack``, ``success`` (0–1) and ``empirical_privacy``; for ``"all"`` also ``results`` (per attack)
    and ``strongest_attack``. ``model`` is a model name/folder (``None`` = MiniLM) or a loaded
    ``(model, tokenizer)`` pair. See the module docstring for ``kw``."""
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; expected one of {list(ATTACKS)}")
    params = dict(dataset=dataset, split=split, n_bottom_layers=n_bottom_layers, mechanism=mechanism, eta=eta,
                  sigma=sigma, scale=scale, cti=cti, cti_multiplier=cti_multiplier, limit=limit, seed=seed,
                  model=model, progress=progress)
    if attack in OTHER_ATTACKS:
        return _jsonable(_delegate(attack, params, kw))
    unknown = sorted(set(kw) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for inversion attacks; accepted: {sorted(_DEFAULTS)}")
    if attack != "all" and not applicable(attack, n_bottom_layers, cti):
        raise ValueError(f"attack {attack!r} does not apply to k={n_bottom_layers}, cti={cti} "
                         "(nn/map need k=0, cti needs cti=True)")
    opts = {**_DEFAULTS, **kw}
    setting = _Setting(params, opts)
    names = [a for a in INVERSION_ATTACKS if applicable(a, n_bottom_layers, cti)] if attack == "all" else [attack]
    results = {}
    for name in names:
        results[name] = setting.run(name)
    base = setting.describe()
    if attack != "all":
        return _jsonable({**results[attack], **{k: v for k, v in base.items() if k not in results[attack]}})
    best = max(results.values(), key=lambda r: r["success"])
    return _jsonable({
        "attack": "all", "success": best["success"], "empirical_privacy": 1.0 - best["success"],
        "strongest_attack": best["attack"], "results": results, **base,
    })


class _Setting:
    """One evaluation setting: the customer's observations (made once, lazily) and the attacker's knowledge."""

    def __init__(self, params: dict, opts: dict):
        from splitpriv.data import load_dataset
        from splitpriv.split import split_model

        self.p, self.o = params, opts
        self.progress = params["progress"]
        self.model, self.tok = _load(params["model"])
        self.k = int(params["n_bottom_layers"])
        self.bottom = split_model(self.model, self.k).bottom
        self.mech = _mechanism(params["mechanism"], params["eta"], params["sigma"], params["scale"])
        self.data = load_dataset(params["dataset"], params["split"], limit=params["limit"], seed=params["seed"])
        self.seed = params["seed"]
        self.customer_seed = derive_seed("customer-noise", self.seed)
        self.attacker_seed = derive_seed("attacker", self.seed) % (2 ** 31)
        self.cti = self._fit_cti() if params["cti"] else None
        self._obs = None
        self._knowledge = None
        self._inverters = {}  # trained learned inverters by (n_average, cti_mix): trained once per setting

    def _fit_cti(self):
        """The customer's CTI set: fitted on its *training* data (never shown to the attacks)."""
        from splitpriv.data import load_dataset
        from splitpriv.privacy.cti import ContributingTokens, CTIConfig

        train = load_dataset(self.p["dataset"], "train")
        if train.labels is None:
            raise ValueError(f"CTI needs task labels; {self.p['dataset']!r} train has none")
        config = CTIConfig(eta_multiplier=float(self.p["cti_multiplier"]))
        return ContributingTokens.fit_texts(train.texts, train.labels, self.tok, config=config,
                                            max_length=self.o["max_length"])

    # ------------------------------------------------------------------------------------------ the two sides
    def observations(self):
        from splitpriv.attacks.observe import observe

        if self._obs is None:
            gen = torch.Generator().manual_seed(self.customer_seed)
            self._obs = observe(self.bottom, self.tok, self.mech, self.data.texts, generator=gen, cti=self.cti,
                                max_length=self.o["max_length"])
        return self._obs

    def knowledge(self) -> AttackerKnowledge:
        from splitpriv.data import public_corpus

        if self._knowledge is None:
            public = public_corpus(tuple(self.o["public_splits"]))
            self._knowledge = AttackerKnowledge(
                bottom=self.bottom, tokenizer=self.tok, mechanism=self.mech, public_texts=public,
                cti_multiplier=float(self.p["cti_multiplier"]) if self.cti is not None else None,
                max_length=self.o["max_length"])
        return self._knowledge

    def extra(self, ids):
        return {"contributing": self.cti.is_contributing(ids)} if self.cti is not None else {}

    def describe(self) -> dict:
        z, mask, ids = self.observations()
        return {
            "dataset": self.data.name, "split": self.data.split, "n_texts": len(self.data),
            "n_bottom_layers": self.k, "mechanism": self.mech.to_config(), "cti": self.cti is not None,
            "cti_multiplier": float(self.p["cti_multiplier"]) if self.cti is not None else None,
            "n_contributing_ids": len(self.cti) if self.cti is not None else None,
            "seed": self.seed, "chance_recovery": most_frequent_rate(ids, mask, self.tok),
        }

    def _learned(self, n_average: int = 1):
        """The learned inverter for averages of ``n_average`` draws, trained once per setting."""
        from splitpriv.attacks.learned import LearnedInversion

        if n_average not in self._inverters:
            self._inverters[n_average] = LearnedInversion(
                n_public=self.o["n_public"], epochs=self.o["learned_epochs"], arch=self.o["arch"],
                batch_size=self.o["learned_batch_size"], n_average=n_average, seed=self.attacker_seed,
                progress=self.progress).fit(self.knowledge())
        return self._inverters[n_average]

    def run(self, name: str) -> dict:
        t0 = time.perf_counter()
        result = getattr(self, f"_run_{name}")()
        out = result.to_dict()
        out["seconds"] = time.perf_counter() - t0
        return out

    def _score(self, name: str, attack, extra_metrics: dict | None = None) -> AttackResult:
        z, mask, ids = self.observations()
        pred = attack.invert(z, mask)
        metrics = recovery_metrics(pred, ids, mask, self.tok, self.extra(ids))
        metrics.update(extra_metrics or {})
        return AttackResult(name, metrics["token_recovery"], metrics)

    # ------------------------------------------------------------------------------------------------ attacks
    def _run_nn(self):
        from splitpriv.attacks.nearest import NearestNeighbour

        return self._score("nn", NearestNeighbour(search=self.o["nn_search"]).fit(self.knowledge()),
                           {"search": self.o["nn_search"]})

    def _run_map(self):
        from splitpriv.attacks.nearest import MAPInversion

        return self._score("map", MAPInversion().fit(self.knowledge()))

    def _run_opt(self):
        from splitpriv.attacks.optimization import OptimizationInversion

        attack = OptimizationInversion(steps=self.o["steps"], top_k=self.o["top_k"], n_prior=self.o["n_prior"],
                                       batch_size=self.o["opt_batch_size"], init=self.o["init"],
                                       progress=self.progress).fit(self.knowledge())
        return self._score("opt", attack, {"steps": self.o["steps"], "top_k": self.o["top_k"],
                                           "init": self.o["init"]})

    def _run_learned(self):
        attack = self._learned()
        return self._score("learned", attack, {"train_seconds": attack.train_seconds, "arch": attack.arch,
                                               "n_public": self.o["n_public"], "epochs": attack.epochs,
                                               "final_train_loss": attack.history[-1] if attack.history else None})

    def _run_average(self):
        from splitpriv.attacks.averaging import averaging_attack, effective_draws
        from splitpriv.attacks.observe import observe_epochs

        gen = torch.Generator().manual_seed(derive_seed("customer-epochs", self.seed))
        obs = observe_epochs(self.bottom, self.tok, self.mech, self.data.texts, epochs=self.o["epochs"],
                             generator=gen, noise=self.o["noise"], cti=self.cti, max_length=self.o["max_length"])
        base = self._learned(effective_draws(self.mech, obs)) if self.k > 0 else None
        return averaging_attack(self.knowledge(), obs, extra_masks=self.extra(obs.input_ids), base=base)

    def _run_cti(self):
        from splitpriv.attacks.cti_aware import cti_attack

        z, mask, ids = self.observations()
        learned_kw = dict(n_public=self.o["n_public"], epochs=self.o["learned_epochs"], arch=self.o["arch"],
                          batch_size=self.o["learned_batch_size"], seed=self.attacker_seed)
        return cti_attack(self.knowledge(), z, mask, ids, self.cti.is_contributing(ids), progress=self.progress,
                          learned_kw=learned_kw)


# ---------------------------------------------------------------------------------------------------- CLI
TABLE = [dict(n_bottom_layers=0, mechanism="dchi", eta=e) for e in (5.0, 10.0, 20.0)] + [
    dict(n_bottom_layers=k, mechanism="none") for k in (1, 2, 3)]


def _table(limit: int, seed: int, progress: bool, kw: dict) -> list[dict]:
    from splitpriv.models import load_model

    loaded = load_model()
    rows = []
    for setting in TABLE:
        t0 = time.perf_counter()
        out = run_attack("all", **setting, limit=limit, seed=seed, model=loaded, progress=progress, **kw)
        out["seconds"] = time.perf_counter() - t0
        rows.append(out)
        print(_row(out), flush=True)
    return rows


def _row(out: dict) -> str:
    mech = out["mechanism"]
    name = mech["name"] + (f" η={mech['eta']:g}" if "eta" in mech else "")
    cells = "  ".join(f"{a}={r['success']:.3f}" for a, r in out["results"].items())
    return (f"k={out['n_bottom_layers']} {name:12s} {cells}  | max={out['success']:.3f} ({out['strongest_attack']}) "
            f"privacy={out['empirical_privacy']:.3f}  chance={out['chance_recovery']:.3f}  [{out['seconds']:.0f}s]")


def main(argv=None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("attack", nargs="?", default="all", choices=ATTACKS)
    ap.add_argument("--table", action="store_true", help="run the report grid (k=0 d_chi η∈{5,10,20}; k∈{1,2,3})")
    ap.add_argument("--dataset", default="sst2")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--k", type=int, default=0)
    ap.add_argument("--mechanism", default="none")
    ap.add_argument("--eta", type=float)
    ap.add_argument("--sigma", type=float)
    ap.add_argument("--scale", type=float)
    ap.add_argument("--cti", action="store_true")
    ap.add_argument("--cti-multiplier", type=float, default=2.0)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="inversion option, e.g. --set steps=100 --set n_public=1000 (values parsed as JSON)")
    a = ap.parse_args(argv)
    kw = {}
    for item in a.set:
        key, _, value = item.partition("=")
        try:
            kw[key] = json.loads(value)
        except json.JSONDecodeError:
            kw[key] = value
    if a.table:
        result = _table(a.limit, a.seed, not a.no_progress, kw)
    else:
        result = run_attack(a.attack, dataset=a.dataset, split=a.split, n_bottom_layers=a.k, mechanism=a.mechanism,
                            eta=a.eta, sigma=a.sigma, scale=a.scale, cti=a.cti, cti_multiplier=a.cti_multiplier,
                            limit=a.limit, seed=a.seed, progress=not a.no_progress, **kw)
    text = json.dumps(result, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
