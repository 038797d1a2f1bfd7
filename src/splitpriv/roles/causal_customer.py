"""The customer of a causal-LM session: bottom and tail at home, the vendor's middle over the wire.

A training step: ``h = bottom(x)`` → privatize → send; the middle's output ``u`` comes back (d floats per token),
``logits = tail(u)`` and the next-token loss over the customer's own response tokens are computed at home; ∂L/∂u
goes up (d floats per token) and, with a trained bottom, ∂L/∂z comes down. Generation: the prompt's privatized
vectors, then one privatized vector per new token, go up; the vendor extends its per-session key/value cache and
returns one d-vector per token; the customer's tail picks the token.

Threat model: the vendor sees privatized hidden states, the middle's gradient and sequence lengths; never token
ids, the targets or V-sized logits (∂L/∂logits would be softmax − onehot(next token), the token itself). ∂L/∂u is
a d-dimensional function of the targets through the tail, not noised here: label-privacy of the response tokens
rests on the tail's depth ``j``, as the label attack measures for customer-held heads.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from splitpriv.batching import num_steps, training_order
from splitpriv.causal import PartCache, collate_lm, exact_match, load_tail, next_token_loss, perplexity, sample_next
from splitpriv.causal import save_tail
from splitpriv.protocol import BackwardRequest, DecodeRequest, ForwardRequest, PredictRequest
from splitpriv.roles.customer import Customer, _progress, _step
from splitpriv.split import BOTTOM_CONFIG, TAIL_WEIGHTS


class CausalCustomer(Customer):
    """:class:`Customer` with the tail of a causal LM; ``fit``/``perplexity``/``generate`` work on
    :class:`~splitpriv.data.instructions.LMExample` lists and token ids."""

    def _load_files(self, files: dict[str, bytes]) -> None:
        super()._load_files(files)
        if TAIL_WEIGHTS not in files:
            raise ValueError("the vendor's package has no tail: is the session a causal-lm one?")
        with tempfile.TemporaryDirectory() as tmp:
            for name in (BOTTOM_CONFIG, TAIL_WEIGHTS):
                (Path(tmp) / name).write_bytes(files[name])
            self.tail = load_tail(tmp).requires_grad_(False)

    def _middle(self, step: int, ids, mask, *, train: bool):
        z, hidden = self._representations(step, None, ids, mask, train=train)
        sid = self.transport.session.session_id
        wire = self._to_wire(z)
        if train:
            out = self.transport.forward(ForwardRequest(session_id=sid, step=step, hidden=wire, attention_mask=mask))
        else:
            out = self.transport.predict(PredictRequest(session_id=sid, hidden=wire, attention_mask=mask))
        return out.outputs.float(), hidden

    def train_step_lm(self, step: int, ids, mask, targets) -> float:
        received, hidden = self._middle(step, ids, mask, train=True)
        received.requires_grad_(True)
        loss = next_token_loss(self.tail(received, mask), ids, targets * mask)
        loss.backward()
        sid = self.transport.session.session_id
        result = self.transport.backward(BackwardRequest(session_id=sid, step=step, grad_outputs=received.grad))
        if hidden is not None:
            if result.grad_hidden is None:
                raise RuntimeError("the vendor returned no gradient for the bottom; was the session opened frozen?")
            hidden.backward(result.grad_hidden.to(hidden.dtype) * mask.unsqueeze(-1).to(hidden.dtype))
            _step(self.bottom_optimizer, self.bottom_scheduler)
        return float(loss.detach())

    def fit(self, examples, labels=None, *, progress: bool = True, on_step=None) -> dict:
        cfg = self.train_config
        total = num_steps(len(examples), cfg.batch_size, cfg.epochs)
        if total > self.session.total_steps:
            raise ValueError(f"{total} steps planned but the session was opened for {self.session.total_steps}")
        losses, start, bar = [], time.perf_counter(), _progress(total, "train", progress)
        for step, _, index in training_order(len(examples), cfg.batch_size, cfg.epochs, cfg.seed):
            losses.append(self.train_step_lm(step, *collate_lm(examples, index, self.tokenizer.pad_token_id)))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if on_step:
                on_step(step, losses[-1])
        bar.close()
        seconds = time.perf_counter() - start
        return {"losses": losses, "train_seconds": seconds, "train_samples_per_s": len(examples) * cfg.epochs / seconds}

    def perplexity(self, examples) -> dict:
        """exp(mean next-token loss) over the examples' target tokens, through the vendor (fresh noise)."""
        return perplexity(lambda ids, mask: self.tail(self._middle(0, ids, mask, train=False)[0], mask), examples,
                          self.tokenizer.pad_token_id, self.train_config.eval_batch_size)

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], max_new_tokens: int = 32, *, temperature: float = 0.0,
                 top_p: float = 1.0, generator: torch.Generator | None = None, stop_ids=None) -> list[int]:
        """New token ids after ``prompt_ids``: one privatized d-vector up and one d-vector down per token."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        stop = set(stop_ids if stop_ids is not None else [self.tokenizer.eos_token_id])
        sid = self.transport.session.session_id
        bottom_cache, tail_cache = PartCache(), PartCache()
        self.bottom.eval()
        ids, out = torch.tensor([prompt_ids]), []
        for _ in range(max_new_tokens):
            ones = torch.ones_like(ids)
            z = self.privatize(self.bottom(input_ids=ids, cache=bottom_cache), ids, ones)
            reply = self.transport.decode(DecodeRequest(session_id=sid, hidden=self._to_wire(z), attention_mask=ones,
                                                        reset=not out))
            logits = self.tail(reply.outputs.float(), cache=tail_cache)[0, -1]
            token = sample_next(logits, temperature, top_p, generator)
            out.append(token)
            if token in stop:
                break
            ids = torch.tensor([[token]])
        return out

    def predict_logits(self, texts, *, progress: bool = False):
        raise ValueError("a causal-lm session generates text: use `splitpriv generate` (CausalCustomer.generate)")

    def exact_match(self, examples, max_new_tokens: int = 8) -> dict:
        return exact_match(self.generate, self.tokenizer, examples, max_new_tokens)

    def save(self, directory: str | Path) -> Path:
        directory = super().save(directory)
        save_tail(self.tail, Path(directory) / TAIL_WEIGHTS)
        return directory


__all__ = ["CausalCustomer"]
