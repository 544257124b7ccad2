"""The code of ``kdq sweep-lengths`` (its arguments are declared in :mod:`kdq.cli.commands`).

``kdq sweep-lengths runs/student runs/student-gptq8 --data holdout.csv --lengths 512,1024,2048 --out runs/lengths``
scores every variant at each max_length and writes the trade-off report (:func:`kdq.evaluate.sweep_lengths`).
"""

from __future__ import annotations

from pathlib import Path

from .spec import EXIT_OK


def variants_of(items) -> dict:
    """``VARIANT`` arguments (``FOLDER`` or ``NAME=FOLDER``) as name -> folder; a bare folder is named by its
    last part. ``ValueError`` for an empty name or a name given twice."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name or item, item
        if not name or not path:
            raise ValueError(f"variant {item!r}: write FOLDER or NAME=FOLDER, e.g. student=runs/student")
        if name in out:
            raise ValueError(f"variant name {name!r} is given twice; name them apart with NAME=FOLDER")
        out[name] = path
    return out


def lengths_of(text):
    """``--lengths``: ``None`` (the default lengths), ``"auto"``, or a comma-separated list of ints."""
    if text is None:
        return None
    if text.strip() == "auto":
        return "auto"
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--lengths {text!r}: write comma-separated ints such as 512,1024,2048, or auto") from None


def run_sweep_lengths(args, cfg) -> int:
    from ..evaluate.lengths import DEFAULT_LENGTHS, sweep_lengths

    lengths = lengths_of(args.lengths)
    result = sweep_lengths(
        variants_of(args.variant),
        args.data,
        lengths=DEFAULT_LENGTHS if lengths is None else lengths,
        config=cfg,
        out_dir=args.out,
        overwrite=args.overwrite,
    )
    print(result.to_markdown())
    print(f"report: {result.paths['md']}\nplot: {result.paths['png']}")
    return EXIT_OK
