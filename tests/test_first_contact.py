"""A new user's first contact: a quiet import, the `hfcompress` command, a teacher with an untrained head, a plain
`Trainer` that would drop the teacher's columns, and the plain-Trainer example script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import make_dataset, make_tokenizer, save_tiny_assets, tiny_bert, tiny_mpnet, write_reviews_csv
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from hfcompress import (
    DistillationArguments,
    DistillationCallback,
    DistillationConfig,
    DistillationDataCollator,
    DistillationLoss,
    DistillationTrainer,
)
from hfcompress.data import tokenize
from hfcompress.distill.checks import untrained_parameters
from hfcompress.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, env_extra=None, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


# ---- 1. import hfcompress prints nothing ---------------------------------------------------------------------------
def test_import_is_silent_and_loads_no_optional_backend():
    code = "import sys, hfcompress; assert 'bitsandbytes' not in sys.modules, 'bitsandbytes imported'"
    r = _run([sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    r = _run([sys.executable, "-c", "import hfcompress; print(hfcompress.distill.__name__)"])  # lazy, still there
    assert r.returncode == 0 and r.stdout.split() == ["hfcompress.distill"], r.stderr


def test_public_names_import_without_the_bitsandbytes_kernels_message():
    # transformers.Trainer -> peft -> bitsandbytes logs "Failed to load CPU gemm_4bit_forward ... 'kernels'".
    r = _run([sys.executable, "-c", "from hfcompress import DistillationTrainer, DistillationLoss"])
    assert r.returncode == 0, r.stderr
    assert "kernels" not in r.stderr and "gemm_4bit" not in r.stderr, r.stderr


def test_bitsandbytes_imported_after_hfcompress_asks_the_hub_for_no_kernel():
    # On an AVX512-BF16 CPU, `import bitsandbytes` calls kernels.get_kernel("kernels-community/...") (a Hub request
    # and a download of native code); after `import hfcompress` it must not. The CPU feature is faked (bitsandbytes
    # asks its native library, through ctypes), so the test means the same on every CPU; get_kernel is a stand-in
    # that counts calls. HFCOMPRESS_BNB_HUB_KERNELS=1 lets bitsandbytes ask, as it does without hfcompress.
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("kernels")
    code = "\n".join([
        "import ctypes, sys",
        "_getattr = ctypes.CDLL.__getattr__",
        "ctypes.CDLL.__getattr__ = lambda self, name: (lambda: True) if name == 'has_avx512bf16_cpu' "
        "else _getattr(self, name)",
        "import kernels",
        "calls = []",
        "def get_kernel(repo_id, *a, **k):",
        "    calls.append(repo_id)",
        "    raise RuntimeError('no Hub in this test')",
        "kernels.get_kernel = get_kernel",
        "if sys.argv[1] == 'hfcompress':",
        "    import hfcompress",
        "import bitsandbytes",
        "from bitsandbytes.functional import has_avx512bf16",
        "assert has_avx512bf16()",
        "print(len(calls))",
    ])
    without = _run([sys.executable, "-c", code, "bare"])
    assert without.returncode == 0, without.stderr
    assert without.stdout.split() == ["1"], "the fake did not make bitsandbytes ask: the test shows nothing"
    r = _run([sys.executable, "-c", code, "hfcompress"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0"] and r.stderr == "", (r.stdout, r.stderr)
    opted_in = _run([sys.executable, "-c", code, "hfcompress"], {"HFCOMPRESS_BNB_HUB_KERNELS": "1"})
    assert opted_in.returncode == 0 and opted_in.stdout.split() == ["1"], opted_in.stderr


# ---- 2. the hfcompress command -------------------------------------------------------------------------------------
def _cli():
    exe = shutil.which("hfcompress", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "hfcompress"]


def test_cli_assets_list(tmp_path):
    r = _run([*_cli(), "assets", "list"], {"HFCOMPRESS_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "minilm-l6" in r.stdout and "missing" in r.stdout
    assert r.stderr == ""


def test_cli_unknown_subcommand_fails_with_usage():
    r = _run([*_cli(), "no-such-command"])
    assert r.returncode != 0
    assert r.stderr.startswith("usage: ") and "invalid choice" in r.stderr


def test_python_m_spellings_have_no_runpy_warning(tmp_path):
    for args in (["-m", "hfcompress.assets", "list"], ["-m", "hfcompress", "assets", "list"]):
        r = _run([sys.executable, *args], {"HFCOMPRESS_HOME": str(tmp_path)})
        assert r.returncode == 0, r.stderr
        assert "rotten-tomatoes" in r.stdout
        assert r.stderr == "", r.stderr


# ---- 3. a teacher whose task head was initialised at random -----------------------------------------------------
@pytest.fixture(params=["bert", "mpnet"])
def encoder_dir(request, tmp_path):
    """A plain encoder checkpoint (no task head), as a sentence-embedding model is saved."""
    model = tiny_bert(num_layers=2, seed=3) if request.param == "bert" else tiny_mpnet(num_layers=2, seed=3)
    path = tmp_path / "encoder"
    model.base_model.save_pretrained(path)
    return path


def _train_a_little(model, steps=2):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = model(input_ids=torch.tensor([[2, 5, 6, 3], [2, 9, 10, 3]]), labels=torch.tensor([0, 1])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_untrained_teacher_head_is_refused(encoder_dir, tmp_path):
    teacher = AutoModelForSequenceClassification.from_pretrained(encoder_dir, num_labels=2)
    assert untrained_parameters(teacher) and all(n.startswith("classifier") for n in untrained_parameters(teacher))
    student = tiny_bert(num_layers=1, seed=0)
    with pytest.raises(UserInputError, match="allow_untrained_teacher_head=True") as err:
        DistillationLoss(DistillationConfig(), student.config, teacher)
    assert "fine-tune" in str(err.value) and "classifier" in str(err.value)
    args = DistillationArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, max_steps=1)
    with pytest.raises(UserInputError, match="untrained task head"):
        DistillationTrainer(model=student, args=args, teacher_model=teacher, train_dataset=[1])
    # Explicitly allowed: accepted.
    DistillationLoss(DistillationConfig(), student.config, teacher, allow_untrained_teacher_head=True)
    DistillationTrainer(model=student, args=args, teacher_model=teacher, train_dataset=[1],
                        allow_untrained_teacher_head=True)


def test_trained_teachers_are_accepted(encoder_dir, tmp_path):
    student = tiny_bert(num_layers=1, seed=0)
    # Loaded with a new head, then trained in memory.
    trained = _train_a_little(AutoModelForSequenceClassification.from_pretrained(encoder_dir, num_labels=2))
    assert untrained_parameters(trained) == []
    DistillationLoss(DistillationConfig(), student.config, trained)
    # Saved after fine-tuning and reloaded: every weight comes from the checkpoint.
    trained.save_pretrained(tmp_path / "finetuned")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "finetuned")
    assert untrained_parameters(reloaded) == []
    DistillationLoss(DistillationConfig(), student.config, reloaded)
    # Built in memory (nothing recorded by from_pretrained): accepted.
    assert untrained_parameters(tiny_mpnet()) == []
    DistillationLoss(DistillationConfig(), student.config, tiny_mpnet())


# ---- 4. a plain Trainer keeps the teacher's own token ids ----------------------------------------------------------
def _plain_setup(tmp_path):
    student_tok = make_tokenizer()
    teacher_tok = make_tokenizer("<s>", "</s>", offset=4)  # MPNet-style: the same words have other ids
    student, teacher = tiny_bert(seed=0), tiny_mpnet(seed=1)
    kd = DistillationLoss(DistillationConfig(alpha=0.5, temperature=2.0), student.config, teacher,
                          teacher_tokenizer=teacher_tok, student_tokenizer=student_tok).attach(student)
    assert kd.teacher_needs_own_inputs
    train = make_dataset(n_train=32)["train"].add_column("idx", list(range(32)))  # an extra column, as users have
    train = tokenize(train, student_tok, "text", 32)
    train = tokenize(train, teacher_tok, "text", 32, prefix="teacher_")
    seen: list[torch.Tensor] = []
    teacher.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].clone()), with_kwargs=True)
    collator = DistillationDataCollator(student_tok, teacher_tok)
    return student, teacher, kd, train, collator, seen, teacher_tok


def test_plain_trainer_default_arguments_feed_the_teacher_its_own_ids(tmp_path):
    student, teacher, kd, train, collator, seen, teacher_tok = _plain_setup(tmp_path)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=2,
                             report_to="none", save_strategy="no", use_cpu=True)  # remove_unused_columns=True
    trainer = Trainer(model=student, args=args, train_dataset=train, data_collator=collator,
                      compute_loss_func=kd, callbacks=[DistillationCallback(kd)])
    assert trainer.args.remove_unused_columns is False
    trainer.train()
    assert len(seen) == 2
    teacher_word_ids = {teacher_tok.convert_tokens_to_ids(w) for w in ("good", "bad", "movie", "the")}
    student_only_ids = set(range(4, 8))  # in the teacher's vocabulary these ids are unused (shifted by 4)
    ids = set(torch.cat([s.flatten() for s in seen]).tolist())
    assert ids & teacher_word_ids, "the teacher must read its own ids"
    assert not ids & student_only_ids, "the teacher was given the student's ids"
    assert all(s[:, 0].eq(teacher_tok.cls_token_id).all() for s in seen)
    # Evaluation still works with the extra columns (they are dropped at the student's forward).
    assert "eval_loss" in trainer.evaluate(eval_dataset=train)


def test_plain_trainer_batch_without_teacher_ids_is_an_error(tmp_path):
    student, teacher, kd, train, collator, seen, _ = _plain_setup(tmp_path)
    # Without the callback, a plain Trainer drops teacher_input_ids: the hook refuses instead of falling back.
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=1,
                             report_to="none", save_strategy="no", use_cpu=True)
    trainer = Trainer(model=student, args=args, train_dataset=train, data_collator=collator, compute_loss_func=kd)
    with pytest.raises(UserInputError, match="teacher_input_ids") as err:
        trainer.train()
    assert "DistillationCallback" in str(err.value) and "remove_unused_columns" in str(err.value)
    assert seen == []
    # The same directly: a training batch with only the student's ids.
    batch = collator([{k: v for k, v in train[i].items() if not k.startswith("teacher_")} for i in range(4)])
    student.train()
    with pytest.raises(UserInputError, match="teacher_input_ids"):
        student(**{k: v for k, v in batch.items() if k != "labels"})


def test_config_based_detection_of_a_different_vocabulary():
    student, teacher = tiny_bert(seed=0), tiny_mpnet(seed=1, vocab=80)
    assert DistillationLoss(DistillationConfig(), student.config, teacher).teacher_needs_own_inputs
    assert not DistillationLoss(DistillationConfig(), student.config, tiny_mpnet(seed=1)).teacher_needs_own_inputs


# ---- 5. the plain-Trainer example runs as written -------------------------------------------------------------------
def test_plain_trainer_example_runs(tmp_path):
    teacher_dir, _ = save_tiny_assets(tmp_path, teacher_kind="mpnet", teacher_offset=4)
    student_dir = tmp_path / "student"
    tiny_bert(num_layers=2, seed=0).base_model.save_pretrained(student_dir)  # an encoder: the student gets a new head
    make_tokenizer().save_pretrained(student_dir)
    write_reviews_csv(tmp_path / "reviews.csv", 64, 7)
    out = tmp_path / "out"
    r = _run([sys.executable, "examples/distill_with_plain_trainer.py", "--teacher", teacher_dir,
              "--student", str(student_dir), "--dataset", str(tmp_path / "reviews.csv"), "--max_train_samples", "24",
              "--max_eval_samples", "8", "--per_device_train_batch_size", "8", "--max_steps", "3",
              "--output_dir", str(out), "--use_cpu"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert (out / "tokenizer.json").exists()
    assert "eval_accuracy" in r.stdout + r.stderr
    assert "gemm_4bit" not in r.stderr  # the example imports hfcompress first


def test_plain_trainer_example_refuses_an_untrained_teacher_head(tmp_path):
    encoder = tmp_path / "encoder"
    tiny_mpnet(num_layers=2, seed=3).base_model.save_pretrained(encoder)
    make_tokenizer("<s>", "</s>", offset=4).save_pretrained(encoder)
    student_dir = tmp_path / "student"
    tiny_bert(num_layers=2, seed=0).save_pretrained(student_dir)
    make_tokenizer().save_pretrained(student_dir)
    write_reviews_csv(tmp_path / "reviews.csv", 40, 7)
    r = _run([sys.executable, "examples/distill_with_plain_trainer.py", "--teacher", str(encoder),
              "--student", str(student_dir), "--dataset", str(tmp_path / "reviews.csv"),
              "--output_dir", str(tmp_path / "out"), "--use_cpu"])
    assert r.returncode != 0
    assert "allow_untrained_teacher_head" in r.stderr and "Traceback" not in r.stderr
