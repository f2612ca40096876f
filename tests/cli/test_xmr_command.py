"""The ``xmr`` command itself: ``python -m scalable_xmr.cli``, ``--version``, a description on
every help page, and ``xmr local-cluster`` as the README runs it."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from one_line import fails_one_line

import scalable_xmr
from scalable_xmr.cli import build_parser, main
from scalable_xmr.cli.reference import _commands

ROOT = Path(__file__).resolve().parents[2]


def test_python_m_scalable_xmr_cli_is_the_xmr_command():
    done = subprocess.run([sys.executable, "-m", "scalable_xmr.cli", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == f"xmr {metadata.version('scalable_xmr')}\n", done
    done = subprocess.run([sys.executable, "-m", "scalable_xmr.cli", "data", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: xmr data "), done


def test_version_is_the_installed_one_and_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    # the installed metadata (pyproject.toml) and the package's own __version__ (run.json) agree
    assert capsys.readouterr().out == f"xmr {metadata.version('scalable_xmr')}\n"
    assert metadata.version("scalable_xmr") == scalable_xmr.__version__


def test_every_help_page_has_a_description():
    pages = list(_commands(build_parser(), ("xmr",)))
    assert len(pages) > 20 and ("xmr", "data", "synthetic-pairs") in [words for words, _ in pages]
    missing = [" ".join(words) for words, parser in pages if not (parser.description or "").strip()]
    assert not missing, f"help pages with usage only (pass description= to add_parser): {missing}"


def test_local_cluster_takes_the_readme_arguments(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the README runs it from the repository root (--config cluster.yaml)
    key = tmp_path / "xmr_local"
    key.write_text("not really a key")
    out = tmp_path / "cluster-local.yaml"
    assert main(["local-cluster", "--ssh-user", "me", "--ssh-key", str(key), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert out.read_text().startswith("# Generated from ") and "`xmr local-cluster`" in out.read_text()
    assert yaml.safe_load(out.read_text())["auth"]["ssh_user"] == "me"
    # `--ssh-user "$USER"` with USER unset: refused, rather than a config that logs in as nobody
    fails_one_line(main, capsys, ["local-cluster", "--ssh-user", "", "--ssh-key", str(key),
                                  "--out", str(tmp_path / "o.yaml")], "--ssh-user is empty")
    assert not (tmp_path / "o.yaml").exists()
