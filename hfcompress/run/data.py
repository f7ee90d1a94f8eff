"""The data side of a run: tokenization for one or two tokenizers, the teacher-output cache, label checks."""

from __future__ import annotations

import logging

from datasets import ClassLabel, DatasetDict

from ..data import label_names, tokenize
from ..distill.cache import drop_teacher_inputs, load_or_compute_teacher_cache
from ..distill.collator import DistillationDataCollator
from ..distill.loss import TEACHER_PREFIX, DistillationLoss
from ..errors import UserInputError

logger = logging.getLogger(__name__)


def tokenizers_align(a, b) -> bool:
    """True if both tokenizers map text to the same ids (then one tokenization serves both models)."""
    return a.get_vocab() == b.get_vocab() and type(a).__name__ == type(b).__name__


def check_teacher_labels(teacher_config, dataset: DatasetDict, label_column: str) -> None:
    """The dataset's classes against the teacher's: the same names in another order re-encode the dataset in the
    teacher's order (in place, said in one log line); other names, or another number of classes, are an error."""
    names = label_names(dataset, label_column)
    t_names = [teacher_config.id2label[i] for i in range(teacher_config.num_labels)]
    if names is not None and len(names) != len(t_names):
        raise UserInputError(f"teacher predicts {len(t_names)} labels {t_names} but the dataset has {len(names)}: {names}")
    if names is None or all(str(n).startswith("LABEL_") for n in t_names) or t_names == names:
        return
    if sorted(map(str, names)) != sorted(map(str, t_names)) or len(set(map(str, t_names))) != len(t_names):
        raise UserInputError(f"teacher label names {t_names} differ from the dataset's {names}: expected the same "
                             "class names (in any order), or integer labels in the teacher's order")
    position = {str(n): i for i, n in enumerate(t_names)}
    order = [position[str(n)] for n in names]  # dataset id -> teacher id
    for split in list(dataset):
        features = dataset[split].features.copy()
        features[label_column] = ClassLabel(names=[str(n) for n in t_names])
        dataset[split] = dataset[split].map(lambda b: {label_column: [order[x] for x in b[label_column]]},
                                            batched=True, features=features, desc="labels in the teacher's order")
    logger.info("The dataset's classes %s are encoded in the teacher's order %s (same names, another order)", names,
                t_names)


def tokenize_for_distillation(
    dataset: DatasetDict, student_tokenizer, teacher_tokenizer, text_column: str, label_column: str, max_length: int,
    truncation_side: str = "right", text_pair_column: str | None = None, pair_truncation: str = "only_second",
) -> tuple[DatasetDict, bool]:
    """Tokenize with the student's tokenizer, and again into `teacher_*` columns if the teacher's differs (sentence
    pairs: each row's `text_column` and `text_pair_column` together, by each tokenizer).
    Returns the dataset (raw text dropped) and whether teacher columns were added."""
    pairs = {"text_pair_column": text_pair_column, "pair_truncation": pair_truncation}
    out = tokenize(dataset, student_tokenizer, text_column, max_length, truncation_side=truncation_side, **pairs)
    separate = not tokenizers_align(student_tokenizer, teacher_tokenizer)
    if separate:
        logger.info("Teacher and student tokenizers differ: each tokenizes the raw text itself")
        out = tokenize(out, teacher_tokenizer, text_column, max_length, prefix=TEACHER_PREFIX,
                       truncation_side=truncation_side, **pairs)
    keep = {label_column, *student_tokenizer.model_input_names}
    drop = [c for c in out["train"].column_names if c not in keep and not c.startswith(TEACHER_PREFIX)]
    out = out.remove_columns(drop)
    if label_column != "labels":
        out = out.rename_column(label_column, "labels")
    return out, separate


def cache_teacher_on_train(
    tokenized: DatasetDict,
    teacher_name: str,
    teacher_loader,
    collator: DistillationDataCollator,
    cache_dir: str,
    hidden_layers: list[int] | None,
    separate_tokenizer: bool,
    batch_size: int,
    main_process_first,
    teacher_config=None,
    cache_max_gb: float | None = None,
    teacher_runs_online: bool = False,
    **cache_kwargs,
) -> tuple[DatasetDict, dict]:
    """Replace the train split by one that carries the teacher's outputs (loaded from `cache_dir` when present).
    The main process computes; the others wait and load.

    The cache's size is estimated and logged first; over `cache_max_gb` (default: what the disk under `cache_dir` can
    take, see `default_cache_limit_bytes`) only the logits are cached and `meta["online_terms"]` lists the terms
    the teacher must then compute while training. The teacher's own token columns are dropped from the rows unless
    the teacher runs during training: `teacher_runs_online` (attention maps), or terms left out of the cache."""
    prefix = TEACHER_PREFIX if separate_tokenizer else ""
    with main_process_first(desc="teacher output cache"):
        train, meta = load_or_compute_teacher_cache(
            cache_dir,
            teacher_name,
            tokenized["train"],
            teacher_loader,
            collator.pad_teacher if separate_tokenizer else (lambda f: collator.tokenizer.pad(f, return_tensors="pt")),
            input_prefix=prefix,
            hidden_layers=hidden_layers,
            batch_size=batch_size,
            teacher_config=teacher_config,
            max_bytes=None if cache_max_gb is None else int(cache_max_gb * 1e9),
            **cache_kwargs,
        )
    out = DatasetDict(dict(tokenized))
    out["train"] = train if teacher_runs_online or meta.get("online_terms") else drop_teacher_inputs(train)
    return out, meta


def attach_teacher_cache(run, data: DatasetDict, collator, separate_tokenizer: bool, cache_dir: str,
                         per_token: bool = False):
    """With ``--cache_teacher``: the teacher's outputs on the train split of `data`, computed once into `cache_dir`
    (the adapter's `teacher_cache_dir`) or reused from it (`cache_teacher_on_train`; the hidden states and
    q/k/v its loss maps too; `per_token`: a token classifier's logits for every token), recorded in
    ``run.extras["cache_meta"]``. Returns `(data, trainer keyword arguments)`: the teacher model is handed to the
    trainer only where some term still needs it online. Without the cache: `data` as it was, the teacher online."""
    run.extras["cache_meta"] = None
    teacher = run.teacher
    if not run.data_args.cache_teacher:
        return data, {"teacher_model": teacher}
    probe = DistillationLoss(run.cfg, run.student.config, teacher_config=teacher.config)  # which layers to keep
    data, meta = cache_teacher_on_train(
        data, run.teacher_path, lambda: teacher, collator, cache_dir,
        probe.teacher_hidden_layers, separate_tokenizer, run.data_args.teacher_batch_size,
        run.args.main_process_first, teacher_config=teacher.config, cache_max_gb=run.data_args.cache_max_gb,
        teacher_runs_online=probe.needs_online_teacher(), per_token=per_token, **probe.cache_request(),
    )
    run.extras["cache_meta"] = meta
    return data, {
        "teacher_model": teacher if probe.needs_online_teacher(meta) else None,
        "teacher_config": teacher.config,
        "cached_hidden_layers": meta["hidden_layers"],
        "cached_relation_layers": meta.get("relation_layers"),
    }
