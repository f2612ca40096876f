"""What the libraries under a job may print: by default, nothing but their warnings and errors.

A job's terminal is ours: progress, tables, footers and our own warnings. Ray, Tune, Ray Data and
MLflow each log at INFO to the console by default, and some print on every healthy run (Tune's
boxes, a C++ line per Ray Data actor pool, "Checkpoint successfully created" from every trial).
So by default (quiet):

- the driver's ``ray`` and ``mlflow`` loggers show warnings and errors only (``ray.init``'s
  ``logging_level``; MLflow's own ``MLFLOW_LOGGING_LEVEL``, read when mlflow is imported);
- every worker does the same (:func:`quiet_worker`, run by Ray as the job's
  ``worker_process_setup_hook``, which also makes workers ignore Ctrl-C: distributed/signals.py);
  their warnings, errors and prints still reach the driver (``log_to_driver``);
- Ray Data's console handler shows warnings and errors, less two that every healthy run gives
  (:func:`quiet_ray_data`); its session log file keeps everything;
- the lines Ray forwards from its workers are printed as Ray prints them, less one error line that
  every data-parallel (Ray Train) run gives (:func:`quiet_forwarded`);
- a sweep runs Tune silent and prints a line per finished trial instead (tuning/console.py).

``--verbose`` on a command, or ``XMR_DEBUG=1`` in the environment, gives the libraries their own
defaults back. Nothing here touches an error: a failing job still ends in its one ``xmr: error``
line (cli/__init__.py ``run_cli``), and Ray's own errors still print.
"""

from __future__ import annotations

import logging
import os
import sys

from scalable_xmr.distributed.signals import SETUP_HOOK, workers_ignore_ctrl_c

DEBUG_ENV = "XMR_DEBUG"  # also makes `xmr` show tracebacks (cli/__init__.py)
VERBOSE_HELP = ("also show the libraries' own logs (Ray, Tune, Ray Data, MLflow), which are hidden "
                "by default but for their warnings and errors (also XMR_DEBUG=1)")

# Ray runs this in every worker process of a quiet job; a verbose one gets only signals.SETUP_HOOK.
QUIET_WORKER_HOOK = "scalable_xmr.distributed.logs.quiet_worker"

_verbose_flag = False  # --verbose of the command this process runs (set_verbose)
MLFLOW_LEVEL_ENV = "MLFLOW_LOGGING_LEVEL"
_mlflow_level_ours = False  # MLFLOW_LOGGING_LEVEL was set by quiet_driver, not by the user

# Ray Data warnings that a healthy `xmr index` gives on every run (matched on the message's start):
QUIET_RAY_DATA = (
    # --no-progress: we turned them off ourselves.
    "Progress bars disabled",
    "Progress bars for operators disabled",
    # Ray Data checks for a free CPU when a dataset starts executing; `xmr index` gives its encoder
    # pool every CPU slot but one (serving/index.py encoder_slots), so the check can find none free
    # for a moment while the run goes on to finish.
    "Warning: The Ray cluster currently does not have any available CPUs",
)

# Lines Ray forwards from its workers (``log_to_driver``) that every healthy run gives, dropped from
# the driver's console unless verbose (matched anywhere in a line; the worker's log file keeps them):
QUIET_FORWARDED = (
    # Ray Train V2's controller starts a PreemptionWatcher actor for each worker group
    # (max_restarts=-1, the group's actor handles as arguments), and Ray's core worker logs an
    # ERROR for every such actor that its restart could fail (ray-project/ray#53727). The watcher
    # is Ray Train's own, made again with each group; nothing a user can or need do.
    "Actor with class name: 'PreemptionWatcher' and ID:",
)
_PRINT_HANDLER = "ray_print_logs"  # the name ray.init gives its printer of forwarded lines


def set_verbose(flag: bool) -> bool:
    """At a command's start: ``--verbose`` (``flag``) or XMR_DEBUG=1 give the libraries their logs
    back; otherwise they are quieted (the driver's now; Ray's when :func:`ray_init_options` is
    used). Returns whether this command is verbose."""
    global _verbose_flag
    _verbose_flag = bool(flag)
    quiet_driver()
    return verbose()


