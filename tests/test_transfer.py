"""Distillation transfers something: the distilled student ends closer to the teacher.

The tiny teacher is first fine-tuned on the synthetic arena task (kdq.distill with
teacher=None). Then the same student initialisation, same seed and same rows, is trained
twice: on hard labels alone, and distilled from the teacher. On held-out rows the
distilled student's KL to the teacher must be lower.
"""

import torch
from _scoring import held_out_logits

import kdq
from kdq.data import load_arena
from kdq.distill.losses import forward_kl
from kdq.testing import make_arena_rows, make_tiny_classifier

TEMPLATE = kdq.TemplateConfig(max_length=64)


def test_distilled_student_is_closer_to_the_teacher_than_hard_label_student(tmp_path, tiny_tokenizer):
    train = make_arena_rows(256, seed=20, max_words=40)
    held = load_arena(make_arena_rows(96, seed=21, max_words=40, id_offset=10_000))
    make_tiny_classifier(tmp_path / "t0", tiny_tokenizer, seed=4)
    make_tiny_classifier(tmp_path / "s0", tiny_tokenizer, seed=5, num_layers=1)

    def training(epochs):
        return kdq.TrainingSettings(epochs=epochs, batch_size=16, learning_rate=2e-3, logging_steps=50, seed=0)

    teacher = kdq.distill(
        str(tmp_path / "t0"),
        train,
        teacher=None,
        config=kdq.DistillConfig(output_dir=str(tmp_path / "teacher"), template=TEMPLATE, training=training(4)),
    )
    hard = kdq.distill(
        str(tmp_path / "s0"),
        train,
        teacher=None,
        config=kdq.DistillConfig(output_dir=str(tmp_path / "hard"), template=TEMPLATE, training=training(3)),
    )
    soft = kdq.distill(
        str(tmp_path / "s0"),
        train,
        teacher=str(teacher.student_dir),
        config=kdq.DistillConfig(
            output_dir=str(tmp_path / "kd"),
            template=TEMPLATE,
            training=training(3),
            loss=kdq.LossSettings(alpha=0.1, temperature=1.0),
        ),
    )

    t = held_out_logits(teacher.student_dir, held, TEMPLATE)
    kl_hard = forward_kl(held_out_logits(hard.student_dir, held, TEMPLATE), t).mean().item()
    kl_soft = forward_kl(held_out_logits(soft.student_dir, held, TEMPLATE), t).mean().item()
    assert torch.isfinite(torch.tensor([kl_hard, kl_soft])).all()
    assert kl_soft < kl_hard, f"held-out KL to teacher: distilled {kl_soft:.4f} vs hard-label {kl_hard:.4f}"
