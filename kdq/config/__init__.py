"""The config machinery every stage's frozen config uses (standard library only at import time).

* ``base``: the :class:`~kdq.config.base.Config` mixin (``replace``, ``to_dict``, dicts for nested configs);
* ``validate``: ``ValueError`` helpers that name the field and the allowed values;
* ``fields``: what a config's fields are (declared types, defaults, one-line help in their metadata): text
  values coerced to the declared type, and the field list ``kdq COMMAND --help`` shows;
* ``io``: config files, command flags and ``--set`` merged into a config (file < flags < ``--set``).
"""
