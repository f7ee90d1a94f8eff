from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..errors import UserInputError


class UnsupportedArchitectureError(UserInputError, NotImplementedError):
    """A model family hfcompress has no adapter for (names it and lists the supported ones)."""


_REGISTRY: dict[str, "ArchAdapter"] = {}


@dataclass(frozen=True)
class AttentionLayout:
    """Where one attention's heads live inside a block (all paths relative to the block).

    Attributes:
        module: the module holding the head count (e.g. ``attention.self``, ``self_attn``).
        q, k, v, o: the query/key/value projections (a head is `head_dim` consecutive output rows of each) and the
            output projection (a head is `head_dim` consecutive input columns). q, k and v may name one fused
            `nn.Linear` (ModernBERT's ``Wqkv``): its rows are then three equal chunks (queries, keys, values) and a
            head is `head_dim` rows of each chunk.
        count_attrs: attributes of `module` that hold its number of heads (kept true after removal).
        width_attrs: attributes of `module` that hold ``heads * head_dim`` (BERT's ``all_head_size``).
        head_dim_attr: attribute of `module` holding the width of one head.
        position_bias: ``(argument name, position)`` of a per-head bias tensor the block passes to `module` (MPNet's
            relative position bias, computed once for all layers): sliced to the kept heads of each layer.
        extra: further projections whose output rows are per head like q/k/v, cut with them where the block has
            them (DeBERTa's ``pos_key_proj`` / ``pos_query_proj``, built only for some configurations).
    """

    module: str
    q: str
    k: str
    v: str
    o: str
    count_attrs: tuple[str, ...]
    width_attrs: tuple[str, ...] = ()
    head_dim_attr: str = "attention_head_size"
    position_bias: tuple[str, int] | None = None
    extra: tuple[str, ...] = ()

    def producers(self, block: nn.Module | None = None) -> list[tuple[str, int]]:
        """``(path, chunks)`` of every projection whose rows hold the heads: q/k/v (one path with 3 chunks when fused)
        and, given `block`, the `extra` projections it has."""
        own = [(self.q, 3)] if self.q == self.k == self.v else [(self.q, 1), (self.k, 1), (self.v, 1)]
        extra = [(p, 1) for p in self.extra if block is not None and _has_path(block, p)]
        return own + extra


@dataclass(frozen=True)
class StackLayout:
    """One stack of identical blocks (an encoder; Whisper has an encoder and a decoder stack).

    Attributes:
        layers_path: dotted path from the *base* model to the `nn.ModuleList` of blocks.
        num_layers_key: config attribute holding the stack's number of blocks.
        attentions: the attentions of one block (Whisper's decoder: self- and cross-attention).
        ffn: the feed-forward up and down projections of one block (a neuron is a row of up, a column of down).
        ffn_up_chunks: the up projection's rows are this many equal chunks and a neuron is one row of each (a gated
            FFN: ModernBERT's ``Wi`` holds the input half then the gate half, 2).
        layer_types_key: config attribute listing one entry per block (ModernBERT's ``layer_types``: global or
            sliding-window attention); removing blocks keeps the entries of the kept ones, so each keeps its type.
        first_block_only: ``(path, template)`` pairs: modules the family builds as `nn.Identity` in block 0 only
            (ModernBERT's ``attn_norm``: the embeddings' norm precedes block 0), and a module of the same block with
            the type and shape they have elsewhere (``mlp_norm``). When block 0 is removed by pruning, the new first
            block keeps its real module and the structure spec records it, so a reload builds it there too.
        check_layers: ``f(config, kept)``, called with the original indices of the blocks a removal keeps; raises a
            `UserInputError` when the family cannot work with them (ModernBERT: no global-attention block left).
    """

    layers_path: str
    num_layers_key: str
    attentions: tuple[AttentionLayout, ...]
    ffn: tuple[str, str]
    ffn_up_chunks: int = 1
    layer_types_key: str | None = None
    first_block_only: tuple[tuple[str, str], ...] = ()
    check_layers: Callable | None = None


BERT_ATTENTION = AttentionLayout(
    module="attention.self", q="attention.self.query", k="attention.self.key", v="attention.self.value",
    o="attention.output.dense", count_attrs=("num_attention_heads",), width_attrs=("all_head_size",),
)


