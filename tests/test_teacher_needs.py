"""What a run needs from its teacher, derived once (kdq.distill.needs), over the combinations of teacher,
cache / live logits and the hidden-state and feature terms; and every step asks that one answer."""

import pytest

import kdq
from kdq.distill import TeacherNeeds, teacher_needs


def _cfg(logits="cache", hidden=0.0, feature=0.0, tta=False):
    return kdq.DistillConfig(
        loss=kdq.LossSettings(hidden_weight=hidden, feature_weight=feature),
        teacher_pass=kdq.TeacherPassSettings(logits=logits, tta=tta),
    )


# (logits, hidden_weight, feature_weight) -> (live, hidden_states, cached_logits, cached_features, model terms)
CASES = {
    ("cache", 0.0, 0.0): (False, False, True, False, 0),
    ("cache", 1.0, 0.0): (True, True, True, False, 1),
    ("cache", 0.0, 1.0): (False, False, True, True, 1),
    ("cache", 1.0, 1.0): (True, True, True, True, 2),
    ("live", 0.0, 0.0): (True, False, False, False, 1),
    ("live", 1.0, 0.0): (True, True, False, False, 2),
    ("live", 0.0, 1.0): (True, True, False, False, 2),
    ("live", 1.0, 1.0): (True, True, False, False, 3),
}


@pytest.mark.parametrize("case", list(CASES), ids=[f"{lg}-h{h:g}-f{f:g}" for lg, h, f in CASES])
def test_a_teacher_needs_what_its_terms_read(case):
    logits, hidden, feature = case
    needs = teacher_needs(_cfg(logits, hidden, feature), has_teacher=True)
    live, states, cached, features, terms = CASES[case]
    assert (needs.live, needs.hidden_states, needs.cached_logits, needs.cached_features) == (
        live,
        states,
        cached,
        features,
    )
    assert len(needs.terms) == terms
    assert needs.live_logits == (logits == "live")
    assert needs.reads_model == (terms > 0)  # the memory plan counts the teacher's shape and the projections
    assert needs == teacher_needs(_cfg(logits, hidden, feature), has_teacher=True)  # a value: equal, frozen
    with pytest.raises(AttributeError):
        needs.live = not needs.live


def test_without_a_teacher_nothing_is_needed_and_the_hidden_terms_are_refused():
    assert teacher_needs(_cfg(), has_teacher=False) == TeacherNeeds()
    live = teacher_needs(_cfg("live"), has_teacher=False)  # moot without a teacher: no live forward
    assert not (live.live or live.cached_logits or live.reads_model) and live.terms == ("teacher_pass.logits='live'",)
    for field, cfg in (("hidden_weight", _cfg(hidden=1.0)), ("feature_weight", _cfg(feature=1.0))):
        with pytest.raises(ValueError, match=rf"loss\.{field} > 0 .*needs a teacher.*--set loss\.{field}=0"):
            teacher_needs(cfg, has_teacher=False)
    with pytest.raises(ValueError, match=r"loss\.hidden_weight > 0 .*needs a teacher"):
        kdq.distill("no-student-needed", [], teacher=None, config=_cfg(hidden=1.0))  # refused before any row loads


def test_a_table_or_an_ensemble_refuses_every_term_that_needs_the_model():
    import pandas as pd

    from kdq.distill.teachers import as_teacher

    table = as_teacher(pd.DataFrame({"id": ["1"], "winner_model_a": [1.0], "winner_model_b": [0.0], "winner_tie": [0]}))
    table.check_terms(teacher_needs(_cfg(), has_teacher=True))  # cached logits: a table serves them
    for case in CASES:
        needs = teacher_needs(_cfg(*case), has_teacher=True)
        if needs.terms:
            with pytest.raises(ValueError, match=rf"{needs.terms[0].split()[0]}.*needs the teacher model"):
                table.check_terms(needs)


def test_the_memory_plan_counts_the_live_teacher_as_the_needs_say():
    from kdq.costs.modelspec import ModelSpec
    from kdq.distill.planning import training_setup

    spec = ModelSpec(
        vocab_size=1000, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16, intermediate_size=128
    )
    wide = ModelSpec(
        vocab_size=1000, hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=4, head_dim=32, intermediate_size=256
    )
    for case, (live, states, *_rest) in CASES.items():
        setup = training_setup(_cfg(*case), "cpu", checkpointing=False, student=spec, teacher=wide)
        assert (setup.teacher is not None, setup.teacher_states) == (live, states), case
        assert setup.feature_projection == (case[2] > 0)
