r"""Response recovery: the vendor reads the customer's response tokens from the gradients of causal-LM training.

Threat model (:mod:`splitpriv.attacks`): an honest-but-curious, white-box vendor. In a causal-LM session the
customer holds bottom and tail (``j`` blocks + final norm + LM head); the vendor computes the middle's output
:math:`h` (``[B, T, d]``) and receives :math:`g = \partial L/\partial h`. It knows the tail's weights (it shipped
them; the customer's tail is frozen, so they never change), the tokenizer and the attention mask. It does not know
the tokens, which positions carry the loss (the response), or how many. The transcript is a real split training run
(:meth:`~splitpriv.attacks.evaluation.Evaluation.lm_training_run`), read by :mod:`splitpriv.attacks.wire`.

Maths. With the tail :math:`f` fixed, :math:`z = f(h)`, :math:`p_t = \mathrm{softmax}(z_t)` and the batch-mean loss
:math:`L = c\sum_t m_t\,\mathrm{CE}(z_t, y_t)`, :math:`c = 1/N` (N loss tokens in the batch, :math:`m_t` the loss
mask), :math:`g = c\sum_t m_t J_t^\top (p_t - e_{y_t})`: linear in the one-hot targets. The vendor computes
:math:`a = \partial_h \sum_t m_t\langle \mathrm{sg}(p_t), z_t\rangle` itself, so :math:`a - g` is
:math:`c\,\partial_h \sum_t m_t z_{t,y_t}`. Done here in two steps, exact on clean gradients:

1. *Undo the tail's blocks.* With :math:`x = \mathrm{stream}(h)` (after the ``j`` blocks, before the final norm)
   and :math:`K = \partial x/\partial h` (causal: block-triangular over positions), :math:`g = K^\top\delta` where
   :math:`\delta_t = c\,m_t\,\partial_x z_t^\top (p_t - e_{y_t})` is the cotangent at :math:`x_t`, separate per
   position. δ is found by least squares with CGLS: one vector-Jacobian product and one Jacobian-vector product per
   iteration, no Jacobian built. (GMRES, which needs only the first, stagnates on SmolLM2's last blocks: K has
   eigenvalues on both sides of 0 and condition ~10⁵, measured.) At j = 0, :math:`K = I` and δ = g.
2. *Decode every position.* For an RMS or Layer norm the final norm's transposed Jacobian is
   :math:`u \mapsto s_t^{-1} P_t(\gamma\odot u)`, with :math:`s_t` the position's RMS (standard deviation) and
   :math:`P_t` the projector off its 1 (2) null directions. So :math:`\tau_t = s_t\delta_t =
   \alpha_t P_t(\gamma\odot(\mu_t - w_{y_t}))`, :math:`\mu_t = W^\top p_t`, :math:`w_v` the head's rows,
   :math:`\alpha_t = c\,m_t`. The guess is the token of least residual
   :math:`\min_{\alpha\ge 0}\lVert\tau_t - \alpha P_t(\gamma\odot(\mu_t - w_v))\rVert` over all V tokens, four matrix
   products per position (no V×d×d table). On clean gradients the true token's residual is 0.

Mask and scale: :math:`\alpha_t` is c on loss positions and 0 elsewhere, so the vendor also learns the mask, N and
the batch-mean scale, assuming neither (:func:`infer_loss_positions`). Decoders compared
(benchmarks/gradient_attack.py, SmolLM2, j = 2): the inversion and decoding g as if j = 0 (``solver_steps = 0``)
both read every response token; the inversion also finds more of the loss mask (recall 0.75 against 0.50).
Gradient matching of soft targets (DLG/iDLG) optimises this same linear system through V-wide logits at every
position, far dearer, towards the same answer, so it is not implemented.

Defence (:mod:`splitpriv.privacy.gradient_noise`, the customer's ``grad_clip`` / ``grad_sigma``, options here for the
attacked run): clipping leaves the decoding intact (the scale per position is free); noise enters δ through the
inversion. The attack uses no prior over tokens, so under heavy noise it falls below the blind floor.

Not covered here: the vectors sent *up*, in training and in private generation (one privatized bottom state per new
token), are read by the inversion attacks (``learned``, ``linear``, ``adaptive``; ``nn``/``map`` at k = 0).

Scored on the run's response tokens (the evaluator's truth): ``token_recovery`` against ``floor``, the best constant
token per position counted back from each row's end, chosen with the truth (an upper bound of any guess from the
mask alone); ``content_*`` the same on non-special tokens.
"""

