"""Which lines of a command's output are ours (issue #22 item 3), shared by tests/e2e/test_quiet.py and
the README test (every README job is checked quiet as it runs).

"Ours" is decided conservatively: a line is ours only when it has one of the formats our commands
print (footers, tables, progress, the lines of cli/*.py and distributed/); everything else that is
not blank -- and anything with a library's marks (a log record's timestamp and level, a Ray worker's
"(name pid=...)" prefix, colour codes, Tune's boxes, a C++ source file) -- counts as theirs.
"""

from __future__ import annotations

import re

MAX_FOREIGN = 3

# Marks of a library's line: any one makes a line theirs, whatever else it looks like.
THEIRS = re.compile(
    r"\x1b\[|^\(\w[\w.]* pid=|^\((raylet|autoscaler|gcs_server|monitor)\)|^\[?\d{4}[-/]\d\d[-/]\d\d"
    r"|\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b.* -- |\.(cc|cpp|h):\d+|[╭│╰├┤─]|Traceback|^\s+File \""
    r"|repeated \d+x across cluster|Tuner\.restore"
)
# The formats our commands print (cli/*.py, distributed/cluster.py, distributed/progress.py,
# sdml/evaluate.py and branch/report.py tables, tuning/console.py, serving's `xmr search` table).
FOOTER_KEYS = (
    "run directory", "metrics", "plots", "MLflow", "wall time", "training state", "epochs", "added",
    "index", "rows", "run", "gallery", "search", "metrics over", "results", "sweep directory",
    "best config", "plot", "map", r"map@\d+", r"precision@\d+",
)
OURS = [re.compile(p) for p in (
    # a footer line: its key padded to 14 (jobs) or 16 (the sweep) characters
    rf"^(?=(?:{'|'.join(FOOTER_KEYS)}) *: )(?:.{{14}}|.{{16}}): \S", r"^lr: \S",
    r"^(started a private local Ray|attached to Ray cluster at|using the Ray already running)",
    r"^\w[\w-]*\s+epoch\s+\d+/\d+\s",  # a progress line off a terminal
    r"^\s+\w[\w-]*\s+best epoch \d+/\d+, trained in",  # add-modality's per-modality line
    r"^query↓ target→", r"^-{10,}$", r"^mean mAP over \d+ ordered pairs",
    r"^\w[\w-]*(\s+(—|-?\d+\.\d+))+$",  # a row of an mAP or R@K table
    r"^R@K on the \w+ split", r"^model\s+i2t@1", r"^\s+\+ re-rank \(",
    r"^trial \d+/\d+ \w+", r"^\|.*\|$", r"^Schedule: trials ran ", r"^test \(chosen config, scored once\)",
    r"^re-ranking on the best trial",
    r"^query id\s+rank\s+item id\s+score$", r"^[\w-]+\s+\d+\s+[\w-]+\s+-?\d+\.\d+$",
    r"^\.\.\. \d+ more queries \(--out FILE writes them all\)$",
    r"^ready: http://", r"^stopped$", r"^xmr: (error|interrupted)",
    r"^workers: \w[\w-]* \d+", r"^\w[\w-]*: trained on \d+ workers$",  # sdml/launch.py, data-parallel
    r"^no cross-modal pair yet: ",
    # the synthetic-data note (cli/train.py, cli/branch.py, cli/sweep.py) and the demo's closing hint
    r"^={78}$", r"^NOTE: no --data given: ", r"^      (mAP|R@K) here says nothing about ",
    r"^      captions from latent concepts;", r"^      Cached at /",
    r"^This was the \d+-epoch demo\. ", r"^  python jobs/\w+\.py ",
)]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def is_ours(line: str) -> bool:
    return not THEIRS.search(line) and any(p.search(line) for p in OURS)


def foreign(lines: list[str]) -> list[str]:
    """The visible lines we did not write (a line of colour codes alone shows nothing)."""
    return [line for line in lines if ANSI.sub("", line).strip() and not is_ours(line)]


# Ray Train's placement-group cleaner prints a traceback of its own on a machine that runs several
# Ray instances (the test session's, other jobs'): it cannot tell which is its own. Not counted.
CLEANER = re.compile(r"^\(PlacementGroupCleaner pid=\d+\)")


def assert_quiet(lines: list[str], what: str = "") -> None:
    """At most MAX_FOREIGN visible lines of ``lines`` (a command's output) are a library's."""
    theirs = foreign([line for line in lines if not CLEANER.match(ANSI.sub("", line))])
    assert len(theirs) <= MAX_FOREIGN, f"{what}: lines we did not write:\n" + "\n".join(theirs)
