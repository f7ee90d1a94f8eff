"""Recipes: several compression methods composed in one command, each stage one script of the shared pipeline.

A recipe is a YAML file::

    name: minilm-l6-prune-int8           # default: the file's name
    base_model: minilm-l6                # fine-tuned once on the data (cached) if it has no task head
    seed: 42
    data: {dataset: rotten-tomatoes}     # DataArguments fields, shared by every stage
    stages:
      - method: prune                    # distill | prune | lowrank | lora | quantize
        args: {granularity: structured, target_sparsity: 0.5}   # that script's own options
      - method: quantize
        args: {vocab_trim: true, quantization: onnx_int8}
    measure: {latency_rounds: 3}         # ReportArguments fields (the final measurement)
    hub: {push_to_hub: false}            # HubArguments fields, and push_dry_run

`run_recipe` checks the whole file before any work (unknown keys, options a stage's script does not have, methods
in an order that cannot work, a method whose library is not installed, a missing base model: one error naming the
recipe line), then runs each stage into ``<output_dir>/stages/<NN>-<name>/`` through `scripts.script(method)`, the
entry of the script of that name: a training stage learns from the base (its teacher) and starts from the previous
stage's model; `quantize` compresses the previous stage's model. Each stage records what it measured (its run record,
its card against the base). A killed recipe resumes where it was: finished stages are kept (their settings are
checked), the interrupted one resumes from its last Trainer checkpoint. At the end the last stage's model is copied
to ``<output_dir>/model``, measured against the base with every stage's model in the same session, and gets its card
and plot; ``recipe_summary.json`` holds all of it; the Hub push is the final step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser

from ..assets import ASSETS, canonical_name, resolve_model_path
from ..checkpoints import latest_complete_checkpoint
from ..errors import UserInputError
from ..files import write_json_atomic
from ..registry import PLAIN, StageArgs, StageOrderError, methods, stage_method, stage_names
from ..report.record import RunRecord
from ..tokens import redact_text, take_from_mapping
from . import steps
from .arguments import DataArguments
from .report import ReportArguments, hub_settings_of, measure_and_card, publish
from .scripts import script

logger = logging.getLogger(__name__)

TOP_KEYS = {"name", "description", "base_model", "seed", "data", "stages", "measure", "hub"}
STAGE_KEYS = {"name", "method", "args"}
HUB_KEYS = {"push_to_hub", "hub_model_id", "hub_private_repo", "hub_token", "hub_revision", "push_dry_run"}
STAGES_DIR = "stages"
STATE_FILE = "recipe_state.json"
SUMMARY = "recipe_summary.json"
# options the recipe sets for every stage: a stage giving one is an error
MANAGED = {"output_dir", "seed", "resume_from_checkpoint", *(f.name for f in dataclasses.fields(DataArguments))}
STAGE_REPORT = {"measure_memory": False}  # a training stage's own measurement: no fresh-process memory probe


@dataclass
class Stage:
    index: int
    name: str
    method: str
    args: dict
    line: int
    arg_lines: dict

    @property
    def spec(self):
        """The registered method this stage carries out (`hfcompress.registry`)."""
        return stage_method(self.method)

    @property
    def script_name(self) -> str:
        return self.spec.resolve_script().name

    @property
    def dir_name(self) -> str:
        return f"{self.index + 1:02d}-{self.name}"


@dataclass
class Recipe:
    path: str
    name: str
    base_model: str
    seed: int
    data: dict
    stages: list[Stage]
    measure: dict
    hub: dict
    lines: dict
    description: str | None = None
    text: str = ""

    def where(self, *key) -> str:
        line = self.lines.get(tuple(key)) or self.lines.get(tuple(key[:-1])) or self.lines.get(())
        return f"recipe {self.path} line {line}"


def _line_map(node, path=(), out=None) -> dict:
    """YAML key path -> 1-based line of its key (list items by index)."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[(*path, key.value)] = key.start_mark.line + 1
            _line_map(value, (*path, key.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            _line_map(item, (*path, i), out)
    return out


@dataclass
class RecipeArguments:
    _argument_group_name = "Recipe"

    recipe: str = field(default=None, metadata={"help": "The recipe: a YAML file, or the name of one shipped with hfcompress "
                        "(hfcompress/recipes/: minilm-l6-prune-int8, minilm-l6-distil3-prune-lora-int8), e.g. minilm-l6-prune-int8.yaml."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Run folder (default: out/<recipe name>); run again with the same one to resume."}
    )


def load_recipe(path: str) -> Recipe:
    """Read and check the shape of a recipe file (what each stage's options mean is checked by `check_recipe`)."""
    if not os.path.isfile(path):
        raise UserInputError(f"--recipe {path!r} does not exist")
    with open(path) as fh:
        text = fh.read()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserInputError(f"recipe {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UserInputError(f"recipe {path} must be a mapping with base_model and stages")
    lines = _line_map(node)

    def err(msg, *key):
        line = lines.get(tuple(key)) or lines.get(())
        return UserInputError(f"recipe {path} line {line}: {msg}")

    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise err(f"unknown key {unknown[0]!r} (a recipe has: {', '.join(sorted(TOP_KEYS))})", unknown[0])
    if not data.get("base_model"):
        raise err("base_model is missing: the model compressed and measured against (asset name, folder, Hub id)")
    for key in ("data", "measure", "hub"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise err(f"{key} must be a mapping of option names to values", key)
    stages_raw = data.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise err("stages must be a non-empty list of {method, args}", "stages")
    stages, names = [], set()
    for i, raw in enumerate(stages_raw):
        if not isinstance(raw, dict):
            raise err("a stage is a mapping with method (and args, name)", "stages", i)
        bad = sorted(set(raw) - STAGE_KEYS)
        if bad:
            raise err(f"unknown stage key {bad[0]!r} (a stage has: method, args, name; the method's options go "
                      "under args)", "stages", i, bad[0])
        method = raw.get("method")
        if method not in stage_names():
            raise err(f"stage method must be one of {', '.join(stage_names())}, got {method!r}", "stages", i, "method")
        args = raw.get("args") or {}
        if not isinstance(args, dict):
            raise err("args must be a mapping of the method's options", "stages", i, "args")
        name = str(raw.get("name") or method)
        if name in names:
            raise err(f"two stages are called {name!r}: give one a name", "stages", i)
        names.add(name)
        arg_lines = {k: lines.get(("stages", i, "args", k)) for k in args}
        stages.append(Stage(i, name, method, dict(args), lines.get(("stages", i)), arg_lines))
    return Recipe(path=path, name=str(data.get("name") or os.path.splitext(os.path.basename(path))[0]),
                  base_model=str(data["base_model"]), seed=int(data.get("seed", 42)), data=dict(data.get("data") or {}),
                  stages=stages, measure=dict(data.get("measure") or {}),
                  hub=take_from_mapping(dict(data.get("hub") or {})),  # a token in the file stays in memory only
                  lines=lines, description=data.get("description"), text=redact_text(text))


def _parse_groups(types, values: dict, where) -> tuple:
    """`values` into the dataclasses `types` (as the script's parser would), with unknown keys named."""
    parser = HfArgumentParser(types)
    known = {a.dest for a in parser._actions}
    for key in values:
        if key not in known:
            raise UserInputError(f"{where(key)}: unknown option {key!r} for this method (see the script's --help)")
    try:
        return parser.parse_dict(values, allow_extra_keys=False)
    except UserInputError as exc:
        raise UserInputError(f"{where(None)}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise UserInputError(f"{where(None)}: {exc}") from None


def _requirements(stage: Stage, parsed) -> list[str]:
    """The Python packages a stage needs beyond the core ones: what every registered method asks for these options
    (LoRA options in a distill stage need peft as in a lora stage)."""
    args = StageArgs(tuple(parsed))
    return [p for m in methods() for p in m.required_packages(args)]


def stage_values(recipe: Recipe, stage: Stage, base_dir: str | None, previous_model: str | None, stage_dir: str,
                 resume: str | None = None) -> dict:
    """The options a stage runs with: the recipe's data and seed, its own args, and where its input comes from (a
    training stage: the base as teacher, the previous stage's model as student; any other stage: the previous
    stage's model as `model`; a method's `stage_inputs` adds its own)."""
    values = {**recipe.data, "seed": recipe.seed, "output_dir": stage_dir, **stage.args}
    spec = stage.spec
    base = base_dir or recipe.base_model
    if spec.trains:
        values.setdefault("teacher_model", base)
        if previous_model and "student_model" not in stage.args:
            values["student_model"] = previous_model
            if "student_layers" not in stage.args:
                values.setdefault("student_num_layers", 0)
    else:  # a post-training stage works on the previous stage's model
        values.setdefault("model", previous_model or base)
    spec.set_stage_inputs(values, base, previous_model)
    values.update({k: v for k, v in recipe.measure.items() if k != "measure"})
    if spec.trains:
        values.update(STAGE_REPORT)
        if resume:
            values["resume_from_checkpoint"] = resume
    return values


def check_recipe(recipe: Recipe, output_dir: str):
    """Everything that can be wrong with a recipe, before any work; one error naming the recipe line. Returns the
    recipe's Hub settings (`hub.HubSettings`, None when nothing is to be pushed)."""
    for key in recipe.data:
        if key not in {f.name for f in dataclasses.fields(DataArguments)}:
            raise UserInputError(f"{recipe.where('data', key)}: unknown data option {key!r} (the Data options of the "
                                 "scripts: dataset, text_column, label_column, max_length, ...)")
    for key in recipe.measure:
        if key not in {f.name for f in dataclasses.fields(ReportArguments)}:
            raise UserInputError(f"{recipe.where('measure', key)}: unknown measure option {key!r} (one of "
                                 f"{', '.join(f.name for f in dataclasses.fields(ReportArguments))})")
    for key in recipe.hub:
        if key not in HUB_KEYS:
            raise UserInputError(f"{recipe.where('hub', key)}: unknown hub option {key!r} (one of "
                                 f"{', '.join(sorted(HUB_KEYS))})")
    base = recipe.base_model
    canon = canonical_name(base)
    try:
        found = os.path.isdir(resolve_model_path(base)) or (base.count("/") == 1 and not os.path.exists(base))
    except UserInputError:  # a path that does not exist
        found = False
    if not found:
        hint = (f"the offline asset {canon!r} is not installed: run `hfcompress assets install`"
                if canon and canon in ASSETS else "not an installed asset name, an existing folder or a Hub id")
        raise UserInputError(f"{recipe.where('base_model')}: base model {base!r} not found ({hint})")

    shape, previous = PLAIN, None  # what the previous stages leave (see `registry.Method.follows`)
    for stage in recipe.stages:
        where = lambda key, s=stage: (f"recipe {recipe.path} line {s.arg_lines.get(key) or s.line}"  # noqa: E731
                                      f" (stage {s.name!r})")
        managed = sorted(set(stage.args) & MANAGED)
        if managed:
            raise UserInputError(f"{where(managed[0])}: {managed[0]!r} is set by the recipe for every stage (data: "
                                 "under data:, seed: at the top, output_dir: --output_dir), not by a stage")
        if previous is not None and previous.spec.final:
            raise UserInputError(f"recipe {recipe.path} line {stage.line}: stage {stage.name!r} ({stage.method}) comes "
                                 f"after {previous.method}: {previous.method} is the last stage of a recipe (its model "
                                 "is not trained or compressed further)")
        # the stage's options as its script parses them; where its model comes from is only known at run time
        values = stage_values(recipe, stage, None, None, output_dir)
        parsed = _parse_groups(script(stage.script_name).groups, values, where)
        missing = [p for p in _requirements(stage, parsed) if importlib.util.find_spec(p) is None]
        if missing:
            raise UserInputError(f"recipe {recipe.path} line {stage.line}: stage {stage.name!r} needs "
                                 f"{', '.join(sorted(set(missing)))}, which is not installed")
        try:
            shape = stage.spec.next_shape(shape, StageArgs(tuple(parsed)))
        except (StageOrderError, UserInputError) as exc:
            raise UserInputError(f"recipe {recipe.path} line {stage.line}: stage {stage.name!r}: {exc}") from None
        previous = stage
    return hub_settings_of(_hub_namespace(recipe.hub), output_dir=output_dir)


def _hub_namespace(values: dict):
    from types import SimpleNamespace

    return SimpleNamespace(**values)


def _fingerprint(recipe: Recipe, stage: Stage, previous: str) -> str:
    spec = {"previous": previous, "base_model": recipe.base_model, "seed": recipe.seed, "data": recipe.data,
            "method": stage.method, "args": stage.args}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)


def _copy_folder(src: str, dst: str) -> None:
    """Copy a model folder to `dst`, which appears only once complete (an older one is replaced)."""
    parent = os.path.dirname(os.path.abspath(dst))
    with tempfile.TemporaryDirectory(dir=parent, prefix=".hfc-copy-") as tmp:
        target = os.path.join(tmp, "model")
        shutil.copytree(src, target, ignore=shutil.ignore_patterns("README.md", "*.png"))
        if os.path.exists(dst):
            shutil.rmtree(dst)
        os.replace(target, dst)


def run_recipe(recipe_path: str, output_dir: str | None = None, hub_overrides: dict | None = None) -> RunRecord:
    """Run a recipe end to end (see the module docstring); returns its `RunRecord` (``recipe_summary.json``)."""
    from accelerate import PartialState

    recipe = load_recipe(recipe_path)
    recipe.hub.update(take_from_mapping({k: v for k, v in (hub_overrides or {}).items() if v not in (None, False)}))
    output_dir = output_dir or os.path.join("out", recipe.name)
    hub = check_recipe(recipe, output_dir)
    state = PartialState()
    os.makedirs(os.path.join(output_dir, STAGES_DIR), exist_ok=True)
    state_path = os.path.join(output_dir, STATE_FILE)
    progress = _read_json(state_path) or {"recipe": recipe.name, "stages": {}}

    data_args = DataArguments(**recipe.data)
    # The base: fine-tuned once on the data if it has no task head (cached, shared with the scripts' teachers), by
    # the task adapter the data and base call for (a classifier, a tagger, a reader), as every stage's script does.
    from types import SimpleNamespace

    from .arguments import ModelArguments
    from .skeleton import Run, task_for

    base_args = ModelArguments(teacher_model=recipe.base_model)
    adapter = task_for(base_args, data_args, None)
    base_run = Run(base_args, data_args, SimpleNamespace(seed=recipe.seed, bf16=False), state=state)
    base_run.dataset, _ = adapter.load_data(base_run)
    dataset = base_run.dataset
    _, _, base_dir = adapter.load_teacher(base_run)
    logger.info("Recipe %s: base %s (%s), %d stages into %s", recipe.name, recipe.base_model, base_dir,
                len(recipe.stages), output_dir)

    previous_model, previous_key, stage_records = None, "base", []
    for stage in recipe.stages:
        stage_dir = os.path.join(output_dir, STAGES_DIR, stage.dir_name)
        key = _fingerprint(recipe, stage, previous_key)
        done = progress["stages"].get(stage.name)
        summary_path = os.path.join(stage_dir, f"{stage.script_name}_summary.json")
        if done and done.get("status") == "done" and os.path.exists(summary_path):
            if done["fingerprint"] != key:
                raise UserInputError(f"recipe {recipe.path} line {stage.line}: stage {stage.name!r} already ran in "
                                     f"{stage_dir} with other settings (or after another stage); use a new "
                                     "--output_dir to run the changed recipe")
            logger.info("Stage %s: done before, kept (%s)", stage.name, stage_dir)
        else:
            resume = None
            checkpoints = os.path.join(stage_dir, steps.CHECKPOINT_DIR)
            if stage.method != "quantize" and os.path.isdir(checkpoints) and latest_complete_checkpoint(checkpoints):
                if done and done.get("fingerprint") != key:
                    raise UserInputError(f"recipe {recipe.path} line {stage.line}: stage {stage.name!r} was "
                                         f"interrupted in {stage_dir} with other settings; use a new --output_dir")
                resume = latest_complete_checkpoint(checkpoints)
                logger.info("Stage %s: resuming from %s", stage.name, resume)
            progress["stages"][stage.name] = {"status": "running", "fingerprint": key, "dir": stage_dir}
            if state.is_main_process:
                write_json_atomic(state_path, progress)
            values = stage_values(recipe, stage, base_dir, previous_model, stage_dir, resume)
            entry = script(stage.script_name)
            if any("overwrite_output_dir" in {f.name for f in dataclasses.fields(g)} for g in entry.groups):
                values["overwrite_output_dir"] = True  # the recipe owns its stage folders (fingerprints guard reruns)
            parsed = _parse_groups(entry.groups, values, lambda k, s=stage: f"recipe {recipe.path} line "
                                   f"{s.arg_lines.get(k) or s.line}")
            logger.info("Stage %d/%d: %s (%s) into %s", stage.index + 1, len(recipe.stages), stage.name,
                        stage.method, stage_dir)
            if entry.trains or state.is_main_process:
                entry.run(*parsed)
            state.wait_for_everyone()
            progress["stages"][stage.name] = {"status": "done", "fingerprint": key, "dir": stage_dir}
            if state.is_main_process:
                write_json_atomic(state_path, progress)
        stage_summary = _read_json(summary_path) or {}
        previous_model = os.path.join(stage_dir, steps.MODEL_DIR)
        previous_key = key
        stage_records.append({"name": stage.name, "method": stage.method, "line": stage.line, "dir": stage_dir,
                              "model": previous_model, "summary": summary_path, "fingerprint": key,
                              "args": stage.args, "record": stage_summary})

    record = RunRecord(task="recipe")
    if not state.is_main_process:
        state.wait_for_everyone()
        return record
    model_dir = os.path.join(output_dir, steps.MODEL_DIR)
    _copy_folder(previous_model, model_dir)
    from ..report.plot import SCHEDULE_PNG

    for s in stage_records:  # a pruning stage's schedule plot goes with the result (the last one, if several)
        if os.path.exists(os.path.join(s["model"], SCHEDULE_PNG)):
            shutil.copy2(os.path.join(s["model"], SCHEDULE_PNG), os.path.join(model_dir, SCHEDULE_PNG))
    record.settings["recipe"] = {"path": recipe.path, "name": recipe.name, "base_model": recipe.base_model,
                                 "seed": recipe.seed, "data": recipe.data, "measure": recipe.measure,
                                 "stages": [{"name": s.name, "method": s.method, "args": s.args} for s in recipe.stages],
                                 "description": recipe.description, "text": recipe.text}
    record.data = {"dataset": data_args.dataset, "splits": {s: len(d) for s, d in dataset.items()},
                   **adapter.record_data(base_run)}
    metric = record.metric
    for s in stage_records:  # the methods of every stage, in order (a later stage's settings of a method win)
        for name, m in (s["record"].get("methods") or {}).items():
            record.methods[name] = m
    report = ReportArguments(**{k: v for k, v in recipe.measure.items()})
    variants = {s["name"]: s["model"] for s in stage_records[:-1]}

    def add_stages(record, comparison):  # what each stage did and measured, for the record and the card
        for s in stage_records:
            measured = comparison["variants"].get(s["name"]) or comparison["model"]
            record.stages.append({
                "name": s["name"], "method": s["method"], "recipe_line": s["line"], "output_dir": s["dir"],
                "model": s["model"], "run_record": s["summary"], "args": s["args"],
                "measured": {"accuracy": measured["metrics"].get("accuracy"), "metric": metric,
                             metric: measured["metrics"].get(metric), "size_mb": measured["size_mb"],
                             "latency_ms": measured["latency_ms"], "parameters": measured["parameters"],
                             "size_ratio": measured.get("size_ratio", comparison["size_ratio"]),
                             "speedup": measured["speedup"] if s is not stage_records[-1] else comparison["speedup"]},
                "training": s["record"].get("training"),
                "methods": s["record"].get("methods") or {},
            })

    comparison = measure_and_card(
        record, model_dir, base_dir, recipe.base_model, dataset, data_args, report, run_name=recipe.name,
        variants=variants, before_card=add_stages, evaluate=adapter.evaluation(dataset, data_args),
    )
    record.artifacts.update({"model": model_dir, "stages": os.path.join(output_dir, STAGES_DIR), "base": base_dir})
    summary = os.path.join(output_dir, SUMMARY)
    record.save(summary)
    publish(record, model_dir, output_dir, hub)
    record.save(summary)
    c = comparison
    logger.info("Recipe %s: %s %s (base %s), %.2fx smaller, %.2fx faster; %s", recipe.name, metric,
                c["model"]["metrics"].get(metric), c["base"]["metrics"].get(metric), c["size_ratio"], c["speedup"],
                model_dir)
    state.wait_for_everyone()
    return record


RECIPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


def shipped_recipes() -> list[str]:
    """The names of the recipes shipped inside the package (`hfcompress/recipes/*.yaml`)."""
    if not os.path.isdir(RECIPES_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(RECIPES_DIR) if f.endswith(".yaml"))


def resolve_recipe(name_or_path: str) -> str:
    """A recipe file: the path given, or the shipped recipe of that name (with or without ``.yaml``)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    name = os.path.basename(name_or_path)
    name = name[:-5] if name.endswith(".yaml") else name
    shipped = os.path.join(RECIPES_DIR, f"{name}.yaml")
    if name in shipped_recipes() and not os.path.exists(name_or_path):
        return shipped
    raise UserInputError(f"--recipe {name_or_path!r}: no such file, and no shipped recipe of that name (shipped: "
                         f"{', '.join(shipped_recipes())})")


def compress_main(argv=None) -> RunRecord:
    """`hfcompress compress` / `scripts/compress.py`: run a recipe (see the module docstring)."""
    from ..cli import parse_args, setup_logging
    from ..hub import HubArguments, PushArguments

    args, hub, push = parse_args((RecipeArguments, HubArguments, PushArguments), argv,
                                 description="Run a compression recipe: several methods composed in one command, "
                                 "then measure the result against the base, write its model card and push it if "
                                 "asked.")
    setup_logging()
    if not args.recipe:
        raise UserInputError("--recipe is required: a YAML file, or the name of a shipped recipe such as "
                             "minilm-l6-prune-int8")
    overrides = {k: getattr(hub, k) for k in ("push_to_hub", "hub_model_id", "hub_private_repo", "hub_token",
                                              "hub_revision")}
    overrides["push_dry_run"] = push.push_dry_run
    return run_recipe(resolve_recipe(args.recipe), args.output_dir, overrides)
