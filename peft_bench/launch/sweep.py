"""``peft-bench sweep``: a grid of runs (methods x backbones x datasets x seeds) as one submitit job array.

Each combination is one job that calls the runner with ``resume=True``: a job preempted or timed out by
SLURM checkpoints at its next optimizer step (``preemption.py``), is requeued through submitit's
checkpointing (:class:`SweepTask` is ``Checkpointable``) and continues from that step in the same mlflow run.

The sweep keeps a manifest (``sweep.json`` in ``--sweep-dir``) of every combination, its config, digest
and job id; submitit's logs and result files lie beside it. A combination whose config digest already has
a FINISHED mlflow run is skipped (``--rerun`` forces it), and so is one whose job is still pending or
running, so submitting the same sweep twice never duplicates work. ``sweep status`` reads the manifest,
mlflow, the scheduler (sacct for SLURM, the process for local jobs) and the JSON outcome each job writes
into its run folder; it never unpickles anything (submitit's own result files are pickles, and a sweep
folder may come from someone else). ``sweep sync`` sends results recorded locally while tracking was
unreachable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import submitit
from mlflow.tracking import MlflowClient

from peft_bench.config import resolve_config
from peft_bench.dataclass_io import to_dict
from peft_bench.errors import UserError
from peft_bench.launch.plan import run_configs
from peft_bench.method_api.registry import load_plugin
from peft_bench.track.journal import read_record, sync_unsent
from peft_bench.track.states import RunStatus, TextEnum
from peft_bench.track.tracking import default_tracking_uri, prepare_store, quiet_mlflow_logging
from peft_bench.train import runner
from peft_bench.train.distributed import distributed_from_environment
from peft_bench.train.preemption import PreemptionGuard

log = logging.getLogger(__name__)

MANIFEST = "sweep.json"
JOB_OUTCOME = "job-outcome.json"  # in the run folder: {"job_id", "state": a State, "error"}
LOG_TAIL_LINES = 20


class State(TextEnum):
    """What `sweep status` says of a combination; a job's outcome file holds RUNNING, DONE or FAILED."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class Submission(TextEnum):
    """What a submit did with a combination (the manifest's ``submitted``)."""

    SUBMITTED = "submitted"
    SKIPPED_FINISHED = "skipped (finished)"  # a FINISHED run of its config digest exists
    SKIPPED_QUEUED = "skipped (queued)"  # its job is still pending or running


