"""The architecture's rules, checked on the source with ast (docs/architecture.md).

- each package imports only what the "may import" column of docs/architecture.md allows; an import
  of the root package counts as the package of the name it takes (``from scalable_xmr import sdml``
  is sdml, ``load_run`` is serving through the root's lazy table, ``__version__`` is the root);
- sdml/ and branch/ (the two parallel paths) never import each other;
- only distributed/, tuning/ and serving/ import ray; only tracking/ imports mlflow;
- no module imports another module's private (_underscored) names;
- the package's own modules import each other without cycles, counting a package's ``__init__``
  importing its own submodules (importing a package runs its ``__init__``);
- function-local imports of the package's own modules only where listed below, each one by
  (module, imported name) with why, and only where the imported module loads one of HEAVY (what
  keeps ``xmr --help`` fast); a listed import that is gone fails too;
- tests mirror the package: every ``scalable_xmr/<package>/`` has a ``tests/<package>/`` with tests
  in it, and every folder of tests/ mirrors a package (but those listed below).

The checker (tests/architecture.py) is a set of functions of a source tree or of import edges; the
self-tests at the end run each one on a tiny fake tree that holds the hole it closes, so no rule can
pass vacuously.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from architecture import (
    LAZY_TABLE,
    ROOT_AREA,
    Source,
    area,
    area_violations,
    cross_path_imports,
    find_cycles,
    import_graph,
    imports,
    imports_of,
    is_own,
    load,
    local_import_violations,
    mirror_gaps,
)
from architecture import allowed_imports as allowed_in

ROOT = Path(__file__).resolve().parents[1]
# What `xmr --help` never loads (pyarrow.dataset: it loads pandas, 0.3-0.6 s); a function-local
# import in cli/ must be one whose module would load one of these.
HEAVY = ("torch", "ray", "mlflow", "matplotlib", "pyarrow.dataset")


def listed(module: str, imported: str, names: str, why: str) -> dict[tuple[str, str], str]:
    """Allow-list entries: ``module`` may import each of ``names`` from ``imported`` locally."""
    return {(module, f"{imported}.{n}"): why for n in names.split()}


# Function-local imports of our own modules that are deliberate: (module, imported name) -> why.
# The imported name is the module and the name a statement takes (`from a.b import c` -> "a.b.c").
_CLI = "scalable_xmr.cli."
_DATA = "the datasets: pyarrow.dataset (pandas)"
LOCAL_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {
    ("scalable_xmr.sdml.job", "scalable_xmr.tracking.plots"): "matplotlib only when a run is plotted",
    ("scalable_xmr.tuning.results", "scalable_xmr.tracking.plots"): "matplotlib only when a sweep "
    "is plotted",
    ("scalable_xmr.sdml.launch", "scalable_xmr.sdml.data_parallel.train_modality_parallel"): "Ray Train "
    "(ray.train, ~1 s) only when a job has --workers-per-modality > 1",
    ("scalable_xmr.tuning.sdml_backend", "scalable_xmr.tuning.sdml_workers_trial.sdml_workers_trial"):
    "Ray Train (ray.train, ~1 s) only when a sweep has --workers-per-modality > 1",
    ("scalable_xmr.sdml.launch", "scalable_xmr.sdml.streaming.train_modality_streaming"): "Ray Train and "
    "Ray Data only when a job has --workers-per-modality > 1 or --stream",
    **listed("scalable_xmr.sdml.launch", "scalable_xmr.sdml.streaming", "stream_inputs train_stream_in_actor",
             "Ray Data (and Ray Train, which streaming imports) only when a job has --stream"),
    **listed(_CLI + "data", "scalable_xmr.data", "inspect_dataset convert_xmedia convert_h5 "
             "convert_mfeat make_synthetic_xmedia open_dataset", _DATA),
    **listed(_CLI + "data", "scalable_xmr.data.paired", "IMAGES_FILE check_paired_dataset "
             "inspect_paired_dataset open_paired_dataset convert_precomp make_synthetic_pairs "
             "mfeat_pairs", _DATA),
    **listed(_CLI + "extend", "scalable_xmr.sdml.extend", "AddRequest add_modalities",
             "the add-modality job: torch and Ray"),
    **listed(_CLI + "extend", "scalable_xmr.sdml.evaluate", "map_table pairs_involving", "torch"),
    **listed(_CLI + "branch", "scalable_xmr.branch.config", "schedule_help TEXT_STAGE_KEY model_keys "
             "schedule_keys trainer_keys PairTrainerConfig default_text_epochs model_schedule "
             "split_values", "the branch models' registry: torch"),
    **listed(_CLI + "branch", "scalable_xmr.models.registry", "branch_config", "torch"),
    **listed(_CLI + "branch", "scalable_xmr.data.paired", "make_synthetic_pairs open_paired_dataset",
             _DATA),
    **listed(_CLI + "branch", "scalable_xmr.branch.job", "BranchRequest train_branch",
             "the train-pairs job: torch, Ray, matplotlib"),
    **listed(_CLI + "search", "scalable_xmr.distributed.cluster", "connect started_local", "Ray"),
    **listed(_CLI + "search", "scalable_xmr.serving.index", "build_index", "torch"),
    **listed(_CLI + "search", "scalable_xmr.serving.query", "SearchRequest format_results "
             "search_table write_results", "torch"),
    **listed(_CLI + "search", "scalable_xmr.serving", "app", "Ray Serve and torch"),
    **listed(_CLI + "sweep", "scalable_xmr.data.modality.synthetic", "make_synthetic_xmedia", _DATA),
    **listed(_CLI + "sweep", "scalable_xmr.data.paired", "make_synthetic_pairs", _DATA),
    **listed(_CLI + "sweep", "scalable_xmr.tuning.sweep", "SweepRequest run_sweep schedule_line",
             "the sweep: Ray Tune and torch"),
    **listed(_CLI + "sweep", "scalable_xmr.tuning.branch_backend", "rerank_line", "Ray Tune and torch"),
    **listed(_CLI + "track", "scalable_xmr.branch.job", "RECORDS", "the train-pairs job: torch, "
             "Ray, matplotlib"),
    **listed(_CLI + "track", "scalable_xmr.sdml.job", "RECORDS", "the SDML job: torch and Ray"),
    **listed(_CLI + "track", "scalable_xmr.runs.track", "log_finished_run", "the run lifecycle: Ray, MLflow"),
    **listed(_CLI + "train", "scalable_xmr.data.modality.dataset", "open_dataset", _DATA),
    **listed(_CLI + "train", "scalable_xmr.data.modality.synthetic", "make_synthetic_xmedia", _DATA),
    **listed(_CLI + "train", "scalable_xmr.data.modality.xmedia", "convert_xmedia", _DATA),
    **listed(_CLI + "train", "scalable_xmr.functional.retrieval", "check_no_relevant", "torch"),
    **listed(_CLI + "train", "scalable_xmr.sdml.job", "TrainRequest train_sdml",
             "the SDML job: torch and Ray"),
    **listed(_CLI + "train", "scalable_xmr.sdml.evaluate", "map_table", "torch"),
}
# Packages with no tests/<package>/ of their own: package -> why (none today).
MIRROR_EXEMPT: dict[str, str] = {}
# tests/ folders that mirror no package: folder -> why.
TEST_DIRS_OF_THEIR_OWN = {"e2e": "the slow tier: everything that starts Ray or Tune, and the README"}


# ------------------------------------------------------------------ the rules, on this repository

@functools.cache
def repo() -> Source:
    return load(ROOT)


def allowed_imports() -> dict[str, set[str]]:
    return allowed_in(ROOT / "docs" / "architecture.md")


def test_packages_import_only_what_docs_architecture_allows():
    allowed = allowed_imports()
    assert {"sdml", "branch", "store", "tracking", "distributed", "tuning", "cli", ROOT_AREA} <= set(allowed)
    bad = area_violations(repo(), allowed)
    assert not bad, bad


def test_the_two_paths_never_import_each_other():
    bad = cross_path_imports(repo())
    assert not bad, bad


def test_ray_only_in_distributed_tuning_serving_mlflow_only_in_tracking():
    homes = {"ray": {"distributed", "tuning", "serving"}, "mlflow": {"tracking"}}
    bad = []
    for name in repo().mods:
        for imp in imports_of(repo(), name):
            lib = imp.module.split(".")[0]
            if lib in homes and area(name) not in homes[lib]:
                bad.append(f"{name}:{imp.line} imports {imp.module}")
    assert not bad, bad


def test_no_private_names_across_modules():
    bad = []
    for name in repo().mods:
        for imp in imports_of(repo(), name):
            if is_own(imp.module) and imp.module != name:
                bad += [f"{name}:{imp.line} imports {imp.module}.{n}" for n in imp.names
                        if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_no_import_cycles():
    cycles = find_cycles(import_graph(repo()))
    assert not cycles, cycles


def test_function_local_imports_of_own_modules_are_deliberate():
    bad = local_import_violations(repo(), LOCAL_IMPORTS_ALLOWED, HEAVY)
    assert not bad, f"{len(bad)} local imports:\n" + "\n".join(bad)


def test_tests_mirror_the_package():
    bad = mirror_gaps(ROOT, MIRROR_EXEMPT, TEST_DIRS_OF_THEIR_OWN)
    assert not bad, bad


# ------------------------------------------------- the checkers see the holes (fake trees, edges)


def fake_tree(root: Path, files: dict[str, str]) -> Source:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return load(root)


ROOT_INIT = f'__version__ = "0.1.0"\n{LAZY_TABLE} = {{"load_run": "scalable_xmr.serving.run"}}\n'


def test_the_walker_and_the_map_see_what_they_look_for():
    """The walker finds top-level, from- and function-local imports, and the map forbids a
    cross-path import, so the rules above cannot pass vacuously."""
    tree = ast.parse("import ray\nfrom scalable_xmr.branch.job import _x\n"
                     "def f():\n    from scalable_xmr.sdml import trainer\n")
    found = list(imports(tree, "scalable_xmr.sdml.fake"))
    assert ("ray", [], 1, True, False) in found
    assert ("scalable_xmr.branch.job", ["_x"], 2, True, False) in found
    assert ("scalable_xmr.sdml", ["trainer"], 4, False, False) in found
    allowed = allowed_imports()
    assert "branch" not in allowed["sdml"] and "sdml" not in allowed["branch"]
    assert "tracking" not in allowed["store"] and allowed["cli"] == {"*"}
    assert "serving" in allowed[ROOT_AREA] and ROOT_AREA not in allowed["store"]


def test_an_import_of_the_root_package_counts_as_the_area_of_the_name(tmp_path):
    """Hole (a): `from scalable_xmr import x` used to map to no area at all."""
    src = fake_tree(tmp_path, {
        "scalable_xmr/__init__.py": ROOT_INIT + "def __getattr__(name): ...\n",
        "scalable_xmr/errors.py": "",
        "scalable_xmr/sdml/__init__.py": "",
        "scalable_xmr/serving/__init__.py": "",
        "scalable_xmr/serving/run.py": "",
        "scalable_xmr/branch/__init__.py": "from scalable_xmr import errors, sdml\n",
        "scalable_xmr/store/__init__.py": "from scalable_xmr import __version__\n",
        "scalable_xmr/tracking/__init__.py": "from scalable_xmr import load_run\nimport scalable_xmr\n",
    })
    allowed = {ROOT_AREA: {"serving"}, "errors": set(), "sdml": set(), "serving": set(),
               "branch": {"errors"}, "store": set(), "tracking": set()}
    bad = area_violations(src, allowed)
    assert any("scalable_xmr.branch:1 imports" in b and "(area sdml;" in b for b in bad), bad
    assert any("scalable_xmr.store:1 imports scalable_xmr.__version__ (area __init__;" in b for b in bad)
    assert any("scalable_xmr.tracking:1 imports scalable_xmr.load_run (area serving;" in b for b in bad)
    assert any("scalable_xmr.tracking:2 imports scalable_xmr (area __init__;" in b for b in bad)
    assert not any("(area errors;" in b for b in bad), bad
    assert cross_path_imports(src) == ["scalable_xmr.branch:1 imports scalable_xmr.errors, scalable_xmr.sdml"]
    # the root's lazy table is an import of its own: the root may reach serving only if allowed
    assert "scalable_xmr:0 imports scalable_xmr.serving.run (area serving; __init__ may import: [])" in (
        area_violations(src, allowed | {ROOT_AREA: set()}))


def test_a_lazy_getattr_without_its_table_fails(tmp_path):
    (tmp_path / "scalable_xmr").mkdir()
    (tmp_path / "scalable_xmr" / "__init__.py").write_text("def __getattr__(name): ...\n")
    try:
        load(tmp_path)
    except AssertionError as e:
        assert LAZY_TABLE in str(e)
    else:
        raise AssertionError("a __getattr__ with no lazy table was accepted")


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    """Hole (b): the edges of a package's __init__ to its own submodules used to be dropped."""
    files = {
        "scalable_xmr/__init__.py": "",
        "scalable_xmr/tuning/__init__.py": "from scalable_xmr.tuning.sweep import run_sweep\n",
        "scalable_xmr/tuning/sweep.py": "from scalable_xmr.tuning.trial import trial\n",
        "scalable_xmr/tuning/trial.py": "from scalable_xmr.tuning import trial_io\n",
        "scalable_xmr/tuning/trial_io.py": "",
    }
    assert find_cycles(import_graph(fake_tree(tmp_path / "a", files))) == [[
        "scalable_xmr.tuning", "scalable_xmr.tuning.sweep", "scalable_xmr.tuning.trial",
        "scalable_xmr.tuning"]]
    # importing the defining submodule, not the package, is no cycle
    files["scalable_xmr/tuning/trial.py"] = "from scalable_xmr.tuning.trial_io import trial_dir\n"
    assert find_cycles(import_graph(fake_tree(tmp_path / "b", files))) == []
    assert find_cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


