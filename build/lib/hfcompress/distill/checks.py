"""Checks that stop a distillation run from silently learning from the wrong teacher signal.

* `untrained_parameters(model)`: parameters that `from_pretrained` created at random because the checkpoint lacked
  them (a plain encoder loaded with `AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)`), and
  that have not been changed since. A teacher with such a head teaches noise.
* `teacher_needs_own_inputs(...)`: whether the teacher must read its own token ids (`teacher_input_ids`), because
  its tokenizer maps text to other ids than the student's.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserInputError

# How the first check knows (transformers 5.x, `PreTrainedModel.from_pretrained`): every parameter filled from the
# checkpoint is marked `param._is_hf_initialized = True` by the loader (`_initialize_missing_keys` then initialises
# only the unmarked ones, and the load report lists them as MISSING). A model built in memory (`from_config`,
# `init_student_from_teacher`) has no marked parameter at all, so nothing is concluded about it. A parameter that
# was newly initialised still counts as untrained only while it is unchanged: the heads of every encoder family
# start with all-zero biases (any optimizer step moves them), and for a head without biases the tensor's in-place
# version counter is still at 1 (the single in-place initialisation).
_LOADED_FLAG = "_is_hf_initialized"


def untrained_parameters(model: nn.Module) -> list[str]:
    """Names of `model`'s parameters that `from_pretrained` initialised at random and that are still untouched.

    Empty for a model built in memory, for a checkpoint that held every weight (e.g. a fine-tuned model saved and
    reloaded), and for a model whose new head has been trained since it was loaded.
    """
    params = list(model.named_parameters())
    if not any(getattr(p, _LOADED_FLAG, False) for _, p in params):
        return []  # not loaded by `from_pretrained` (or by a loader that records nothing): no evidence
    missing = [(n, p) for n, p in params if not getattr(p, _LOADED_FLAG, False)]
    if not missing or any(p.is_meta for _, p in missing):
        return []
    biases = [p for n, p in missing if n.rsplit(".", 1)[-1] == "bias"]
    with torch.no_grad():
        if biases:
            changed = any(bool(torch.count_nonzero(b)) for b in biases)
        else:
            changed = any(p._version > 1 for _, p in missing)
    return [] if changed else [n for n, _ in missing]


def check_teacher_head(teacher: nn.Module) -> None:
    """Raise `UserInputError` if the teacher's weights include an untrained, randomly initialised part."""
    names = untrained_parameters(teacher)
    if not names:
        return
    source = getattr(teacher, "name_or_path", "") or getattr(getattr(teacher, "config", None), "_name_or_path", "")
    shown = ", ".join(names[:6]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")
    raise UserInputError(
        f"teacher: {type(teacher).__name__} loaded from {source!r} has randomly initialised weights that were not in "
        f"the checkpoint and have not been trained since ({shown}); a teacher with an untrained task head teaches "
        "noise. Expected a teacher fine-tuned on the task: fine-tune it first (for example with a plain Trainer) and "
        "pass the fine-tuned model or the folder it was saved to, or pass allow_untrained_teacher_head=True if "
        "this is really intended."
    )


_SPECIAL_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id")


def _special_ids(tok) -> dict:
    return {k: getattr(tok, k, None) for k in ("pad_token_id", "cls_token_id", "sep_token_id", "bos_token_id", "eos_token_id", "unk_token_id")}


def teacher_needs_own_inputs(student_config, teacher_config, student_tokenizer=None, teacher_tokenizer=None) -> bool:
    """True if the student's token ids would mean other tokens to the teacher.

    With both tokenizers given, their vocabularies (and special-token ids) are compared; otherwise the configs:
    a different `vocab_size`, or a different pad/bos/eos id where both configs set one.
    """
    if student_tokenizer is not None and teacher_tokenizer is not None:
        if student_tokenizer is teacher_tokenizer:
            return False
        return student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab() or _special_ids(
            student_tokenizer
        ) != _special_ids(teacher_tokenizer)
    if getattr(student_config, "vocab_size", None) != getattr(teacher_config, "vocab_size", None):
        return True
    for key in _SPECIAL_ID_KEYS:
        s, t = getattr(student_config, key, None), getattr(teacher_config, key, None)
        if s is not None and t is not None and s != t:
            return True
    return False
