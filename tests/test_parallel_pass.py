"""The teacher pass on several processes: each scores a disjoint share and writes its own shards, every
one reads the merged cache, a killed pass resumes with the missing rows only; and a process with several devices
splits rows over them, one thread each."""

import json
import os

import datasets
import numpy as np
import pytest
from _launch import launch_two_processes

import kdq
from kdq.data import load_arena
from kdq.distill.cache import cache_teacher_logits
from kdq.distill.teachers import ModelTeacher
from kdq.testing import make_arena_rows, make_tiny_classifier

TEMPLATE = kdq.TemplateConfig(max_length=64)
N = 60


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("parallel")
    make_tiny_classifier(d / "teacher", tiny_tokenizer, seed=1)
    return d


def _work(tmp_path, teacher_dir):
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(teacher_dir / "teacher", work / "teacher")
    return work


def _rows():
    return load_arena(make_arena_rows(N, seed=11, max_words=60), unlabelled=True)


def _single(work, cache_dir, tta):
    return cache_teacher_logits(
        ModelTeacher(str(work / "teacher")),
        _rows(),
        cache_dir=cache_dir,
        template=TEMPLATE,
        tta=tta,
        batch_size=4,
        chunk_rows=6,
    )


def _shards(path):
    return sorted(p for p in (path / "shards").iterdir() if p.name.startswith("part-"))


