"""Picking the next token from a causal LM's logits, with or without the JSON guide, and its logprobs.

Runs on the worker's generation thread; ``torch`` is passed in (this module imports nothing heavy).

Sampling uses the Gumbel-max trick: add Gumbel noise (from the request's seeded generator) to the
log-probabilities of the processed distribution (temperature, top-p); the best perturbed score is a
draw from that distribution. It is also exactly what the JSON guide needs: the best perturbed score
*among the allowed tokens* is a draw from the masked, renormalised distribution. So the guide takes the
candidates in order of perturbed score (of logit, when greedy) and keeps the first whose bytes continue
the JSON text — cheap, because valid tokens are usually among the first few. After ``_CANDIDATES``
refusals it computes the whole allowed set (a walk of the vocabulary trie) and takes its best. When
top-p left no allowed token at all, the temperature-scaled scores of the allowed tokens decide.
(One draw of noise costs about as much as a softmax, several times less than ``torch.multinomial``
over a 49k vocabulary.)
"""

from __future__ import annotations

import math
from typing import Any

from superollama.runtimes._logprobs import TokenLogprob
from superollama.runtimes._openai_shapes import Sampling
from superollama.runtimes._token_filter import TokenGuide, Vocabulary

__all__ = ["GuideDeadEnd", "pick", "token_logprob"]

_CANDIDATES = 32


class GuideDeadEnd(RuntimeError):
    """No token of the vocabulary continues the guided text (a bug or a vocabulary without a byte)."""


def _perturbed(torch: Any, logits: Any, sampling: Sampling, generator: Any) -> tuple[Any, Any]:
    """(scores, noise): log-probabilities at the temperature, -inf outside the top-p nucleus, plus
    Gumbel noise; the argmax of ``scores`` over any set of tokens samples the renormalised distribution."""
    logp = torch.log_softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_logp, order = torch.sort(logp, descending=True)
        probs = sorted_logp.exp()
        before = torch.cumsum(probs, dim=-1) - probs
        logp[order[before >= sampling.top_p]] = -math.inf
    uniform = torch.rand(logp.shape, generator=generator, device=logp.device).clamp_(min=1e-30)
    noise = -torch.log(-torch.log(uniform))
    return logp + noise, noise


def _greedy(sampling: Sampling) -> bool:
    return sampling.temperature <= 0.0 or sampling.top_p <= 0.0


def pick(torch: Any, logits: Any, sampling: Sampling, generator: Any, guide: TokenGuide | None) -> int:
    """The next token: greedy or sampled, inside the guide's language when there is one."""
    greedy = _greedy(sampling)
    scores, noise = (logits, None) if greedy else _perturbed(torch, logits, sampling, generator)
    if guide is None:
        return int(torch.argmax(scores).item())
    best = torch.topk(scores, min(_CANDIDATES, scores.shape[-1]))
    for value, token in zip(best.values.tolist(), best.indices.tolist(), strict=True):
        if value == -math.inf:
            break  # outside the nucleus: only the allowed set can say what is left
        if guide.allows(int(token)):
            return int(token)
    allowed = _allowed(guide)
    index = torch.tensor(allowed, device=logits.device)
    chosen = scores[index]
    if noise is not None and float(chosen.max()) == -math.inf:  # top-p kept no allowed token
        chosen = logits[index].float() / sampling.temperature + noise[index]
    return allowed[int(torch.argmax(chosen).item())]


def _allowed(guide: TokenGuide) -> list[int]:
    allowed = guide.allowed()
    if not allowed:
        raise GuideDeadEnd("the JSON guide found no token that continues the text")
    return allowed


def token_logprob(
    torch: Any, logits: Any, token: int, top: int, vocab: Vocabulary, *, offset: int
) -> TokenLogprob:
    """``token``'s logprob under the raw logits (log-softmax, no temperature, no mask) and the ``top``
    most likely tokens of that distribution, best first."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    alternatives: tuple[tuple[bytes, float], ...] = ()
    if top > 0:
        values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]))
        alternatives = tuple(
            (vocab.piece(int(i)), float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)
        )
    return TokenLogprob(vocab.piece(token), float(logprobs[token].item()), alternatives, offset)
