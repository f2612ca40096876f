"""The ``xmr`` command.

Each area registers its own subcommands from a module of this package (``register(subparsers)``), so
the parser stays small here. Every user-facing error becomes one readable line on stderr and a
non-zero exit; set ``XMR_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from scalable_xmr.distributed.submission import check_submission_paths
from scalable_xmr.errors import Interrupted, XMRError
from scalable_xmr.version import __version__

# Modules of this package that define `register(subparsers)`; imported lazily so `xmr --help` is fast
# and a missing optional area never breaks the others.
_AREAS = ("data", "projection", "train", "extend", "branch", "sweep", "search", "track", "cluster")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xmr",
        description="scalable_xmr: distributed cross-modal retrieval training (SDML, branch models, "
        "re-ranking, sweeps).",
    )
    parser.add_argument("--version", action=_Version, help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for area in _AREAS:
        try:
            module = importlib.import_module(f"scalable_xmr.cli.{area}")
        except ModuleNotFoundError as e:
            if e.name == f"scalable_xmr.cli.{area}":
                continue
            raise
        module.register(sub)
    return parser


class _Version(argparse.Action):
    """``xmr --version``: the installed distribution's version, read only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"xmr {installed_version()}")
        parser.exit()


def installed_version() -> str:
    """The version pip installed (its metadata), or the source tree's when run uninstalled."""
    from importlib import metadata

    try:
        return metadata.version("scalable_xmr")
    except metadata.PackageNotFoundError:
        return __version__


def run_cli(fn: Callable[[], int | None]) -> int:
    """Run ``fn`` and turn user-facing errors into one line on stderr and exit code 2."""
    try:
        return int(fn() or 0)
    except KeyboardInterrupt as e:  # Ctrl-C: the job says what it kept and how to go on
        hint = e.hint if isinstance(e, Interrupted) else None
        print(f"xmr: interrupted{f'; {hint}' if hint else ''}", file=sys.stderr)
        return 130
    except (XMRError, ValueError, OSError) as e:  # OSError: unwritable, full or read-only disks...
        if os.environ.get("XMR_DEBUG"):
            raise
        if isinstance(e, OSError) and not isinstance(e, XMRError) and e.filename is not None:
            msg = f"{e.filename}: {e.strerror or e}"  # the path first, as every other error line
        else:
            msg = " ".join(str(e).split())  # one line, whatever the message held
        print(f"xmr: error: {msg}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    def checked() -> int | None:
        check_submission_paths(args)  # under `ray job submit`: no output in the job's temporary dir
        return args.func(args)

    return run_cli(checked)


if __name__ == "__main__":
    sys.exit(main())
