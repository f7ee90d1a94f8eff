"""One registration per compression method (peft's `register_peft_method` idea): what the rest of the package needs
to know about a method lives in the method's own folder, and loading, model cards, the commands' argument groups and
the recipe checks loop over this registry without naming any method.

A method registers:

* the **checkpoint formats** it writes (`CheckpointFormat`): how a folder is recognised, how it loads, the loading
  code a model card shows;
* its **record entry** (`Method.name`, the key of the run record's ``methods``) and how a card describes it;
* its **stage** in recipes and commands (`Method.stage`): the script (argument groups and run) that carries it out,
  where a stage's input model goes in its options, and which stages it may follow (`Method.follows`: the shape the
  previous stages leave in, the shape this one leaves, or `StageOrderError`);
* the optional libraries a stage needs.

Users register their own the same way, from their own code::

    from hfcompress.registry import CheckpointFormat, Method, register_format, register_method

    register_format(CheckpointFormat("fp16_rounded", detect=lambda path, config: "rounded" in config, load=my_loader,
                                     loading_code="model = my_loader(PATH)", loading_note="Needs my package."))
    register_method(Method(name="rounding", stage="round", describe=lambda m: (f"rounded to {m['bits']} bits", []),
                           script=my_script, follows=lambda shape, args: "quantized"))

The built-in registrations (`BUILTIN`) are imported the first time the registry is read. This module imports nothing
of the package (ground floor); a built-in method's run side (its script) is named by a ``"module:attribute"`` string,
resolved when a command or recipe needs it, so no method folder imports the run layer above it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

# The method folders' registrations, in the order their formats are tried (the more specific markers first).
BUILTIN = (
    "hfcompress.quantize.registration",
    "hfcompress.share.registration",
    "hfcompress.qat.registration",
    "hfcompress.lowrank.registration",
    "hfcompress.prune.registration",
    "hfcompress.distill.registration",
    "hfcompress.lora.registration",
    "hfcompress.vocab.registration",
)

# What a model is after a stage, for the recipe checks. Methods may add their own names.
PLAIN = "transformers"


class StageOrderError(ValueError):
    """A stage that cannot follow what the previous stages left (the message says why and what to do)."""


@dataclass(frozen=True)
class CheckpointFormat:
    """A way a model folder can be saved.

    Attributes:
        name: the format's name (``checkpoint_format(path)`` returns it).
        detect: ``detect(path, config) -> bool`` — `config` is the folder's ``config.json`` as a dict (empty if none).
        load: ``load(path, num_threads=None, **kwargs) -> model`` in eval mode (`num_threads`: intra-op threads of
            a runtime of its own, such as ONNX Runtime; PyTorch models follow `torch.set_num_threads`).
        loading_code: the Python a model card shows to load it; ``PATH`` stands for the folder or Hub id.
        loading_note: what that code needs (a package, ``trust_remote_code``), one sentence for the card.
        priority: formats are tried from the lowest priority up (a quantized low-rank model is quantized first).
        library_name: the card's ``library_name`` metadata.
        needs_config: whether the folder must hold a ``config.json`` (ONNX folders carry their own marker).
    """

    name: str
    detect: Callable[[str, dict], bool]
    load: Callable[..., Any]
    loading_code: str
    loading_note: str
    priority: int = 50
    library_name: str = "transformers"
    needs_config: bool = True


@dataclass(frozen=True)
class Method:
    """A compression method, as the rest of the package sees it.

    Attributes:
        name: its key in a run record's ``methods`` (``"pruning"``).
        describe: ``describe(entry) -> (line, tags)``: the card's line for the record entry and the card's tags.
        stage: the recipe stage and command that carry it out (``"prune"``); None for a method that only runs as
            part of another (vocabulary trimming, inside ``quantize``).
        script: the stage's `run.scripts.Script` (argument groups and run), or ``"module:attribute"`` naming it.
        follows: ``follows(shape, args) -> shape``: given what the previous stages leave (`PLAIN`, ``"structured"``,
            ``"sparse"``, ``"lowrank"``, ``"quantized"``, or a method's own), the shape this stage leaves, or
            `StageOrderError`. `args` is the stage's parsed options (`StageArgs`). Default: any, unchanged.
        stage_inputs: ``stage_inputs(values, base_model, previous_model)`` adds to a stage's options (`values`, a
            dict, changed in place) what the method needs beyond the defaults: a training stage gets
            ``teacher_model`` = the base and ``student_model`` = the previous stage's model, any other stage
            ``model`` = the previous stage's model.
        requires: ``requires(args) -> [package, ...]``: optional libraries the stage needs with these options.
        trains: whether the stage trains (all processes take part; it resumes from its checkpoints).
        final: nothing may follow this stage in a recipe (a quantized model is not trained or compressed further).
        fine_tunes: a record entry of this method means the weights were trained (the card's
            ``base_model_relation`` is then ``finetune``).
        config_class: the method's configuration dataclass, or ``"module:attribute"`` naming it.

    `script`, `follows`, `stage_inputs` and `requires` may each be given as a ``"module:attribute"`` string.
    """

    name: str
    describe: Callable[[dict], tuple[str, list[str]]] | None = None
    stage: str | None = None
    script: Any = None
    follows: Callable[[str, "StageArgs"], str] | None = None
    stage_inputs: Callable[[dict, str | None, str | None], None] | None = None
    requires: Callable[["StageArgs"], list[str]] | None = None
    trains: bool = True
    final: bool = False
    fine_tunes: bool = False
    config_class: Any = None

    def resolve_script(self):
        """The `Script` of this method's stage (imported on first use when named by a string; a function named so is
        called for it)."""
        obj = resolve(self.script)
        return obj() if callable(obj) and not hasattr(obj, "groups") else obj

    def next_shape(self, shape: str, args: "StageArgs") -> str:
        """The shape this stage leaves after `shape`, or `StageOrderError`."""
        follows = resolve(self.follows)
        return shape if follows is None else follows(shape, args)

    def required_packages(self, args: "StageArgs") -> list[str]:
        requires = resolve(self.requires)
        return [] if requires is None else list(requires(args))

    def set_stage_inputs(self, values: dict, base_model: str | None, previous_model: str | None) -> bool:
        """Let the method place the stage's input model in `values`; False when it has no rule of its own."""
        fn = resolve(self.stage_inputs)
        if fn is None:
            return False
        fn(values, base_model, previous_model)
        return True