# Scheduler states (sacct's, and submitit's local ones) -> what `sweep status` says.
SCHEDULER_STATES = {
    **dict.fromkeys(
        ["PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "SUSPENDED", "RESIZING"], State.PENDING
    ),
    **dict.fromkeys(["RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"], State.RUNNING),
    **dict.fromkeys(["COMPLETED", "FINISHED"], State.DONE),
    **dict.fromkeys(
        [
            "FAILED",
            "CANCELLED",
            "TIMEOUT",
            "OUT_OF_MEMORY",
            "NODE_FAIL",
            "PREEMPTED",
            "BOOT_FAIL",
            "DEADLINE",
            "INTERRUPTED",
        ],
        State.FAILED,
    ),
}


# --- the job ---------------------------------------------------------------------------------------


class SweepTask(submitit.helpers.Checkpointable):
    """One combination, as submitit runs it: rebuild the config, join the job's DDP group, train.

    ``checkpoint`` (called by submitit's signal handler, after the runner saved its own checkpoint)
    returns the same task with ``resume=True``, which submitit requeues.
    """

    def __init__(self, config: dict, plugins: list[str] | None = None, resume: bool = True, run_dir: str | None = None):
        self.config, self.plugins, self.resume, self.run_dir = config, list(plugins or []), resume, run_dir

    def __call__(self) -> dict:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._write_outcome(State.RUNNING)
        try:
            for plugin in self.plugins:
                load_plugin(plugin)
            cfg = resolve_config(base=self.config)
            with distributed_from_environment(), PreemptionGuard():
                result = runner.run(cfg, progress=False, resume=self.resume)
        except SystemExit:
            raise  # preempted: requeued by submitit (or stopped); the scheduler says which, the outcome stays
        except BaseException as err:
            self._write_outcome(State.FAILED, f"{type(err).__name__}: {err}")
            raise
        self._write_outcome(State.DONE)
        return {"run_id": result.run_id, "top1": result.top1, "top5": result.top5, "run_dir": str(result.run_dir)}

    def _write_outcome(self, state: State, error: str | None = None) -> None:
        run_dir = getattr(self, "run_dir", None)  # tasks pickled before this existed have none
        if run_dir is None:
            return
        try:
            job = submitit.JobEnvironment()
        except RuntimeError:  # not inside a submitit job
            return
        if job.global_rank == 0:
            write_json(Path(run_dir) / JOB_OUTCOME, {"job_id": job.job_id, "state": state, "error": error})

    def checkpoint(self, *args, **kwargs):
        return submitit.helpers.DelayedSubmission(
            SweepTask(self.config, self.plugins, True, getattr(self, "run_dir", None))
        )


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# --- the grid --------------------------------------------------------------------------------------


@dataclass
class Combination:
    name: str
    digest: str
    run_dir: str
    config: dict
    job_id: str | None = None
    submitted: Submission | None = None
    finished_run_id: str | None = None


@dataclass
class Manifest:
    executor: str
    folder: str  # submitit's logs
    tracking_uri: str
    experiment: str
    combinations: list[Combination] = field(default_factory=list)

    @classmethod
    def load(cls, sweep_dir: Path) -> Manifest:
        path = sweep_dir / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no sweep in {sweep_dir} (no {MANIFEST}); submit one with `peft-bench sweep`")
        data = json.loads(path.read_text())
        data["combinations"] = [Combination(**c) for c in data["combinations"]]
        return cls(**data)

    def save(self, sweep_dir: Path) -> None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        tmp = sweep_dir / f"{MANIFEST}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, sweep_dir / MANIFEST)  # a killed submit keeps the previous manifest whole

    def merge(self, combos: Iterable[Combination]) -> None:
        by_key = {(c.name, c.digest): i for i, c in enumerate(self.combinations)}
        for combo in combos:
            key = (combo.name, combo.digest)
            if key in by_key:
                self.combinations[by_key[key]] = combo
            else:
                self.combinations.append(combo)


def grid_configs(args) -> list:
    """Every combination, resolved and checked before anything is submitted."""
    return [_absolute_paths(cfg) for cfg in run_configs(args)]


def _absolute_paths(cfg):
    """Jobs may start in another folder: every place a run writes is made absolute, the store pinned."""
    uri = cfg.tracking_uri or default_tracking_uri(Path(cfg.results_dir))
    return replace(
        cfg,
        output_dir=str(Path(cfg.output_dir).resolve()),
        results_dir=str(Path(cfg.results_dir).resolve()),
        tracking_uri=uri,
    )


def parse_timeout_minutes(text: str) -> int:
    """'90' or '90m' minutes, '24h', '2d', or SLURM's 'H:MM:SS' -> minutes."""
    text = text.strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([mhd]?)", text)
    if match:
        value, unit = float(match.group(1)), match.group(2) or "m"
        minutes = value * {"m": 1, "h": 60, "d": 1440}[unit]
    elif re.fullmatch(r"\d+:\d{1,2}:\d{1,2}", text):
        h, m, s = (int(x) for x in text.split(":"))
        minutes = h * 60 + m + s / 60
    else:
        raise UserError(f"--timeout '{text}': expected minutes, '90m', '24h', '2d' or 'H:MM:SS'")
    if minutes < 1:
        raise UserError(f"--timeout '{text}' is under a minute")
    return round(minutes)


def parse_sbatch_options(items: list[str]) -> dict[str, str]:
    """--sbatch qos=high --sbatch constraint=a100 -> {'qos': 'high', 'constraint': 'a100'} for sbatch."""
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise UserError(f"--sbatch '{item}': expected OPTION=VALUE, e.g. qos=high")
        options[key.replace("-", "_")] = value
    return options


# --- what is already done ---------------------------------------------------------------------------


def tracked_runs(tracking_uri: str, experiment: str) -> dict[str, tuple[str, str]]:
    """digest -> (run id, status) of the experiment's runs; a FINISHED run wins over any other."""
    prepare_store(tracking_uri)  # created safely if new; a damaged one stops the command, saying how to recover
    quiet_mlflow_logging()
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    runs: dict[str, tuple[str, str]] = {}
    token = None
    while True:
        page = client.search_runs([found.experiment_id], max_results=1000, page_token=token)
        for run in page:
            digest = run.data.params.get("config_digest")
            if digest and (digest not in runs or run.info.status == RunStatus.FINISHED):
                runs[digest] = (run.info.run_id, run.info.status)
        token = page.token
        if not token:
            return runs


def local_record_finished(run_dir: Path) -> str | None:
    """The run id a run's local record says FINISHED (written before tracking is reached), else None."""
    record = read_record(run_dir)
    if record and record.get("status") == RunStatus.FINISHED:
        return record.get("run_id") or "(not yet synced)"
    return None


# --- executors -------------------------------------------------------------------------------------


def make_executor(args, folder: Path):
    _export_code_location()
    if args.executor == "local":
        local = submitit.LocalExecutor(folder=folder)
        local.update_parameters(timeout_min=parse_timeout_minutes(args.timeout))
        return local
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    tasks = max(1, args.gpus_per_node or 0)  # one process per GPU: DDP inside the job
    params: dict[str, object] = {
        "timeout_min": parse_timeout_minutes(args.timeout),
        "nodes": 1,
        "tasks_per_node": tasks,
        "cpus_per_task": args.cpus_per_task,
        "slurm_signal_delay_s": args.signal_delay,
        "slurm_additional_parameters": parse_sbatch_options(args.sbatch),
        "slurm_setup": [f"export PYTHONPATH={code_root()}${{PYTHONPATH:+:$PYTHONPATH}}"],
    }
    if args.partition:
        params["slurm_partition"] = args.partition
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    executor.update_parameters(**params)
    return executor


def code_root() -> str:
    """The folder holding this peft_bench package: jobs import the code that submitted them."""
    return str(Path(__file__).resolve().parents[2])


def _export_code_location() -> None:
    # Local jobs inherit the environment; SLURM jobs get the same line through slurm_setup.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if code_root() not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([code_root(), *paths])


def submit_slurm(executor, tasks: list[SweepTask]) -> list:
    with executor.batch():  # one job array
        jobs = [executor.submit(task) for task in tasks]
    return jobs


def run_local(executor, tasks: list[SweepTask], combos: list[Combination], max_parallel: int, on_submit) -> list:
    """Local processes, at most ``max_parallel`` at once; returns when all are done."""
    running: list[submitit.Job] = []
    jobs: list[submitit.Job] = []
    for task, combo in zip(tasks, combos, strict=True):
        while len(running) >= max_parallel:
            running = [j for j in running if not j.done()]
            time.sleep(0.5)
        job = executor.submit(task)
        combo.job_id = job.job_id
        on_submit()
        running.append(job)
        jobs.append(job)
    for job in jobs:
        job.wait()
    return jobs


# --- status ----------------------------------------------------------------------------------------


@dataclass
class CombinationStatus:
    name: str
    state: State
    run_id: str | None
    job_id: str | None
    log_tail: str = ""


def job_object(manifest: Manifest, job_id: str):
    if manifest.executor == "slurm":
        return submitit.SlurmJob(folder=manifest.folder, job_id=job_id)
    return submitit.LocalJob(folder=manifest.folder, job_id=job_id)


def job_outcome(combo: Combination) -> tuple[State, str | None] | None:
    """(state, error) that this combination's job wrote into its run folder (JSON: nothing here is
    unpickled), or None when it wrote nothing (not started, or killed before it could)."""
    path = Path(combo.run_dir) / JOB_OUTCOME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or str(data.get("job_id")) != str(combo.job_id):
        return None  # an earlier job's outcome
    try:
        return State(data.get("state")), data.get("error")
    except ValueError:  # not a state this version knows: as if it wrote nothing
        return None


def scheduler_state(manifest: Manifest, job) -> State:
    if manifest.executor == "slurm":
        return SCHEDULER_STATES.get(job.state.split()[0].upper(), State.PENDING)
    if job.paths.stdout.exists():
        pid = int(job.job_id)
        try:
            os.kill(pid, 0)
            return State.RUNNING
        except OSError:
            return State.FAILED  # the process is gone without a result file
    return State.PENDING


def log_tail(job, lines: int = LOG_TAIL_LINES) -> str:
    for path in (job.paths.stderr, job.paths.stdout):
        if path.exists():
            text = path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
    return ""


def combination_status(manifest: Manifest, combo: Combination, tracked: dict) -> CombinationStatus:
    run_id, status = tracked.get(combo.digest, (None, None))
    if combo.submitted and combo.submitted.startswith(Submission.SKIPPED_FINISHED):
        return CombinationStatus(combo.name, State.SKIPPED, combo.finished_run_id or run_id, combo.job_id)
    local_finished = local_record_finished(Path(combo.run_dir))
    if status == RunStatus.FINISHED or local_finished:
        return CombinationStatus(
            combo.name, State.DONE, run_id if status == RunStatus.FINISHED else local_finished, combo.job_id
        )
    if combo.job_id is None:
        return CombinationStatus(combo.name, State.PENDING, run_id, None)
    job = job_object(manifest, combo.job_id)
    outcome, _ = job_outcome(combo) or (None, None)
    if outcome is State.FAILED:
        return CombinationStatus(combo.name, State.FAILED, run_id, combo.job_id, log_tail(job))
    state = State.DONE if outcome is State.DONE else scheduler_state(manifest, job)
    if state is State.DONE and status != RunStatus.FINISHED:
        state = State.FAILED  # the job ended but no finished run exists: say so, with its log
    return CombinationStatus(combo.name, state, run_id, combo.job_id, log_tail(job) if state is State.FAILED else "")


def sweep_status(sweep_dir: Path) -> list[CombinationStatus]:
    manifest = Manifest.load(sweep_dir)
    sync_journals(manifest)  # results recorded while tracking was away arrive before we look
    tracked = tracked_runs(manifest.tracking_uri, manifest.experiment)
    return [combination_status(manifest, c, tracked) for c in manifest.combinations]


def sync_journals(manifest: Manifest) -> tuple[int, int]:
    """Send every combination's unsynced local record to mlflow: (synced, still unsynced)."""
    return sync_unsent(Path(combo.run_dir) for combo in manifest.combinations)


# --- the command -----------------------------------------------------------------------------------


def add_sweep_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="submit a grid of runs (local processes or a SLURM job array); status; sync",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["submit", "status", "sync"],
        default="submit",
        help="submit (default) the grid; status of each combination; sync local records to mlflow",
    )
    p.add_argument("--methods", default="all", help="comma-separated method names, or 'all' (default)")
    p.add_argument("--backbones", default="tiny", help="comma-separated backbones (default tiny)")
    p.add_argument("--datasets", default=None, help="comma-separated datasets (default: the embedded two)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--pretrained", help="'auto' (default), a weights file, or 'none'")
    p.add_argument("--data-root")
    p.add_argument("--annotations")
    p.add_argument("--frames", type=int)
    p.add_argument("--preset")
    p.add_argument("--device")
    p.add_argument("--config", help="a saved config.yaml to start from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config value")
    p.add_argument("--output-dir", help="checkpoints and per-run files (default runs)")
    p.add_argument("--tracking-uri", help="mlflow URI; for many jobs use a server: http://host:5000")
    p.add_argument("--results-dir", help="where the default SQLite store goes (default results)")
    p.add_argument("--experiment", help="mlflow experiment (default peft-bench)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py")
    p.add_argument("--sweep-dir", help="manifest and job logs (default: <output-dir>/<experiment>/sweep)")
    p.add_argument("--executor", choices=["local", "slurm"], default="local")
    p.add_argument("--max-parallel", type=int, default=1, help="local executor: jobs at once (default 1)")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per job; one DDP process per GPU")
    p.add_argument("--cpus-per-task", type=int, default=4, help="CPUs per process (loader workers + 1)")
    p.add_argument("--timeout", default="24h", help="per-job time limit: minutes, '90m', '24h' (default 24h)")
    p.add_argument(
        "--signal-delay", type=int, default=90, help="seconds between SLURM's warning signal and the kill (default 90)"
    )
    p.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="extra sbatch option passed through, e.g. qos=high (repeatable)",
    )
    p.add_argument("--rerun", action="store_true", help="run combinations again even if they finished")
    p.add_argument("--dry-run", action="store_true", help="print the grid and what would be skipped; submit nothing")


