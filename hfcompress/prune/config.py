"""`PruningConfig`: what is pruned, by which score, on which schedule. Validated on creation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields

from ..errors import UserInputError

METHODS = ("magnitude", "movement", "soft_movement")
SCOPES = ("local", "global")


@dataclass
class PruningConfig:
    """Unstructured pruning of the encoder's `nn.Linear` weights during training.

    The sparsity (fraction of the targeted weights set to zero) follows a cubic schedule (Zhu & Gupta 2017): 0 until
    `pruning_start`, then ``s_t = s_f * (1 - (1 - p)^3)`` with ``p`` going 0 -> 1 until `pruning_end`, then the
    final sparsity `s_f` is held while training goes on (the cool-down, which lets the remaining weights recover).
    `pruning_start`/`pruning_end` are fractions of the training steps when below 1, step numbers otherwise.

    Scores:
      * ``magnitude``: |W| (gradual magnitude pruning);
      * ``movement``: hard movement pruning (Sanh et al. 2020): the score accumulates ``-dL/dW' * W`` over the steps
        (``W'`` the masked weight, straight-through for pruned weights, so they can come back); top-k by score;
      * ``soft_movement``: the scores are learned (their own Adam, rate `score_learning_rate`) from the same
        straight-through gradient plus the regulariser ``regularization_weight * mean(sigmoid(S))`` that pushes all
        scores down; a weight is kept when its score is above a threshold that is learned to track the schedule's
        sparsity (one per matrix, or one for all with `scope="global"`).
    """

    method: str = field(
        default="magnitude",
        metadata={"help": f"Pruning score: one of {', '.join(METHODS)}. Default magnitude: in short runs (2 epochs "
                  "of MiniLM-L6) movement scores are still noise and movement pruning collapses to a constant "
                  "predictor (benchmarks/results/prune.json); see the README's pruning section."},
    )
    target_sparsity: float = field(
        default=0.9,
        # No percent sign in help texts: argparse %-formats them, and `--help` would fail.
        metadata={"help": "Final fraction of the targeted weights set to zero, in [0, 1): 0.9 keeps one weight in ten."},
    )
    scope: str = field(
        default="local",
        metadata={"help": "'local': every matrix reaches the target sparsity; 'global': one threshold over all "
                  "targeted matrices (some end sparser than others)."},
    )
    target_modules: str | None = field(
        default=None,
        metadata={"help": "Regular expression over module names (model.named_modules()) choosing the nn.Linear layers "
                  "to prune, e.g. '.*\\.(query|key|value)$'. Default: the q/k/v, attention-output and feed-forward "
                  "projections of every encoder block (from the architecture adapter)."},
    )
    prune_embeddings: bool = field(
        default=False, metadata={"help": "Also prune the word-embedding matrix (excluded by default)."}
    )
    prune_head: bool = field(
        default=False,
        metadata={"help": "Also prune the task head and pooler Linear layers (excluded by default)."},
    )
    pruning_start: float = field(
        default=0.1,
        metadata={"help": "Warm-up: no pruning before this point. A fraction of the training steps if < 1, else a "
                  "step number."},
    )
    pruning_end: float = field(
        default=0.7,
        metadata={"help": "End of the cubic ramp: the target sparsity is reached here and held afterwards "
                  "(cool-down). A fraction of the training steps if <= 1, else a step number."},
    )
    mask_update_every: int = field(
        default=1, metadata={"help": "Recompute the masks every N optimizer steps (>= 1): on the ramp, and for movement scores "
                  "also in the cool-down (weights may still swap at the final sparsity)."}
    )
    score_learning_rate: float = field(
        default=1e-2, metadata={"help": "soft_movement: learning rate of the scores' Adam (Sanh et al. use 1e-2)."}
    )
    regularization_weight: float = field(
        default=100.0,
        metadata={"help": "soft_movement: weight lambda of the sparsity regulariser lambda * mean(sigmoid(scores)) "
                  "(mean over all targeted weights, as if added to the loss; ramped with the schedule)."},
    )
    threshold_learning_rate: float = field(
        default=0.1,
        metadata={"help": "soft_movement: rate in (0, 1] at which the learned threshold moves, every mask update, "
                  "towards the score cut that gives the scheduled sparsity (1 = follow it exactly)."},
    )

    def __post_init__(self):
        errors = []
        if self.method not in METHODS:
            errors.append(f"method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.scope not in SCOPES:
            errors.append(f"scope: {self.scope!r} is not one of {', '.join(SCOPES)}")
        try:
            self.target_sparsity = float(self.target_sparsity)
        except (TypeError, ValueError):
            errors.append(f"target_sparsity: {self.target_sparsity!r} is not a number")
        else:
            if not 0.0 <= self.target_sparsity < 1.0:
                errors.append(f"target_sparsity must be in [0, 1) (the fraction of weights removed; 0.9 keeps 10%), "
                              f"got {self.target_sparsity}")
        for name in ("pruning_start", "pruning_end"):
            v = float(getattr(self, name))
            if v < 0:
                errors.append(f"{name} must be >= 0, got {v}")
            setattr(self, name, v)
        if not errors and self.pruning_end_is_fraction == self.pruning_start_is_fraction and self.pruning_end < self.pruning_start:
            errors.append(f"pruning_end ({self.pruning_end:g}) is before pruning_start ({self.pruning_start:g})")
        if int(self.mask_update_every) < 1:
            errors.append(f"mask_update_every must be >= 1, got {self.mask_update_every}")
        self.mask_update_every = int(self.mask_update_every)
        for name in ("score_learning_rate", "regularization_weight"):
            if float(getattr(self, name)) < 0:
                errors.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < float(self.threshold_learning_rate) <= 1:
            errors.append(f"threshold_learning_rate must be in (0, 1], got {self.threshold_learning_rate}")
        if self.target_modules is not None:
            import re

            try:
                re.compile(self.target_modules)
            except re.error as exc:
                errors.append(f"target_modules {self.target_modules!r} is not a regular expression: {exc}")
        if errors:
            raise UserInputError("Pruning configuration: " + "; ".join(errors))

    @property
    def pruning_start_is_fraction(self) -> bool:
        return self.pruning_start < 1.0

    @property
    def pruning_end_is_fraction(self) -> bool:
        return self.pruning_end <= 1.0

    def steps(self, max_steps: int) -> tuple[int, int]:
        """(start, end) as optimizer-step numbers for a run of `max_steps`; a clear error if they do not fit."""
        start = round(self.pruning_start * max_steps) if self.pruning_start_is_fraction else int(self.pruning_start)
        end = round(self.pruning_end * max_steps) if self.pruning_end_is_fraction else int(self.pruning_end)
        if end < start:
            raise UserInputError(f"pruning_end (step {end}) is before pruning_start (step {start}) for a run of "
                                 f"{max_steps} steps")
        if end > max_steps:
            raise UserInputError(f"pruning_end (step {end}) is beyond the end of training ({max_steps} optimizer steps): "
                                 f"the target sparsity would never be reached. Use a fraction (e.g. 0.7) or a step "
                                 f"<= {max_steps}")
        if start >= max_steps and self.target_sparsity > 0:
            raise UserInputError(f"pruning_start (step {start}) is at or beyond the end of training ({max_steps} steps)")
        return start, end

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(PruningConfig)]

    @classmethod
    def from_any(cls, obj) -> "PruningConfig":
        """A `PruningConfig` from the pruning fields of any object holding them (e.g. `PruningArguments`)."""
        return cls(**{name: getattr(obj, name) for name in cls.field_names()})

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.field_names()}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save_pretrained(self, directory: str) -> None:
        import os

        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w") as fh:
            fh.write(self.to_json_string())

    @classmethod
    def from_pretrained(cls, directory: str) -> "PruningConfig":
        import os

        with open(os.path.join(directory, CONFIG_NAME)) as fh:
            return cls(**json.load(fh))

    def differences(self, other: "PruningConfig") -> dict:
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


CONFIG_NAME = "pruning_config.json"