def verbose() -> bool:
    """Whether the libraries keep their own logs: ``--verbose`` was given or XMR_DEBUG=1."""
    return _verbose_flag or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def quiet_driver() -> None:
    """This process's MLflow logs: warnings and errors only, unless verbose. MLflow sets its logger
    level from MLFLOW_LOGGING_LEVEL when it is imported; a level the user set is kept."""
    global _mlflow_level_ours
    imported = "mlflow" in sys.modules
    if verbose():
        if _mlflow_level_ours:  # set by an earlier quiet command of this process: MLflow's default
            os.environ.pop(MLFLOW_LEVEL_ENV, None)
            _mlflow_level_ours = False
            if imported:
                logging.getLogger("mlflow").setLevel(logging.INFO)
        return
    if MLFLOW_LEVEL_ENV not in os.environ:
        os.environ[MLFLOW_LEVEL_ENV] = "WARNING"
        _mlflow_level_ours = True
    if imported:  # too late for the variable: set the level MLflow read from it
        logging.getLogger("mlflow").setLevel(os.environ[MLFLOW_LEVEL_ENV].upper())


def ray_init_options() -> dict:
    """``ray.init`` keyword arguments: the driver's Ray loggers and the workers' setup hook."""
    quiet_driver()
    loud = verbose()
    return {"log_to_driver": True, "logging_level": "INFO" if loud else "WARNING",
            "runtime_env": {"worker_process_setup_hook": SETUP_HOOK if loud else QUIET_WORKER_HOOK}}


def quiet_forwarded() -> None:
    """After ``ray.init``: the driver's printer of its workers' lines drops :data:`QUIET_FORWARDED`
    while this process is quiet (decided per batch of lines: a later --verbose command prints them).
    Ray 2.60's printer, a private hook (the Ray version is pinned); without it nothing changes."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    printer = next((h for name, h in dispatcher.handlers if name == _PRINT_HANDLER), None)
    if printer is None or getattr(printer, "xmr_quiet", False):  # log_to_driver off, or done
        return

    def quiet_printer(data: dict) -> None:
        if not verbose():
            lines = [line for line in data.get("lines", []) if not any(q in line for q in QUIET_FORWARDED)]
            if not lines:
                return
            data = {**data, "lines": lines}
        printer(data)

    quiet_printer.xmr_quiet = True  # type: ignore[attr-defined]
    dispatcher.remove_handler(_PRINT_HANDLER)
    dispatcher.add_handler(_PRINT_HANDLER, quiet_printer)


def quiet_worker() -> None:
    """Ray's ``worker_process_setup_hook`` of a quiet job, in each worker: ignore Ctrl-C (the
    driver handles it), keep Ray's and MLflow's loggers to warnings and errors, and say nothing of
    a stop that lands where it cannot be raised (:func:`quiet_unraisable`)."""
    workers_ignore_ctrl_c()
    os.environ.setdefault(MLFLOW_LEVEL_ENV, "WARNING")
    for name in ("ray", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    sys.unraisablehook = quiet_unraisable


def quiet_unraisable(unraisable) -> None:
    """``sys.unraisablehook`` of a quiet worker. Ray stops a worker (Tune ending its trial actors,
    the job ending) with SIGTERM, whose handler raises SystemExit; landing in a weakref callback it
    cannot be raised, and Python would print "Exception ignored in: ..." and its traceback, which
    Ray forwards to the terminal. Only that is left unsaid; everything else prints as before."""
    if isinstance(unraisable.exc_value, SystemExit):
        return
    sys.__unraisablehook__(unraisable)


class _Unless(logging.Filter):
    """Drops records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def quiet_ray_data() -> None:
    """Ray Data's console on the driver: unless verbose, warnings and errors less
    :data:`QUIET_RAY_DATA`; verbose, Ray Data's own INFO. Its log file (``<session>/logs/ray-data/``)
    gets everything either way."""
    import ray.data  # noqa: F401  (its import configures the loggers set here; only then)

    loud = verbose()
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
            continue
        handler.setLevel(logging.INFO if loud else logging.WARNING)
        for f in [f for f in handler.filters if isinstance(f, _Unless)]:
            handler.removeFilter(f)
        if not loud:
            handler.addFilter(_Unless(QUIET_RAY_DATA))
