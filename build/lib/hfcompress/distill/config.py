from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from ..errors import UserInputError

LayerMap = list[tuple[int, int]]


def parse_layer_map(value, name: str = "layer_map") -> LayerMap | None:
    """Accept ``"1:2,2:4"``, ``[[1, 2], [2, 4]]``, ``{1: 2, 2: 4}`` or ``None``.

    Indices follow `output_hidden_states`: 0 is the embedding output, i (1..num_layers) the output of block i.
    `name` is the field named in error messages.
    """
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        pairs = []
        for item in value.replace(" ", "").split(","):
            s, sep, t = item.partition(":")
            if not sep or not s.lstrip("-").isdigit() or not t.lstrip("-").isdigit():
                raise ValueError(f"{name} entry {item!r} is not 'student:teacher' (e.g. '1:2,2:4,3:6')")
            pairs.append((int(s), int(t)))
        return pairs
    if isinstance(value, dict):
        return [(int(s), int(t)) for s, t in value.items()]
    return [(int(s), int(t)) for s, t in value]


def uniform_layer_map(student_layers: int, teacher_layers: int) -> LayerMap:
    """Student block i <- teacher block round(i * T / S), the usual choice (TinyBERT, DistilBERT-style)."""
    return [(i, max(1, round(i * teacher_layers / student_layers))) for i in range(1, student_layers + 1)]


def resolve_layer_map(pairs: LayerMap | None, student_layers: int, teacher_layers: int) -> LayerMap:
    """The explicit pairs (checked against both depths) or the uniform default."""
    pairs = pairs or uniform_layer_map(student_layers, teacher_layers)
    for s, t in pairs:
        if not 0 <= s <= student_layers:
            raise UserInputError(f"layer_map student index {s} out of range: the student has layers 0..{student_layers}")
        if not 0 <= t <= teacher_layers:
            raise UserInputError(f"layer_map teacher index {t} out of range: the teacher has layers 0..{teacher_layers}")
    return pairs


