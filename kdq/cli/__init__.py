"""The ``kdq`` command line (standard library only at import time: ``kdq --help`` loads no torch).

* ``spec``: :class:`~kdq.cli.spec.Arg` and :class:`~kdq.cli.spec.Command`, a subcommand declared as data;
* ``commands``: every subcommand, declared as data;
* ``main``: the ``kdq`` entry point and the code of the stage commands;
* ``export``: the code of ``kdq export`` / ``kdq verify``.

``python -m kdq.cli COMMAND ...`` runs the same command line without the console script.
"""
