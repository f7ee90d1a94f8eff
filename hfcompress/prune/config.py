"""`PruningConfig`: what is pruned, by which score, on which schedule. Validated on creation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..configs import MethodConfig
from ..errors import UserInputError

METHODS = ("magnitude", "movement", "soft_movement")
STRUCTURED_METHODS = ("taylor", "magnitude", "movement")
GRANULARITIES = ("weight", "structured")
SCOPES = ("local", "global")


CONFIG_NAME = "pruning_config.json"

@dataclass
class PruningConfig(MethodConfig):
    """Pruning during training: single weights of the encoder's `nn.Linear` layers (``granularity="weight"``), or
    whole attention heads and feed-forward neurons that are then cut out of the model (``"structured"``).

    The sparsity (fraction of the targeted weights set to zero) follows a cubic schedule (Zhu & Gupta 2017): 0 until
    `pruning_start`, then ``s_t = s_f * (1 - (1 - p)^3)`` with ``p`` going 0 -> 1 until `pruning_end`, then the
    final sparsity `s_f` is held while training goes on (the cool-down, which lets the remaining weights recover).
    `pruning_start`/`pruning_end` are fractions of the training steps when below 1, step numbers otherwise.

    Scores:
      * ``magnitude``: |W| (gradual magnitude pruning);
      * ``movement``: hard movement pruning (Sanh et al. 2020): each weight has a score ``S`` trained, as in the
        reference code, by AdamW (rate `score_learning_rate` on the weights' learning-rate schedule, no weight decay)
        from the straight-through gradient ``dL/dS = dL/dW' * W`` (``W'`` the masked weight, so pruned weights keep
        learning and can come back); the top (1 - sparsity) by score are kept;
      * ``soft_movement``: the same scores, plus the regulariser ``lambda * mean(sigmoid(S))`` (mean per matrix,
        averaged over matrices; lambda = `regularization_weight`, ramped with the schedule); a weight is kept while
        ``sigmoid(S) > tau``, tau ramped to `soft_threshold` on the schedule. The regulariser, not
        `target_sparsity`, decides the final sparsity (as in the paper); `target_sparsity` sets the schedule's
        nominal end and is what the reached sparsity is compared with in the logs.

    Structured (heads of q/k/v rows + output-projection columns, neurons of up-projection rows + down-projection
    columns), on the same schedule; a removed head or neuron is masked (its output-projection columns) while training
    goes on, and cut out of every matrix at the end (`structure.apply_structure`):
      * ``taylor`` (default): Michel et al. 2019 without head masks: for each example, the product of a head's
        (neuron's) output with the loss gradient at that output, summed, in absolute value, summed over training;
      * ``movement``: block movement pruning (nn_pruning's hybrid pruning, Lagunas et al. 2021): one score per
        head (its output-projection columns) or neuron (its down-projection column), trained like the weights'
        movement scores (AdamW at `score_learning_rate` on the weights' schedule, from ``sum over the block of
        dL/dW' * W``), the top blocks kept;
      * ``magnitude``: summed absolute weights of the group.
    """

    config_name = CONFIG_NAME

    granularity: str = field(
        default="weight",
        metadata={"help": "'weight': unstructured pruning of single weights (a sparse model of the same shape). "
                  "'structured': whole attention heads and feed-forward neurons (and, with allow_layer_removal, "
                  "blocks) are pruned and then cut out of the matrices, so the model is really smaller and faster."},
    )
    method: str | None = field(
        default=None,
        metadata={"help": f"Pruning score. Weights: one of {', '.join(METHODS)}; default magnitude (movement scores "
                  "need long runs: Sanh et al. train 10 epochs). Structured: one of "
                  f"{', '.join(STRUCTURED_METHODS)}; default taylor (Michel et al. 2019: per example, the absolute "
                  "first-order change of the loss if the head or neuron were removed, summed over training), "
                  "movement = block movement pruning (one score per head or neuron, trained by AdamW like the weights' "
                  "movement scores), "
                  "magnitude = summed absolute weights of the head or neuron."},
    )
    target_sparsity: float = field(
        default=0.9,
        # No percent sign in help texts: argparse %-formats them, and `--help` would fail.
        metadata={"help": "Final fraction of the targeted weights set to zero, in [0, 1): 0.9 keeps one weight in ten. "
                  "Structured: the fraction of heads and of neurons removed (unless head_sparsity / ffn_sparsity "
                  "or a budget say otherwise)."},
    )
    head_sparsity: float | None = field(
        default=None,
        metadata={"help": "Structured: fraction of the attention heads removed, in [0, 1). Default: target_sparsity."},
    )
    ffn_sparsity: float | None = field(
        default=None,
        metadata={"help": "Structured: fraction of the feed-forward neurons removed, in [0, 1). Default: "
                  "target_sparsity."},
    )
    target_parameters: int | None = field(
        default=None,
        metadata={"help": "Structured: a parameter budget instead of fractions: the pruned model has at most this many "
                  "parameters (the same fraction of heads and neurons is removed, the smallest that fits)."},
    )
    target_speedup: float | None = field(
        default=None,
        metadata={"help": "Structured: a latency budget instead of fractions: remove the smallest equal fraction of "
                  "heads and neurons whose pruned shape runs this many times faster than the unpruned model, "
                  "measured before training on this machine's CPU (batch 32 x 128, median of 5)."},
    )
    allow_layer_removal: bool = field(
        default=False,
        metadata={"help": "Structured: a block left with no attention heads or no neurons is removed whole (skipped "
                  "from then on in training, and cut out at the end). Without it every block keeps at least one "
                  "head and one neuron."},
    )
    structured_stacks: str | None = field(
        default=None,
        metadata={"help": "Structured: comma-separated stacks of blocks to prune, by path ('encoder.layers') or first "
                  "part ('encoder'); Whisper has 'encoder' and 'decoder' (self- and cross-attention). Default: every "
                  "stack the model has."},
    )
    scope: str = field(
        default="local",
        metadata={"help": "'local': every matrix (structured: every block) reaches the target sparsity; 'global': one "
                  "threshold over all targeted matrices (structured: heads ranked across blocks, each block's "
                  "scores normalised, Michel et al.; some blocks end sparser than others)."},
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
        default=1e-2,
        metadata={"help": "movement and soft_movement: learning rate of the scores' AdamW (Sanh et al.'s "
                  "mask_scores_learning_rate, 1e-2), scaled over training like the weights' learning rate."},
    )
    regularization_weight: float = field(
        default=100.0,
        metadata={"help": "soft_movement: final weight lambda of the sparsity regulariser lambda * mean(sigmoid(scores)) "
                  "(mean per matrix, averaged over matrices, as if added to the loss; ramped with the schedule). It "
                  "decides how sparse the model ends: larger is sparser."},
    )
    soft_threshold: float = field(
        default=0.1,
        metadata={"help": "soft_movement: final threshold tau in (0, 1): a weight is kept while sigmoid(score) > tau; "
                  "tau ramps from 0 on the schedule (Sanh et al.'s final_threshold, 0.1)."},
    )
    threshold_learning_rate: float = field(
        default=0.1,
        metadata={"help": "Deprecated and unused (soft_movement's threshold is now scheduled, as in the paper); "
                  "accepted so that existing commands keep working."},
    )

    def __post_init__(self):
        errors = []
        if self.granularity not in GRANULARITIES:
            errors.append(f"granularity: {self.granularity!r} is not one of {', '.join(GRANULARITIES)}")
        structured = self.granularity == "structured"
        allowed = STRUCTURED_METHODS if structured else METHODS
        if self.method is None:
            self.method = allowed[0]
        if self.method not in allowed:
            errors.append(f"method: {self.method!r} is not one of {', '.join(allowed)} (for granularity "
                          f"{self.granularity!r})")
        for name in ("head_sparsity", "ffn_sparsity"):
            v = getattr(self, name)
            if v is None:
                continue
            if not structured:
                errors.append(f"{name} applies to granularity 'structured' only")
            elif not 0.0 <= float(v) < 1.0:
                errors.append(f"{name} must be in [0, 1) (1 would remove every head or neuron and leave no model), "
                              f"got {v}")
            else:
                setattr(self, name, float(v))
        budgets = [n for n in ("target_parameters", "target_speedup") if getattr(self, n) is not None]
        if budgets and not structured:
            errors.append(f"{budgets[0]} applies to granularity 'structured' only")
        if len(budgets) > 1:
            errors.append("give one budget: target_parameters or target_speedup, not both")
        if budgets and (self.head_sparsity is not None or self.ffn_sparsity is not None):
            errors.append(f"{budgets[0]} chooses the fractions of heads and neurons itself: leave head_sparsity and "
                          "ffn_sparsity unset")
        if self.target_parameters is not None and int(self.target_parameters) <= 0:
            errors.append(f"target_parameters must be a positive number of parameters, got {self.target_parameters}")
        if self.target_speedup is not None and float(self.target_speedup) <= 1.0:
            errors.append(f"target_speedup must be > 1 (times faster than the unpruned model), got {self.target_speedup}")
        if structured:
            for name in ("target_modules", "prune_embeddings", "prune_head"):
                if getattr(self, name):
                    errors.append(f"{name} applies to granularity 'weight' only (structured pruning works on the "
                                  "heads and feed-forward neurons of every block, from the architecture adapter)")
        if self.structured_stacks is not None and not structured:
            errors.append("structured_stacks applies to granularity 'structured' only")
        elif self.structured_stacks is not None and not self.stack_list:
            errors.append("structured_stacks names no stack (give e.g. 'encoder' or 'decoder.layers', or leave it "
                          "unset for all)")
        if self.allow_layer_removal and not structured:
            errors.append("allow_layer_removal applies to granularity 'structured' only")
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
        if not 0 < float(self.soft_threshold) < 1:
            errors.append(f"soft_threshold must be in (0, 1) (a value of sigmoid(score)), got {self.soft_threshold}")
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
    def stack_list(self) -> list[str]:
        return [x.strip() for x in str(self.structured_stacks or "").split(",") if x.strip()]

    @property
    def structured(self) -> bool:
        return self.granularity == "structured"

    def fractions(self) -> tuple[float, float]:
        """(heads, neurons) removed at the end of the schedule, before any budget is resolved."""
        heads = self.target_sparsity if self.head_sparsity is None else self.head_sparsity
        ffn = self.target_sparsity if self.ffn_sparsity is None else self.ffn_sparsity
        return heads, ffn

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

    def soft_movement_shortfall(self, max_steps: int) -> str | None:
        """soft_movement: why no weight can be pruned in a run of `max_steps`, or None. A score starts at 0
        (sigmoid 0.5) and is pruned below logit(soft_threshold) (-2.2 for 0.1); AdamW moves it at most about its
        learning rate per step, on the weights' schedule (about half the steps at the full rate under linear
        decay), so a run shorter than ``2 * |logit(tau)| / score_learning_rate`` steps keeps every weight."""
        if self.method != "soft_movement" or self.target_sparsity <= 0:
            return None
        need = abs(math.log(self.soft_threshold / (1 - self.soft_threshold)))
        reach = self.score_learning_rate * max_steps / 2
        if reach >= need:
            return None
        return (f"soft_movement cannot prune in this run: a score moves at most ~{reach:.2f} in {max_steps} steps at "
                f"score_learning_rate {self.score_learning_rate:g}, and must fall by {need:.2f} (below "
                f"logit(soft_threshold {self.soft_threshold:g})) before a weight goes. Train for at least "
                f"{math.ceil(2 * need / self.score_learning_rate)} steps, raise --score_learning_rate, or use "
                "--method movement (hard: top-k at the scheduled sparsity)")

    def differences(self, other: "PruningConfig") -> dict:
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


