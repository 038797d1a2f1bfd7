"""What a frontier point says the customer holds, does and gets alone (real MiniLM, real SST-2 slices)."""

import pytest

from splitpriv.experiments.accounting import accounting
from splitpriv.experiments.frontier import best_point
from splitpriv.models import load_model
from splitpriv.parts import split_model


def _config(**over):
    train = {"epochs": 1, "bottom": "frozen", "privatizer_warm_start": 3, "warm_start_blocks": True}
    train.update(over.pop("train", {}))
    return {"model": None, "bottom_layers": 2, "method": "lora", "train": train, **over}


def test_compute_share_is_the_2p_6p_count():
    """k = 2 of 6 blocks, 3 warm-start epochs training the blocks (6 P_b per token each), 1 epoch forward (2 P_b);
    the vendor's 4 LoRA blocks, forward + input gradients (4 P_b): 40 / (40 + 16)."""
    out = accounting(_config())
    assert out["customer_compute_share"] == pytest.approx(40 / 56)
    assert (out["customer_blocks"], out["total_blocks"]) == (2, 6)
    frozen = accounting(_config(bottom_layers=0, train={"warm_start_blocks": False}))
    assert frozen["customer_compute_share"] == 0.0
    full = accounting(_config(method="full", train={"privatizer_warm_start": 0, "warm_start_blocks": False}))
    assert full["customer_compute_share"] == pytest.approx(4 / (4 + 24))


def test_disclosure_is_the_split_s_own_count():
    model, _ = load_model()
    assert accounting(_config())["disclosure"] == pytest.approx(split_model(model, 2).disclosure().shipped_share)


def test_best_point_keeps_the_customer_within_a_third_of_the_blocks():
    points = [{"privacy": 0.9, "loss_pts": 0.0, "within_1pt": True, "customer_blocks": 4, "total_blocks": 6},
              {"privacy": 0.3, "loss_pts": 2.0, "within_1pt": False, "passes_loss_pts": 0.5,
               "passes_within_1pt": True, "customer_blocks": 2, "total_blocks": 6},
              {"privacy": 0.2, "loss_pts": 0.1, "within_1pt": True, "customer_blocks": 0, "total_blocks": 6}]
    assert best_point(points)["privacy"] == 0.3  # the k = 4 point holds too much; equal passes decide the k = 2 one
    clean = {"privacy": 0.0, "loss_pts": 0.0, "within_1pt": True, "customer_blocks": 0, "total_blocks": 6}
    assert best_point([clean]) is None  # a setting that sends clean vectors is a reference, not a private point


def test_local_only_reads_the_task_and_noise_costs_it(data_dir):
    """The customer alone at k = 0 (mean of embeddings, linear read-out): clean it beats the majority class of the
    dev slice; under η = 0.5 d_chi noise (noise norm ≈ 768 against embeddings of norm ≈ 1) it does not beat clean."""
    from splitpriv.data import load_dataset
    from splitpriv.experiments.grid import run_config
    from splitpriv.experiments.local_only import local_only_accuracy

    config = run_config({"dataset": "sst2", "bottom_layers": 0, "method": "lora",
                         "privacy": {"mechanism": "dchi", "eta": 0.5}, "train": {"epochs": 2}})
    train = load_dataset("sst2", "train", limit=1500, seed=0)
    dev = load_dataset("sst2", "dev", limit=300, seed=0)
    majority = max(list(dev.labels).count(0), list(dev.labels).count(1)) / len(dev)
    clean = local_only_accuracy(config, train, dev, noise=False)
    noisy = local_only_accuracy(config, train, dev, noise=True)
    assert clean > majority + 0.05 and noisy <= clean + 0.02
