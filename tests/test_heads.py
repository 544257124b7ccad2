"""Heads of another size, and heads the checkpoint lacks.

A reward model (one output, ``num_labels=1``, no ``kdq_scheme``) or a classifier of other classes: as the
student, its head is re-initialised with a warning, whatever its size; as a teacher, an evaluated model or
an export, it is refused with kdq's own error naming ``num_labels``, the scheme and the fix. A folder whose
score head is not in its weights (a base ``LlamaForCausalLM``, or ``score.weight`` removed) would score with
a head transformers initialised at random on load: evaluate and export refuse it, naming the file.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import kdq
from kdq.data import load_arena
from kdq.evaluate import EvalConfig
from kdq.export import ExportConfig
from kdq.runtime.constants import SCHEME_KEY, WSDM
from kdq.runtime.template import TemplateConfig
from kdq.testing import make_arena_rows, make_tiny_classifier, make_wsdm_rows, tiny_llama_config

TEMPLATE = TemplateConfig(max_length=48)
EVAL = EvalConfig(template=TEMPLATE, batch_size=4, progress=False, budget=None)


def _config_without_scheme(tokenizer, num_labels: int):
    """A Llama classifier config as another library writes it: ``num_labels`` outputs, generic labels, no
    ``kdq_scheme``."""
    cfg = tiny_llama_config(tokenizer)
    delattr(cfg, SCHEME_KEY)
    cfg.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    return cfg


def _save_classifier(path, tokenizer, num_labels: int, seed: int = 0):
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(_config_without_scheme(tokenizer, num_labels))
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_tokenizer):
    from safetensors.torch import load_file, save_file
    from transformers import LlamaForCausalLM

    d = tmp_path_factory.mktemp("heads")
    _save_classifier(d / "reward", tiny_tokenizer, 1)
    _save_classifier(d / "two", tiny_tokenizer, 2)  # generic two labels: config.json names no classes
    torch.manual_seed(1)
    LlamaForCausalLM(tiny_llama_config(tiny_tokenizer)).save_pretrained(str(d / "causal"))
    tiny_tokenizer.save_pretrained(str(d / "causal"))
    make_tiny_classifier(d / "headless", tiny_tokenizer, seed=2)
    weights = d / "headless" / "model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if k != "score.weight"}, str(weights), {"format": "pt"})
    make_tiny_classifier(d / "student", tiny_tokenizer, seed=3, num_layers=1)
    return d


@pytest.fixture(scope="module")
def rows():
    return load_arena(make_arena_rows(12, seed=5, max_words=20))


def _distill_config(tmp_path):
    return kdq.DistillConfig(
        output_dir=str(tmp_path / "run"),
        template=TEMPLATE,
        teacher_pass=kdq.TeacherPassSettings(cache_dir=str(tmp_path / "cache")),
        training=kdq.TrainingSettings(batch_size=4),
    )


# --------------------------------------------------------------------------- the student: a new head, any size
@pytest.mark.parametrize("lora", [None, "nf4"], ids=["full", "qlora"])
@pytest.mark.parametrize("name", ["reward", "two"])
def test_a_student_head_of_another_size_is_reinitialised_with_a_warning(folders, name, lora):
    """Full fine-tuning and QLoRA (4-bit through load_classifier) alike: a new head of the rows' size."""
    from kdq.distill.lora import load_student

    settings = kdq.LoraSettings(quantize=lora) if lora else None
    with pytest.warns(UserWarning, match=r"re-initialis.*num_labels=\d.*lmsys") as caught:
        loaded = load_student(str(folders / name), settings, device="cpu", scheme="lmsys")
    assert loaded.model.score.out_features == 3 and loaded.model.config.num_labels == 3
    assert getattr(loaded.model.config, SCHEME_KEY) == "lmsys"
    assert len([w for w in caught if "re-initialis" in str(w.message)]) == 1


def test_a_reward_model_trains_as_a_student_of_either_scheme(tmp_path, folders, rows):
    wsdm = load_arena(make_wsdm_rows(8, seed=6, max_words=20))
    for data, scheme in ((rows, "lmsys"), (wsdm, "wsdm")):
        with pytest.warns(UserWarning, match="re-initialis"):
            out = kdq.distill(str(folders / "reward"), data, config=_distill_config(tmp_path / scheme))
        model = kdq.models.load_classifier(out.student_dir).model
        assert getattr(model.config, SCHEME_KEY) == scheme and model.score.out_features == (2 if data is wsdm else 3)


def test_a_student_without_a_saved_head_gets_one_with_a_warning(folders):
    from kdq.distill.lora import load_student

    with pytest.warns(UserWarning, match="score.weight.*not in its weights"):
        loaded = load_student(str(folders / "causal"), None, device="cpu", scheme=WSDM)
    assert loaded.model.score.out_features == 2


# --------------------------------------------------------------------------- teacher, evaluate, export: refused
def _refused(match, fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=match) as info:
            fn(*args, **kwargs)
    return str(info.value)


SIZE = r"num_labels=1.*lmsys \(3 classes"


def test_a_reward_model_teacher_is_refused_naming_num_labels_the_scheme_and_the_fix(tmp_path, folders, rows):
    msg = _refused(
        SIZE,
        kdq.distill,
        str(folders / "student"),
        rows,
        teacher=str(folders / "reward"),
        config=_distill_config(tmp_path),
    )
    assert "teacher" in msg and "kdq.distill" in msg and "ignore_mismatched_sizes" not in msg
    # loaded straight (the teacher pass, a live teacher), it is refused the same way
    from kdq.distill.teachers import ModelTeacher

    teacher = ModelTeacher(str(folders / "reward"))
    _refused(SIZE, teacher.models_on, ["cpu"])


def test_a_reward_model_is_not_evaluated(folders, rows):
    msg = _refused(SIZE, kdq.evaluate, str(folders / "reward"), rows, EVAL)
    assert "evaluate" in msg and "ignore_mismatched_sizes" not in msg


def test_a_reward_model_is_not_exported(tmp_path, folders):
    cfg = ExportConfig(title="Tiny arena classifier", dataset_id="kdq-tests/tiny-arena", template=TEMPLATE)
    msg = _refused(SIZE, kdq.export, str(folders / "reward"), tmp_path / "out", cfg)
    assert "export" in msg and not (tmp_path / "out").exists()


MISSING = r"score\.weight.*not in its weights.*model\.safetensors"


@pytest.mark.parametrize("name", ["causal", "headless"])
def test_a_head_missing_from_the_weights_is_not_evaluated(folders, rows, name):
    _refused(MISSING, kdq.evaluate, str(folders / name), rows, EVAL)


@pytest.mark.parametrize("name", ["causal", "headless"])
def test_a_head_missing_from_the_weights_is_not_exported(tmp_path, folders, name):
    cfg = ExportConfig(title="Tiny arena classifier", dataset_id="kdq-tests/tiny-arena", template=TEMPLATE)
    _refused(MISSING, kdq.export, str(folders / name), tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()
