"""Distillation loss terms as pure functions.

Each returns a *sum over items* (never a mean): the caller divides by the number of labelled items of the whole
accumulated, all-process batch (`num_items_in_batch`), which is what makes gradient accumulation and multi-process
training give the same gradients as one large batch. An "item" is a labelled position: one per example for
sequence classification, one per label token for token-level tasks, one per label character for CTC (whose per-frame
terms are summed over real frames and divided by the same count: see `DistillationLoss`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def item_mask(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """Boolean mask over the item positions of `logits` (all but the class dimension)."""
    if labels is None:
        return torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
    return labels.ne(-100)


def hard_label_loss_sum(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (or MSE for a single-output regression head), summed over labelled items."""
    if logits.shape[-1] == 1 and labels.is_floating_point():
        return F.mse_loss(logits.squeeze(-1)[mask], labels[mask], reduction="sum")
    return F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")


def logit_kd_loss_sum(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))`` summed over items (Hinton et al., 2015)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    s = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits[mask].float() / temperature, dim=-1)
    return (temperature**2) * F.kl_div(s, t, reduction="sum", log_target=True)


def hidden_state_loss_per_example(
    student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, token_mask: torch.Tensor, kind: str = "mse"
) -> torch.Tensor:
    """Distance between aligned token states `[B, T, D]`, averaged over each example's valid tokens -> `[B]`."""
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"hidden states {tuple(student_hidden.shape)} (student, projected) and {tuple(teacher_hidden.shape)} "
            "(teacher) differ: token-level hidden distillation needs tokenizations that align one to one"
        )
    if kind == "mse":
        per_token = (student_hidden.float() - teacher_hidden.float()).pow(2).mean(-1)
    elif kind == "cosine":
        per_token = 1.0 - F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    else:
        raise ValueError(f"unknown hidden loss {kind!r}")
    m = token_mask.to(per_token.dtype)
    return (per_token * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def attention_kl_per_example(
    student_attn: torch.Tensor, teacher_attn: torch.Tensor, token_mask: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """KL(teacher row || student row) of attention maps `[B, H, T, T]`, mean over heads and valid queries -> `[B]`."""
    if student_attn.shape != teacher_attn.shape:
        raise ValueError(
            f"attention maps {tuple(student_attn.shape)} (student) and {tuple(teacher_attn.shape)} (teacher) differ: "
            "attention distillation needs equal head counts and aligned tokens"
        )
    t = teacher_attn.float()
    s = student_attn.float()
    kl = torch.where(t > 0, t * (torch.log(t.clamp_min(eps)) - torch.log(s.clamp_min(eps))), torch.zeros_like(t))
    per_query = kl.sum(-1).mean(1)  # [B, T]: sum over keys, mean over heads
    m = token_mask.to(per_query.dtype)
    return (per_query * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def self_relation_log_probs(x: torch.Tensor, num_heads: int, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLMv2 self-relation of one projection output `x` `[B, T, D]`: split into `num_heads` relation heads of width
    `D / num_heads`, then ``log softmax(x_r x_r^T / sqrt(D / num_heads))`` over keys -> `[B, R, T, T]` (float32).
    Keys where `key_mask` is 0 get probability 0 (exactly: a finite -1e9 is added to their scores, so no -inf or
    NaN reaches the arithmetic or the gradients, even for an example without valid tokens)."""
    b, t, d = x.shape
    if d % num_heads:
        raise ValueError(f"{num_heads} relation heads do not divide the width {d}")
    dr = d // num_heads
    xr = x.float().reshape(b, t, num_heads, dr).transpose(1, 2).reshape(b * num_heads, t, dr)  # [B*R, T, dr]
    if key_mask is None:
        bias = xr.new_zeros(())
    else:
        bias = (~key_mask.to(torch.bool)).to(xr.dtype).mul(-1e9)  # [B, T]
        bias = bias[:, None, None, :].expand(b, num_heads, 1, t).reshape(b * num_heads, 1, t)
    scores = torch.baddbmm(bias, xr, xr.transpose(-1, -2), alpha=1.0 / math.sqrt(dr))  # scale and mask in one op
    return F.log_softmax(scores, dim=-1).view(b, num_heads, t, t)


def relation_kl_per_example(
    student_x: torch.Tensor, teacher_x: torch.Tensor, token_mask: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """KL(teacher relation || student relation) for one projection (query, key or value) -> `[B]`.

    `student_x` `[B, T, D_s]` and `teacher_x` `[B, T, D_t]` may differ in width (MiniLMv2): both are split into the
    same number of relation heads, which must divide both widths. The KL of each query row (over keys) is averaged
    over relation heads and valid query rows; padded keys are excluded from the softmax, padded queries from the mean.
    """
    if student_x.shape[:2] != teacher_x.shape[:2]:
        raise ValueError(
            f"student {tuple(student_x.shape)} and teacher {tuple(teacher_x.shape)} projections cover different "
            "tokens: relation distillation needs tokenizations that align one to one"
        )
    mask = token_mask.to(torch.bool) if token_mask.dim() == 2 and token_mask.shape[1] == student_x.shape[1] else None
    s = self_relation_log_probs(student_x, num_heads, mask)
    t = self_relation_log_probs(teacher_x, num_heads, mask)
    kl = t.exp() * (t - s)  # padded keys: teacher probability exactly 0, both log-probabilities finite
    per_query = kl.sum(-1).mean(1)  # [B, T]: sum over keys, mean over relation heads
    if mask is None:
        return per_query.mean(-1)
    m = mask.to(per_query.dtype)
    return (per_query * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def qkv_relation_kl_per_example(
    student_qkv, teacher_qkv, token_mask: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """MiniLMv2 loss of one block pair: the query-query, key-key and value-value relation KLs, summed -> `[B]`.
    (Computed as one batch of 3B examples: fewer, larger kernels.)"""
    if len(student_qkv) != 3 or len(teacher_qkv) != 3:
        raise ValueError("relation distillation needs (query, key, value) projections of student and teacher")
    b = student_qkv[0].shape[0]
    mask = token_mask.repeat(3, 1) if token_mask.dim() == 2 else token_mask
    per = relation_kl_per_example(torch.cat(list(student_qkv)), torch.cat(list(teacher_qkv)), mask, num_heads)
    return per.view(3, b).sum(0)


def ctc_loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, frame_lengths: torch.Tensor, blank: int, zero_infinity: bool = False
) -> torch.Tensor:
    """CTC loss of frame logits `[B, F, V]` against character targets `labels` `[B, U]` (not aligned with the frames;
    -100, and the blank, mark padding), summed over examples: each example's negative log-likelihood of its whole
    transcript, not divided by its length. `frame_lengths` `[B]`: the real frames of each example. Computed in float32
    (as the models' own loss does), without cuDNN (whose CTC kernel takes other argument layouts)."""
    labels = labels.to(logits.device)
    keep = labels.ne(-100) & labels.ne(blank)
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # [F, B, V]
    with torch.backends.cudnn.flags(enabled=False):
        return F.ctc_loss(
            log_probs, labels.masked_select(keep), frame_lengths.to(device=logits.device, dtype=torch.long),
            keep.sum(-1), blank=blank, reduction="sum", zero_infinity=zero_infinity,
        )