from __future__ import annotations

import copy
import sys
from collections import Counter
from dataclasses import dataclass, field

import torch

from splitpriv.attacks.base import AttackResult, special_ids
from splitpriv.attacks.registry import ATTACKS, Attack
from splitpriv.attacks.wire import read_transcript

GENERATION_PATH = ("the upward vectors (training and private generation) are the bottom's privatized states: read by "
                   "the inversion attacks learned, linear, adaptive (nn, map at k = 0)")


# -- step 1: invert the tail's blocks ---------------------------------------------------------------------------------


def cgls(op, adjoint, b: torch.Tensor, steps: int) -> tuple[torch.Tensor, float]:
    """``x`` ≈ the least-squares solution of ``op(x) = b`` after ``steps`` iterations of conjugate gradients on the
    normal equations (CGLS: ``op`` and its ``adjoint`` once each per iteration), and the relative residual."""
    x, r = torch.zeros_like(b), b.clone()
    s = adjoint(r)
    p, gamma = s.clone(), float((s * s).sum())
    for _ in range(steps):
        if gamma == 0.0:
            break
        q = op(p)
        step = gamma / max(float((q * q).sum()), 1e-300)
        x, r = x + step * p, r - step * q
        s = adjoint(r)
        gamma, previous = float((s * s).sum()), gamma
        p = s + (gamma / previous) * p
    return x, float(r.norm() / b.norm().clamp_min(1e-300))


def invert_blocks(tail, hidden: torch.Tensor, mask: torch.Tensor, grad: torch.Tensor, steps: int):
    """``(x, δ, relative residual)``: the stream after the tail's blocks and the cotangent at it that the gradient
    ``grad`` at the tail's input came from (least squares of Kᵀδ = g on real tokens; δ = g at j = 0 or ``steps =
    0``). Kᵀv is a vector-Jacobian product; Ku differentiates that product with respect to ``v`` (double backward:
    the tail needs eager attention)."""
    real = mask[..., None].to(hidden.dtype)
    if tail.n_layers == 0 or steps == 0:
        with torch.no_grad():
            return tail.stream(hidden, mask), grad * real, 0.0
    h = hidden.detach().requires_grad_(True)
    with torch.enable_grad():
        x = tail.stream(h, mask)
        w = torch.zeros_like(x, requires_grad=True)
        (vjp,) = torch.autograd.grad(x, h, w, create_graph=True)

        def op(v):  # K^T v
            return torch.autograd.grad(x, h, v * real, retain_graph=True)[0] * real

        def adjoint(u):  # K u
            return torch.autograd.grad(vjp, w, u * real, retain_graph=True)[0] * real

        delta, residual = cgls(op, adjoint, grad * real, steps)
    return x.detach(), delta.detach(), residual


# -- step 2: decode every position ------------------------------------------------------------------------------------