@dataclass
class StageArgs:
    """A stage's parsed option groups, read by option name or by group class, never by position."""

    groups: tuple = field(default_factory=tuple)

    def get(self, cls: type):
        """The group of class `cls` (or a subclass); None if the stage has none."""
        return next((g for g in self.groups if isinstance(g, cls)), None)

    def value(self, name: str, default=None):
        """The option `name` from the first group that has it."""
        for g in self.groups:
            if hasattr(g, name):
                return getattr(g, name)
        return default


def settings_text(entry: dict, keys) -> str:
    """``"k=v, ..."`` of the `keys` of a record entry that are set (not None, False, 0, empty or "none"): the
    settings a card's method line names."""
    return ", ".join(f"{k}={entry[k]}" for k in keys if entry.get(k) not in (None, False, 0, 0.0, "", "none", []))


def number_text(value, digits: int = 1, unit: str = "") -> str:
    """A number as cards write it: integers (and large whole floats) with thousands separators, others with
    `digits` decimals; None is ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) > 1000):
        return f"{int(value):,}{unit}"
    return f"{value:.{digits}f}{unit}"


_FORMATS: dict[str, CheckpointFormat] = {}
_METHODS: dict[str, Method] = {}
_loaded = False


def resolve(obj):
    """`obj` itself, or the attribute a ``"module:attribute"`` string names."""
    if isinstance(obj, str) and ":" in obj:
        module, _, attr = obj.partition(":")
        return getattr(importlib.import_module(module), attr)
    return obj


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN:
        importlib.import_module(module)


def register_format(fmt: CheckpointFormat, replace: bool = False) -> CheckpointFormat:
    """Add a checkpoint format (an existing name is an error unless `replace`)."""
    if fmt.name in _FORMATS and not replace and _FORMATS[fmt.name] != fmt:
        raise ValueError(f"a checkpoint format called {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt
    return fmt


def register_method(method: Method, replace: bool = False) -> Method:
    """Add a method (an existing name or stage is an error unless `replace`)."""
    if not replace:
        if method.name in _METHODS and _METHODS[method.name] != method:
            raise ValueError(f"a method called {method.name!r} is already registered")
        if method.stage and any(m.stage == method.stage and m.name != method.name for m in _METHODS.values()):
            raise ValueError(f"a method with the stage {method.stage!r} is already registered")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method or format called `name` (tests, or a user replacing a built-in)."""
    _METHODS.pop(name, None)
    _FORMATS.pop(name, None)


def formats() -> list[CheckpointFormat]:
    """Every registered format, in the order they are tried."""
    _load_builtins()
    return sorted(_FORMATS.values(), key=lambda f: f.priority)


def get_format(name: str) -> CheckpointFormat | None:
    _load_builtins()
    return _FORMATS.get(name)


def methods() -> list[Method]:
    _load_builtins()
    return list(_METHODS.values())


def get_method(name: str) -> Method | None:
    """The method whose record key is `name`."""
    _load_builtins()
    return _METHODS.get(name)


def stage_method(stage: str) -> Method | None:
    """The method carried out by the recipe stage / command `stage`."""
    _load_builtins()
    return next((m for m in _METHODS.values() if m.stage == stage), None)


def stage_names() -> list[str]:
    _load_builtins()
    return [m.stage for m in _METHODS.values() if m.stage]
