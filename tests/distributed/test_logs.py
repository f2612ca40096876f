"""What the libraries may print (distributed/logs.py), decided without starting Ray: quiet by default,
their own logs with --verbose or XMR_DEBUG=1."""

from __future__ import annotations

import logging
import signal

import pytest

from scalable_xmr.distributed import logs
from scalable_xmr.distributed.signals import SETUP_HOOK


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Each test starts quiet, with no XMR_DEBUG or MLflow level of the caller's, and leaves none."""
    monkeypatch.delenv(logs.DEBUG_ENV, raising=False)
    monkeypatch.delenv(logs.MLFLOW_LEVEL_ENV, raising=False)
    monkeypatch.setattr(logs, "_verbose_flag", False)
    monkeypatch.setattr(logs, "_mlflow_level_ours", False)
    yield
    monkeypatch.delenv(logs.MLFLOW_LEVEL_ENV, raising=False)


@pytest.mark.parametrize(("flag", "debug", "loud"), [
    (False, None, False), (True, None, True), (False, "1", True), (False, "0", False), (False, "", False),
])
def test_verbose_is_the_flag_or_xmr_debug(monkeypatch, flag, debug, loud):
    if debug is not None:
        monkeypatch.setenv(logs.DEBUG_ENV, debug)
    assert logs.set_verbose(flag) is loud and logs.verbose() is loud


def test_ray_init_options_quiet_and_verbose():
    quiet = logs.ray_init_options()
    assert quiet == {"log_to_driver": True, "logging_level": "WARNING",
                     "runtime_env": {"worker_process_setup_hook": logs.QUIET_WORKER_HOOK}}
    logs.set_verbose(True)
    loud = logs.ray_init_options()
    assert loud["logging_level"] == "INFO" and loud["log_to_driver"] is True
    assert loud["runtime_env"] == {"worker_process_setup_hook": SETUP_HOOK}  # Ctrl-C is still the driver's


def test_the_hooks_name_importable_functions():
    import importlib

    for hook in (logs.QUIET_WORKER_HOOK, SETUP_HOOK):
        module, _, name = hook.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name))


def test_mlflow_level_quiet_then_back_and_a_users_own_kept(monkeypatch):
    import os

    logs.set_verbose(False)
    assert os.environ[logs.MLFLOW_LEVEL_ENV] == "WARNING"
    logs.set_verbose(True)  # a later verbose command of the same process: MLflow's default again
    assert logs.MLFLOW_LEVEL_ENV not in os.environ
    monkeypatch.setenv(logs.MLFLOW_LEVEL_ENV, "DEBUG")
    logs.set_verbose(False)
    assert os.environ[logs.MLFLOW_LEVEL_ENV] == "DEBUG"
    logs.set_verbose(True)
    assert os.environ[logs.MLFLOW_LEVEL_ENV] == "DEBUG"  # the user's, never removed


def test_mlflow_already_imported_gets_the_level(monkeypatch):
    import mlflow  # noqa: F401  (imported: the variable comes too late, the logger is set)

    mlflow_logger = logging.getLogger("mlflow")
    monkeypatch.setattr(mlflow_logger, "level", mlflow_logger.level)
    logs.set_verbose(False)
    assert mlflow_logger.level == logging.WARNING
    logs.set_verbose(True)
    assert mlflow_logger.level == logging.INFO


def test_quiet_worker_ignores_ctrl_c_and_keeps_ray_to_warnings(monkeypatch):
    ray_logger = logging.getLogger("ray")
    monkeypatch.setattr(ray_logger, "level", logging.INFO)
    monkeypatch.setattr(logging.getLogger("mlflow"), "level", logging.INFO)
    before = signal.getsignal(signal.SIGINT)
    try:
        logs.quiet_worker()
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert ray_logger.level == logging.WARNING
        assert logging.getLogger("ray.train._internal.storage").getEffectiveLevel() == logging.WARNING
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_quiet_worker_says_nothing_of_an_unraisable_stop_only(monkeypatch, capsys):
    import gc
    import sys

    class Raises:
        def __init__(self, error: BaseException) -> None:
            self.error = error

        def __del__(self) -> None:  # an exception here cannot be raised: it is "unraisable"
            raise self.error

    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    before = signal.getsignal(signal.SIGINT)
    try:
        logs.quiet_worker()
    finally:
        signal.signal(signal.SIGINT, before)
    assert sys.unraisablehook is logs.quiet_unraisable
    Raises(SystemExit(1))  # Ray's SIGTERM handler, landing in a weakref callback
    gc.collect()
    assert capsys.readouterr().err == ""
    Raises(ValueError("a real one"))
    gc.collect()
    assert "ValueError: a real one" in capsys.readouterr().err


def test_ray_data_console_drops_only_the_healthy_runs_warnings(monkeypatch):
    import io

    import ray.data  # noqa: F401  (configures the ray.data loggers and their console handler)

    data_logger = logging.getLogger("ray.data.dataset")
    console = [h for h in logging.getLogger("ray.data").handlers
               if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    assert console, "Ray Data's console handler moved: distributed/logs.py quiet_ray_data finds none"
    shown = io.StringIO()
    for handler in console:  # its stream is the sys.stderr of when ray.data was first imported
        monkeypatch.setattr(handler, "stream", shown)
        monkeypatch.setattr(handler, "level", handler.level)
        monkeypatch.setattr(handler, "filters", list(handler.filters))
    logs.quiet_ray_data()
    data_logger.warning("Warning: The Ray cluster currently does not have any available CPUs. ...")
    data_logger.info("Registered dataset logger")
    data_logger.warning("a real warning")
    assert "a real warning" in shown.getvalue()
    assert "available CPUs" not in shown.getvalue() and "Registered" not in shown.getvalue()
    logs.set_verbose(True)
    logs.quiet_ray_data()  # verbose: Ray Data's own INFO, nothing filtered
    data_logger.warning("Warning: The Ray cluster currently does not have any available CPUs.")
    data_logger.info("Registered dataset logger")
    assert "available CPUs" in shown.getvalue() and "Registered" in shown.getvalue()


def test_forwarded_lines_lose_the_preemption_watcher_error_only_while_quiet(monkeypatch):
    """The driver's printer of its workers' lines, as ray.init installs it: quiet drops Ray Train's
    PreemptionWatcher line (and a batch left empty), keeps every other; verbose prints it again."""
    from ray._private.ray_logging import WorkerStandardStreamDispatcher

    dispatcher = WorkerStandardStreamDispatcher()
    monkeypatch.setattr("ray._private.ray_logging.global_worker_stdstream_dispatcher", dispatcher)
    printed: list[list[str]] = []
    dispatcher.add_handler("ray_print_logs", lambda data: printed.append(data["lines"]))
    watcher = ("[2026-12-07 15:45:19,511 E 5420 5532] core_worker.cc:2465: Actor with class name: "
               "'PreemptionWatcher' and ID: 'dec9' has constructor arguments in the object store and "
               "max_restarts > 0.")
    other = "[2026-12-07 15:45:19,600 E 5420 5532] core_worker.cc:100: something else went wrong"
    logs.quiet_forwarded()
    logs.quiet_forwarded()  # once only: a second ray.init in the process wraps nothing twice
    assert len(dispatcher.handlers) == 1
    dispatcher.emit({"lines": [watcher, other], "is_err": True, "pid": 1})
    dispatcher.emit({"lines": [watcher], "is_err": True, "pid": 1})
    assert printed == [[other]]
    logs.set_verbose(True)
    dispatcher.emit({"lines": [watcher], "is_err": True, "pid": 1})
    assert printed == [[other], [watcher]]
