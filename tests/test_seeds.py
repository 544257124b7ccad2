"""One seed fixes every random initialisation kdq causes: the same DistillConfig.training.seed in two
fresh processes gives byte-identical students, with LoRA (random A matrices) and with a new ``score`` head
(a causal-LM base loaded as a classifier)."""

import pytest
from _launch import run_python
from transformers import LlamaForCausalLM

from kdq.testing import make_tiny_classifier, tiny_llama_config


@pytest.fixture(scope="module")
def bases(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("seeds")
    make_tiny_classifier(d / "classifier", tiny_tokenizer, seed=1)
    causal = LlamaForCausalLM(tiny_llama_config(tiny_tokenizer))  # no score head: distill must create one
    causal.save_pretrained(d / "causal")
    tiny_tokenizer.save_pretrained(d / "causal")
    return d


@pytest.mark.parametrize("kind, base", [("lora", "classifier"), ("new-head", "causal")])
def test_the_same_seed_gives_the_same_student_in_fresh_processes(tmp_path, bases, kind, base):
    digests = [
        run_python("tests/_seeded_run.py", kind, bases / base, tmp_path / f"run{k}").stdout.strip().splitlines()[-1]
        for k in range(2)
    ]
    assert len(digests[0]) == 64 and digests[0] == digests[1]
