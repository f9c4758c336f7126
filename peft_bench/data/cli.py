"""The `peft-bench data` sub-commands: `check` a dataset copy, `prepare` a fast-to-decode copy.

`add_data_parser(subparsers)` adds them to the main parser and `cmd_data(args)` runs them. Exit codes:
0 all good, 1 problems found (check) or videos that failed (prepare), 2 the command could not run
(malformed annotation file, missing folder, bad option).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from peft_bench.data.annotations import AnnotationError
from peft_bench.data.decode import BACKENDS, DecoderUnavailableError
from peft_bench.data.layouts import SPLITS
from peft_bench.data.specs import available_datasets, get_dataset
from peft_bench.errors import UserError

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    data = subparsers.add_parser("data", help="check a dataset copy for broken videos, or prepare a fast copy")
    commands = data.add_subparsers(dest="data_command", required=True)
    _add_check_parser(commands)
    _add_prepare_parser(commands)
    return data


def _add_check_parser(commands) -> None:
    p = commands.add_parser(
        "check",
        help="scan annotations and every video: missing, unreadable, too short, unlabelled",
        description="Open every listed video in parallel, count its frames and decode its first, middle and "
        "last frames; report each problem. Exit 0 when all is well, 1 when there are problems, "
        "2 when an annotation file is malformed.",
    )
    p.add_argument("--dataset", required=True, choices=sorted(available_datasets()))
    p.add_argument(
        "--data-root",
        "--root",
        dest="root",
        help="folder holding the videos (not needed for synthetic datasets), as for `peft-bench run`",
    )
    p.add_argument(
        "--annotations",
        help="folder holding the annotation files (default: --data-root, or where the "
        "release keeps them under it: annotations/ for k400, labels/ for ssv2)",
    )
    p.add_argument("--split", choices=[*SPLITS, "all"], default="all", help="which split to check (default all)")
    p.add_argument("--workers", type=int, help="worker processes (default: the number of CPU cores)")
    p.add_argument("--report", help="CSV of the problems, summary beside it (default data-check-DATASET.csv)")
    p.add_argument("--frames", type=int, help="frames per clip, if not the recipe's (sets the too-short limit)")
    p.add_argument(
        "--decoder", choices=BACKENDS, default="auto", help="video decoder, as data.decoder for training (default auto)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_prepare_parser(commands) -> None:
    p = commands.add_parser(
        "prepare",
        help="re-encode every video once: smaller, short keyframe interval, same layout",
        description="Write a copy of the dataset that decodes faster: same relative paths and file names, "
        "annotation files copied, the source never touched. Resumable: finished videos are "
        "skipped. Exit 0 when every video was prepared, 1 when some failed.",
    )
    # Synthetic datasets are generated small already: nothing to prepare.
    p.add_argument(
        "--dataset", required=True, choices=[n for n in available_datasets() if not get_dataset(n).synthetic]
    )
    p.add_argument(
        "--data-root", "--root", dest="root", required=True, help="folder holding the source videos (read only)"
    )
    p.add_argument("--out", required=True, help="folder for the prepared copy (outside --root)")
    p.add_argument("--annotations", help="folder holding the annotation files, if not --root")
    p.add_argument("--short-side", type=int, default=320, help="scale down to this shorter side (default 320)")
    p.add_argument("--keyframe-interval", type=int, default=16, help="frames between keyframes (default 16)")
    p.add_argument("--crf", type=int, help="encoder quality (default 23 for H.264, 32 for VP9; lower is better)")
    p.add_argument(
        "--no-fast-decode",
        dest="fast_decode",
        action="store_false",
        help="keep x264's default tuning (CABAC, deblocking): smaller files, slower decoding",
    )
    p.add_argument("--workers", type=int, help="worker processes (default: the number of CPU cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_data(args) -> int:
    commands = {"check": _cmd_check, "prepare": _cmd_prepare}
    try:
        return commands[args.data_command](args)
    except AnnotationError as error:  # names the file and the line
        return _error(args, f"malformed annotations: {error}")
    except (FileNotFoundError, ValueError, DecoderUnavailableError) as error:
        return _error(args, str(error))


def _error(args, message: str) -> int:
    print(f"peft-bench data {args.data_command}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _cmd_check(args) -> int:
    # heavy (torch, through the transforms): only when run
    from peft_bench.data.check import check_dataset

    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    report = check_dataset(
        args.dataset,
        Path(args.root) if args.root else None,
        annotations=Path(args.annotations) if args.annotations else None,
        splits=SPLITS if args.split == "all" else (args.split,),
        workers=args.workers,
        num_frames=args.frames,
        backend=args.decoder,
        progress=not args.no_progress,
    )
    report_path = Path(args.report or f"data-check-{args.dataset}.csv")
    summary_path = report.write(report_path)
    print(report.summary())
    print(f"(problems in {report_path}, summary in {summary_path})")
    return EXIT_PROBLEMS if report.has_problems else EXIT_OK


def _cmd_prepare(args) -> int:
    # heavy, as check: only when run
    from peft_bench.data.prepare import EncodeSettings, prepare_dataset

    settings = EncodeSettings(
        short_side=args.short_side, keyframe_interval=args.keyframe_interval, fast_decode=args.fast_decode, crf=args.crf
    )
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    summary = prepare_dataset(
        args.dataset,
        Path(args.root),
        Path(args.out),
        settings,
        annotations=Path(args.annotations) if args.annotations else None,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(summary.text())
    return EXIT_PROBLEMS if summary.failures else EXIT_OK