def test_local_imports_in_cli_are_listed_one_by_one_and_heavy(tmp_path):
    """Hole (c): cli/ used to be allowed any function-local import of ours."""
    src = fake_tree(tmp_path, {
        "scalable_xmr/__init__.py": "",
        "scalable_xmr/io.py": "import json\n",
        "scalable_xmr/sdml/__init__.py": "from scalable_xmr.sdml.job import train\n",
        "scalable_xmr/sdml/job.py": "import torch\n",
        "scalable_xmr/sdml/plain.py": "from scalable_xmr.io import read_json\n",
        "scalable_xmr/data.py": "from pyarrow import dataset\n",
        "scalable_xmr/cli/__init__.py": "",
        "scalable_xmr/cli/train.py": "def main():\n    from scalable_xmr.sdml.plain import f\n"
                                     "    from scalable_xmr.io import read_json\n"
                                     "    from scalable_xmr import data\n",
    })
    heavy = ("torch", "pyarrow.dataset")
    listed = {("scalable_xmr.cli.train", "scalable_xmr.sdml.plain.f"): "torch, through sdml/__init__",
              ("scalable_xmr.cli.train", "scalable_xmr.data"): "pyarrow.dataset"}
    assert local_import_violations(src, listed, heavy) == [
        "scalable_xmr.cli.train:3 imports scalable_xmr.io.read_json inside a function, unlisted"]
    listed[("scalable_xmr.cli.train", "scalable_xmr.io.read_json")] = "fast"
    listed[("scalable_xmr.cli.train", "scalable_xmr.sdml.job.gone")] = "torch"
    assert local_import_violations(src, listed, heavy) == [
        "scalable_xmr.cli.train:3 imports scalable_xmr.io.read_json inside a function, but it loads "
        "none of torch, pyarrow.dataset: import it at the top",
        "scalable_xmr.cli.train: listed local import of scalable_xmr.sdml.job.gone is gone"]


def test_a_package_without_tests_is_found(tmp_path):
    for rel in ("scalable_xmr/__init__.py", "scalable_xmr/sdml/__init__.py",
                "scalable_xmr/serving/__init__.py", "scalable_xmr/store/__init__.py",
                "tests/sdml/test_job.py", "tests/stray/test_x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    (tmp_path / "tests" / "serving").mkdir()  # a folder with no test in it is no mirror
    assert mirror_gaps(tmp_path, {"sdml": "why"}, {}) == [
        "scalable_xmr/serving/ has no tests/serving/test_*.py",
        "scalable_xmr/store/ has no tests/store/test_*.py", "tests/stray/ mirrors no package",
        "exemption of sdml is stale"]
    assert mirror_gaps(tmp_path, {"serving": "why", "store": "why"}, {"stray": "why"}) == []