@dataclass
class DistillationConfig:
    """What to distil and how the terms are weighted. Validated on creation.

    The training loss is
    ``alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y)
      + hidden_weight * L_hidden + attention_weight * L_attention + relation_weight * L_relation``,
    every term normalised by the number of labelled items of the whole (accumulated, all-process) batch.

    With `intermediate_fraction` f > 0 training is staged (TinyBERT): during the first f of the optimizer steps only
    the intermediate terms (hidden states, attention maps, relations) count, afterwards only the prediction terms
    (logit KD and hard-label loss).
    """

    temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature T of logit distillation (> 0). The KL term is scaled by T^2."}
    )
    alpha: float = field(
        default=0.5,
        metadata={"help": "Weight of the logit-distillation term in [0, 1]; the hard-label loss gets 1 - alpha."},
    )
    logit_weight: float = field(
        default=1.0,
        metadata={"help": "Extra multiplier on the whole logit-KD term (0 turns logit distillation off)."},
    )
    hidden_weight: float = field(
        default=0.0, metadata={"help": "Weight of hidden-state distillation (0 turns it off)."}
    )
    hidden_loss: str = field(
        default="mse", metadata={"help": "Hidden-state distance: 'mse' or 'cosine' (1 - cosine similarity per token)."}
    )
    attention_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of attention-map distillation, KL over attention rows (0 turns it off). Needs the "
                  "same number of heads in student and teacher, and eager attention (set automatically)."},
    )
    layer_map: str | None = field(
        default=None,
        metadata={"help": "Student-to-teacher layer pairs 'student:teacher,...' in hidden_states indexing (0 = "
                  "embeddings, i = block i), e.g. '1:4,2:8,3:12'. Default: uniform spacing over the blocks."},
    )
    relation_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of MiniLMv2 self-attention relation distillation (0 turns it off): KL between the "
                  "teacher's and the student's query-query, key-key and value-value relations (softmax of scaled dot "
                  "products per relation head), summed over q/k/v, averaged over relation heads and valid tokens. "
                  "Needs neither equal widths nor equal head counts, and works with sdpa attention."},
    )
    relation_layer_map: str | None = field(
        default=None,
        metadata={"help": "Block pairs 'student:teacher,...' for relation distillation, 1-based blocks (e.g. '6:12'). "
                  "Default: the last student block <- the last teacher block."},
    )
    relation_heads: int | None = field(
        default=None,
        metadata={"help": "Number of relation heads R (must divide both the student's and the teacher's width). "
                  "Default: the student's attention head count."},
    )
    intermediate_fraction: float = field(
        default=0.0,
        metadata={"help": "Staged distillation in one run, in [0, 1): the first fraction of the optimizer steps "
                  "trains only the intermediate terms (hidden states, attention maps, relations), the rest only the "
                  "prediction terms (logit KD + hard-label loss). 0 = all terms together. Needs "
                  "DistillationCallback (added by DistillationTrainer) to track the step."},
    )

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        for name in ("logit_weight", "hidden_weight", "attention_weight", "relation_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.hidden_loss not in ("mse", "cosine"):
            raise ValueError(f"hidden_loss must be 'mse' or 'cosine', got {self.hidden_loss!r}")
        if isinstance(self.layer_map, (list, dict)):
            self.layer_map = ",".join(f"{s}:{t}" for s, t in parse_layer_map(self.layer_map))
        parse_layer_map(self.layer_map)  # syntax check now; ranges are checked against the models
        if isinstance(self.relation_layer_map, (list, dict)):
            self.relation_layer_map = ",".join(
                f"{s}:{t}" for s, t in parse_layer_map(self.relation_layer_map, "relation_layer_map")
            )
        for s, t in parse_layer_map(self.relation_layer_map, "relation_layer_map") or []:
            if s < 1 or t < 1:
                raise ValueError(
                    f"relation_layer_map pair {s}:{t}: relation distillation maps attention blocks, numbered from 1"
                )
        if self.relation_heads is not None and (isinstance(self.relation_heads, bool) or int(self.relation_heads) < 1
                                                or int(self.relation_heads) != self.relation_heads):
            raise ValueError(f"relation_heads must be a positive integer or None, got {self.relation_heads!r}")
        if not 0.0 <= self.intermediate_fraction < 1.0:
            raise ValueError(f"intermediate_fraction must be in [0, 1), got {self.intermediate_fraction}")
        if self.intermediate_fraction > 0:
            if not self.uses_intermediate:
                raise ValueError(
                    f"intermediate_fraction={self.intermediate_fraction} stages training, but no intermediate term is "
                    "on: set hidden_weight, attention_weight or relation_weight > 0 (or intermediate_fraction=0)"
                )
            if not self.uses_prediction:
                raise ValueError(
                    f"intermediate_fraction={self.intermediate_fraction} leaves a second stage with no term: alpha=1 "
                    "and logit_weight=0 turn off both the hard-label loss and logit distillation"
                )

    @property
    def pairs(self) -> LayerMap | None:
        return parse_layer_map(self.layer_map)

    @property
    def uses_hidden(self) -> bool:
        return self.hidden_weight > 0

    @property
    def uses_attention(self) -> bool:
        return self.attention_weight > 0

    @property
    def uses_relation(self) -> bool:
        return self.relation_weight > 0

    @property
    def relation_pairs(self) -> LayerMap | None:
        return parse_layer_map(self.relation_layer_map, "relation_layer_map")

    @property
    def uses_intermediate(self) -> bool:
        """Hidden-state, attention-map or relation distillation is on (the terms of the first stage)."""
        return self.uses_hidden or self.uses_attention or self.uses_relation

    @property
    def uses_prediction(self) -> bool:
        """Logit distillation or the hard-label loss is on (the terms of the second stage)."""
        return self.alpha < 1 or self.logit_weight > 0

    @property
    def staged(self) -> bool:
        return self.intermediate_fraction > 0

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(DistillationConfig)}

    @classmethod
    def from_any(cls, obj) -> "DistillationConfig":
        """Build from a dict or from any object with the same attribute names (e.g. `DistillationArguments`)."""
        if isinstance(obj, cls) and type(obj) is cls:
            return obj
        get = obj.get if isinstance(obj, dict) else (lambda k, d=None: getattr(obj, k, d))
        return cls(**{f.name: get(f.name, f.default) for f in fields(cls)})

    def to_json_string(self) -> str:
        return json.dumps(asdict(self) if type(self) is DistillationConfig else self.to_dict(), indent=2)