def default_sweep_dir(args) -> Path:
    if args.sweep_dir:
        return Path(args.sweep_dir).resolve()
    return (Path(args.output_dir or "runs") / (args.experiment or "peft-bench") / "sweep").resolve()


def cmd_sweep(args) -> int:
    if args.max_parallel < 1:
        raise UserError("--max-parallel must be at least 1")
    parse_timeout_minutes(args.timeout)  # bad options are refused before anything is planned or written
    parse_sbatch_options(args.sbatch)
    if args.executor == "slurm" and args.action == "submit" and not args.dry_run:
        _check_slurm_reachable()
    sweep_dir = default_sweep_dir(args)
    if args.action == "status":
        return print_status(sweep_status(sweep_dir))
    if args.action == "sync":
        done, left = sync_journals(Manifest.load(sweep_dir))
        print(f"synced {done} run(s); {left} still unsynced")
        return 1 if left else 0
    return submit(args, sweep_dir)


def _check_slurm_reachable() -> None:
    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm: no sbatch on PATH (is this a SLURM login node?)")
    if subprocess.run(["squeue", "-h", "-u", str(os.getuid())], capture_output=True, check=False).returncode != 0:
        raise UserError("--executor slurm: squeue fails; is slurmctld up?")


def plan(args, sweep_dir: Path) -> tuple[Manifest, list[Combination]]:
    configs = grid_configs(args)
    first = configs[0]
    previous = Manifest.load(sweep_dir) if (sweep_dir / MANIFEST).is_file() else None
    manifest = Manifest(args.executor, str(sweep_dir / "logs"), first.tracking_uri, first.experiment)
    if previous is not None:
        if previous.executor != args.executor:  # its job ids mean nothing to the other executor
            raise UserError(
                f"{sweep_dir} holds a sweep submitted with --executor {previous.executor}; "
                f"use that executor or another --sweep-dir"
            )
        manifest.combinations = previous.combinations
    tracked = tracked_runs(first.tracking_uri, first.experiment)
    earlier = {(c.name, c.digest): c for c in manifest.combinations}
    combos = []
    for cfg in configs:
        combo = Combination(cfg.run_name(), cfg.digest(), str(cfg.run_dir()), to_dict(cfg))
        run_id, status = tracked.get(combo.digest, (None, None))
        local = local_record_finished(cfg.run_dir())
        before = earlier.get((combo.name, combo.digest))
        if not args.rerun and (status == RunStatus.FINISHED or local):
            combo.submitted, combo.finished_run_id = Submission.SKIPPED_FINISHED, run_id or local
            if before is not None:
                combo.job_id = before.job_id
        elif (
            not args.rerun
            and before is not None
            and before.job_id
            and previous is not None
            and combination_status(previous, before, tracked).state in (State.PENDING, State.RUNNING)
        ):
            combo.submitted, combo.job_id = Submission.SKIPPED_QUEUED, before.job_id
        combos.append(combo)
    return manifest, combos


