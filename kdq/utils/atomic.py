"""Write folders all-or-nothing: build in a temporary sibling, then rename into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(final, *, overwrite: bool = False):
    """Yield a temporary folder next to ``final``; on success it becomes ``final``.

    The temporary folder sits in the same parent so the closing ``os.replace`` is a
    same-filesystem rename. On any exception (KeyboardInterrupt included) it is removed,
    so an interrupted write never leaves a half folder at ``final``. An existing ``final``
    raises ``FileExistsError`` unless ``overwrite=True``; the old folder is removed only
    after the new one is complete.
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(
            f"{final} already exists; pass overwrite=True (CLI: --overwrite) or choose another output folder."
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _normal_permissions(tmp)
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _normal_permissions(root: Path) -> None:
    """mkdtemp makes the folder 0700 and some writers (gptqmodel) make 0600 files; give the
    result the modes an ordinary ``mkdir``/``open`` would, so it can be shared and uploaded."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
