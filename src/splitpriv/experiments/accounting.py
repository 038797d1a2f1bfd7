r"""What a point of the frontier costs the customer: the share of the vendor's model it holds and of the compute.

``disclosure``: the vendor's parameters shipped to the customer (bottom, and a causal LM's tail) over all of them
(:meth:`splitpriv.parts.SplitModel.disclosure`). ``customer_blocks`` / ``total_blocks``: blocks held at home (bottom
and tail) and the model's.

``customer_compute_share``: the customer's share of all training FLOPs of the run, warm start included, by the
standard estimate (Kaplan et al. 2020) of :math:`2P` FLOPs per token for a forward pass through matrices of
:math:`P` weights, :math:`2P` more for the gradients w.r.t. their inputs and :math:`2P` for those w.r.t. the weights.
Per training token, with :math:`P_b` the weights of one block, :math:`k` bottom and :math:`j` tail blocks, :math:`n`
the vendor's blocks, :math:`W` warm-start and :math:`E` split epochs:

* customer: :math:`W\,(2 + 4[\text{blocks trained at home}])\,k P_b + E\,(2 + 4[\text{bottom trained}])\,k P_b +
  E\cdot 4 j P_b` (the tail's input gradients go down to the vendor);
* vendor: :math:`E\,(4 + 2[\text{full fine-tuning}])\,n P_b` (LoRA, BitFit and adapters need the input gradients
  through every block above their first adapted weight; their own weights are negligible).

Attention scores (:math:`4Td` per token per block, 1–2% of :math:`2P_b` at these lengths), embeddings (a lookup),
heads and privatizer projections are left out; so is a vendor's one-off public pre-training (``robust-top``), which
is shared by every customer.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=8)
def _model_shape(model: str | None, task: str) -> tuple[int, int]:
    """(blocks, weights of one block) of ``model``."""
    from splitpriv.models import load_model, num_blocks
    from splitpriv.parts import split_model

    net, _ = load_model(model, **({"task": task} if task == "causal-lm" else {}))
    one = split_model(net, 1).bottom
    block = sum(p.numel() for n, p in one.named_parameters() if n.startswith(f"{one.block_paths[0]}."))
    return num_blocks(net), block


@lru_cache(maxsize=32)
def _disclosure(model: str | None, task: str, k: int, j: int) -> float:
    from splitpriv.models import load_model
    from splitpriv.parts import split_model

    net, _ = load_model(model, **({"task": task} if task == "causal-lm" else {}))
    parts = split_model(net, k, j) if task == "causal-lm" else split_model(net, k)
    return parts.disclosure().shipped_share


def accounting(config: dict) -> dict:
    """``disclosure``, ``customer_blocks``, ``total_blocks``, ``customer_compute_share`` of a run's config
    (``RunConfig.to_dict()``); centralized runs hold nothing at home."""
    task = config.get("task", "sequence-classification")
    k, j = int(config.get("bottom_layers", 0)), int(config.get("tail_layers", 0) or 0)
    total, _ = _model_shape(config.get("model"), task)
    t = config["train"]
    warm, epochs = int(t.get("privatizer_warm_start") or 0), int(t["epochs"])
    home = 6 if t.get("warm_start_blocks") else 2
    customer = warm * home * k + epochs * (6 if t.get("bottom") == "trained" else 2) * k + epochs * 4 * j
    vendor = epochs * (6 if config.get("method") == "full" else 4) * (total - k - j)
    return {"disclosure": _disclosure(config.get("model"), task, k, j), "customer_blocks": k + j,
            "total_blocks": total, "customer_compute_share": customer / (customer + vendor)}
