"""Shared command-line plumbing for the thin scripts in ``scripts/``."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Callable

from .config import ConfigError
from .data.images import DataError
from .walltime import WALLTIME_EXIT, WalltimeStop


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config-json", required=True, help="this step's config section, as JSON")
    p.add_argument("--threads", type=int, default=1, help="torch threads for this job")
    return p


def training_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every training script takes (model, data, final output, checkpoints, TensorBoard)."""
    p = parser(description)
    p.add_argument("--model", required=True, help="model ref JSON or model directory")
    p.add_argument("--data", required=True, help="dataset directory (make_dataset output)")
    p.add_argument("--out", required=True, help="final adapter directory")
    p.add_argument("--ckpt", required=True, help="checkpoint folder (kept across retries)")
    p.add_argument("--log-dir", default=None, help="TensorBoard folder")
    return p


def load_cfg(args: argparse.Namespace) -> dict:
    try:
        return json.loads(args.config_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config-json is not valid JSON ({exc})") from None


def run(main: Callable[[], object]) -> None:
    """Run ``main``; bad input ends the job with one line naming the file, row or key (exit code 2)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main()
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except WalltimeStop as exc:
        print(exc, file=sys.stderr, flush=True)
        sys.exit(WALLTIME_EXIT)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A full disk: one line naming the file; complete checkpoints and finished outputs stay usable.
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(f"error: no space left on device{where} ({exc.strerror or exc})", file=sys.stderr)
        sys.exit(3)
