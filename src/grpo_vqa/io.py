"""Small I/O helpers: atomic writes so that a killed job never leaves a half-written file (or folder) behind."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temp file in the same folder, fsync, then rename over ``path``.

    A writer killed by SIGKILL cannot remove its temp file; the next write of the same ``path`` (a rerun of
    the job: one job writes each file) removes such leftovers once its own file is in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    return path


def atomic_write_json(path: str | Path, obj: object) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> object:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Move a finished directory into place, replacing any older one."""
    dst = Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))


def copy_dir(src: str | Path, dst: str | Path) -> None:
    """Copy a directory into place through ``<dst>.tmp`` and :func:`replace_dir`: ``dst`` is never half-written."""
    tmp = Path(str(dst) + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    replace_dir(tmp, dst)
