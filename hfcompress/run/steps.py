"""The steps every script composes: load and check data, resolve a resume, prepare the teacher, build the student,
train, evaluate, save, record. Each step is small and takes the parsed argument groups; a script (or a benchmark)
calls the ones it needs, and a new method adds its callback without copying any of them.

Output layout of a run in `output_dir`::

    model/              the publishable model alone (safetensors, config, tokenizer): upload or copy this folder
    checkpoints/        Trainer checkpoints (resume with --resume_from_checkpoint latest)
    teacher_cache/      teacher outputs on the training set (reused by a second or resumed run)
    <method>/           what a method learned beside the model (e.g. distillation projections) and its config
    <task>_summary.json the run record (settings, measurements)
"""

from __future__ import annotations

import json
import logging
import os

from datasets import DatasetDict
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from ..arch import get_adapter
from ..assets import hfcompress_home, resolve_model_path
from ..checkpoints import checkpoint_is_complete, has_manifests, latest_complete_checkpoint, save_trainer_model
from ..data import label_names, load_text_classification, num_labels
from ..distill.student import init_student_from_teacher
from ..errors import UserInputError
from ..files import write_text_atomic
from ..loading import checkpoint_format, load_model
from ..prune.structured_io import is_structured_checkpoint, load_structured
from ..report import count_parameters, evaluate_classifier, model_size_mb
from .arguments import DataArguments, ModelArguments
from .data import check_teacher_labels
from .finetune import FinetuneConfig, prepare_teacher

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
TRAINING_ARGS_JSON = "training_args.json"  # the training arguments of a run, as JSON (never a pickle, never a token)
TEACHER_CACHE_DIR = "teacher_cache"


def load_data(data_args: DataArguments) -> DatasetDict:
    """The dataset with train/validation/test splits, checked, and limited as asked."""
    dataset = load_text_classification(
        data_args.dataset, data_args.text_column, data_args.label_column, seed=data_args.split_seed,
        text_pair_column=data_args.text_pair_column,
    )
    return limit_splits(dataset, data_args)


def limit_splits(dataset, data_args: DataArguments):
    """The first `--max_train_samples` rows of train and `--max_eval_samples` of validation and test (as asked)."""
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_eval_samples}
    for split, limit in limits.items():
        if limit is not None and split in dataset:
            dataset[split] = dataset[split].select(range(min(limit, len(dataset[split]))))
    return dataset


def check_processes(state) -> None:
    """A launcher that started several processes which each see a world of one (e.g. `accelerate launch
    --num_processes 2` on a machine without GPUs, without `--use_cpu`) would train the same model twice and write
    the same files at once: one clear error instead."""
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and state.num_processes == 1:
        raise UserInputError(f"the launcher started {launched} processes but each sees only itself (no distributed "
                             "backend): on a machine without GPUs pass --use_cpu (in a recipe: use_cpu: true in each "
                             "training stage's args) so they train together over gloo")


def use_run_layout(args) -> str:
    """Point the Trainer's `output_dir` at `<output_dir>/checkpoints` and return the run folder."""
    if not args.output_dir:
        raise UserInputError("--output_dir is required")
    run_dir = args.output_dir
    if os.path.basename(os.path.normpath(run_dir)) != CHECKPOINT_DIR:
        args.output_dir = os.path.join(run_dir, CHECKPOINT_DIR)
        if getattr(args, "logging_dir", None) is None:
            args.logging_dir = os.path.join(run_dir, "runs")
    return run_dir


def check_output_dir(run_dir: str, args, task: str) -> None:
    """Refuse (one line, before any work) to run into a folder that holds an earlier run's result, unless the user
    said what to do: `--overwrite_output_dir` (replace it) or `--resume_from_checkpoint` (continue it), as the
    Hugging Face example scripts do. Nothing is deleted here."""
    if getattr(args, "overwrite_output_dir", False) or getattr(args, "resume_from_checkpoint", None):
        return
    earlier = [name for name in (MODEL_DIR, f"{task}_summary.json") if os.path.exists(os.path.join(run_dir, name))]
    checkpoints = os.path.join(run_dir, CHECKPOINT_DIR)
    if os.path.isdir(checkpoints) and any(n.startswith("checkpoint-") for n in os.listdir(checkpoints)):
        earlier.append(CHECKPOINT_DIR)
    if earlier:
        raise UserInputError(f"--output_dir {run_dir!r} already holds a run ({', '.join(earlier)}): pass "
                             "--resume_from_checkpoint latest to continue it, --overwrite_output_dir to replace it, or "
                             "choose another --output_dir")


