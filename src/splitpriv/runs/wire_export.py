"""Export what the vendor sees: the customer's side of a finished run applied to any texts, written as tensors.

``privatize_run(DIR, texts)`` restores the customer of ``DIR/customer`` (bottom with its privatizer, tokenizer, CTI
selection) and the run's mechanism, wire dtype, ``max_length`` and batch size from ``DIR/run.json``, without any
vendor, and returns per text exactly what private inference would send (:meth:`Customer.outgoing`, as the vendor
decodes it: float32, padding rows zero):

* ``hidden`` [N, T, r] float32 (r = d without a privatizer), T = the longest text's token count;
* ``attention_mask`` [N, T] int64;
* ``input_ids`` [N, T] int64 (padding = the tokenizer's pad id): **for evaluation only**, never sent in real use.

Noise comes fresh from the OS on every call unless ``noise_seed`` is given; with the run's own seed and the same
texts, batching (the run's ``eval_batch_size``) and order, the noise is the noise a predict session with that seed
draws, so the file holds exactly what that vendor received. Lets anyone audit a setting with their own attack.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from splitpriv.batching import collate, encode_texts, eval_batches


class _Offline:
    """Stands in for the vendor of a restored customer: privatizing needs nothing from it but the session config."""

    def __init__(self, session):
        self.session_config = session

    def status(self) -> dict:
        return {"config": self.session_config.to_dict()}


def offline_customer(run_dir: str | Path, noise_seed: int | None = None):
    """The customer of the split run ``run_dir`` with no vendor attached; ``noise_seed`` None = OS noise."""
    from splitpriv.roles.customer import Customer
    from splitpriv.runs.run import LABELS_FILE, RUN_FILE, RunConfig

    run_dir = Path(run_dir)
    for path in (run_dir / RUN_FILE, run_dir / LABELS_FILE, run_dir / "customer"):
        if not path.exists():
            raise FileNotFoundError(f"{run_dir} is not a finished split run with a saved customer: {path.name} is "
                                    "missing")
    config = RunConfig.from_dict(json.loads((run_dir / RUN_FILE).read_text()))
    if config.centralized:
        raise ValueError(f"{run_dir} is a centralized baseline run: it sends nothing to privatize")
    labels = json.loads((run_dir / LABELS_FILE).read_text())
    session = config.session_config(len(labels), config.train.batch_size)
    train = replace(config.train, noise_seed=noise_seed)
    return Customer.restore(_Offline(session), run_dir / "customer", config.privacy, train)


def privatize_run(run_dir: str | Path, texts: list[str], *, noise_seed: int | None = None) -> dict[str, torch.Tensor]:
    """``hidden``, ``attention_mask`` and ``input_ids`` for ``texts`` (see the module docstring)."""
    if not texts:
        raise ValueError("no texts to privatize: the input is empty")
    customer = offline_customer(run_dir, noise_seed)
    encodings = encode_texts(customer.tokenizer, texts, customer.train_config.max_length)
    pad = customer.tokenizer.pad_token_id
    length = max(len(e) for e in encodings)
    hidden, ids_out = None, torch.full((len(texts), length), pad, dtype=torch.long)
    mask_out = torch.zeros((len(texts), length), dtype=torch.long)
    for index in eval_batches(len(encodings), customer.train_config.eval_batch_size):
        ids, mask = collate(encodings, index, pad)
        z = customer.outgoing(ids, mask).float() * mask.unsqueeze(-1)
        if hidden is None:
            hidden = torch.zeros(len(texts), length, z.shape[-1])
        rows, width = slice(int(index[0]), int(index[-1]) + 1), ids.shape[1]
        hidden[rows, :width], ids_out[rows, :width], mask_out[rows, :width] = z, ids, mask
    return {"hidden": hidden.contiguous(), "attention_mask": mask_out, "input_ids": ids_out}


def write_privatized(tensors: dict[str, torch.Tensor], path: str | Path, run_dir: str | Path) -> Path:
    """``tensors`` as a safetensors file (metadata: the run folder and what each tensor is)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "splitpriv-privatized", "run": str(run_dir),
                                            "input_ids": "evaluation only: never sent in real use"})
    return path
