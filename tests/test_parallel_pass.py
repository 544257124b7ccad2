"""The teacher pass on several processes (issue 17): each scores a disjoint share and writes its own shards, every
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
    cfg = kdq.DistillConfig(template=TEMPLATE, teacher_batch_size=4, teacher_tta=True, cache_dir=str(tmp_path / "a"))
    teacher = ModelTeacher(str(teacher_dir / "teacher"))
    two = teacher_pass(teacher, rows, cfg, devices=["cpu", "cpu"])
    assert teacher.loads == 1 and two.computed == N  # "cpu" twice is one device: one copy
    teacher = ModelTeacher(str(teacher_dir / "teacher"))
    import torch

    copies = teacher.models_on([torch.device("cpu"), torch.device("cpu", 0)])
    assert teacher.loads == 2 and copies[0][1] is not copies[1][1]
    split = teacher_pass(teacher, rows, cfg.replace(cache_dir=str(tmp_path / "b")), devices=["cpu", "cpu:0"])
    one = teacher_pass(str(teacher_dir / "teacher"), rows, cfg.replace(cache_dir=str(tmp_path / "c")))
    np.testing.assert_allclose(split.logits, one.logits, atol=1e-6, rtol=0)
    assert split.stats["rows"] == 2 * N
    out = capsys.readouterr().out
    assert f"kdq: teacher pass: {N} rows to score" in out and "est.:" in out and "no estimate for a CPU" in out
