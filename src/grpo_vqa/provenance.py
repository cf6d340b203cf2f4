"""Provenance records written beside every result: config hash, git commit, package versions."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

TRACKED_PACKAGES = (
    "grpo-vqa",
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "tokenizers",
    "pillow",
    "numpy",
    "pandas",
    "matplotlib",
    "openai",
    "math-verify",
    "snakemake",
)


def config_hash(config: object) -> str:
    """SHA-256 of the config serialised as canonical JSON (sorted keys)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def git_commit(repo: str | Path | None = None) -> dict:
    """The current commit and whether the tree has uncommitted changes (``None`` outside a checkout)."""
    # The checkout this package runs from (a workflow may run in another working directory).
    cwd = str(repo) if repo else str(Path(__file__).resolve().parents[2])
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=cwd,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that shape results (``None`` when absent)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def path_fingerprint(path: str | Path) -> str:
    """Cheap identity of a file or directory tree (relative names, sizes, mtimes); a hub id is its own name."""
    h = hashlib.sha256()
    root = Path(path)
    if root.is_dir():
        for f in sorted(root.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    elif root.is_file():
        st = root.stat()
        h.update(f"{root.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        h.update(str(path).encode())
    return h.hexdigest()


def provenance_record(config: object, inputs: list[str | Path] | tuple = ()) -> dict:
    """Everything needed to say where a result came from."""
    inputs_info = {}
    for p in inputs:
        p = Path(p)
        inputs_info[str(p)] = file_sha256(p) if p.is_file() else ("directory" if p.is_dir() else "missing")
    return {
        "config_sha256": config_hash(config),
        "config": config,
        "git": git_commit(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs_info,
    }


def sidecar_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".provenance.json")


def write_sidecar(output: str | Path, config: object, inputs: list[str | Path] | tuple = ()) -> Path:
    """Write ``<output>.provenance.json`` beside ``output`` and return its path."""
    path = sidecar_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(provenance_record(config, inputs), indent=2, default=str) + "\n")
    return path
