"""Distillation loss terms as pure functions.

Each returns a *sum over items* (never a mean): the caller divides by the number of labelled items of the whole
accumulated, all-process batch (`num_items_in_batch`), which is what makes gradient accumulation and multi-process
training give the same gradients as one large batch. An "item" is a labelled position: one per example for
sequence classification, one per label token for token-level tasks.
"""

from __future__ import annotations

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