def norm_frame(norm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(s [n], null directions N [n, d, q], γ [d])`` of the final norm at ``x`` ``[n, d]``, such that its
    vector-Jacobian product is ``u ↦ (γ⊙u − N Nᵀ(γ⊙u)) / s``: an RMS norm's (q = 1) or a LayerNorm's (q = 2),
    whichever autograd confirms on a random probe."""
    d = x.shape[-1]
    if norm is None:
        return torch.ones(len(x), dtype=x.dtype), x.new_zeros(len(x), d, 0), torch.ones(d, dtype=x.dtype)
    gamma = norm.weight.detach().to(x.dtype)
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 0.0)))
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        (vjp,) = torch.autograd.grad(norm(xr), xr, probe)
    for centred in (False, True):
        c = x - x.mean(-1, keepdim=True) if centred else x
        s = (c.pow(2).mean(-1) + eps).sqrt()
        normals = [c / c.norm(dim=-1, keepdim=True).clamp_min(1e-30)]
        if centred:
            normals.append(torch.full_like(x, d ** -0.5))
        nulls = torch.stack(normals, -1)
        expect = (gamma * probe - _along(nulls, gamma * probe)) / s[:, None]
        if float((vjp - expect).norm() / vjp.norm().clamp_min(1e-30)) < 1e-3:
            return s, nulls, gamma
    raise ValueError(f"unsupported final norm {type(norm).__name__}: its Jacobian is not an RMS or Layer norm's")


def _along(nulls: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """N Nᵀ u per position (``nulls`` [n, d, q], ``u`` [n, d])."""
    return torch.einsum("ndq,nq->nd", nulls, torch.einsum("ndq,nd->nq", nulls, u))


@torch.no_grad()
def decode_positions(tail, x: torch.Tensor, delta: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """For positions ``x``/``δ`` ``[n, d]`` (stream and cotangent): the token of least residual (module docstring)
    and its fitted scale ``α ≥ 0`` (``c·m_t``: 1/N on loss positions, 0 elsewhere)."""
    head = tail.head.weight.to(x.dtype)  # [V, d]
    preds, alphas = [], []
    for start in range(0, len(x), chunk):
        xc, dc = x[start:start + chunk], delta[start:start + chunk]
        s, nulls, gamma = norm_frame(tail.final_norm, xc)
        wg2 = (head * gamma).pow(2).sum(1)  # ‖γ⊙w_v‖², [V]
        mu = torch.softmax(tail.head(tail.normalize(xc)).to(x.dtype), -1) @ head  # μ_t = Wᵀ p_t
        tau = s[:, None] * dc
        tau = tau - _along(nulls, tau)  # only noise lies off P's range
        gn = gamma[None, :, None] * nulls  # [n, d, q]
        probes = torch.cat([(gamma * tau)[..., None], (gamma ** 2 * mu)[..., None], gn], -1)  # [n, d, 2 + q]
        proj = torch.einsum("vd,ndk->nvk", head, probes)  # [n, V, 2 + q]
        inner = ((gamma * tau) * mu).sum(-1, keepdim=True) - proj[..., 0]  # τ·P(γ⊙(μ − w_v))
        a = torch.einsum("ndq,nd->nq", gn, mu)  # N_kᵀ(γ⊙μ)
        norm2 = ((gamma * mu).pow(2).sum(-1, keepdim=True) - 2 * proj[..., 1] + wg2
                 - (a[:, None, :] - proj[..., 2:]).pow(2).sum(-1))  # ‖P(γ⊙(μ − w_v))‖²
        alpha = (inner / norm2.clamp_min(1e-30)).clamp_min(0)
        best = (alpha * inner).argmax(-1)  # largest explained energy = least residual
        preds.append(best)
        alphas.append(alpha.gather(1, best[:, None])[:, 0])
    return torch.cat(preds), torch.cat(alphas)


def infer_loss_positions(alpha: torch.Tensor) -> tuple[int, float]:
    """``(N, c)`` of one step from the fitted scales ``alpha`` of its real positions: the n and level c for which
    "n values c, the rest 0" fits best (least squares: n = argmax (Σ_{top n} α)² / n, c their mean). Clean and
    exactly inverted, c = 1/N: the vendor learns the batch-mean scale and the mask without assuming either."""
    if alpha.numel() == 0:
        return 0, 0.0
    top = alpha.sort(descending=True).values.cumsum(0)
    n = int((top.pow(2) / torch.arange(1, len(top) + 1, dtype=top.dtype)).argmax()) + 1
    return n, float(top[n - 1]) / n


def attack_step(tail, hidden, mask, grad, steps: int) -> dict:
    """One training step as the vendor saw it: next-token guesses ``[B, T]``, fitted scales, the inferred loss
    positions (``detected`` ``[B, T]``), N and scale c, and the solve's relative residual."""
    hidden, grad = hidden.to(torch.float64), grad.to(torch.float64)
    x, delta, residual = invert_blocks(tail, hidden, mask, grad, steps)
    real = mask.bool()
    pred = torch.zeros(mask.shape, dtype=torch.long)
    alpha = torch.zeros(mask.shape, dtype=torch.float64)
    pred[real], alpha[real] = decode_positions(tail, x[real], delta[real])
    n, scale = infer_loss_positions(alpha[real])
    detected = torch.zeros_like(real)
    if n:
        detected[real] = alpha[real] >= alpha[real].sort(descending=True).values[n - 1]
    return {"pred": pred, "alpha": alpha, "detected": detected, "n_loss": n, "scale": scale, "residual": residual}


# -- scoring, and the registry entry ----------------------------------------------------------------------------------


def positional_floor(targets, keep=None) -> float:
    """The best constant token per position counted back from each row's last real token, chosen with the truth:
    the share of response tokens (those ``keep(token)`` selects) it gets right. ``targets``: each step's
    ``(ids, attention mask, loss mask)``."""
    counts: dict[int, Counter] = {}
    for ids, mask, lmask in targets:
        ends = mask.sum(1) - 1
        for row, t in lmask[:, 1:].nonzero().tolist():
            token = int(ids[row, t + 1])
            if keep is None or keep(token):
                counts.setdefault(int(ends[row]) - t - 1, Counter())[token] += 1
    total = sum(sum(c.values()) for c in counts.values())
    return sum(c.most_common(1)[0][1] for c in counts.values()) / total if total else float("nan")


def score(steps: list[dict], targets: list[tuple[torch.Tensor, torch.Tensor]], tokenizer) -> dict:
    """Recovery of the response tokens (``targets``: each step's ``(ids, attention mask, loss mask)``) from the
    per-step guesses, the floors, and how well the vendor inferred the loss positions, N and the scale 1/N."""
    special = set(special_ids(tokenizer).tolist())
    hit = n = content_hit = content_n = tp = fp = fn = exact_n = scale_error = 0
    for out, (ids, _, lmask) in zip(steps, targets):
        truth = torch.zeros_like(lmask, dtype=torch.bool)
        truth[:, :-1] = lmask[:, 1:].bool()  # the logit at t predicts token t + 1
        right = out["pred"][:, :-1] == ids[:, 1:]
        content = truth[:, :-1] & ~torch.isin(ids[:, 1:], torch.tensor(sorted(special)))
        hit += int((right & truth[:, :-1]).sum())
        n += int(truth.sum())
        content_hit += int((right & content).sum())
        content_n += int(content.sum())
        tp += int((out["detected"] & truth).sum())
        fp += int((out["detected"] & ~truth).sum())
        fn += int((~out["detected"] & truth).sum())
        exact_n += int(out["n_loss"] == int(truth.sum()))
        scale_error += abs(out["scale"] * int(truth.sum()) - 1.0) / len(steps)
    floor = positional_floor(targets)
    content_floor = positional_floor(targets, keep=lambda token: token not in special)
    recovery = hit / n if n else float("nan")
    return {"token_recovery": recovery, "floor": floor, "advantage_over_floor": recovery - floor,
            "content_recovery": content_hit / content_n if content_n else float("nan"),
            "content_floor": content_floor, "n_response_tokens": n, "n_content_tokens": content_n,
            "mask_precision": tp / max(tp + fp, 1), "mask_recall": tp / max(tp + fn, 1),
            "loss_tokens_inferred_exactly": exact_n / max(len(steps), 1), "scale_error": scale_error,
            "solve_residual": max((o["residual"] for o in steps), default=0.0), "n_steps": len(steps)}


def causal_lm(evaluation):
    """The evaluation's model as the vendor's causal LM ``(model, tokenizer)``."""
    from splitpriv.models import CAUSAL_LM, family_of, load_model

    model = evaluation.model
    if isinstance(model, tuple) and family_of(model[0]).task_of(model[0]) == CAUSAL_LM:
        return model
    if model is None:
        raise ValueError("the response attack needs a causal LM (e.g. --model smollm2-135m-instruct)")
    return load_model(evaluation.model_source, task=CAUSAL_LM)


def shipped_tail(model, n_bottom_layers: int, n_tail_layers: int):
    """The vendor's float64 copy of the tail it shipped with ``model`` (a causal LM; left untouched)."""
    from splitpriv.parts import split_model

    tail = copy.deepcopy(split_model(model, n_bottom_layers, n_tail_layers).tail).double().eval()
    tail.model_config._attn_implementation = "eager"  # the copy's own config: CGLS differentiates a backward twice
    return tail.requires_grad_(False)


def attack_transcript(run, tail, tokenizer, solver_steps: int = 30) -> dict:
    """Every observed step of a causal-LM training ``run`` (:class:`~splitpriv.simulation.TrainingRun`) attacked
    through the shipped ``tail``, scored against the run's truth (:func:`score`)."""
    steps = [attack_step(tail, s.outputs, s.attention_mask, s.grad_outputs, solver_steps)
             for s in read_transcript(run.messages).observed()]
    return score(steps, run.targets_per_step, tokenizer)


@dataclass(frozen=True)
class ResponseOptions:
    tail_layers: int = field(default=0, metadata={
        "help": "j, blocks in the customer's tail of the attacked causal-LM run (besides final norm and LM head)"})
    method: str = field(default="lora", metadata={"help": "the vendor's tuning method in the attacked run"})
    batch_size: int = field(default=8, metadata={"help": "the attacked run's batch size"})
    epochs: int = field(default=1, metadata={"help": "the attacked run's epochs"})
    grad_clip: float | None = field(default=None, metadata={
        "help": "the customer's defence in the attacked run: each example's returned gradient clipped to this L2 "
                "norm (None: no defence)"})
    grad_sigma: float = field(default=0.0, metadata={
        "help": "the customer's defence: Gaussian noise of standard deviation grad_sigma * grad_clip per coordinate"})
    solver_steps: int = field(default=30, metadata={
        "help": "CGLS iterations inverting the tail's j blocks (0: decode the raw gradient as if j were 0)"})


@ATTACKS.register("response")
class ResponseEntry(Attack):
    description = ("the customer's response tokens from the gradients of a short causal-LM split training run "
                   "(through the tail it shipped)")
    kind = "response"
    Options = ResponseOptions

    @staticmethod
    def applies(setting) -> str | None:
        task = getattr(setting, "task", None)
        if task not in (None, "causal-lm"):
            return f"it reads the gradients of a causal-lm run's tail; this setting's task is {task}"
        return None

    @staticmethod
    def run(evaluation, options):
        from splitpriv.data.instructions import encode_lm, load_lm_records

        model, tokenizer = causal_lm(evaluation)
        tail = shipped_tail(model, evaluation.n_bottom_layers, options.tail_layers)
        records = load_lm_records(evaluation.dataset, "train", limit=evaluation.limit, seed=evaluation.seed)
        examples = encode_lm(records, tokenizer, evaluation.max_length)
        if evaluation.progress:
            print(f"[response] {len(examples)} examples, k={evaluation.n_bottom_layers}, j={options.tail_layers}, "
                  f"grad_clip={options.grad_clip}, grad_sigma={options.grad_sigma}", file=sys.stderr, flush=True)
        run = evaluation.lm_training_run(examples, n_tail_layers=options.tail_layers, method=options.method,
                                         batch_size=options.batch_size, epochs=options.epochs,
                                         grad_clip=options.grad_clip, grad_sigma=options.grad_sigma)
        metrics = attack_transcript(run, tail, tokenizer, options.solver_steps)
        metrics.update(dataset=evaluation.dataset, n_examples=len(examples), n_bottom_layers=evaluation.n_bottom_layers,
                       tail_layers=options.tail_layers, grad_clip=options.grad_clip, grad_sigma=options.grad_sigma,
                       solver_steps=options.solver_steps, mechanism=evaluation.mechanism.to_config(),
                       seed=evaluation.seed, generation_path=GENERATION_PATH)
        return AttackResult("response", metrics["token_recovery"], metrics)


__all__ = ["ResponseOptions", "attack_step", "attack_transcript", "causal_lm", "decode_positions", "cgls", "infer_loss_positions", "invert_blocks",
           "norm_frame", "positional_floor", "score", "shipped_tail"]