def resolve_resume(args) -> str | None:
    """`--resume_from_checkpoint latest|true|PATH` as a checkpoint folder (or None), checked before training."""
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "latest"):
        found = latest_complete_checkpoint(args.output_dir)
        if found is None:
            raise UserInputError(f"--resume_from_checkpoint {resume}: no checkpoint in {args.output_dir}")
        return found
    if resume and not os.path.isdir(resume):
        raise UserInputError(f"--resume_from_checkpoint {resume!r} is not a checkpoint folder")
    if resume:
        complete, why = checkpoint_is_complete(resume)
        parent = os.path.dirname(os.path.abspath(resume))
        if not complete and (has_manifests(parent) or not os.path.isfile(os.path.join(resume, "trainer_state.json"))):
            latest = latest_complete_checkpoint(parent)
            hint = f"resume from {latest} (the latest complete one) or" if latest else "start a new run, or"
            raise UserInputError(f"--resume_from_checkpoint {resume!r} is incomplete ({why}): the run was stopped while "
                                 f"writing it; {hint} pass --resume_from_checkpoint latest")
    return resume or None


def check_distillation_layers(cfg, model_args: ModelArguments) -> None:
    """`--student_layers` against the model it cuts (the student model when one is given, else the teacher) and the
    layer maps against both depths, before any model is loaded or a teacher fine-tune can start."""
    from ..distill.config import resolve_layer_map
    from ..distill.student import check_layer_indices

    if model_args.student_layers:
        cut = model_args.student_model or model_args.teacher_model
        owner = f"the student model {cut} has blocks" if model_args.student_model else "the teacher has blocks"
        check_layer_indices(model_args.student_layer_list(), _depth(cut), "--student_layers", "block", owner)

    if cfg.uses_hidden or cfg.uses_attention:
        resolve_layer_map(cfg.pairs, student_depth(model_args), teacher_depth(model_args))


def _depth(name_or_path: str) -> int:
    cfg = AutoConfig.from_pretrained(resolve_model_path(name_or_path))
    return get_adapter(cfg).num_layers(cfg)


def student_depth(model_args: ModelArguments) -> int:
    if model_args.student_model:
        return _depth(model_args.student_model)
    layers = model_args.student_layer_list()
    if layers:
        return len(layers)
    return model_args.student_num_layers or teacher_depth(model_args)


def teacher_depth(model_args: ModelArguments) -> int:
    return _depth(model_args.teacher_model)


def default_teacher_dir(model_args: ModelArguments, data_args: DataArguments) -> str:
    name = os.path.basename(os.path.normpath(model_args.teacher_model))
    data = os.path.basename(os.path.normpath(data_args.dataset))
    return model_args.teacher_dir or os.path.join(hfcompress_home(), "teachers", f"{name}-{data}")


def teacher_finetune_config(model_args: ModelArguments, args, **settings) -> FinetuneConfig:
    """How a headless teacher is fine-tuned (every task adapter's teacher): the teacher arguments, the run's seed,
    bf16 and length grouping (``--train_sampling_strategy group_by_length``), plus the task's own `settings`
    (max_length, batch sizes)."""
    return FinetuneConfig(**{
        "num_train_epochs": model_args.teacher_finetune_epochs, "learning_rate": model_args.teacher_learning_rate,
        "head_learning_rate": model_args.teacher_head_learning_rate, "seed": args.seed,
        "bf16": bool(getattr(args, "bf16", False)),
        "group_by_length": getattr(args, "train_sampling_strategy", "random") == "group_by_length",
        **settings,
    })


def load_teacher(model_args: ModelArguments, data_args: DataArguments, dataset: DatasetDict, args, state=None):
    """A teacher with a trained head (fine-tuned once and cached if the checkpoint has none), its tokenizer and
    path. Checks its labels against the data."""
    ft_cfg = teacher_finetune_config(model_args, args, max_length=data_args.max_length,
                                     truncation_side=data_args.truncation_side)
    path = prepare_teacher(
        model_args.teacher_model, dataset, default_teacher_dir(model_args, data_args), ft_cfg,
        data_args.text_column, data_args.label_column, finetune=model_args.finetune_teacher,
        text_pair_column=data_args.text_pair_column, pair_truncation=data_args.pair_truncation,
    )
    if state is not None:
        state.wait_for_everyone()
    teacher = AutoModelForSequenceClassification.from_pretrained(path)
    check_teacher_labels(teacher.config, dataset, data_args.label_column)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.truncation_side = data_args.truncation_side
    return teacher, tokenizer, path


