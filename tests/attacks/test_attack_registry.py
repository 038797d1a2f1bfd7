"""The attack registry: every attack declares itself, options are checked, mechanisms are asked, not guessed."""

import math

import pytest
import torch

from splitpriv.attacks.base import AttackerKnowledge
from splitpriv.attacks.registry import ATTACKS, Attack, Setting, attack_option_help
from splitpriv.attacks.runner import applicable, attack_specs, run_attack
from splitpriv.privacy import DChi, Laplace, MechanismCapabilityError
from splitpriv.parts import split_model


def test_registry_lists_every_attack_in_order_with_kind_description_and_documented_options():
    assert ATTACKS.names() == ["floor", "nn", "map", "opt", "learned", "adaptive", "average", "cti", "set",
                              "linear", "aia", "label", "response"]
    listed = attack_option_help()
    assert {n: e["kind"] for n, e in listed.items() if e["kind"] != "inversion"} == {"set": "set",
                                                                                      "aia": "attribute",
                                                                                      "label": "label",
                                                                                      "response": "response"}
    for entry in listed.values():
        assert entry["description"] and all(text for _, text in entry["options"].values())
    assert listed["opt"]["options"]["steps"][0] == 200
    assert "epochs" in listed["average"]["options"] and "n_public" in listed["average"]["options"]


def test_misspelt_option_names_the_attack_and_the_accepted_options():
    with pytest.raises(ValueError, match=r"attack 'opt': unknown option\(s\) \['stpes'\]; accepted: \[.*'steps'"):
        run_attack("opt", stpes=5)
    with pytest.raises(ValueError, match=r"attack 'all': unknown option\(s\) \['n_pubilc'\]; accepted: .*'n_public'"):
        run_attack("all", n_pubilc=5)
    with pytest.raises(ValueError, match=r"attack 'aia': unknown option\(s\) \['atribute'\]"):
        attack_specs([{"attack": "aia", "atribute": "gender"}], Setting())
    with pytest.raises(ValueError, match="unknown attack 'nearest'"):
        run_attack("nearest")
    with pytest.raises(ValueError, match=r"mechanism 'dchi'.*unknown option\(s\) \['sigma'\]; accepted: \['eta'\]"):
        run_attack("nn", mechanism="dchi", eta=10.0, sigma=0.5)


def test_an_attack_without_help_or_defaults_is_refused():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Bare:
        steps: int = 3

    with pytest.raises(TypeError, match="lacking: \\['steps'\\]"):
        type("Toy", (Attack,), {"description": "toy", "Options": Bare})


def test_applicable_is_the_old_rule():
    def old(attack, k, cti):
        if attack in ("nn", "map"):
            return k == 0
        if attack == "cti":
            return bool(cti)
        return attack in ("opt", "learned", "average")

    for attack in ("nn", "map", "opt", "learned", "average", "cti"):
        for k in (0, 1, 3):
            for cti in (False, True):
                assert applicable(attack, k, cti) == old(attack, k, cti), (attack, k, cti)


def test_attack_specs_drop_what_does_not_apply_and_keep_the_keywords():
    attacks = ["nn", "map", {"attack": "opt", "limit": 32, "steps": 40}, "cti",
               {"attack": "aia", "dataset": "trustpilot"}]
    assert attack_specs(attacks, Setting(n_bottom_layers=2)) == [
        {"attack": "opt", "limit": 32, "steps": 40}, {"attack": "aia", "dataset": "trustpilot"}]
    assert [s["attack"] for s in attack_specs(attacks, Setting(0, cti=True))] == ["nn", "map", "opt", "cti", "aia"]
    assert [s["attack"] for s in attack_specs([{"attack": "all", "steps": 5}], Setting(1))] == [
        "floor", "opt", "learned", "adaptive", "average", "linear", "set"]


def test_a_mechanism_an_attack_cannot_handle_is_an_error_naming_both(minilm):
    from splitpriv.attacks import CTIAwareInversion, MAPInversion
    from splitpriv.attacks.nearest import loglik_from_sqdist

    model, tok = minilm
    knowledge = AttackerKnowledge(split_model(model, 0).bottom, tok, Laplace(0.5), cti_multiplier=2.0)
    with pytest.raises(MechanismCapabilityError, match=r"attack 'cti' cannot handle mechanism Laplace\(scale=0.5\)"):
        CTIAwareInversion().fit(knowledge)
    with pytest.raises(MechanismCapabilityError, match="loglik_from_sqdist.*Laplace"):
        loglik_from_sqdist(Laplace(1.0), torch.ones(2, 3))
    attack = MAPInversion().fit(knowledge)
    z = attack.space.candidates(3, torch.tensor([2023, 3185]))
    with pytest.raises(MechanismCapabilityError, match="MAP decoding with a per-token noise_scale.*Laplace"):
        attack.scores(z, torch.tensor([3, 3]), noise_scale=torch.ones(2))


def test_cti_detection_statistic_is_unchanged_for_dchi():
    # the radius LLR now comes from the mechanism's radius law; for d_chi it is the closed form d·log m − η(m−1)r
    from splitpriv.attacks import CTIAwareInversion

    attack = CTIAwareInversion()
    attack.knowledge, attack.m = AttackerKnowledge(None, None, DChi(5.0)), 2.0
    r = torch.tensor([[0.0, 40.0, 76.8], [80.0, 150.0, 0.5]])
    expected = 384 * math.log(2.0) - 5.0 * (2.0 - 1.0) * r
    torch.testing.assert_close(attack.llr(r, 384), expected, atol=1e-4, rtol=1e-6)


def test_mechanism_given_by_name_and_parameter_by_dict_or_built_is_one_setting(minilm, data_dir):
    common = dict(n_bottom_layers=0, limit=4, model=minilm, progress=False, public_splits=["valid"])
    outs = [run_attack("nn", mechanism=m, **common, **kw) for m, kw in (
        ("dchi", {"eta": 20.0}), ({"name": "dchi", "eta": 20.0}, {}), (DChi(20.0), {"eta": None}))]
    for out in outs:
        out.pop("seconds")
    assert outs[0] == outs[1] == outs[2]
    assert outs[0]["mechanism"] == {"name": "dchi", "eta": 20.0}
