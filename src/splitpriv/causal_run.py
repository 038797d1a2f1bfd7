"""One causal-LM run end to end (``splitpriv train --task causal-lm``): instruction or text data → split LoRA on the
vendor's middle (the customer keeps bottom and tail) → held-out perplexity and exact match → metrics.json.

Data (:func:`splitpriv.data.instructions.load_lm_dataset`): ``sst2`` / ``financial_phrasebank`` as "sentence → label
word" in the chat template (scored by exact match of the greedy answer), ``wikitext2`` (perplexity only), or a
``.jsonl`` file with ``prompt``/``response``. ``--centralized`` trains the unsplit baseline, ``--baseline`` both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from splitpriv.provenance import run_record

EXACT_MATCH_TOKENS = 8


def load_lm_data(config):
    """Training and evaluation ``(prompt, response)`` records (encoded later, with the vendor's tokenizer)."""
    from splitpriv.data.instructions import load_lm_records

    train = load_lm_records(config.dataset, "train", limit=config.train_limit, seed=config.train.seed)
    evaluation = load_lm_records(config.dataset, config.eval_split, limit=config.eval_limit, seed=config.train.seed)
    if not train or not evaluation:
        raise ValueError(f"dataset {config.dataset!r} gave no training or evaluation examples")
    return train, evaluation


def _encoded(records, tokenizer, config):
    from splitpriv.data.instructions import encode_lm

    return [encode_lm(r, tokenizer, config.train.max_length) for r in records]


def score(model, evaluation) -> dict:
    """Held-out perplexity, and exact match where the examples are instructions."""
    result = model.perplexity(evaluation)
    if any(e.prompt for e in evaluation):
        result.update(model.exact_match(evaluation, EXACT_MATCH_TOKENS))
    return result


def _train_split(config, out_dir, *, progress: bool, transport) -> dict:
    from splitpriv.roles.causal_customer import CausalCustomer
    from splitpriv.run import make_transport, save_run

    train, evaluation = load_lm_data(config)
    transport = transport or make_transport(config, out_dir=out_dir, progress=progress)
    customer = CausalCustomer.open(transport, config.session_config(2, len(train)), config.privacy, config.train)
    train, evaluation = _encoded((train, evaluation), customer.tokenizer, config)
    result = {"n_train": len(train), "n_eval": len(evaluation)}
    if config.eval_before:
        result["before"] = score(customer, evaluation)
    sent = transport.bytes_sent
    history = customer.fit(train, progress=progress)
    result.update(history, bytes_sent_per_step=(transport.bytes_sent - sent) / max(len(history["losses"]), 1))
    result.update(score(customer, evaluation))
    result["disclosure"] = transport.session.disclosure
    if out_dir is not None:
        result.update(save_run(customer, transport, config, out_dir))
    return result


def _train_centralized(config, *, progress: bool) -> dict:
    from splitpriv.centralized_lm import CentralizedLM

    train, evaluation = load_lm_data(config)
    trainer = CentralizedLM(config.session_config(2, len(train)), config.train, config.model)
    train, evaluation = _encoded((train, evaluation), trainer.tokenizer, config)
    result = {"n_train": len(train), "n_eval": len(evaluation)}
    if config.eval_before:
        result["before"] = score(trainer, evaluation)
    result.update(trainer.fit(train, progress=progress))
    return {**result, **score(trainer, evaluation)}


def run_causal(config, out_dir=None, *, progress: bool = True, transport=None) -> dict:
    """Train and score as configured (``config`` a validated :class:`splitpriv.run.RunConfig` with task causal-lm)."""
    from splitpriv.run import METRICS_FILE, RUN_FILE

    if config.robust_top is not None or config.denoise != "none" or config.head != "vendor":
        raise ValueError("task causal-lm takes no robust_top, denoise or head option (the customer holds the tail)")
    started = time.perf_counter()
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / RUN_FILE).write_text(json.dumps(config.to_dict(), indent=2))
    if config.centralized:
        result = _train_centralized(config, progress=progress)
    else:
        result = _train_split(config, out_dir, progress=progress, transport=transport)
    losses = result.pop("losses")
    metrics = {"task": config.task, **result, **run_record(config, losses)}
    if config.baseline and not config.centralized:
        from dataclasses import replace

        base = _train_centralized(replace(config, centralized=True), progress=progress)
        metrics["baseline"] = {k: v for k, v in base.items() if k != "losses"}
    metrics["wall_time_s"] = time.perf_counter() - started
    if out_dir is not None:
        (Path(out_dir) / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str))
    return metrics