def build_student(model_args: ModelArguments, data_args: DataArguments, dataset: DatasetDict, teacher, teacher_tokenizer):
    """The student: a checkpoint given by the user (its own head if it has one for these classes, else a new one),
    cut to `--student_layers` if given; or, without `--student_model`, the teacher's own blocks."""
    if model_args.student_model:
        path = resolve_model_path(model_args.student_model)
        names = label_names(dataset, data_args.label_column)
        extra = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}} if names else {}
        if is_structured_checkpoint(path):  # heads/neurons cut out: only its own modeling code builds it
            student = load_structured(path, num_labels=num_labels(dataset, data_args.label_column), **extra).train()
        elif os.path.isdir(path) and checkpoint_format(path) in ("sparse", "shared"):  # compact weights: own loader
            student = load_model(path).train()
        else:
            student = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels(dataset, data_args.label_column), **extra
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.truncation_side = data_args.truncation_side
        if model_args.student_layers:
            student = init_student_from_teacher(student, layers=model_args.student_layer_list())
        return student, tokenizer
    layers = model_args.student_layer_list()
    if not layers and not model_args.student_num_layers:  # 0: every block, a full copy of the teacher
        layers = list(range(get_adapter(teacher).num_layers(teacher.config)))
    student = init_student_from_teacher(teacher, layers=layers, num_layers=model_args.student_num_layers)
    return student, teacher_tokenizer


def train(trainer, resume: str | None) -> dict:
    """Train and say what the figures cover: after a resume, the Trainer's runtime covers only this invocation, so
    the record gives the steps it ran and the loss averaged over every logged step of the whole run."""
    first_step = 0
    if resume:
        import json

        with open(os.path.join(resume, "trainer_state.json")) as fh:
            first_step = json.load(fh).get("global_step", 0)
    out = trainer.train(resume_from_checkpoint=resume)
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "resumed_from": resume,
        "steps": trainer.state.global_step,
        "steps_this_invocation": trainer.state.global_step - first_step,
        "runtime_s_this_invocation": out.metrics.get("train_runtime"),
        "loss_mean_of_logged_steps": sum(logged) / len(logged) if logged else None,
        "logged_loss_entries": len(logged),
        "note": "runtime covers this invocation only; the loss averages the logged steps of the whole run"
        if resume else "uninterrupted run",
    }


def evaluate(trainer, tokenized: DatasetDict, splits=("validation", "test")) -> dict:
    return {s: trainer.evaluate(tokenized[s], metric_key_prefix=s) for s in splits if s in tokenized}


def measure_model(model) -> dict:
    """Parameters and the in-memory size of the weights (`weights_mb`: parameters and buffers, MB); the size of a saved
    folder, every file counted, is the comparison's ``size_mb``."""
    return {"parameters": count_parameters(model), "weights_mb": model_size_mb(model)}


def evaluate_on_texts(model, tokenizer, dataset: DatasetDict, data_args: DataArguments, split: str = "test", device=None) -> dict:
    """Task metrics of any classifier on a split's raw text, with its own tokenizer (a teacher, a baseline)."""
    if device is not None:
        model = model.to(device)
    return evaluate_classifier(
        model, tokenizer, dataset[split][data_args.text_column], dataset[split][data_args.label_column],
        max_length=data_args.max_length, desc=f"{split} ({type(model).__name__})",
        text_pairs=dataset[split][data_args.text_pair_column] if data_args.text_pair_column else None,
        pair_truncation=data_args.pair_truncation,
    )


def train_and_save(trainer, data: DatasetDict, methods, processor, run_dir: str, resume: str | None):
    """Train, evaluate on validation and test, let each method save its own format, else save the usual checkpoint
    (`save_trained_model`). Returns `(training, metrics, saved artifacts, model_dir)`."""
    training = train(trainer, resume)
    metrics = evaluate(trainer, data)
    saved = {}
    for method in methods:
        saved.update(method.save(trainer, processor, run_dir) or {})
    if trainer.is_world_process_zero():  # readable, and without the token (which never reached the arguments)
        write_text_atomic(os.path.join(run_dir, TRAINING_ARGS_JSON), trainer.args.to_json_string())
    return training, metrics, saved, saved.get("model") or save_trained_model(trainer, processor, run_dir)


def save_distillation_config(trainer, cfg, run_dir: str) -> tuple[str, dict]:
    """`<run_dir>/distillation/`: the learned projections and the resolved config (with the layer map used).
    Returns the folder and the resolved config."""
    method_dir = os.path.join(run_dir, "distillation")
    resolved = {**cfg.to_dict(), "layer_map_resolved": trainer.distillation_loss.layer_map}
    os.makedirs(method_dir, exist_ok=True)
    trainer.distillation_loss.save_projections(method_dir)
    with open(os.path.join(method_dir, "distillation_config.json"), "w") as fh:
        json.dump(resolved, fh, indent=2)
    return method_dir, resolved


def save_trained_model(trainer, tokenizer, run_dir: str) -> str:
    """Save the trained model and its tokenizer alone in `<run_dir>/model` (what a user publishes: no pickle)."""
    path = save_trainer_model(trainer, os.path.join(run_dir, MODEL_DIR))
    if trainer.is_world_process_zero() and tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
