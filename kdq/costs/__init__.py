"""The cost model, on its own floor below the stages: what a model costs to run and to train.

* :mod:`.modelspec`: a model's shape, parameter counts, weight bytes and FLOPs per token;
* :mod:`.budget`: notebook budget profiles (``kdq/budgets/*.json``) and the projection of a
  variant's hours, memory, disk and kernel against one;
* :mod:`.train_memory`: the training-memory plan (full fine-tune, LoRA, QLoRA) per device.

``distill``, ``evaluate`` and ``export`` all ask these; none of them imports another stage for it.
"""
