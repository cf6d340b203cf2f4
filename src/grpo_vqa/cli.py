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


#: ``make_rows(train_split, cfg, args) -> (rows, extra_inputs, extra_cfg)``: the trainer's rows, the files beyond
#: the model and data they were made from, and settings beyond the config that change the run (both go into the
#: checkpoint key and the provenance sidecar).
RowsFn = Callable[[object, dict, argparse.Namespace], tuple[object, list[str], dict]]


def run_training_script(
    doc: str,
    section: str,
    make_rows: RowsFn,
    train: Callable[[object], dict],
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> dict:
    """The ``main`` of a training script: parse a training rule's arguments, build the
    :class:`~grpo_vqa.training.common.TrainJob` of config section ``section``, run ``train`` on it and write the
    provenance sidecar.

    The checkpoint folder is keyed by the settings (less ``logging``, which does not change the training), the
    model and the data, so a retried job resumes and an edited one starts afresh.
    """
    from .data.build import load_split
    from .models.refs import resolve_model
    from .provenance import write_sidecar
    from .training.common import TrainJob, is_main_process, run_checkpoint_dir, setup_runtime

    parser = training_parser(doc)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args()
    cfg = load_cfg(args)
    setup_runtime(cfg["seed"], args.threads)
    model = resolve_model(args.model)
    rows, extra_inputs, extra_cfg = make_rows(load_split(args.data, "train"), cfg, args)
    run_cfg = cfg | extra_cfg
    key_cfg = {k: v for k, v in run_cfg.items() if k != "logging"}
    job = TrainJob(
        model_path=model,
        train_rows=rows,
        out_dir=args.out,
        ckpt_dir=run_checkpoint_dir(args.ckpt, key_cfg, model, args.data, *extra_inputs),
        cfg=cfg[section],
        seed=cfg["seed"],
        log_dir=args.log_dir,
        dtype=cfg["dtype"],
        logging_cfg=cfg["logging"],
    )
    result = train(job)
    if is_main_process():  # the other ranks of a data-parallel run write nothing
        write_sidecar(f"{args.out}/train_history.json", run_cfg, [args.model, args.data, *extra_inputs])
        print(
            f"[{section}] done: {len(result['history'])} log entries, resumed from {result['resumed_from']}"
        )
    return result
