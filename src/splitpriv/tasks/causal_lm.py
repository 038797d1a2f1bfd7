"""Task ``causal-lm``: next-token prediction with a three-part split; the customer keeps bottom and tail.

The loss −(1/N) Σ log p(x_t | x_<t) runs over the customer's own response tokens, at home: the vendor sees
privatized hidden states going up and ∂L/∂(middle's output) coming back, never token ids, targets or V-sized logits.
Scored by held-out perplexity and, for instruction data, exact match of the greedy answer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from splitpriv.batching import eval_batches
from splitpriv.models import CAUSAL_LM
from splitpriv.parts import TAIL_WEIGHTS, PartCache, load_tail, save_tail
from splitpriv.tasks.base import TASKS, Batches, Task

EXACT_MATCH_TOKENS = 8


@TASKS.register(CAUSAL_LM)
class CausalLM(Task):
    """Data: ``sst2`` / ``financial_phrasebank`` as "sentence → label word" in the chat template (scored by exact
    match of the greedy answer), ``wikitext2`` (perplexity only), or a ``.jsonl`` file with ``prompt``/``response``
    (:mod:`splitpriv.data.instructions`)."""

    value = model_task = CAUSAL_LM
    end_file = TAIL_WEIGHTS
    predicts_labels = False
    default_max_length = 256

    def load_data(self, config):
        from splitpriv.data.instructions import load_lm_records

        train = load_lm_records(config.dataset, "train", limit=config.train_limit, seed=config.train.seed)
        evaluation = load_lm_records(config.dataset, config.eval_split, limit=config.eval_limit,
                                     seed=config.train.seed)
        if not train or not evaluation:
            raise ValueError(f"dataset {config.dataset!r} gave no training or evaluation examples")
        return train, evaluation

    def check_session(self, session) -> None:
        if session.head != "vendor":
            raise ValueError("a causal-lm session returns hidden states to the customer's tail: it has no "
                             f"classification head to hold (head={session.head!r})")
        if session.denoise != "none":
            raise ValueError(f"denoise={session.denoise!r} is for sequence classification; a causal-lm session "
                             "takes none")

    def check_config(self, config) -> None:
        if config.robust_top is not None or config.denoise != "none" or config.head != "vendor":
            raise ValueError("task causal-lm takes no robust_top, denoise or head option (the customer holds the "
                             "tail)")
        if config.train.privatizer_warm_start:
            raise ValueError("privatizer_warm_start trains the privatizer at home on the customer's class labels: "
                             "task causal-lm has none (its privatizer trains with a trained bottom, --bottom trained)")

    def encode(self, records, tokenizer, config):
        from splitpriv.data.instructions import encode_lm

        return encode_lm(records, tokenizer, config.train.max_length)

    def batches(self, trainer, examples, labels=None) -> Batches:
        pad = trainer.tokenizer.pad_token_id
        # the rows' indices key the customer's noise-once cache: without them each epoch drew fresh noise, and
        # the vendor got independent noisy looks at every example (averaging attacks)
        return Batches(len(examples), lambda b, index: (*collate_lm(examples, index, pad), index))

    def loss(self, logits, ids, mask, targets):
        return next_token_loss(logits, ids, targets * mask)

    def received(self, outputs):
        return outputs.float()

    def customer_end(self, directory: Path):
        if not (Path(directory) / TAIL_WEIGHTS).exists():
            raise ValueError("the vendor's package has no tail: is the session a causal-lm one?")
        return load_tail(directory).requires_grad_(False)

    def save_end(self, end, directory: Path) -> None:
        save_tail(end, Path(directory) / TAIL_WEIGHTS)

    def centralized_end(self, parts, train_bottom: bool):
        """The customer's tail is its own frozen copy: a trained bottom's embeddings do not move a tied LM head."""
        if train_bottom:
            for module in parts.tail.modules():
                for name, p in list(module.named_parameters(recurse=False)):
                    setattr(module, name, torch.nn.Parameter(p.detach().clone(), requires_grad=False))
        return parts.tail

    def score(self, model, evaluation, *, progress: bool = False) -> dict:
        """Held-out perplexity, and exact match where the examples are instructions."""
        result = perplexity(model.logits_of, evaluation, model.tokenizer.pad_token_id,
                            model.train_config.eval_batch_size)
        if any(e.prompt for e in evaluation):
            result.update(exact_match(model.generate, model.tokenizer, evaluation, EXACT_MATCH_TOKENS))
        return result

    def utility(self, scores: dict) -> dict:
        """Exact match of the greedy answer stands for accuracy (the frontier compares it with the centralized
        reference's, example by example); no classes, so no macro-F1."""
        if "exact_match" not in scores:
            raise ValueError("this causal-lm run scored perplexity only: the experiment grid needs instruction data "
                             "(exact match), e.g. sst2 or financial_phrasebank")
        return {"accuracy": scores["exact_match"], "macro_f1": None, "correct": scores["correct"],
                "perplexity": scores["perplexity"]}

    def record(self, config, train, evaluation, result: dict) -> dict:
        return {"task": config.task, "n_train": len(train), "n_eval": len(evaluation), **result}

    def summary(self, metrics: dict, out) -> str:
        cfg = metrics["config"]
        setting = f"{metrics['mode']}, k={cfg['bottom_layers']}, j={cfg['tail_layers']}, {cfg['method']}"
        if metrics["mode"] == "split":
            privacy = cfg["privacy"]
            for what, entry in (("noise", privacy["mechanism"]), ("privatizer", privacy.get("privatizer"))):
                if entry and entry["name"] != "none":
                    setting += f", {what} " + " ".join([entry["name"], *(f"{k}={v}" for k, v in entry.items()
                                                                          if k != "name")])
        lines = [f"splitpriv causal-lm: {metrics['dataset']} ({metrics['n_train']} train / {metrics['n_eval']} "
                 f"eval), {setting}"]
        for name, scores in (("before", metrics.get("before")), ("after", metrics),
                             ("centralized", metrics.get("baseline"))):
            if scores:
                em = f", exact match {scores['exact_match']:.3f}" if "exact_match" in scores else ""
                lines.append(f"  {name}: perplexity {scores['perplexity']:.3f}{em}")
        lines.append(f"  train samples/s {metrics['train_samples_per_s']:.2f}; wall time {metrics['wall_time_s']:.1f} s"
                     + (f"; run folder {out}" if out else ""))
        return "\n".join(lines)


def collate_lm(examples, index: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``loss_mask`` (1 where a token is a prediction target)
    for the :class:`~splitpriv.data.instructions.LMExample` rows at ``index``."""
    rows = [examples[i] for i in index.tolist()]
    length = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    targets = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
        mask[i, : len(r.ids)] = 1
        targets[i, : len(r.ids)] = torch.tensor(r.targets, dtype=torch.long)
    return ids, mask, targets


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    """−(1/N) Σ log p(x_t | x_<t) over the N positions t ≥ 1 with ``loss_mask`` = 1 (``reduction="sum"``: the sum)."""
    weights = loss_mask[:, 1:].to(logits.dtype)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    total = (nll * weights.flatten()).sum()
    return total if reduction == "sum" else total / weights.sum().clamp_min(1)


@torch.no_grad()
def perplexity(logits_of, examples, pad_id: int, batch_size: int = 128) -> dict:
    """exp of the mean next-token loss over the examples' target tokens; ``logits_of(ids, mask)`` -> [B, T, V]."""
    total = count = 0.0
    for index in eval_batches(len(examples), batch_size):
        ids, mask, targets = collate_lm(examples, index, pad_id)
        total += float(next_token_loss(logits_of(ids, mask), ids, targets * mask, reduction="sum"))
        count += float((targets * mask)[:, 1:].sum())
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": float(torch.tensor(loss).exp())}


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> int:
    """Greedy at ``temperature`` 0; else a draw from softmax(logits / T) restricted to the smallest set of tokens
    whose probability reaches ``top_p`` (nucleus sampling)."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1:
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(-1) - ordered < top_p
        probs = torch.zeros_like(probs).scatter(-1, order[keep], ordered[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def local_generate(parts, prompt_ids: list[int], max_new_tokens: int, stop_ids=(), **sampling) -> list[int]:
    """Decoding through all three parts in one process with their caches (the reference split generation
    reproduces; no wire, no noise)."""
    caches = [PartCache() for _ in range(3)]
    ids, out = torch.tensor([prompt_ids]), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            hidden = parts.bottom(input_ids=ids, cache=caches[0])
            logits = parts.tail(parts.top(hidden, cache=caches[1]), cache=caches[2])[0, -1]
            token = sample_next(logits, **sampling)
            out.append(token)
            if token in stop_ids:
                break
            ids = torch.tensor([[token]])
    return out


def exact_match(generate, tokenizer, examples, max_new_tokens: int = 8) -> dict:
    """Share of examples whose greedy answer (special tokens dropped, stripped, case-folded) equals the response;
    ``correct``: "1"/"0" per example (the paired interval's input)."""
    hits = [tokenizer.decode(generate(e.prompt_ids, max_new_tokens), skip_special_tokens=True).strip().lower()
            == e.response.strip().lower() for e in examples]
    return {"exact_match": sum(hits) / max(len(hits), 1), "n_scored": len(hits),
            "correct": "".join("1" if h else "0" for h in hits)}
