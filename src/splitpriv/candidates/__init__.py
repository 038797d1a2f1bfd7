r"""The candidate space of a split at k = 0: every token's embedding-layer output at every position, and the
nearest-candidate and MAP decoders over it. Shared by the vendor's denoiser (:mod:`splitpriv.roles.vendor.denoise`) and
the inversion attacks (:mod:`splitpriv.attacks.nearest` and the attacks built on it).

At k = 0 the customer sends :math:`z = e_{t,p} + n` where :math:`e_{t,p}` is the embedding layer's output for
token :math:`t` at position :math:`p`. The vendor knows the embedding weights, so it can compute every candidate
itself. With a post-sum LayerNorm (BERT, RoBERTa, DistilBERT)

.. math::
    e_{t,p} = \gamma \odot \frac{\tilde w_t + \tilde q_p}{\sigma_{t,p}} + \beta, \qquad
    \sigma_{t,p}^2 = \tfrac1d \lVert \tilde w_t + \tilde q_p \rVert^2 + \epsilon,

with :math:`\tilde w_t` the centred word embedding and :math:`\tilde q_p` the centred position (+ token type 0)
embedding. Expanding :math:`\lVert z - e_{t,p}\rVert^2` gives

.. math::
    \lVert z-\beta\rVert^2 - \frac{2}{\sigma_{t,p}}\big(a\cdot\tilde w_t + a\cdot\tilde q_p\big)
    + \frac{\lVert \gamma\odot(\tilde w_t+\tilde q_p)\rVert^2}{\sigma_{t,p}^2}, \qquad a = \gamma\odot(z-\beta),

so one matrix product ``a @ W̃ᵀ`` shared by all positions plus two ``[positions, V]`` tables give the exact
squared distance of every received vector to all ``V`` candidates at its position: no ``[T, V, d]`` table
(3 GB at T = 64) is ever built. :class:`CandidateSpace` holds this (and the additive form of decoder families, which have no LayerNorm after the
embedding sum) and verifies it against the bottom's own
``embed`` on a probe sentence, so a family whose embeddings do not have this form fails loudly.

:class:`NearestDecoder` maps each received vector to the closest candidate; :class:`MAPDecoder` to the most
probable one, :math:`\arg\max_t \log p(z \mid e_{t,p}) + w \log \mathrm{prior}(t)`, under the declared mechanism
and a unigram prior of public text. Both fix the positions the tokenizer's template determines ([CLS] first, [SEP]
last: the mask is public) and never guess a special token elsewhere.

Threat model: everything here is computed from what the vendor holds anyway (:class:`VendorKnowledge`: its own
bottom weights as shipped, the tokenizer, the mechanism the customer declared, public text) and what it receives.
"""

from splitpriv.candidates.decoders import CHUNK, MAPDecoder, NearestDecoder
from splitpriv.candidates.knowledge import (
    VendorKnowledge,
    apply_template,
    fit_candidates,
    fixed_positions,
    interior_penalty,
    shared_log_prior,
    shared_space,
    special_ids,
    target_positions,
    template_tokens,
    token_log_prior,
)
from splitpriv.candidates.space import CandidateSpace, eval_mode

AdditiveCandidateSpace = CandidateSpace  # the decoder families' form, read from the family: one class

__all__ = ["CHUNK", "AdditiveCandidateSpace", "CandidateSpace", "MAPDecoder", "NearestDecoder", "VendorKnowledge",
           "apply_template", "eval_mode", "fit_candidates", "fixed_positions", "interior_penalty", "shared_log_prior",
           "shared_space", "special_ids", "target_positions", "template_tokens", "token_log_prior"]
