"""What `xmr serve`, `xmr index` and `xmr search` refuse before torch or Ray is loaded: one line naming
the user's own path or value, exit 2, and neither torch nor Ray imported (each case runs the CLI in a
fresh interpreter and lists what it imported)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from scalable_xmr.serving.preflight import FORMAT, SIDECAR

PROBE = """
import sys
from scalable_xmr.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "ray", "fastapi") if m in sys.modules)
print("IMPORTED", ",".join(heavy) or "-", file=sys.stderr)
sys.exit(rc)
"""


def run_cli(argv: list[str]) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr


@pytest.fixture(scope="module")
def unfinished_run(sdml_run, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("unfinished") / "run"
    shutil.copytree(sdml_run, path)
    meta = json.loads((path / "run.json").read_text())
    (path / "run.json").write_text(json.dumps({**meta, "status": "running"}))
    return str(path)


@pytest.fixture(scope="module")
def foreign_index(tmp_path_factory) -> str:
    """An index directory whose sidecar names another run's P."""
    path = tmp_path_factory.mktemp("foreign") / "index"
    path.mkdir()
    (path / SIDECAR).write_text(json.dumps({"format": FORMAT, "modality": "image", "fingerprint": "f" * 64,
                                            "run": "/elsewhere"}))
    (path / "part-0.parquet").write_bytes(b"")
    return str(path)


@pytest.fixture()
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def cases(sdml_run, branch_run, unfinished_run, foreign_index, tmp_path, port):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    table = str(tmp_path / "items.parquet")
    Path(table).write_bytes(b"")
    return [
        (["serve", "--run", unfinished_run], f"{unfinished_run}: not a finished run (status 'running')"),
        (["serve", "--run", "/nonexistent/run"], "/nonexistent/run: run directory not found"),
        (["serve", "--run", sdml_run, "--modality", "smell"], "--modality: unknown modality 'smell'"),
        (["serve", "--run", sdml_run, "--port", str(port)],
         f"--port {port}: cannot listen on 127.0.0.1:{port}"),
        (["serve", "--run", sdml_run, "--index", f"image={foreign_index}"],
         f"--index {foreign_index}: built by another run (P sha256 ffffffffffff"),
        (["serve", "--run", sdml_run, "--modality", "text", "--index", f"image={foreign_index}"],
         "modality 'image' is not served (serving: text)"),
        (["serve", "--run", branch_run, "--model", "mmca", "--ann", "ivf"],
         "--ann ivf: a mmca run scores pairs (no per-item embedding for faiss)"),
        (["serve", "--run", branch_run], "model: the run"),
        (["serve", "--run", branch_run, "--model", "clip"], "model: unknown model 'clip'"),
        (["index", "--run", sdml_run, "--modality", "image", "--table", table, "--out", str(full)],
         f"--out {full}: exists and is not empty"),
        (["index", "--run", sdml_run, "--modality", "image", "--table", table, "--out", str(a_file / "i")],
         f"--out {a_file / 'i'}: cannot be written"),
        (["index", "--run", sdml_run, "--modality", "image", "--table", str(tmp_path / "none.parquet")],
         f"--table {tmp_path / 'none.parquet'}: not found"),
        (["index", "--run", sdml_run, "--modality", "smell", "--table", table],
         "--modality: unknown modality"),
        (["search", "--run", sdml_run, "--query-modality", "text", "--query-table", table, "--target",
          "image", "--out", str(tmp_path)], f"--out {tmp_path}: is a directory"),
        (["search", "--run", unfinished_run, "--query-modality", "text", "--query-table", table,
          "--target", "image"], "not a finished run"),
    ]


def test_refused_before_torch_or_ray(sdml_run, branch_run, unfinished_run, foreign_index, tmp_path,
                                     busy_port):
    for argv, message in cases(sdml_run, branch_run[0], unfinished_run, foreign_index, tmp_path, busy_port):
        rc, err = run_cli(argv)
        lines = [line for line in err.splitlines() if line.startswith("xmr: error")]
        assert rc == 2 and len(lines) == 1 and message in lines[0], (argv, err)
        assert "IMPORTED -" in err, (argv, err)  # neither torch nor Ray nor FastAPI was loaded