@dataclass(frozen=True)
class ArchAdapter:
    """What hfcompress needs to know about one model family.

    Attributes:
        model_types: `config.model_type` values this adapter serves.
        layers_path: dotted path from the *base* model (``model.base_model``) to the `nn.ModuleList` of blocks.
        num_layers_key: config attribute holding the number of blocks.
        hidden_size_key / num_heads_key: config attributes for width and attention heads.
        qkv_paths: dotted paths from one block to its attention's query, key and value projections (the
            `nn.Linear`s whose outputs self-attention relation distillation compares); None if unknown.
        attention_output_path: dotted path from one block to the attention's output projection.
        ffn_paths: dotted paths from one block to the feed-forward input (up) and output (down) projections.
        stacks: the head and neuron layout of every stack of blocks, for structured pruning (`StackLayout`); None
            for a family whose heads hfcompress cannot cut out.
        check_model: ``f(model)``, called before structured pruning: a `UserInputError` for a configuration of the
            family whose heads the layouts do not describe (DeBERTa: the ``share_att_key`` / ``pos_att_type``
            settings it handles are listed there).
        alignment_heads: ``(stack layers_path, attention module)`` whose heads the generation config's
            ``alignment_heads`` (``[layer, head]`` pairs: Whisper's cross-attention heads for word timestamps) index;
            structured pruning renumbers the pairs of kept heads and drops the others.

    The encoder `nn.Linear`s that pruning works on by default are the q/k/v, attention-output and both
    feed-forward projections of every block (`prunable_linears`); embeddings, pooler and task head are not among them.
    Structured pruning reads the same paths: a head is a group of q/k/v rows and attention-output columns, an FFN
    neuron a row of the up projection and a column of the down projection.
    """

    model_types: tuple[str, ...]
    layers_path: str
    num_layers_key: str = "num_hidden_layers"
    hidden_size_key: str = "hidden_size"
    num_heads_key: str = "num_attention_heads"
    qkv_paths: tuple[str, str, str] | None = ("attention.self.query", "attention.self.key", "attention.self.value")
    attention_output_path: str | None = "attention.output.dense"
    ffn_paths: tuple[str, str] | None = ("intermediate.dense", "output.dense")
    stacks: tuple[StackLayout, ...] | None = None
    alignment_heads: tuple[str, str] | None = None
    check_model: Callable | None = None

    def layers(self, model: nn.Module) -> nn.ModuleList:
        module = get_submodule(model.base_model, self.layers_path)
        if not isinstance(module, nn.ModuleList):
            raise TypeError(f"{self.layers_path} of {type(model).__name__} is {type(module).__name__}, not ModuleList")
        return module

    def set_layers(self, model: nn.Module, layers: nn.ModuleList) -> None:
        """Make `layers` (blocks of `model`'s own stack, a subset in order: a student's) the stack. The config's layer
        count follows, and a per-block config list (`StackLayout.layer_types_key`: ModernBERT's global/local pattern)
        keeps the entries of the kept blocks, so each block keeps its attention type and a reload builds the same
        pattern. A block that becomes first loses what the family builds only for block 0 (`first_block_only`:
        ModernBERT's first block has no attention norm), so a plain `save_pretrained` checkpoint reloads as it is."""
        stack = next((s for s in self.stacks or () if s.layers_path == self.layers_path), None)
        if stack is not None and (stack.layer_types_key or stack.first_block_only or stack.check_layers):
            position = {id(b): i for i, b in enumerate(self.layers(model))}
            if any(id(block) not in position for block in layers):
                raise ValueError(f"set_layers: {self.model_types[0]} keeps per-block config entries "
                                 f"({stack.layer_types_key}); give it blocks of the model's own stack")
            kept = [position[id(block)] for block in layers]
            if stack.check_layers is not None:
                stack.check_layers(model.config, kept)
            if stack.layer_types_key:
                types = list(getattr(model.config, stack.layer_types_key))
                setattr(model.config, stack.layer_types_key, [types[i] for i in kept])
            if kept and kept[0] != 0:
                for path, _ in stack.first_block_only:
                    head, _, last = path.rpartition(".")
                    setattr(get_submodule(layers[0], head) if head else layers[0], last, nn.Identity())
        head, _, last = self.layers_path.rpartition(".")
        setattr(get_submodule(model.base_model, head) if head else model.base_model, last, layers)
        setattr(model.config, self.num_layers_key, len(layers))

    def num_layers(self, config) -> int:
        return int(getattr(config, self.num_layers_key))

    def hidden_size(self, config) -> int:
        return int(getattr(config, self.hidden_size_key))

    def num_heads(self, config) -> int:
        return int(getattr(config, self.num_heads_key))

    def qkv_modules(self, model: nn.Module, block: int) -> tuple[nn.Module, nn.Module, nn.Module]:
        """The query, key and value projections of block `block` (1-based, as in `hidden_states` indexing)."""
        if self.qkv_paths is None:
            raise NotImplementedError(f"no query/key/value paths known for model types {self.model_types}")
        layers = self.layers(model)
        if not 1 <= block <= len(layers):
            raise ValueError(f"block {block} out of range: the model has blocks 1..{len(layers)}")
        return tuple(get_submodule(layers[block - 1], path) for path in self.qkv_paths)

    def qkv_chunks(self) -> tuple[tuple[int, int], ...]:
        """``(chunk, chunks)`` of the query, key and value in the outputs of `qkv_modules`: ``(0, 1)`` each for
        separate projections; ``(0, 3), (1, 3), (2, 3)`` when the three paths name one fused projection (ModernBERT's
        ``Wqkv``, whose output holds queries, keys and values one after another)."""
        if self.qkv_paths is not None and len(set(self.qkv_paths)) == 1:
            return ((0, 3), (1, 3), (2, 3))
        return ((0, 1), (0, 1), (0, 1))

    def block_linear_paths(self) -> tuple[str, ...]:
        """Dotted paths, within one block, of the `nn.Linear`s pruning targets by default (a fused q/k/v once)."""
        paths = [*(self.qkv_paths or ()), *([self.attention_output_path] if self.attention_output_path else []),
                 *(self.ffn_paths or ())]
        if not paths:
            raise NotImplementedError(f"no prunable projection paths known for model types {self.model_types}")
        return tuple(dict.fromkeys(paths))

    def prunable_linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        """The encoder projections of every block, keyed by their name in `model.named_modules()`."""
        names = {id(m): n for n, m in model.named_modules()}
        out = {}
        for block in self.layers(model):
            for path in self.block_linear_paths():
                module = get_submodule(block, path)
                if not isinstance(module, nn.Linear):
                    raise TypeError(f"{path} is {type(module).__name__}, not nn.Linear")
                out[names[id(module)]] = module
        return out


    def structure(self, model_type: str | None = None, model: nn.Module | None = None) -> tuple[StackLayout, ...]:
        """The stacks structured pruning works on; an `UnsupportedArchitectureError` if none are known. Given `model`,
        only the stacks it has: an encoder-only head of an encoder-decoder family (``WhisperForAudioClassification``
        holds Whisper's encoder and no decoder) prunes the encoder."""
        if not self.stacks:
            raise UnsupportedArchitectureError(
                f"hfcompress knows no head/neuron layout for model type {model_type or self.model_types[0]!r}; "
                f"structured pruning supports: {', '.join(structured_model_types())}"
            )
        if model is None:
            return self.stacks
        present = tuple(s for s in self.stacks if _has_path(model.base_model, s.layers_path))
        if not present:
            raise UnsupportedArchitectureError(
                f"{type(model).__name__} has none of the blocks hfcompress knows for model type "
                f"{model_type or self.model_types[0]!r} ({', '.join(s.layers_path for s in self.stacks)})"
            )
        return present

    def backbone_names(self, model: nn.Module) -> list[str]:
        """The direct children of `model` that hold its blocks (``encoder`` of ``WhisperForAudioClassification``,
        whose base model is the model itself); the rest are its task head."""
        paths = [s.layers_path for s in self.stacks or ()] + [self.layers_path]
        return sorted({p.split(".")[0] for p in paths if _has_path(model, p)})


