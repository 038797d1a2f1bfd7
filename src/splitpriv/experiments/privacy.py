"""The attacks a grid point runs, and what the frontier reads from them: empirical privacy (1 − the strongest
token attack), the set-level attack against its public guess, and the label (or, for a causal LM, response) attack.
Attacks that do not apply to the point are recorded with the reason, never dropped silently."""

from __future__ import annotations

from pathlib import Path

from splitpriv.config import LEGACY_PARAMETERS
from splitpriv.experiments.cache import cached, digest, trained_bottom_dir
from splitpriv.runs.config import RunConfig


def _setting(config: RunConfig):
    from splitpriv.attacks.registry import Setting

    return Setting(n_bottom_layers=config.bottom_layers, cti=config.privacy.cti,
                   mechanism=config.privacy.build_mechanism(), privatized=config.privacy.privatizer is not None,
                   task=config.task)


def attack_specs_of(attacks: list, config: RunConfig) -> list[dict]:
    """The registered attacks of the config that apply to the point (options checked by the attack registry)."""
    from splitpriv.attacks.runner import attack_specs

    return attack_specs(attacks, _setting(config))


def skipped_of(attacks: list, config: RunConfig) -> dict[str, str]:
    """The config's attacks that do not apply to the point, with the reason (recorded, never silently dropped)."""
    from splitpriv.attacks.runner import skipped_specs

    return skipped_specs(attacks, _setting(config))


def measure_privacy(config: RunConfig, specs: list[dict], limit: int, *, progress=False,
                    cache_dir: Path | None = None, force: bool = False, skipped: dict | None = None) -> dict:
    """Run the attacks on the setting's eval data; empirical privacy = 1 − the strongest inversion attack.

    The attacked representations come from the *initial* bottom, which the attacker knows exactly; with a trained
    bottom the customer really sends representations of its updated bottom, unknown to the attacker, so the
    figure is conservative (privacy is at least this). With a privatizer the attacks run on the run's *final*
    bottom and privatizer (:func:`trained_bottom_dir`): the attacker is handed the trained weights, as the threat
    model demands. An attack's result depends only on what the vendor observes
    (data, k, mechanism, CTI, seed) and on the attack's options, so with ``cache_dir`` each one is stored under a
    hash of exactly those and shared by every grid point with the same view (e.g. frozen and trained bottom, or
    every tuning method at one η)."""
    from splitpriv.attacks.runner import run_attack

    p = config.privacy
    common = dict(dataset=config.dataset if config.dataset != "sst2-sample" else "sst2",
                  split=config.eval_split, n_bottom_layers=config.bottom_layers, cti=p.cti,
                  cti_multiplier=p.cti_multiplier, limit=limit, seed=config.train.seed, model=config.model)
    if config.dataset != "sst2-sample":  # the rest of the train split is public in-domain text
        common["customer_train_limit"] = config.train_limit
    legacy = p.legacy_layout()
    mech_key = ({k: legacy[k] for k in ("mechanism", *LEGACY_PARAMETERS)} if isinstance(legacy["mechanism"], str)
                else {"mechanism": p.mechanism_config})
    shipped = {}
    if p.privatizer is not None:
        from splitpriv.parts import load_bottom

        folder = trained_bottom_dir(config)
        if not (folder / "bottom.json").is_file():
            raise FileNotFoundError(f"the trained bottom of this privatizer point is not at {folder}: re-run the "
                                    "point's training (splitpriv experiment --force) before attacking it")
        mech_key = {**mech_key, "bottom": folder.name}
        shipped = {"bottom": load_bottom(folder), "privatizer": p.privatizer}
    results = {}
    for spec in specs:
        kw = {**common, **{k: v for k, v in spec.items() if k != "attack"}}
        if spec["attack"] == "label":
            # the label attack trains its own short split run: same head, label DP and tuning method as the setting
            kw.update(head=config.head, label_dp_epsilon=p.label_dp_epsilon, method=config.method)
        if spec["attack"] == "response":
            # a short causal-LM split run of the point's shape and gradient defence, attacked through its tail
            kw.update(tail_layers=config.tail_layers, method=config.method, batch_size=config.train.batch_size,
                      grad_clip=p.grad_clip, grad_sigma=p.grad_sigma)
        if spec["attack"] == "average":
            # the vendor gets one look per epoch; noise drawn fresh each step or once per sample, as in training
            kw.update(epochs=max(config.train.epochs, 2), noise="once" if p.noise == "once" else "fresh")
        name = spec["attack"] + "".join(f"-{v}" for k, v in spec.items() if k != "attack")
        key = digest({"attack": spec["attack"], **kw, **mech_key})
        path = cache_dir / f"{key}.json" if cache_dir is not None else None
        results[name] = cached(path, lambda: run_attack(spec["attack"], progress=progress,
                                                        mechanism=p.mechanism_config, **kw, **shipped), force)
    from splitpriv.attacks.registry import names_of_kind

    inversion = {k: v for k, v in results.items() if k.split("-")[0] in names_of_kind("inversion")}
    out = {"attacks": results, "skipped": skipped or {}}
    sets = [v for k, v in results.items() if k.split("-")[0] in names_of_kind("set")]
    if sets:
        out.update(set_recovery=max(v["set_recovery"] for v in sets), set_floor=sets[0]["set_floor"])
    labels = [v for k, v in results.items() if k.split("-")[0] in (*names_of_kind("label"),
                                                                     *names_of_kind("response"))]
    if labels:
        out["label_attack"] = max(v["success"] for v in labels)
    if inversion:
        best = max(inversion, key=lambda k: inversion[k]["success"])
        out.update(strongest_attack=best, max_success=inversion[best]["success"],
                   empirical_privacy=1.0 - inversion[best]["success"])
    return out
