"""Write folders and files all-or-nothing: build in a temporary sibling, then rename into place."""

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


def atomic_write(path, data) -> Path:
    """Write ``data`` (``str``, UTF-8, or ``bytes``) to ``path`` all or nothing: a temporary file beside it,
    then a rename, so a reader (another process, a resumed run) sees the whole file or none. The file gets
    the mode an ordinary ``open`` would give. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 → what an ordinary open() would give
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path, record, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """:func:`atomic_write` of ``record`` as JSON (``default=str`` for paths and the like)."""
    import json

    return atomic_write(path, json.dumps(record, indent=indent, sort_keys=sort_keys, default=str))


def _normal_permissions(root: Path) -> None:
    """mkdtemp makes the folder 0700 and some writers (gptqmodel) make 0600 files; give the
    result the modes an ordinary ``mkdir``/``open`` would, so it can be shared and uploaded."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
