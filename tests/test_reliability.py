"""Every bad input of RELIABILITY.md (tests/reliability.py): exit 2, one line, nothing lost."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from reliability import CASES, FAULTS, Ctx, render

from scalable_xmr.cli import main

ROOT = Path(__file__).resolve().parents[1]
# ours ("xmr: error: ...") or argparse's for a flag it rejects itself ("xmr train: error: ...")
ERROR_LINE = re.compile(r"^xmr( [\w-]+)*: error: ")


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_loses_nothing(case, tmp_path, capsys, small_xmedia, small_pairs):
    import ray

    ray_before = ray.is_initialized()
    ctx = Ctx(tmp_path, small_xmedia, small_pairs)
    try:
        argv = case.argv(ctx)  # builds what the case needs first
        before = _tree(tmp_path)
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as e:  # argparse rejected a flag itself (usage + one error line)
            code = e.code
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if ERROR_LINE.match(line)]
        sees = case.sees.format(**{k: getattr(ctx, k) for k in ("afile",)} if "{afile}" in case.sees else {})
        assert code == 2, err
        assert len(lines) == 1 and "Traceback" not in err, err
        assert sees in lines[0], lines[0]
        assert _tree(tmp_path) == before, "files changed"
        assert ray.is_initialized() == ray_before, "the check ran after Ray started"
    finally:
        holder = ctx.made.get("holder")
        if holder is not None:
            holder.kill()
            holder.wait()
        if ctx.made.get("socket") is not None:  # a port held busy by the case
            ctx.made["socket"].close()


def test_reliability_md_is_the_catalogue():
    assert (ROOT / "RELIABILITY.md").read_text() == render(), \
        "RELIABILITY.md is stale: python tests/reliability.py > RELIABILITY.md"


def test_the_catalogue_meets_its_targets_and_names_real_tests():
    assert len(CASES) >= 60 and len(FAULTS) >= 8
    assert len({c.id for c in CASES}) == len(CASES)
    for test in FAULTS:
        path, name = test.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), f"{test} does not exist"
