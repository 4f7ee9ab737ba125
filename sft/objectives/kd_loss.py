"""Soft-label knowledge-distillation losses: pure torch, no trainer.

Two teacher sources share one divergence:

- `sparse_kd_loss`: the teacher is what a generation engine stored, the top-k token ids and their
  log-probabilities (at temperature 1) for every completion token. The k stored tokens plus one *tail*
  bucket holding the rest of the mass make a (k+1)-bucket distribution; the student's full-vocabulary
  distribution is coarsened to the same buckets and the divergence is taken between the two.
- `dense_kd_loss`: the teacher's full logits (a local teacher model), the reference the sparse loss
  reduces to when k = V.

The divergence follows TRL's `GKDTrainer.generalized_jsd_loss` (Agarwal et al., 2306.13649, Eq. 1):
beta = 0 is forward KL(teacher‖student), beta = 1 is reverse KL(student‖teacher), and in between
beta·KL(teacher‖M) + (1−beta)·KL(student‖M) with the mixture M = beta·teacher + (1−beta)·student.
Like TRL, the endpoints are special cases (the in-between formula tends to 0, not to a KL, as beta → 0
or 1). Unlike TRL, the losses are multiplied by T² (Hinton et al. 2015: it keeps the gradient's scale
independent of the temperature when mixed with a cross-entropy term) and return a *sum* over the
masked tokens plus their count, so the caller divides by `num_items_in_batch` under gradient
accumulation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def _divergence(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float, valid: torch.Tensor
) -> torch.Tensor:
    """Per-row generalized JSD over the last dimension, counting only `valid` buckets.

    Invalid buckets (padding slots, a tail with no tokens in it) hold -inf log-probability on both sides;
    they are zeroed before any arithmetic, not after, because `0 * (-inf - -inf)` is NaN in the forward
    pass and `where` does not stop that NaN from reaching the gradient.
    """
    s = torch.where(valid, student_logp, 0.0)
    t = torch.where(valid, teacher_logp, 0.0)

    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:  # KL(p‖q), p and q log-probabilities
        return torch.where(valid, p.exp() * (p - q), 0.0).sum(-1)

    if beta == 0.0:
        return kl(t, s)
    if beta == 1.0:
        return kl(s, t)
    mixture = torch.logaddexp(s + math.log1p(-beta), t + math.log(beta))
    return beta * kl(t, mixture) + (1.0 - beta) * kl(s, mixture)


def _check(temperature: float, beta: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")


def dense_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """T²·D(teacher, student) summed over the masked positions, and the number of those positions.

    `student_logits`, `teacher_logits`: [B, T, V], already aligned (position t of both predicts the same
    token); `mask`: [B, T], true where the loss counts. Both distributions are softmax(logits / T).
    Only masked rows are taken before the softmax, so padding costs no vocabulary-sized memory.
    """
    _check(temperature, beta)
    keep = mask.bool()
    s = F.log_softmax(_at_least_float32(student_logits[keep]) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits[keep].to(s.dtype) / temperature, dim=-1)
    per_token = _divergence(s, t, beta, torch.ones_like(s, dtype=torch.bool))
    return per_token.sum() * temperature**2, keep.sum()


def sparse_kd_loss(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    beta: float = 0.0,
    tail: bool = True,
    tail_floor: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """T²·D over (k+1) buckets (the k stored tokens and a tail) summed over masked positions, and their count.

    Shapes: `student_logits` [B, T, V]; `teacher_ids` [B, T, k] int, -1 (any negative id) for a missing
    slot; `teacher_logprobs` [B, T, k], the teacher's log-probabilities at temperature 1 as an engine
    stores them (a non-finite one also marks a missing slot: the teacher gave that token no mass, so it
    belongs in the tail); `mask` [B, T]. Position t of every tensor predicts the same token. The ids of
    one position must be distinct (engines return distinct top-k ids).

    Teacher buckets: the stored p_i for the k tokens and the tail mass m = 1 − Σp_i, clamped to at least
    `tail_floor`: stored log-probs are rounded (float16) and can sum past 1, and a zero tail would make
    reverse KL infinite as soon as the student puts any mass outside the k tokens. Where the teacher's
    tail is below the floor (unresolved), the student's tail is clamped to the same floor, so that a
    student equal to its teacher is not pushed on a tail the stored numbers cannot resolve; where it is
    resolved, the student's true tail is used, so a student whose tail vanished is pulled back up.

    Student buckets: its temperature-1 probabilities at the k ids, and its tail, the mass on every other
    token, computed as a logsumexp over the logits with the k ids masked out. Not log(1 − Σ student
    probs at the ids) via log1mexp: in float32 that cancels catastrophically when the student is
    confident (tail < ~1e-6, the common case for a trained model) and rounds to log(0), which makes
    forward KL infinite; the masked logsumexp costs one extra [N, V] buffer and is exact.

    Temperature: both sides' k+1 temperature-1 buckets go through the same map, each bucket tempered as
    if it were one token (b^(1/T), the tail m^(1/T)) and renormalised. Why: only the teacher's
    temperature-1 buckets are known (the shape of its tail is not), so the one divergence that is exact
    is between identical transforms of the two coarsenings. It is zero exactly when the student's
    buckets equal the teacher's, at every T; tempering the student's full distribution before
    coarsening (its true tempered tail against the teacher's one-token tail) gave 3.1 per token at T = 2
    and 20.5 at T = 3 with student = teacher on SmolLM2, and a gradient that sharpened the student (the
    DistillKit formulation). At T = 1 the map is the identity, and when the k ids cover the vocabulary
    there is no tail and the loss equals `dense_kd_loss` at any T (softmax(log p / T) = softmax(logits /
    T) when log p = log_softmax(logits)). At T ≠ 1 with k < V the tempered tail is a bucket, not the
    teacher's tempered tail mass: what T does to the tail's inside cannot be known from k tokens.

    `tail=False` drops the tail bucket: both distributions are renormalised over the k ids (the
    "top-k only" variant, which ignores the student's mass outside them).

    The sum is multiplied by T²; divide it by the token count (or by `num_items_in_batch`).
    """
    _check(temperature, beta)
    keep = mask.bool()
    z = _at_least_float32(student_logits[keep])  # [N, V], temperature 1
    ids = teacher_ids[keep].long()  # [N, k]
    lp = teacher_logprobs[keep].to(z.dtype)
    vocab = z.shape[-1]
    slot = (ids >= 0) & torch.isfinite(lp)
    if bool((ids >= vocab).any()):
        raise ValueError(f"teacher_ids holds ids >= the student's vocabulary ({vocab})")

    # Student: an extra -inf column is where missing slots point, so they gather -inf and mask nothing.
    z = torch.cat([z, z.new_full((z.shape[0], 1), NEG_INF)], dim=-1)
    safe_ids = torch.where(slot, ids, vocab)
    log_norm = torch.logsumexp(z, dim=-1, keepdim=True)
    s_slots = z.gather(-1, safe_ids) - log_norm

    # Teacher: the stored temperature-1 log p, missing slots -inf.
    t_slots = torch.where(slot, lp, NEG_INF)

    if tail:
        # a row has a tail bucket unless its valid ids cover the whole vocabulary
        has_tail = slot.sum(-1, keepdim=True) < vocab
        # (a row without a tail takes logsumexp over only -inf: -inf, and scatter's backward zeroes the
        # gradient of every overwritten logit, so no NaN reaches the logits; tested with k = V)
        rest = z.scatter(-1, safe_ids, NEG_INF)
        # Below tail_floor the stored (rounded) log-probs cannot resolve the teacher's tail: there both
        # tails are floored alike (a floor on one side only is a difference that tempering amplifies);
        # where the teacher's tail is resolved, the student's true tail is compared with it, so that a
        # student whose tail vanished is pulled back up (a floor there would flatten that gradient)
        m = -torch.expm1(torch.where(slot, lp, NEG_INF).logsumexp(-1, keepdim=True))
        resolved = m >= tail_floor
        s_tail = torch.logsumexp(rest, dim=-1, keepdim=True) - log_norm
        s_tail = torch.where(resolved, s_tail, s_tail.clamp(min=math.log(tail_floor)))
        s_tail = torch.where(has_tail, s_tail, NEG_INF)
        t_tail = torch.where(has_tail, m.clamp(min=tail_floor).log(), NEG_INF)
        s_buckets = torch.cat([s_slots, s_tail], dim=-1)
        t_buckets = torch.cat([t_slots, t_tail], dim=-1)
        valid = torch.cat([slot, has_tail], dim=-1)
    else:  # both renormalised over the k ids below
        s_buckets, t_buckets, valid = s_slots, t_slots, slot

    per_token = _divergence(_temper(s_buckets, valid, temperature), _temper(t_buckets, valid, temperature), beta, valid)
    return per_token.sum() * temperature**2, keep.sum()


def _temper(log_buckets: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(log b / T) over the valid buckets: each bucket tempered as one token, then renormalised.

    Rows without a valid bucket stay -inf everywhere (their logsumexp is taken over zeros instead, because
    the gradient of a logsumexp over only -inf is NaN).
    """
    scaled = torch.where(valid, log_buckets / temperature, NEG_INF)
    any_valid = valid.any(-1, keepdim=True)
    return scaled - torch.where(any_valid, scaled, 0.0).logsumexp(-1, keepdim=True)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 logits in float32 (softmax over 49k logits in bf16 errs by percents), float64 kept."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def combined_loss(ce: torch.Tensor, kd: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha·CE + (1 − alpha)·KD (KD already carrying its T²): alpha = 0 is pure distillation, 1 is SFT."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha * ce + (1.0 - alpha) * kd