def submit(args, sweep_dir: Path) -> int:
    manifest, combos = plan(args, sweep_dir)
    todo = [c for c in combos if not c.submitted]
    print(
        f"sweep of {len(combos)} combination(s): {len(todo)} to run, {len(combos) - len(todo)} skipped "
        f"({args.executor}; manifest {sweep_dir / MANIFEST})"
    )
    for combo in combos:
        print(
            f"  {'run ' if not combo.submitted else 'skip'}  {combo.name}  [{combo.digest}]"
            + (
                f"  {combo.submitted}" + (f" as {combo.finished_run_id}" if combo.finished_run_id else "")
                if combo.submitted
                else ""
            )
        )
    if args.dry_run:
        return 0
    tasks = [
        SweepTask(c.config, [str(Path(p).resolve()) for p in args.plugin], not args.rerun, c.run_dir) for c in todo
    ]
    for combo in todo:
        combo.submitted = Submission.SUBMITTED
    manifest.merge(combos)
    manifest.save(sweep_dir)
    if not todo:
        return 0
    executor = make_executor(args, Path(manifest.folder))
    if args.executor == "slurm":
        jobs = submit_slurm(executor, tasks)
        for combo, job in zip(todo, jobs, strict=True):
            combo.job_id = job.job_id
        manifest.save(sweep_dir)
        print(
            f"submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} task(s)); "
            f"`peft-bench sweep status --sweep-dir {sweep_dir}` follows it"
        )
        return 0
    run_local(executor, tasks, todo, args.max_parallel, on_submit=lambda: manifest.save(sweep_dir))
    manifest.save(sweep_dir)
    return print_status(sweep_status(sweep_dir))


def print_status(statuses: list[CombinationStatus]) -> int:
    width = max((len(s.name) for s in statuses), default=10)
    print(f"{'combination':{width}}  {'state':8}  {'job':12}  mlflow run")
    for s in statuses:
        print(f"{s.name:{width}}  {s.state:8}  {s.job_id or '-':12}  {s.run_id or '-'}")
    for s in statuses:
        if s.state == State.FAILED and s.log_tail:
            print(f"\n--- {s.name} (job {s.job_id}) failed; end of its log:\n{s.log_tail}")
    counts = {state: sum(s.state == state for s in statuses) for state in State}
    print("\n" + ", ".join(f"{n} {state}" for state, n in counts.items() if n), file=sys.stderr)
    return 1 if counts[State.FAILED] else 0
