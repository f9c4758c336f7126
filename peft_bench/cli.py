"""``peft-bench``: run methods, list them, and regenerate the table from tracked runs."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
import traceback
from pathlib import Path

from peft_bench.dataclass_io import ConfigError
from peft_bench.errors import UserError

log = logging.getLogger("peft_bench")


def _add_tracking_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    p.add_argument(
        "--tracking-uri", help="mlflow tracking URI (default: MLFLOW_TRACKING_URI, else SQLite in --results-dir)"
    )
    p.add_argument(
        "--results-dir",
        default="results" if defaults else None,
        help="where the tracking database and tables go (default: results)",
    )
    p.add_argument(
        "--experiment", default="peft-bench" if defaults else None, help="mlflow experiment name (default: peft-bench)"
    )


def _add_plugin_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py",
        help="a method file of your own to register (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peft-bench", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of a user error too (a bug always shows one)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from peft_bench.launch.plan import EMBEDDED_DATASETS

    run = sub.add_parser("run", help="train and evaluate methods; with no flags, the embedded default")
    # Flags left out fall back to --config's values, then to RunConfig's defaults: hence default=None.
    run.add_argument(
        "--methods",
        help="comma-separated method names, 'paper' (default: the paper's benchmark) "
        "or 'all' (every registered method, later ones included)",
    )
    run.add_argument("--backbone", help="clip_vitb16, clip_vitl14, in21k_vitb16 or tiny (default)")
    run.add_argument(
        "--dataset", "--datasets", dest="datasets", help=f"comma-separated dataset names (default: {EMBEDDED_DATASETS})"
    )
    run.add_argument(
        "--pretrained", help="'auto' (default: local caches), a weights file, or 'none' for random weights on purpose"
    )
    run.add_argument("--data-root", help="folder holding the videos (k400, ssv2, list)")
    run.add_argument("--annotations", help="folder holding the annotation files (default: --data-root)")
    run.add_argument("--frames", type=int, help="frames per clip (default 8)")
    run.add_argument("--preset", help="method preset (default: the one matching the dataset, e.g. k400/ssv2)")
    run.add_argument("--seed", type=int, help="random seed (default 0)")
    run.add_argument("--seeds", help="comma-separated seeds: one run per seed")
    run.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    run.add_argument("--config", help="a saved config.yaml to start from (other flags override it)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value, e.g. train.lr=1e-3 or method.width=256 (repeatable)",
    )
    run.add_argument("--output-dir", help="where checkpoints and per-run configs go (default: runs)")
    run.add_argument("--resume", action="store_true", help="continue unfinished runs from their checkpoints")
    run.add_argument(
        "--jobs", type=int, help="runs at once (default: on CPU with tiny, one per core on one thread each; else 1)"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress line")
    run.add_argument("--no-table", action="store_true", help="do not print the table at the end")
    _add_tracking_args(run, defaults=False)
    _add_plugin_arg(run)

    table = sub.add_parser("table", help="the cross-modality or system-level tables (and Figure 1) from tracked runs")
    from peft_bench.report.table import add_table_arguments

    add_table_arguments(table)
    _add_tracking_args(table)

    report = sub.add_parser(
        "report",
        help="a static leaderboard page: the table (sortable, filterable), Pareto "
        "plots and the runs' result records, in one folder",
    )
    from peft_bench.report.page import add_report_arguments

    add_report_arguments(report)
    _add_tracking_args(report)

    methods = sub.add_parser("methods", help="list the registered methods, their parameter counts beside the paper's")
    methods.add_argument("--backbone", default="clip_vitb16", help="backbone to count on (default clip_vitb16)")
    methods.add_argument("--num-classes", type=int, default=400, help="classes of the head (default 400, as K400)")
    methods.add_argument(
        "--check",
        action="store_true",
        help="measure temporal modelling (frame-shuffle test) instead of trusting the declaration",
    )
    _add_plugin_arg(methods)

    sync = sub.add_parser(
        "sync",
        help="send the tracking records runs kept in their folders to mlflow",
        description="Send what runs recorded in their folders (tracking.jsonl) while tracking was "
        "unreachable or the store could not be written; nothing is sent twice.",
    )
    sync.add_argument("paths", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding them (e.g. runs)")

    from peft_bench.backbones.tiny import add_tiny_parser
    from peft_bench.data.cli import add_data_parser
    from peft_bench.launch.sweep import add_sweep_parser
    from peft_bench.measure.accounting import add_account_parser

    add_account_parser(sub)
    add_data_parser(sub)
    add_sweep_parser(sub)
    add_tiny_parser(sub)
    from peft_bench.benchmarks.method_speed import add_bench_parser  # benchmarks/ installs as peft_bench.benchmarks

    add_bench_parser(sub)
    return parser


def cmd_run(args) -> int:
    from peft_bench.launch.plan import run_configs
    from peft_bench.launch.progress import StatusLine
    from peft_bench.launch.run_all import plan_runs, prepare_shared_inputs, run_all
    from peft_bench.track.journal import sync_unsent
    from peft_bench.track.tracking import check_store, default_tracking_uri
    from peft_bench.train import distributed, preemption

    started = time.monotonic()
    configs = run_configs(args)
    if not configs:
        return 0
    for uri in dict.fromkeys(cfg.tracking_uri or default_tracking_uri(Path(cfg.results_dir)) for cfg in configs):
        check_store(uri)  # a damaged store stops the command here, before any work, saying how to recover
    plan = plan_runs(configs, args.jobs)
    show = not args.no_progress and distributed.rank() == 0
    status = StatusLine(enabled=show)
    if show:
        print(f"peft-bench run: {plan.describe(len(configs))}", flush=True)
    prepare_shared_inputs(configs, plan)
    failed = []
    finished = 0

    def on_outcome(outcome) -> None:
        nonlocal finished
        finished += 1
        cfg = configs[outcome.index]
        head = f"[{finished}/{len(configs)}] {cfg.method} on {cfg.dataset} ({cfg.backbone}, seed {cfg.seed})"
        if outcome.error is not None:
            failed.append((cfg.run_name(), outcome.error))
            status.print_above(f"{head}: FAILED ({outcome.error})")
        else:
            result = outcome.result
            status.print_above(
                f"{head}: top-1 {result.top1:.1f}  top-5 {result.top5:.1f}  trainable "
                f"{result.trainable_params:,}  ({result.wall_time_s:.0f} s)"
            )

    # One after the other, a stop signal saves the running run's checkpoint and ends the command before the
    # next run; side by side, the workers' own guards do that and run_all stops the rest.
    try:
        with preemption.guarded() if plan.jobs == 1 else contextlib.nullcontext():
            run_all(configs, plan, resume=args.resume, status=status, on_outcome=on_outcome, started=started)
    except preemption.Preempted as stop:  # a checkpoint is saved: one line, and --resume continues
        print(f"peft-bench: {stop}", file=sys.stderr)
        return 128 + stop.signum if stop.signum else 1
    if not args.no_table:
        sync_unsent(cfg.run_dir() for cfg in configs)  # what a run could not send (tracking busy or away) goes now
        cfg = configs[0]
        _print_table(cfg.tracking_uri, Path(cfg.results_dir), cfg.experiment, "markdown")
    for name, err in failed:
        print(f"FAILED {name}: {err}", file=sys.stderr)
    return 1 if failed else 0


def _print_table(tracking_uri: str | None, results_dir: Path, experiment: str | None, fmt: str) -> None:
    from peft_bench.report.gather import load_runs
    from peft_bench.report.table import cross_modality_report, render, write_table
    from peft_bench.track.tracking import default_tracking_uri, sqlite_path

    uri = tracking_uri or default_tracking_uri(results_dir)
    store = sqlite_path(uri)
    if store is not None and not store.is_file():  # it could not be made (a read-only folder): nothing to read
        print(
            f"no tracking store at {store}: the runs' records wait in their folders for `peft-bench sync`",
            file=sys.stderr,
        )
        return
    runs = load_runs(uri, experiment)
    if runs.empty:
        print(f"no finished runs in {uri}" + (f" (experiment '{experiment}')" if experiment else ""), file=sys.stderr)
        return
    report = cross_modality_report(runs)  # with the provenance footer, as `peft-bench table` prints it
    print(render(report, fmt), end="")
    path = write_table(report.cells, results_dir)
    print(f"\n(saved to {path})", file=sys.stderr)


def cmd_table(args) -> int:
    from peft_bench.report.gather import store_uri
    from peft_bench.report.table import table_command
    from peft_bench.track.tracking import check_store

    if not getattr(args, "records", None):  # records are read from their folder, not the store
        check_store(store_uri(args.tracking_uri, Path(args.results_dir)))
    return table_command(args)


def cmd_sync(args) -> int:
    """Send what runs kept in their folders; a damaged store stops it, an unreachable one is reported per run."""
    from peft_bench.track.journal import run_dirs_under, sync_run_dir
    from peft_bench.track.tracking import StoreError

    run_dirs = list(dict.fromkeys(d for p in args.paths for d in run_dirs_under(Path(p))))
    if not run_dirs:
        raise FileNotFoundError(f"no run records (tracking.jsonl) in {', '.join(args.paths)}")
    sent, unsent = 0, 0
    for run_dir in run_dirs:
        try:
            sent += sync_run_dir(run_dir)
        except StoreError:
            raise
        except Exception as err:  # noqa: BLE001  -- a folder that cannot be sent is named and counted; the rest go on
            print(f"{run_dir}: not sent ({type(err).__name__}: {err})", file=sys.stderr)
            unsent += 1
    if not sent and not unsent:
        print(f"nothing to send: mlflow has every record of the {len(run_dirs)} run(s) found")
    else:
        print(f"sent {sent} run(s)" + (f"; {unsent} not sent, tracking still unreachable" if unsent else ""))
    return 1 if unsent else 0


def cmd_report(args) -> int:
    from peft_bench.report.page import report_command

    return report_command(args)


def cmd_methods(args) -> int:
    """Every method: what it is, what it trains on the chosen backbone, and the reported figure beside it
    (the paper's for its rows, the authors' for later methods)."""
    from peft_bench.method_api.checks import measures_time, parameter_parity
    from peft_bench.method_api.registry import get_method
    from peft_bench.report.aggregate import registered_method_order

    rows = {row["method"]: row for row in parameter_parity(args.backbone, args.num_classes)}
    time_header = "models time (measured)" if args.check else "models time (declared)"
    print(
        f"{'method':20} {'group':20} {'arch':6} {time_header:23} {'trainable':>13} {'reported (M)':>17} "
        f"{'diff':>7}  presets"
    )
    for name in registered_method_order(list(rows)):
        row, spec = rows[name], get_method(name)
        models_time = measures_time(name) if args.check else spec.models_time
        mark = "yes" if models_time else "no"
        if args.check and models_time != spec.models_time:
            mark += f" (declared {'yes' if spec.models_time else 'no'}!)"
        reported = f"{row['reported_m']:.2f} ({row['reported_by']})" if row["reported_m"] is not None else "-"
        diff = f"{row['diff_pct']:+.1f}%" if row["diff_pct"] is not None else "-"
        print(
            f"{name:20} {spec.group:20} {spec.architecture:6} {mark:23} {row['trainable']:>13,} {reported:>17} "
            f"{diff:>7}  {','.join(spec.presets) or '-'}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("alembic", "mlflow", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        for plugin in getattr(args, "plugin", []):
            _load_plugin(plugin)
        from peft_bench.backbones.tiny import cmd_tiny
        from peft_bench.benchmarks.method_speed import cmd_bench
        from peft_bench.data.cli import cmd_data
        from peft_bench.launch.sweep import cmd_sweep
        from peft_bench.measure.accounting import cmd_account
        from peft_bench.train.distributed import distributed_from_environment, rank

        commands = {
            "run": cmd_run,
            "table": cmd_table,
            "report": cmd_report,
            "methods": cmd_methods,
            "account": cmd_account,
            "data": cmd_data,
            "sweep": cmd_sweep,
            "bench": cmd_bench,
            "sync": cmd_sync,
            "tiny": cmd_tiny,
        }
        if args.command == "run":  # under torchrun: one process group for all of the command's runs
            with distributed_from_environment():
                args.no_table = args.no_table or rank() != 0
                return cmd_run(args)
        return commands[args.command](args)
    except (UserError, FileNotFoundError) as err:  # the user's to fix: one line; anything else is a bug
        if args.debug:
            traceback.print_exc()
        print(f"peft-bench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside a run: nothing to save
        print("peft-bench: interrupted", file=sys.stderr)
        return 130


def _load_plugin(plugin: str) -> None:
    """Import a --plugin file; one that fails to import is one line naming the file, the line and the error."""
    from peft_bench.method_api.registry import load_plugin

    path = Path(plugin).resolve()
    try:
        load_plugin(plugin)
    except Exception as err:
        if isinstance(err, FileNotFoundError) and not path.is_file():
            raise  # the plugin file itself is missing: load_plugin says so
        if isinstance(err, SyntaxError):
            line, text = err.lineno, err.msg
        else:
            frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == path]
            line, text = (frames[-1].lineno if frames else None), str(err)
        where = f"{plugin}, line {line}" if line else plugin
        raise ConfigError(f"method plugin {where}: {type(err).__name__}: {text}") from None


if __name__ == "__main__":
    sys.exit(main())
