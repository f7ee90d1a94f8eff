"""`DistillationTrainer`: a `Trainer` whose loss is a `DistillationLoss`. The mechanism lives in `loss.py`; this
class only wires it into the training loop."""

from __future__ import annotations

import logging

import torch
from transformers import Trainer

from .arguments import DistillationArguments
from .callback import DistillationCallback
from .config import DistillationConfig
from .loss import CACHED_KEYS, TEACHER_PREFIX, DistillationLoss

logger = logging.getLogger(__name__)


class DistillationTrainer(Trainer):
    """Train a student against a teacher (on the fly) or against teacher outputs cached in the dataset.

    Args:
        model: the student.
        args: `DistillationArguments` (or plain `TrainingArguments` plus `distillation_config`).
        teacher_model: the teacher; frozen, put in eval mode and on the training device, never handed to the
            optimizer and never saved. May be None when every training row carries cached teacher outputs.
        distillation_config: overrides the distillation fields of `args`.
        distillation_loss: a ready `DistillationLoss` (then the two arguments above are not used for it).
        teacher_config / cached_hidden_layers / cached_relation_layers: describe the teacher of a cache when no
            teacher model is given.
        allow_untrained_teacher_head: accept a teacher whose task head `from_pretrained` initialised at random and
            that has not been trained since (by default a `UserInputError` before training: it would teach noise).
        generation_kwargs: for an encoder-decoder student (Whisper), evaluate by generation: `evaluate` then hands
            `compute_metrics` the student's generated token ids (`model.generate(**encoder inputs,
            **generation_kwargs)`, e.g. ``{"max_new_tokens": 128, "num_beams": 1}``) instead of its logits, and the
            labels, for metrics such as WER. The evaluation loss is still the student's cross-entropy on the labels.

    The loss is normalised by `num_items_in_batch`, the labelled items of the whole accumulated (and, with
    `average_tokens_across_devices`, all-process) batch, so gradient accumulation and several processes give the
    gradients of one large batch. In evaluation the loss is the student's task loss (no teacher is run).

    Encoder-decoder models (Whisper) train the same way: the logits are `[batch, target tokens, vocabulary]`, each
    term is summed over target tokens (labels other than -100) and `num_items_in_batch` counts target tokens. Batches
    may carry a frozen encoder's cached output as `encoder_outputs` (`SpeechSeq2SeqDistillationCollator`); the
    teacher's decoder then reads it too.
    """

    # compute_loss below normalises over the whole accumulated batch itself.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model=None,
        args: DistillationArguments | None = None,
        teacher_model: torch.nn.Module | None = None,
        distillation_config: DistillationConfig | None = None,
        distillation_loss: DistillationLoss | None = None,
        teacher_config=None,
        cached_hidden_layers: list[int] | None = None,
        cached_relation_layers: list[int] | None = None,
        allow_untrained_teacher_head: bool = False,
        generation_kwargs: dict | None = None,
        **kwargs,
    ):
        super().__init__(model=model, args=args, **kwargs)
        # Count labelled items over the accumulated batch even though the student's own loss ignores the count.
        self.model_accepts_loss_kwargs = True
        if distillation_loss is None:
            config = distillation_config or DistillationConfig.from_any(self.args)
            distillation_loss = DistillationLoss(
                config,
                student_config=self.model.config,
                teacher=teacher_model,
                teacher_config=teacher_config,
                cached_hidden_layers=cached_hidden_layers,
                cached_relation_layers=cached_relation_layers,
                allow_untrained_teacher_head=allow_untrained_teacher_head,
            )
        self.distillation_loss = distillation_loss
        self.generation_kwargs = generation_kwargs
        self.distillation_loss.prepare_student(self.model)
        if self.distillation_loss.teacher is not None:
            # Device placement (and ZeRO-3 sharding where used) without DDP wrapping or optimizer registration.
            teacher = self.accelerator.prepare_model(self.distillation_loss.teacher, evaluation_mode=True)
            object.__setattr__(self.distillation_loss, "teacher", teacher)
        self.distillation_loss.to(self.args.device)
        self._distillation_callback = DistillationCallback(self.distillation_loss)
        self.add_callback(self._distillation_callback)
        self._parts_sum: dict[str, float] = {}
        self._parts_step: int | None = None  # global step of the last log (set on the first step, also on resume)

    @property
    def teacher_model(self):
        return self.distillation_loss.teacher

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        extra = [*CACHED_KEYS, *(f"{TEACHER_PREFIX}{k}" for k in ("input_ids", "attention_mask", "token_type_ids"))]
        extra += list(getattr(self.data_collator, "dataset_columns", ()))  # e.g. raw audio the collator turns into features
        self._signature_columns += [c for c in extra if c not in self._signature_columns]

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        params = [p for p in self.distillation_loss.parameters() if p.requires_grad]
        if params:
            # Added before the scheduler is built, so the projections follow the same schedule, and their
            # optimizer state is part of every checkpoint.
            optimizer.add_param_group({"params": params, "weight_decay": 0.0})
        return optimizer

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.distillation_loss.load_projections(resume_from_checkpoint):
            self._distillation_callback.loaded_from = resume_from_checkpoint

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        dl = self.distillation_loss
        if model.training:
            dl.check_teacher_inputs(inputs)
            teacher_out = dl.teacher_outputs(inputs)
            extra = dl.student_forward_kwargs()
        else:
            for k in [k for k in inputs if k.startswith(TEACHER_PREFIX)]:
                inputs.pop(k)
            dl.add_decoder_inputs(inputs)
            teacher_out, extra = None, {}
        labels = inputs.pop("labels", None)
        outputs = model(**inputs, **extra)
        loss, parts = dl(
            outputs,
            labels,
            num_items_in_batch,
            teacher_outputs=teacher_out,
            attention_mask=inputs.get("attention_mask"),
            return_parts=True,
        )
        if model.training:
            if num_items_in_batch is None:
                loss = loss / self.current_gradient_accumulation_steps
            elif self.args.average_tokens_across_devices:
                # DDP averages gradients over processes; the denominator already counts all processes' items.
                loss = loss * self.accelerator.num_processes
            if self._parts_step is None:
                self._parts_step = self.state.global_step
            for k, v in parts.items():
                self._parts_sum[k] = self._parts_sum.get(k, 0.0) + float(v)
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """With `generation_kwargs`: (loss, generated token ids, labels), the ids padded by the evaluation loop."""
        if self.generation_kwargs is None or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        if "encoder_outputs" in inputs:
            # Whisper's `generate` decodes wrongly from given `encoder_outputs` (transformers 5.x): evaluation rows
            # carry audio, never cached encoder outputs.
            raise ValueError("evaluation by generation reads the encoder's inputs (e.g. `input_features`); evaluation "
                             "data must not carry cached encoder outputs")
        encoder_inputs = {k: v for k, v in inputs.items()
                          if k != "labels" and not k.startswith(("decoder_", TEACHER_PREFIX))}
        with torch.no_grad():
            loss = self.compute_loss(model, dict(inputs)).detach() if labels is not None else None
            generated = generate_keeping_rng(self.accelerator.unwrap_model(model), encoder_inputs,
                                             self.generation_kwargs)
        return loss, generated, labels

    def log(self, logs, start_time=None):
        if "loss" in logs and self._parts_sum:
            steps = max(1, self.state.global_step - (self._parts_step or 0))
            logs.update({k: round(v / steps, 4) for k, v in self._parts_sum.items()})
            self._parts_sum, self._parts_step = {}, self.state.global_step
            if self.distillation_loss.config.staged:
                logs["distill_stage"] = self.distillation_loss.stage  # the stage of the last step logged
        super().log(logs, start_time)


def generate_keeping_rng(model, inputs: dict, generation_kwargs: dict):
    """`model.generate(**inputs, **generation_kwargs)` with torch's random state put back afterwards: a decoding
    that samples (Whisper's temperature fallback, `--decoding_guards`) during an evaluation must not move the
    generator that training draws its dropout masks and batches from, or a run that evaluates would train
    differently from one that does not (and a resumed run from the uninterrupted one)."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return model.generate(**inputs, **generation_kwargs)
