"""A distillation run, composed of the shared steps: what `scripts/distill.py` calls, and what later scripts extend
with their own callbacks (pruning, quantization) without copying it."""

from __future__ import annotations

import logging
import os

from accelerate import PartialState
from transformers import set_seed

from ..distill import DistillationDataCollator, DistillationLoss, DistillationTrainer
from ..distill.config import resolve_layer_map
from ..metrics import compute_classification_metrics
from ..report.measure import count_parameters
from ..report.record import RunRecord
from . import steps
from .arguments import DataArguments, ModelArguments
from .data import cache_teacher_on_train, tokenize_for_distillation
from .report import ReportArguments, hub_settings_of, measure_and_card, publish

logger = logging.getLogger(__name__)



def check_distillation_layers(cfg, model_args: ModelArguments) -> None:
    """Layer maps against both depths, before a teacher fine-tune can start."""
    if cfg.uses_hidden or cfg.uses_attention:
        resolve_layer_map(cfg.pairs, steps.student_depth(model_args), steps.teacher_depth(model_args))


def run_distillation(
    model_args: ModelArguments, data_args: DataArguments, args, callbacks=(), task: str = "distill", methods=(),
    report: ReportArguments | None = None, push=None, speech=None,
) -> RunRecord:
    """Distil a teacher into a student on a text-classification dataset; returns the run record (also written to
    `<output_dir>/<task>_summary.json` by the main process).

    `args` is a `DistillationArguments` (the script's subclass). `methods` are `RunMethod`s (pruning, ...): their
    callbacks join the trainer, their checks run before anything slow, they save their own model format and add
    themselves to the record. Plain `callbacks` are added to the trainer as they are. With `report` (the scripts'
    `ReportArguments`), the saved model is then measured against the teacher, gets its model card and plots, and is
    pushed to the Hub if `args` asks (`--push_to_hub`), or written as a dry run if `push` (`hub.PushArguments`) does; without it (benchmarks), none of that.

    A Whisper teacher makes it a sequence-to-sequence run (`run/speech.py`, options in `speech`, a `SpeechArguments`):
    same trainer and loss, on the decoder's logits, evaluated by generation (WER). A speech teacher on labelled audio
    (the keyword set, or `--speech_task audio-classification`) makes it an audio-classification run, a wav2vec2/HuBERT
    CTC teacher a CTC run (`run/audio.py`).
    """
    from .audio import audio_run_kind, run_audio_encoder
    from .speech import run_speech_distillation, speech_teacher

    kind = audio_run_kind(model_args, data_args, speech)
    if kind is not None:
        return run_audio_encoder(model_args, data_args, args, speech, callbacks=callbacks, task=task, methods=methods,
                                 report=report, push=push, kind=kind)
    if speech_teacher(model_args):
        return run_speech_distillation(model_args, data_args, args, speech, callbacks=callbacks, task=task,
                                       methods=methods, report=report, push=push)
    run_dir = steps.use_run_layout(args)
    _ = args.device  # the Trainer's process setup (distributed backend) before anything asks who is main
    state = PartialState()
    steps.check_processes(state)
    set_seed(args.seed)

    # Everything that can be wrong with the input is checked before any training.
    cfg = args.distillation_config()
    dataset = steps.load_data(data_args)
    resume = steps.resolve_resume(args)
    hub = hub_settings_of(args, push, output_dir=run_dir)
    check_distillation_layers(cfg, model_args)
    for method in methods:
        method.check(model_args, data_args, args, len(dataset["train"]))
        if resume:
            method.check_resume(resume)

    teacher, teacher_tok, teacher_path = steps.load_teacher(model_args, data_args, dataset, args, state)
    student, student_tok = steps.build_student(model_args, data_args, dataset, teacher, teacher_tok)
    for method in methods:
        method.check_model(student)
    for method in methods:
        student = method.prepare_model(student, run_dir, student_tok)

    tokenized, separate = tokenize_for_distillation(
        dataset, student_tok, teacher_tok, data_args.text_column, data_args.label_column, data_args.max_length,
        data_args.truncation_side,
    )
    collator = DistillationDataCollator(student_tok, teacher_tok if separate else None)
    trainer_kwargs = {"teacher_model": teacher}
    cache_meta = None
    if data_args.cache_teacher:
        probe = DistillationLoss(cfg, student.config, teacher_config=teacher.config)  # which teacher layers to keep
        tokenized, cache_meta = cache_teacher_on_train(
            tokenized, teacher_path, lambda: teacher, collator,
            data_args.teacher_cache_dir or os.path.join(run_dir, steps.TEACHER_CACHE_DIR),
            probe.teacher_hidden_layers, separate, data_args.teacher_batch_size, args.main_process_first,
            teacher_config=teacher.config, cache_max_gb=data_args.cache_max_gb,
            teacher_runs_online=probe.needs_online_teacher(), **probe.cache_request(),
        )
        trainer_kwargs = {
            "teacher_model": teacher if probe.needs_online_teacher(cache_meta) else None,
            "teacher_config": teacher.config,
            "cached_hidden_layers": cache_meta["hidden_layers"],
            "cached_relation_layers": cache_meta.get("relation_layers"),
        }
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"] if args.eval_strategy != "no" else None,
        data_collator=collator,
        processing_class=student_tok,
        compute_metrics=compute_classification_metrics,
        callbacks=[*callbacks, *(c for c in (m.callback() for m in methods) if c is not None)],
        **trainer_kwargs,
    )
    training, metrics, saved, model_dir = steps.train_and_save(trainer, tokenized, methods, student_tok, run_dir, resume)

    record = RunRecord(task=task)
    if state.is_main_process:
        method_dir, resolved = steps.save_distillation_config(trainer, cfg, run_dir)
        record.add_settings(model=model_args, data=data_args, training=args)
        record.methods["distillation"] = {
            **resolved,
            "teacher": teacher_path,
            "teacher_outputs": "online" if not data_args.cache_teacher else (
                f"logits cached, {' and '.join(online)} online" if (online := (cache_meta or {}).get("online_terms"))
                else "cached"),
            "teacher_cache": {k: v for k, v in (cache_meta or {}).items() if k != "teacher_config"} or None,
        }
        record.data = {
            "dataset": data_args.dataset,
            "splits": {s: len(d) for s, d in dataset.items()},
            "label_names": trainer.model.config.id2label,
        }
        record.models["student"] = {
            "path": model_dir,
            "source": model_args.student_model or f"blocks {getattr(student.config, 'hfcompress_student_layers', None)} "
                                                   f"of the teacher",
            **steps.measure_model(trainer.model),
            "nonzero_parameters": count_parameters(trainer.model, nonzero=True),
        }
        record.models["teacher"] = {"path": teacher_path, "argument": model_args.teacher_model, **steps.measure_model(teacher)}
        record.training = {**training, "num_processes": state.num_processes}
        record.metrics["student"] = metrics
        if data_args.evaluate_teacher:
            record.metrics["teacher"] = {"test": steps.evaluate_on_texts(teacher, teacher_tok, dataset, data_args, device=args.device)}
        record.artifacts = {
            "model": model_dir,
            "checkpoints": args.output_dir,
            "teacher_cache": (data_args.teacher_cache_dir or os.path.join(run_dir, steps.TEACHER_CACHE_DIR))
            if data_args.cache_teacher else None,
            "distillation": method_dir,
            **saved,
        }
        for method in methods:
            record.methods[method.name] = method.record()
        if report is not None and report.measure and os.path.exists(os.path.join(model_dir, "config.json")):
            pruned = any(getattr(m, "name", "") == "pruning" for m in methods)
            measure_and_card(record, model_dir, teacher_path, model_args.teacher_model, dataset, data_args, report,
                             run_name=os.path.basename(os.path.normpath(run_dir)),
                             log_history=trainer.state.log_history if pruned else None)
        record.save(os.path.join(run_dir, f"{task}_summary.json"))
        publish(record, model_dir, run_dir, hub)
        record.save(os.path.join(run_dir, f"{task}_summary.json"))
        logger.info(
            "Student test accuracy %.4f (teacher %s); model in %s",
            metrics.get("test", {}).get("test_accuracy", float("nan")),
            record.metrics.get("teacher", {}).get("test", {}).get("accuracy"), model_dir,
        )
    state.wait_for_everyone()
    record.trainer = trainer  # for callers in the same process (tests, benchmarks); not serialised
    return record
