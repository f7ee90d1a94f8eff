"""Weight sharing as a method of a training run (`hfcompress share`, `scripts/share.py`): the student (by default a
full copy of the teacher, or the previous stage's model in a recipe: a pruned model keeps its zeros) has every
targeted matrix clustered to k values when training begins, then the shared values train with distillation from the
unshared teacher (`WeightSharingCallback` in the shared `DistillationTrainer`). Saved packed (`model/`: indices +
codebooks, `load_shared`) and dense (`model_dense/`, any tool)."""

from __future__ import annotations

from dataclasses import dataclass

from ..distill.arguments import DistillationArguments
from ..share import WeightSharingCallback, WeightSharingConfig, check_sharing, save_shared, save_shared_dense
from ..share.sharing import sharing_targets
from .methods import RunMethod, refuse_quantized_source, save_packed_and_dense

METHOD_DIR = "weight_sharing"


@dataclass
class WeightSharingArguments(DistillationArguments, WeightSharingConfig):
    """`TrainingArguments` + distillation fields + weight-sharing fields, for one `HfArgumentParser` (defined in the
    run layer because it composes two methods)."""

    def __post_init__(self):
        WeightSharingConfig.__post_init__(self)
        DistillationArguments.__post_init__(self)

    def weight_sharing_config(self) -> WeightSharingConfig:
        return WeightSharingConfig.from_any(self)


def run_weight_sharing(model_args, data_args, args: WeightSharingArguments, task: str = "share", report=None,
                       push=None):
    """Share weights and train the shared values with distillation, as `scripts/share.py` does; returns the
    `RunRecord`."""
    from .distill import run_distillation

    return run_distillation(model_args, data_args, args, methods=[WeightSharingMethod(args.weight_sharing_config())],
                            task=task, report=report, push=push)


class WeightSharingMethod(RunMethod):
    name = "weight_sharing"

    def __init__(self, config: WeightSharingConfig):
        self.config = config
        self._callback = WeightSharingCallback(config)
        self.sizes: dict = {}

    def callback(self):
        return self._callback

    def check(self, model_args, data_args, args, train_rows: int) -> None:
        refuse_quantized_source(model_args, "weight sharing")
        sharing_targets(self.probe_model(model_args), self.config)  # a pattern matching nothing, before the teacher is touched

    def check_model(self, model) -> None:
        check_sharing(model, self.config)  # k larger than a matrix's distinct weights, quantized modules

    def save(self, trainer, tokenizer, run_dir: str) -> dict:
        artifacts, sizes = save_packed_and_dense(trainer, tokenizer, run_dir, METHOD_DIR, self.config, save_shared,
                                                 save_shared_dense)
        self.sizes = sizes or self.sizes
        return artifacts

    def record(self) -> dict:
        return {**self.config.to_dict(), **self._callback.summary, "saved_mb": self.sizes,
                "loading": "model/: hfcompress.share.load_shared(path) (packed indices + codebooks); model_dense/: "
                           "AutoModelForSequenceClassification.from_pretrained(path) (plain transformers)"}