def _has_path(module: nn.Module, path: str) -> bool:
    try:
        get_submodule(module, path)
    except AttributeError:
        return False
    return True


def structured_model_types() -> list[str]:
    return sorted(mt for mt, a in _REGISTRY.items() if a.stacks)


def get_submodule(module: nn.Module, path: str) -> nn.Module:
    """The module at dotted `path` below `module` (attribute by attribute, so it also reads non-registered parts)."""
    for part in path.split("."):
        module = getattr(module, part)
    return module


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / DeepSpeed engine wrappers (which hold it as `.module`) and peft's
    `PeftModel` (the transformers model with its LoRA layers)."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module) and not hasattr(model, "base_model"):
        model = model.module
    if callable(getattr(model, "get_base_model", None)):  # a peft PeftModel: the transformers model it adapts
        model = model.get_base_model()
    return model


def task_head_names(model: nn.Module) -> list[str]:
    """Names of the task-head modules of a `...For<Task>` model: its direct children, other than the base model, that
    hold parameters (BERT's ``classifier``, DistilBERT's ``pre_classifier`` and ``classifier``, wav2vec2's
    ``projector`` and ``classifier``, Whisper's ``proj_out``; ``WhisperForAudioClassification``, whose base model is
    itself, its children other than the ``encoder``: ``projector`` and ``classifier``). Quantizers keep these in full
    precision and LoRA trains and saves them whole (``modules_to_save``). Empty for a bare base model."""
    model = unwrap_model(model)
    base = getattr(model, "base_model", model)
    if base is model:
        # a bare base model (what AutoModel builds), or a task model without a base-model attribute whose blocks sit
        # in a child (WhisperForAudioClassification: encoder): the children other than that backbone are the head
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in _REGISTRY or _is_bare_model(model):
            return []
        backbone = _REGISTRY[model_type].backbone_names(model)
        if not backbone:  # a bare stack (e.g. WhisperEncoder): no head
            return []
        return [name for name, child in model.named_children()
                if name not in backbone and any(True for _ in child.parameters())]
    return [name for name, child in model.named_children()
            if child is not base and any(True for _ in child.parameters())]


