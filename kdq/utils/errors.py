"""Exceptions shared across stages.

``CheckFailed`` marks "kdq looked and the artifact is not right" (a reload that drifts,
a checksum that differs, a probe batch that disagrees), as opposed to bad input, which is
``ValueError``. The CLI maps it to exit code 1.
"""


class CheckFailed(RuntimeError):
    """An artifact failed one of kdq's own checks."""
