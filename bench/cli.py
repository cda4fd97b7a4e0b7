"""Command line: parse flags, parse gin strictly, build the experiment, run it; user errors in one line.

Under torchrun (``torchrun --nproc_per_node=N run_bench.py ...``) every process runs this; each joins
the process group before the experiment is built (``infra.distributed``), and an error on any rank is
its one-line message and a non-zero exit, which makes torchrun stop the other ranks.
"""
from __future__ import annotations

import argparse
import gc
import os
import signal
import sys

from bench import mlflow_store
from infra import startup, timing
from infra.errors import HarnessError

DEFAULT_RESULTS_DIR = os.path.join("results", "runs")
INTERRUPTED = 130  # the exit code of Ctrl-C, as shells give it


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_bench.py",
        description="sam3d-bench: run a benchmark described by gin files and log it to MLflow.",
        epilog="example: python run_bench.py --gin=gin/demo.gin --gin_binding='SyntheticIndoor.num_train = 8'",
    )
    parser.add_argument("--gin", action="append", default=[], metavar="FILE", required=True,
                        help="gin file (repeatable; later files override earlier ones). Looked up as given, "
                             "then in the repository root, then in gin/. Includes resolve relative to gin/.")
    parser.add_argument("--gin_binding", action="append", default=[], metavar="BINDING",
                        help="a gin binding such as 'Experiment.seeds = 3' (repeatable; applied after the files)")
    parser.add_argument("--allow_gin_imports", action="store_true",
                        help="let gin files and bindings import modules outside the project's packages (bench, "
                             "methods, datasets, infra) and use dynamic registration; both run arbitrary code, so give "
                             "it only for configs you trust (default: refused, with the file and line)")
    parser.add_argument("--results_dir", default=DEFAULT_RESULTS_DIR,
                        help=f"folder for everything a run writes, the embedded MLflow store included "
                             f"(default: {DEFAULT_RESULTS_DIR})")
    parser.add_argument("--prepare", action="store_true",
                        help="prepare the table's pretraining data (masks, teacher features, groups) and train "
                             "nothing; every process given it takes a share of the scenes (torchrun ranks, array "
                             "jobs on one results folder)")
    parser.add_argument("--shard", type=_shard, metavar="I/N",
                        help="with --prepare: only the scenes whose index is I modulo N, and no groups (an array "
                             "job's task I of N); a --prepare without --shard after every shard makes the groups")
    parser.add_argument("--plan", action="store_true",
                        help="train nothing: print every step of the table with its cache status, parameters and "
                             "estimated cost on this machine (a step of each kind timed), totals and what runs in "
                             "parallel, and write <results_dir>/<table>/plan.json; plans for torchrun's WORLD_SIZE")
    parser.add_argument("--profile", action="store_true",
                        help="print at the end where the run's time went: per step kind and per training phase")
    return parser


def _shard(text: str) -> tuple[int, int]:
    """``I/N`` -> (I, N) with 0 <= I < N."""
    parts = text.split("/")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        index, count = (int(p) for p in parts)
        if 0 <= index < count:
            return index, count
    raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (e.g. 0/4), got {text!r}")


def _terminate_as_interrupt(signum, frame):
    # SIGTERM (kill, a scheduler's time limit) unwinds like Ctrl-C so open MLflow runs end KILLED.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of run_bench.py; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.shard is not None and not args.prepare:
        parser.error("--shard goes with --prepare (it splits the preparation, not the training)")
    if args.plan and args.prepare:
        parser.error("--plan trains and prepares nothing; give it without --prepare")
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    clock = timing.Stopwatch()
    if os.environ.get("RANK", "0") == "0" and not (args.prepare or args.plan):  # they never talk to MLflow
        mlflow_store.prewarm()  # MLflow's import overlaps torch's and the config's
    try:
        code = _run(args, clock)
        if code == INTERRUPTED:
            # The interrupted frames are gone now: free the worker pool's queues, or their semaphores are
            # reported leaked at exit (run_bench.py ends with os._exit).
            gc.collect()
        return code
    finally:
        # The helper finishes the writes already sent (KILLED statuses included); another Ctrl-C or SIGTERM
        # now would only cut them short and print a traceback.
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            mlflow_store.shutdown()
        except Exception as e:  # e.g. a write that failed on a full disk: said once, in one line
            _error_line(f"MLflow: {(str(e).strip().splitlines() or [type(e).__name__])[0]}")
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _run(args: argparse.Namespace, clock: timing.Stopwatch) -> int:
    try:
        with timing.span("imports and config"), startup.importing_without_collection():
            import bench.registry  # noqa: F401  every component a config can name
            from bench.config import describe_gin_error, parse_config
            from bench.runner import Experiment  # registers the Experiment
            from infra import distributed

            parse_config(args.gin, args.gin_binding, allow_imports=args.allow_gin_imports)

            if args.plan and os.environ.get("RANK", "0") != "0":
                return 0  # under torchrun one process plans for all of them
            if not args.plan:  # a plan runs in one process, for WORLD_SIZE of them
                distributed.init_from_env()
            try:
                experiment = Experiment()
            except Exception as e:  # REQUIRED values, bad parameter values: raised while gin builds components
                raise HarnessError(describe_gin_error(e, source="config")) from None
        if args.plan:
            experiment.plan(args.results_dir, startup_seconds=clock.seconds)
        elif args.prepare:
            experiment.prepare(args.results_dir, args.shard)
        else:
            experiment.run(args.results_dir)
        distributed.shutdown()  # after success only: on errors, a rank mid-collective could hang here
        if args.profile and distributed.rank() == 0:
            print("\n" + timing.profile_report(timing.totals(), clock.seconds,
                                                title=f"profile of {' '.join(args.gin)}"))
    except HarnessError as e:
        _error_line(str(e))
        return 2
    except KeyboardInterrupt:
        print("interrupted: open MLflow runs end KILLED, no partial results were kept, finished steps stay cached",
              file=sys.stderr)
        return INTERRUPTED
    return 0


def _error_line(message: str) -> None:
    """``error: <message>`` on stderr in one write: under torchrun every rank shares stderr, and print's
    separate write of the newline let two ranks' lines run into one."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