def linear_targets(model: nn.Module, patterns: list[str] | None, option: str) -> list[str]:
    """Names of the ``nn.Linear`` layers a method works on, in `named_modules` order: those matching `patterns` (a
    name, a name's last parts, or a regular expression over the whole name), or, without patterns, every one outside
    the task head. `option` names the argument in the one error a pattern matching nothing gives (it lists the
    Linear layers there are); no layer at all is an error too."""
    import re

    model = unwrap_model(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if patterns:
        chosen = []
        for pattern in patterns:
            found = [n for n in linears
                     if n == pattern or n.endswith("." + pattern) or re.fullmatch(pattern, n) is not None]
            if not found:
                raise UserInputError(f"{option}: {pattern!r} matches no nn.Linear layer of {type(model).__name__}. "
                                     f"Its Linear layers: {', '.join(linears) or 'none'}")
            chosen += [n for n in found if n not in chosen]
        order = {n: i for i, n in enumerate(linears)}
        return sorted(chosen, key=order.__getitem__)
    heads = set(task_head_names(model))
    chosen = [n for n in linears if n.split(".")[0] not in heads]
    if not chosen:
        raise UserInputError(f"{type(model).__name__} has no nn.Linear layer outside its task head ({option})")
    return chosen


def _is_bare_model(model: nn.Module) -> bool:
    """Whether `model` is the class ``AutoModel`` builds for its model type (``BertModel``, ``Wav2Vec2Model``)."""
    try:
        from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES
    except ImportError:  # pragma: no cover
        return type(model).__name__.endswith("Model")
    names = MODEL_MAPPING_NAMES.get(getattr(model.config, "model_type", None))
    names = names if isinstance(names, (list, tuple)) else [names]
    return type(model).__name__ in names


# The task auto classes a plain checkpoint is loaded with, by the class its config.json names (first match wins).
TASK_AUTO_CLASSES = ("AutoModelForSequenceClassification", "AutoModelForSpeechSeq2Seq", "AutoModelForCTC",
                     "AutoModelForAudioClassification", "AutoModelForTokenClassification",
                     "AutoModelForQuestionAnswering")


def model_class_for(config, default: str = "AutoModelForSequenceClassification"):
    """The transformers auto class to load a checkpoint of `config` (a config or config.json as a dict) with: the
    task auto class that maps the class its ``architectures`` names (``WhisperForConditionalGeneration`` ->
    ``AutoModelForSpeechSeq2Seq``, ``Wav2Vec2ForCTC`` -> ``AutoModelForCTC``, ``WhisperForAudioClassification`` ->
    ``AutoModelForAudioClassification``, ``BertForTokenClassification`` -> ``AutoModelForTokenClassification``,
    ``BertForQuestionAnswering`` -> ``AutoModelForQuestionAnswering``); else `default` where that maps the model type (a text encoder saved bare
    still loads as a sequence classifier, as before); else the named class itself; else `default`."""
    import transformers

    from ..remote_code import plain_class_name

    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    model_type = get("model_type")
    archs = get("architectures") or []
    arch = plain_class_name(archs[0]) if archs else None  # HfcPrunedX / HfcLowRankX: the transformers class X

    def mapped(auto_name: str):
        mapping = getattr(getattr(transformers, auto_name, None), "_model_mapping", None)
        names = getattr(mapping, "_model_mapping", {}).get(model_type)
        return names if isinstance(names, (list, tuple)) else [names] if names else []

    for auto in TASK_AUTO_CLASSES:
        if arch and arch in mapped(auto):
            return getattr(transformers, auto)
    if mapped(default):
        return getattr(transformers, default)
    if arch and hasattr(transformers, arch):
        return getattr(transformers, arch)
    return getattr(transformers, default)


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def register_adapter(adapter: ArchAdapter) -> ArchAdapter:
    for mt in adapter.model_types:
        _REGISTRY[mt] = adapter
    return adapter


def get_adapter(model_or_config) -> ArchAdapter:
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise UnsupportedArchitectureError(
            f"hfcompress has no architecture adapter for model_type {model_type!r} ({type(config).__name__}); "
            f"supported: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[model_type]
