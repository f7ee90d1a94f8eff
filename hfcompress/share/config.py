"""`WeightSharingConfig`: how many shared values each weight matrix keeps, which matrices share, and how the k-means
runs. Validated on creation; what needs the weights (a matrix with fewer distinct values than k, a pattern matching
nothing) is checked by `hfcompress.share.check_sharing` against the model, before any training."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..configs import MethodConfig
from ..errors import UserInputError

CONFIG_NAME = "weight_sharing_config.json"
MAX_K = 256  # 8-bit indices: beyond that an int8 matrix is as small and needs no codebook


@dataclass
class WeightSharingConfig(MethodConfig):
    """Deep Compression's trained quantization (Han et al. 2016): every targeted weight matrix keeps
    ``weight_sharing_k`` shared values (k-means over its weights, centroids initialised linearly between the smallest
    and the largest weight), each weight stores the index of its value (``ceil(log2 k)`` bits: 4 for k = 16), and the
    shared values are fine-tuned (the gradients of the weights sharing a value summed into it). Pruned weights (exact
    zeros) stay zero: a matrix that has zeros keeps one of its k values fixed at 0 and clusters the others."""

    config_name = CONFIG_NAME

    weight_sharing_k: int = field(
        default=16,
        metadata={"help": "Shared values per weight matrix (2 .. 256); indices take ceil(log2 k) bits (k = 16: 4 bits). "
                  "A matrix with fewer distinct values than k is an error."},
    )
    weight_sharing_embeddings: bool = field(
        default=False,
        metadata={"help": "Share the word-embedding table too (per table, k values). MiniLM-L6's embeddings are half "
                  "its weights: without this the checkpoint shrinks about 2x, with it about 7x."},
    )
    weight_sharing_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Names of the nn.Linear layers whose weights share values: each pattern matches a name equal "
                  "to it, ending in '.' + pattern, or whole as a regular expression; comma-separated in one word works. "
                  "Default: every nn.Linear outside the task head (the encoder's projections and the pooler)."},
    )
    weight_sharing_iterations: int = field(
        default=30,
        metadata={"help": "Iterations of 1-D k-means (Lloyd) per matrix; it stops earlier when nothing moves."},
    )

    def __post_init__(self):
        errors = []
        k = self.weight_sharing_k
        if isinstance(k, bool) or not isinstance(k, (int, float)) or int(k) != k or not 2 <= int(k) <= MAX_K:
            errors.append(f"weight_sharing_k must be a whole number in 2..{MAX_K}, got {k!r}")
        else:
            self.weight_sharing_k = int(k)
        it = self.weight_sharing_iterations
        if isinstance(it, bool) or not isinstance(it, (int, float)) or int(it) != it or int(it) < 1:
            errors.append(f"weight_sharing_iterations must be a whole number >= 1, got {it!r}")
        else:
            self.weight_sharing_iterations = int(it)
        if isinstance(self.weight_sharing_modules, str):
            self.weight_sharing_modules = [self.weight_sharing_modules]
        if self.weight_sharing_modules is not None:
            self.weight_sharing_modules = [p.strip() for raw in self.weight_sharing_modules
                                           for p in re.split(r",(?![^{]*\})", str(raw)) if p.strip()]
            if not self.weight_sharing_modules:
                errors.append("weight_sharing_modules is empty: leave it unset for the default layers")
            for pattern in self.weight_sharing_modules:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    errors.append(f"weight_sharing_modules: {pattern!r} is not a regular expression: {exc}")
        self.weight_sharing_embeddings = bool(self.weight_sharing_embeddings)
        if errors:
            raise UserInputError("Weight-sharing configuration: " + "; ".join(errors))