def _ranks(work):
    return [json.loads((work / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_processes_fill_the_cache_one_process_fills(tmp_path, teacher_dir):
    work = _work(tmp_path, teacher_dir)
    launch_two_processes("_ddp_teacher_pass.py", work, tmp_path / "two", N, 1)
    r0, r1 = _ranks(work)
    assert r0["computed"] == r1["computed"] == N and r0["path"] == r1["path"]
    assert r0["stats"]["processes"] == 2 and r0["stats"]["rows"] == r1["stats"]["rows"] == N  # N/2 rows, x2 with TTA
    one = _single(work, tmp_path / "one", tta=True)
    assert one.computed == N
    for r in (0, 1):  # every rank read the merged cache: the single process's logits, row for row
        np.testing.assert_allclose(np.load(work / f"rank{r}.npy"), one.logits, atol=1e-6, rtol=0)
    # each rank wrote its own shards, a disjoint half of the rows
    from pathlib import Path

    shards = _shards(Path(r0["path"]))
    by_rank = {r: [s for s in shards if f"-r0000{r}-" in s.name] for r in (0, 1)}
    hashes = {r: set().union(*(datasets.load_from_disk(str(s))["row_hash"] for s in by_rank[r])) for r in (0, 1)}
    assert len(hashes[0]) == len(hashes[1]) == N // 2 and not hashes[0] & hashes[1]
    # a second launch finds everything: nobody scores, nobody waits
    launch_two_processes("_ddp_teacher_pass.py", work, tmp_path / "two", N, 1)
    assert [r["computed"] for r in _ranks(work)] == [0, 0]


def test_a_killed_rank_keeps_its_finished_shards_and_the_rerun_scores_only_the_rest(tmp_path, teacher_dir):
    from pathlib import Path

    work = _work(tmp_path, teacher_dir)
    cache_dir = tmp_path / "cache"
    # rank 1 is killed (SIGKILL) in its third shard, after writing two
    proc = launch_two_processes("_ddp_teacher_pass.py", work, cache_dir, N, 0, 1, 2, check=False)
    assert proc.returncode != 0
    (folder,) = [p for p in cache_dir.iterdir() if p.name.startswith("teacher-")]
    shards = _shards(folder)
    cached = {h for s in shards for h in datasets.load_from_disk(str(s))["row_hash"]}  # every shard is whole
    rank1 = [s for s in shards if "-r00001-" in s.name]
    assert len(rank1) == 2 and 12 <= len(cached) < N
    launch_two_processes("_ddp_teacher_pass.py", work, cache_dir, N, 0)
    r0, r1 = _ranks(work)
    assert r0["computed"] == r1["computed"] == N - len(cached)  # only the missing rows
    one = _single(work, tmp_path / "one", tta=False)
    for r in (0, 1):
        np.testing.assert_allclose(np.load(work / f"rank{r}.npy"), one.logits, atol=1e-6, rtol=0)
    assert Path(r0["path"]) == folder


def test_one_process_with_several_devices_splits_rows_over_them(tmp_path, teacher_dir, capsys):
    """Two CPU "devices" stand in for two GPUs: one model copy and one thread each (predict.py's split)."""
    from kdq.distill.teacher_pass import teacher_pass

    rows = make_arena_rows(N, seed=11, max_words=60)
    settings = kdq.TeacherPassSettings(batch_size=4, tta=True, cache_dir=str(tmp_path / "a"))
    teacher = ModelTeacher(str(teacher_dir / "teacher"))
    two = teacher_pass(teacher, rows, settings, template=TEMPLATE, devices=["cpu", "cpu"])
    assert teacher.loads == 1 and two.computed == N  # "cpu" twice is one device: one copy
    teacher = ModelTeacher(str(teacher_dir / "teacher"))
    import torch

    copies = teacher.models_on([torch.device("cpu"), torch.device("cpu", 0)])
    assert teacher.loads == 2 and copies[0][1] is not copies[1][1]
    split = teacher_pass(
        teacher, rows, settings.replace(cache_dir=str(tmp_path / "b")), template=TEMPLATE, devices=["cpu", "cpu:0"]
    )
    one = teacher_pass(
        str(teacher_dir / "teacher"), rows, settings.replace(cache_dir=str(tmp_path / "c")), template=TEMPLATE
    )
    np.testing.assert_allclose(split.logits, one.logits, atol=1e-6, rtol=0)
    assert split.stats["rows"] == 2 * N
    out = capsys.readouterr().out
    assert f"kdq: teacher pass: {N} rows to score" in out and "est.:" in out and "no estimate for a CPU" in out


MEASURED = ("peak_memory_mb", "peak_memory_kind", "rows_per_s", "device")  # what a run measures, not what it scores


def _table(md: str) -> list:
    """report.md's table, without the columns a run measures (peak memory, rows/s)."""
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    drop = {head.index("peak mem MB"), head.index("rows/s")}
    return [[c.strip() for k, c in enumerate(ln.strip("|").split("|")) if k not in drop] for ln in lines]


@pytest.mark.parametrize("tta", ["gated"])
def test_compare_on_two_processes_gives_the_table_one_process_gives(tmp_path, teacher_dir, tiny_tokenizer, tta):
    work = _work(tmp_path, teacher_dir)
    make_tiny_classifier(work / "student", tiny_tokenizer, seed=2, num_layers=1)
    launch_two_processes("_ddp_compare.py", work, tta)
    ranks = _ranks(work)
    two = (work / "report" / "report.md").read_text()
    one = kdq.compare(
        {"teacher": str(work / "teacher"), "student": str(work / "student")},
        make_arena_rows(40, seed=13, max_words=60),
        kdq.EvalConfig(tta=tta, batch_size=4, progress=False, bootstrap_samples=200),
        out_dir=tmp_path / "one",
        teacher="teacher",
        student="student",
    )
    assert _table(two) == _table(one.paths["md"].read_text())
    for r in ranks:  # every process returned the same table (and the first wrote it)
        assert [{k: v for k, v in row.items() if k not in MEASURED} for row in r["rows"]] == [
            {k: v for k, v in row.items() if k not in MEASURED} for row in ranks[0]["rows"]
        ]
        got = {row["variant"]: row["log_loss"] for row in r["rows"]}
        want = {row["variant"]: row["log_loss"] for row in one.rows}
        assert got == pytest.approx(want, abs=1e-6)
    assert ranks[0]["rows"][0]["device"].endswith("x2")


def test_evaluate_splits_rows_over_several_devices_of_one_process(tmp_path, teacher_dir):
    """Two CPU "devices" (cpu twice) stand in for two GPUs: a model copy and a thread each, predict.py's split."""
    rows = make_arena_rows(30, seed=14, max_words=60)
    cfg = kdq.EvalConfig(tta="full", batch_size=4, progress=False, budget=None)
    one = kdq.evaluate(str(teacher_dir / "teacher"), rows, cfg)
    two = kdq.evaluate(str(teacher_dir / "teacher"), rows, cfg.replace(device="cpu,cpu"))
    np.testing.assert_allclose(two.probs_tta, one.probs_tta, atol=1e-6, rtol=0)
    assert two.n_devices == 2 and two.device.endswith("x2") and one.n_devices == 1
    with pytest.raises(ValueError, match="EvalConfig.device"):
        kdq.EvalConfig(device="cpu,gpu")


def test_a_quantized_model_object_scores_on_its_own_device_only(tmp_path, teacher_dir):
    """A bitsandbytes model held in memory cannot be deep-copied to another device: it scores alone."""
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    folder = str(teacher_dir / "teacher")
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": "cpu"}
    )
    rows = make_arena_rows(6, seed=15, max_words=20)
    cfg = kdq.EvalConfig(tta="none", batch_size=4, progress=False, budget=None)
    one = kdq.evaluate(model, rows, cfg)
    two = kdq.evaluate(model, rows, cfg.replace(device="cpu,cpu"))
    assert two.n_devices == 1
    np.testing.assert_allclose(two.probs, one.probs, atol=1e-6, rtol=0)
