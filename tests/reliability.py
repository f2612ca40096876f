# ruff: noqa: E501 - a table of cases reads best one case per line
"""The catalogue of bad inputs RELIABILITY.md lists, each one a test (tests/test_reliability.py).

Every case runs ``xmr <argv>`` in-process and must end with exit 2, exactly one ``xmr: error`` line
holding ``sees`` (after the case's paths are put in), no traceback, and every file under the case's
directory byte-identical to before (nothing written, nothing lost). ``kept`` says what that means
for the user. The fault kinds (jobs killed, servers gone, disks full) are the tests listed in
``FAULTS`` below; their own tests assert what they keep.

    python tests/reliability.py > RELIABILITY.md      # after changing a case (a test checks it)
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NOTHING = "nothing written"
RUN_KEPT = "the run byte-identical"


@dataclass
class Ctx:
    """Paths a case may use; ``{name}`` in argv / sees is replaced by ``getattr(ctx, name)``."""

    root: Path
    xmedia: str
    pairs: str
    made: dict = field(default_factory=dict)

    @property
    def run(self) -> str:  # a finished 2-modality SDML run, made by hand (no training)
        if "run" not in self.made:
            self.made["run"] = str(make_finished_run(self.root / "run", self.xmedia))
        return self.made["run"]

    @property
    def new(self) -> str:
        return str(self.root / "new-run")

    @property
    def afile(self) -> str:
        path = self.root / "afile"
        path.write_text("not a directory")
        return str(path)

    def xmedia_with(self, name: str, change: Callable[[Path], None]) -> str:
        """A copy of the small dataset changed by ``change(dir)``."""
        out = self.root / name
        if not out.exists():
            shutil.copytree(self.xmedia, out)
            change(out)
        return str(out)

    def file(self, name: str, content: bytes | str) -> str:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)


@dataclass(frozen=True)
class Case:
    command: str  # the xmr command, as the table groups them
    bad: str  # the bad input, in words
    argv: Callable[[Ctx], list[str]]
    sees: str  # an excerpt of the one line the user gets ({ctx attribute} filled in)
    kept: str = NOTHING

    @property
    def id(self) -> str:
        return f"{self.command}: {self.bad}"


# ---- builders of bad datasets and files ----------------------------------------------------------
def make_finished_run(root: Path, data: str) -> Path:
    from fake_runs import make_finished_run as make

    from scalable_xmr.config import SDMLConfig

    return make(root, data, ("image", "text"), SDMLConfig(dim=32, batch_size=20), record_configs=True)


def _set_json(key: str, value) -> Callable[[Path], None]:
    def change(d: Path) -> None:
        meta = json.loads((d / "dataset.json").read_text())
        meta[key] = value
        (d / "dataset.json").write_text(json.dumps(meta))
    return change


def _table(modality: str, edit: Callable[[dict], None]) -> Callable[[Path], None]:
    """Rewrite ``<modality>.parquet`` after ``edit(columns as Python lists)``."""
    def change(d: Path) -> None:
        path = d / f"{modality}.parquet"
        table = pq.read_table(path)
        cols = {name: table.column(name).to_pylist() for name in table.column_names}
        edit(cols)
        pq.write_table(pa.table({k: pa.array(v, table.schema.field(k).type) for k, v in cols.items()}), path)
    return change


def _nan_feature(cols: dict) -> None:
    cols["features"][4][1] = float("nan")


def _duplicate_id(cols: dict) -> None:
    cols["id"][6] = cols["id"][5]


def _label_out_of_range(cols: dict) -> None:
    cols["labels"][3] = [20]


def _split_dev(cols: dict) -> None:
    cols["split"][2] = "dev"


def _two_labels(cols: dict) -> None:
    cols["labels"][1] = [0, 1]


def _unlabelled_test(cols: dict) -> None:
    cols["labels"] = [[] if s == "test" else lab for s, lab in zip(cols["split"], cols["labels"], strict=True)]


def _damage_projection(run: str) -> str:
    path = Path(run) / "projection.arrow"
    raw = bytearray(path.read_bytes())
    raw[-200] ^= 0xFF
    path.write_bytes(bytes(raw))
    return run


def _unfinished(run: str) -> str:
    """The run as a job left it that was stopped while training its image network."""
    meta = json.loads((Path(run) / "run.json").read_text())
    meta["status"] = "running"
    meta["modalities"]["image"]["status"] = "pending"
    (Path(run) / "run.json").write_text(json.dumps(meta))
    return run


def _mat(ctx: Ctx, name: str, arrays: dict) -> str:
    import scipy.io

    path = ctx.root / name
    scipy.io.savemat(path, arrays)
    return str(path)


def _bad_mat(ctx: Ctx) -> str:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 4))
    x[3, 1] = np.nan
    return _mat(ctx, "nan.mat", {"I_tr_CNN": x})


def _h5(ctx: Ctx, name: str, drop: tuple[str, ...] = (), nan: bool = False) -> str:
    import h5py

    rng = np.random.default_rng(0)
    path = ctx.root / name
    with h5py.File(path, "w") as f:
        for part, n in (("train", 30), ("test", 240)):
            y = rng.integers(1, 11, size=n)
            arrays = {f"{part}_imgs_deep": rng.standard_normal((n, 6)).astype(np.float32),
                      f"{part}_text": rng.standard_normal((n, 5)).astype(np.float32),
                      f"{part}_imgs_labels": y, f"{part}_texts_labels": y}
            if nan and part == "test":
                arrays["test_text"][9, 2] = np.nan
            for k, a in arrays.items():
                if k not in drop:
                    f[k] = a
    return str(path)


def _best_json(ctx: Ctx, content: str) -> str:
    return ctx.file("best.json", content)


# ---- the catalogue -------------------------------------------------------------------------------
T = ["--no-tracking", "--no-progress"]


def _train(ctx: Ctx, *extra: str, data: str | None = None) -> list[str]:
    return ["train", "--data", data or ctx.xmedia, "--run", ctx.new, *T, *extra]


def _pairs(ctx: Ctx, *extra: str, model: str = "vse") -> list[str]:
    return ["train-pairs", "--model", model, "--data", ctx.pairs, "--run", ctx.new, *T, *extra]


def _train_only_target(ctx: Ctx) -> str:
    """A VSA target domain with only a train split, shaped like ``ctx.pairs``: no pairs to score."""
    from scalable_xmr.data.paired import make_synthetic_pairs

    return str(make_synthetic_pairs(ctx.root / "target", seed=9, n_train=10, n_val=0, n_test=0, n_regions=4,
                                    dim=32, vocab_size=120, n_concepts=30))


def _add(ctx: Ctx, *extra: str, run: str | None = None) -> list[str]:
    return ["add-modality", "--run", run or ctx.run, "--no-progress", *extra]


def _sweep(ctx: Ctx, *extra: str, model: str = "sdml") -> list[str]:
    return ["sweep", "--model", model, "--data", ctx.xmedia if model == "sdml" else ctx.pairs,
            "--storage", str(ctx.root / "sweeps"), "--name", "s", "--no-tracking", "--quiet", *extra]


CASES: list[Case] = [
    # xmr train
    Case("train", "--data that does not exist", lambda c: _train(c, data=str(c.root / "nope")),
         "dataset path does not exist"),
    Case("train", "--data without dataset.json", lambda c: _train(c, data=str(c.root)), "dataset.json: file not found"),
    Case("train", "--lam above 1", lambda c: _train(c, "--lam", "1.5"), "lam must be in [0, 1], got 1.5"),
    Case("train", "--lam below 0", lambda c: _train(c, "--lam", "-0.1"), "lam must be in [0, 1], got -0.1"),
    Case("train", "--epochs 0", lambda c: _train(c, "--epochs", "0"), "epochs must be a positive integer, got 0"),
    Case("train", "negative --batch-size", lambda c: _train(c, "--batch-size", "-5"),
         "batch-size must be a positive integer, got -5"),
    Case("train", "--dim 0", lambda c: _train(c, "--dim", "0"), "dim must be a positive integer, got 0"),
    Case("train", "a --modality the dataset lacks", lambda c: _train(c, "--modality", "smell"),
         "modality 'smell' not in dataset"),
    Case("train", "--top-k 0", lambda c: _train(c, "--top-k", "0"), "--top-k must be >= 1, got 0"),
    Case("train", "--lr naming a modality the dataset lacks", lambda c: _train(c, "--lr", "smell=1e-4"),
         "--lr names modality 'smell', which is not in dataset"),
    Case("train", "--lr naming a modality the job does not train",
         lambda c: _train(c, "--modality", "image", "--lr", "text=1e-4"),
         "--lr names modality 'text', which this job does not train (--modality: image)"),
    Case("train", "--lr that is not a number", lambda c: _train(c, "--lr", "image=fast"),
         "--lr 'image=fast': 'fast' is not a number"),
    Case("train", "--lr of 0", lambda c: _train(c, "--lr", "image=0"),
         "--lr 'image=0': a learning rate must be a positive number, got 0"),
    Case("train", "--lr NAME= without a rate", lambda c: _train(c, "--lr", "image="),
         "--lr 'image=': a modality's own rate is NAME=RATE, e.g. image=1e-4"),
    Case("train", "two --lr rates for every modality", lambda c: _train(c, "--lr", "1e-4", "--lr", "2e-4"),
         "--lr gives two rates for every modality (1e-4 and 2e-4)"),
    Case("train", "--run under a file", lambda c: _train(c)[:4] + [f"{c.afile}/run", *T],
         "{afile} is a file, not a directory"),
    Case("train", "a batch larger than a modality's train split", lambda c: _train(c, "--batch-size", "110"),
         "train split has 100 rows, fewer than one batch of 110"),
    Case("train", "--resume with no run there", lambda c: _train(c, "--resume"),
         "--resume given but there is no run to resume"),
    Case("train", "a finished run at --run, no --resume / --overwrite",
         lambda c: ["train", "--data", c.xmedia, "--run", c.run, *T],
         "already holds a finished run; pass --resume", RUN_KEPT),
    Case("train", "--run holding other files",
         lambda c: ["train", "--data", c.xmedia, "--run", str(Path(c.file("junk/x.txt", "x")).parent), *T],
         "holds no run.json; choose another --run or pass --overwrite", "the directory untouched"),
    Case("train", "--resume with a changed --lam",
         lambda c: ["train", "--data", c.xmedia, "--run", _unfinished(c.run), "--resume", "--lam", "0.9",
                    "--dim", "32", "--batch-size", "20", *T],
         "started training with lam=0.5, --resume asks for lam=0.9", RUN_KEPT),
    Case("train", "--resume of an image-text run", lambda c: ["train", "--data", c.xmedia, "--run",
                                                              make_branch_run(c), "--resume", *T],
         "a 'branch' run, not an SDML run", RUN_KEPT),
    Case("train", "--config file missing", lambda c: _train(c, "--config", str(c.root / "best.json")),
         "best.json: file not found"),
    Case("train", "--config not JSON", lambda c: _train(c, "--config", _best_json(c, "{oops")), "best.json: not valid JSON"),
    Case("train", "dataset.json not JSON",
         lambda c: _train(c, data=c.xmedia_with("d", lambda d: (d / "dataset.json").write_text("{"))),
         "dataset.json: not valid JSON"),
    Case("train", "dataset.json with a negative class count",
         lambda c: _train(c, data=c.xmedia_with("d", _set_json("n_classes", -3))),
         "dataset.json: 'n_classes' must be a positive integer, got -3"),
    Case("train", "a modality table missing", lambda c: _train(c, data=c.xmedia_with(
        "d", lambda d: (d / "audio.parquet").unlink())), "audio.parquet: modality table not found"),
    Case("train", "a modality table that is not Parquet", lambda c: _train(c, data=c.xmedia_with(
        "d", lambda d: (d / "audio.parquet").write_text("garbage"))), "audio.parquet: not a readable Parquet table"),
    Case("train", "NaN in a feature", lambda c: _train(c, data=c.xmedia_with("d", _table("audio", _nan_feature))),
         "audio.parquet: column 'features' has NaN or inf at row id"),
    Case("train", "a duplicate id", lambda c: _train(c, data=c.xmedia_with("d", _table("audio", _duplicate_id))),
         "audio.parquet: column 'id' has duplicate value"),
    Case("train", "a label outside the classes",
         lambda c: _train(c, data=c.xmedia_with("d", _table("audio", _label_out_of_range))),
         "audio.parquet: column 'labels' has value 20"),
    Case("train", "an unknown split name",
         lambda c: _train(c, data=c.xmedia_with("d", _table("audio", _split_dev))),
         "audio.parquet: column 'split' has value 'dev'"),
    Case("train", "two labels in a single-label dataset",
         lambda c: _train(c, data=c.xmedia_with("d", _table("audio", _two_labels))),
         "but the dataset is single-label"),
    Case("train", "a test split with no labelled row",
         lambda c: _train(c, data=c.xmedia_with("d", _table("audio", _unlabelled_test))),
         "audio.parquet: the test split has no labelled row"),
    Case("train", "--mat of 0 bytes", lambda c: ["train", "--mat", c.file("x.mat", b""), "--run", c.new, *T],
         "x.mat: not a readable MATLAB .mat file (0 bytes"),
    Case("train", "another job holds the run", lambda c: hold_lock(c, ["train", "--data", c.xmedia, "--run",
                                                                       c.run, "--resume", *T]),
         "run: in use by pid", RUN_KEPT),
    Case("train", "--patience 0", lambda c: _train(c, "--patience", "0"),
         "argument --patience: must be a whole number of epochs >= 1, got '0'"),
    Case("train", "a negative --patience", lambda c: _train(c, "--patience", "-5"),
         "argument --patience: must be a whole number of epochs >= 1, got '-5'"),
    Case("train", "--patience that is not a whole number", lambda c: _train(c, "--patience", "2.5"),
         "argument --patience: must be a whole number of epochs >= 1, got '2.5'"),
    Case("train", "--keep-checkpoints with --resume of a finished run that kept none",
         lambda c: ["train", "--data", c.xmedia, "--run", c.run, "--resume", "--keep-checkpoints", "--modality",
                    "image", "--modality", "text", "--dim", "32", "--batch-size", "20", *T],
         "is finished and its training state was removed when it finished; --resume of a finished run only "
         "reads it, so there is nothing to keep", RUN_KEPT),
    # xmr add-modality
    Case("add-modality", "a run that is not finished", lambda c: _add(c, "--modality", "audio", "--data",
                                                                      c.xmedia, run=_unfinished(c.run)),
         "not a finished run (status 'running')", RUN_KEPT),
    Case("add-modality", "a modality the run has, without --replace",
         lambda c: _add(c, "--modality", "image", "--data", c.xmedia), "already has this modality", RUN_KEPT),
    Case("add-modality", "neither --data nor --table", lambda c: _add(c, "--modality", "audio"),
         "give the new modality's data with --data DIR or --table FILE", RUN_KEPT),
    Case("add-modality", "--table count differs from --modality count",
         lambda c: _add(c, "--modality", "audio", "--modality", "video", "--table", c.file("t.parquet", "x")),
         "1 --table file(s) for 2 --modality", RUN_KEPT),
    Case("add-modality", "a modality name with a slash", lambda c: _add(c, "--modality", "a/b", "--data", c.xmedia),
         "--modality 'a/b': a modality name must match", RUN_KEPT),
    Case("add-modality", "--lr naming a modality the job does not add",
         lambda c: _add(c, "--modality", "audio", "--data", c.xmedia, "--lr", "text=1e-4"),
         "--lr names modality 'text', which this job does not train (--modality: audio)", RUN_KEPT),
    Case("add-modality", "the same --modality twice",
         lambda c: _add(c, "--modality", "audio", "--modality", "audio", "--data", c.xmedia),
         "--modality 'audio' given more than once", RUN_KEPT),
    Case("add-modality", "a damaged projection.arrow",
         lambda c: _add(c, "--modality", "audio", "--data", c.xmedia, run=_damage_projection(c.run)),
         "projection.arrow: not a readable Arrow IPC projection file", RUN_KEPT),
    Case("add-modality", "--data with other class names",
         lambda c: _add(c, "--modality", "audio", "--data", c.xmedia_with(
             "d", _set_json("class_names", [f"c{i}" for i in range(20)]))),
         "class names differ from the run's at index 0: 'c0' here, 'class_00' in", RUN_KEPT),
    Case("add-modality", "a run directory that does not exist",
         lambda c: _add(c, "--modality", "audio", "--data", c.xmedia, run=str(c.root / "nope")),
         "run directory not found"),
    Case("add-modality", "--patience 0", lambda c: _add(c, "--modality", "audio", "--data", c.xmedia,
                                                        "--patience", "0"),
         "argument --patience: must be a whole number of epochs >= 1, got '0'", RUN_KEPT),
    Case("add-modality", "an image-text run", lambda c: _add(c, "--modality", "audio", "--data", c.xmedia,
                                                             run=make_branch_run(c)), "run.json: not an SDML run (kind 'branch')", RUN_KEPT),
    # xmr train-pairs
    Case("train-pairs", "an unknown --model", lambda c: _pairs(c, model="bert"),
         "argument --model: invalid choice: 'bert' (choose from 'vse', 'mtfn', 'mmca', 'vsa')"),
    Case("train-pairs", "--text-epochs for a model other than MTFN", lambda c: _pairs(c, "--text-epochs", "2"),
         "--text-epochs applies to --model mtfn only"),
    Case("train-pairs", "--k 0", lambda c: _pairs(c, "--k", "0"), "--k must be >= 1, got 0"),
    Case("train-pairs", "a negative --margin", lambda c: _pairs(c, "--margin", "-1"), "--margin must be >= 0, got -1.0"),
    Case("train-pairs", "--rank 0 for MTFN", lambda c: _pairs(c, "--rank", "0", model="mtfn"), "--rank must be >= 1, got 0"),
    Case("train-pairs", "--set of an unknown key", lambda c: _pairs(c, "--set", "wobble=3"),
         "--set 'wobble=3': no selected model has a config key 'wobble'"),
    Case("train-pairs", "--ensemble 0", lambda c: _pairs(c, "--ensemble", "0"), "--ensemble must be >= 1, got 0"),
    Case("train-pairs", "--data that is a modality dataset",
         lambda c: ["train-pairs", "--model", "vse", "--data", c.xmedia, "--run", c.new, *T], "images.parquet not found (not a paired dataset?)"),
    Case("train-pairs", "--epochs 0", lambda c: _pairs(c, "--epochs", "0"), "--epochs must be >= 1, got 0"),
    Case("train-pairs", "a negative --patience", lambda c: _pairs(c, "--patience", "-1"),
         "argument --patience: must be a whole number of epochs >= 1, got '-1'"),
    Case("train-pairs", "a VSA --target without a test split", lambda c: _pairs(c, "--target", _train_only_target(c), model="vsa"),
         "no 'test' split (it has ['train']); target-domain R@K (VSA-AE-MMD Table 1) is scored on its pairs"),
    # xmr sweep
    Case("sweep", "--grid of an unknown key", lambda c: _sweep(c, "--grid", "wobble=1,2"),
         "--grid: unknown hyperparameter 'wobble' for model sdml; valid: batch_size, hidden, lam, lr"),
    Case("sweep", "--range with low above high", lambda c: _sweep(c, "--range", "lam=0.9:0.1"), "--range lam=0.9:0.1: lo must be below hi"),
    Case("sweep", "a --modality the dataset lacks", lambda c: _sweep(c, "--modality", "smell"),
         "--modality 'smell': not in dataset"),
    Case("sweep", "--data that does not exist", lambda c: _sweep(c)[:4] + [str(c.root / "nope"), *_sweep(c)[5:]],
         "dataset path does not exist"),
    Case("sweep", "--num-samples 0", lambda c: _sweep(c, "--num-samples", "0"),
         "the search space has zero configurations: --num-samples is 0"),
    Case("sweep", "--resume of no sweep", lambda c: ["sweep", "--model", "sdml", "--storage",
                                                      str(c.root / "sweeps"), "--name", "s", "--resume"],
         "no sweep to resume"),
    Case("sweep", "--metric the model does not report", lambda c: _sweep(c, "--metric", "accuracy"),
         "--metric for sdml must be one of anchor_map, label_loss, got 'accuracy'"),
    Case("sweep", "--grid of a value outside its domain", lambda c: _sweep(c, "--grid", "lam=2"), "--grid lam=2: lam (λ) must be in [0, 1], got '2'"),
    # xmr data
    Case("data", "xmedia: a 0-byte .mat", lambda c: ["data", "xmedia", "--mat", c.file("e.mat", b""), "--out",
                                                     c.new], "e.mat: not a readable MATLAB .mat file (0 bytes"),
    Case("data", "xmedia: a 3-byte .mat", lambda c: ["data", "xmedia", "--mat", c.file("t.mat", b"MAT"), "--out",
                                                     c.new], "t.mat: not a readable MATLAB .mat file (3 bytes"),
    Case("data", "xmedia: NaN in a feature matrix", lambda c: ["data", "xmedia", "--mat", _bad_mat(c), "--out",
                                                               c.new], "key 'I_tr_CNN' has nan at row 3, column 1"),
    Case("data", "h5: a missing key", lambda c: ["data", "h5", "--file", _h5(c, "m.h5", drop=("test_text",)),
                                                 "--name", "wikipedia", "--out", c.new], "missing key 'test_text'"),
    Case("data", "h5: NaN in a feature matrix", lambda c: ["data", "h5", "--file", _h5(c, "n.h5", nan=True),
                                                           "--name", "wikipedia", "--out", c.new],
         "key 'test_text' has nan at row 9, column 2"),
    Case("data", "h5: an unknown --name", lambda c: ["data", "h5", "--file", _h5(c, "k.h5"), "--name", "flickr",
                                                     "--out", c.new], "argument --name: invalid choice: 'flickr'"),
    Case("data", "mfeat: --out under a file", lambda c: ["data", "mfeat", "--out", f"{c.afile}/x"],
         "--out {afile}/x: {afile} is a file, not a directory"),
    Case("data", "inspect --validate: NaN in a feature", lambda c: ["data", "inspect", "--validate",
                                                                     c.xmedia_with("d", _table("audio", _nan_feature))],
         "column 'features' has NaN or inf"),
    Case("data", "inspect --validate: an unknown split", lambda c: ["data", "inspect", "--validate",
                                                                     c.xmedia_with("d", _table("text", _split_dev))],
         "column 'split' has value 'dev'"),
    Case("data", "inspect: not a dataset", lambda c: ["data", "inspect", str(c.root)], "dataset.json: file not found"),
    # xmr projection
    Case("projection", "create with more classes than dimensions",
         lambda c: ["projection", "create", "--dim", "4", "--classes", "8", "--out", str(c.root / "p.arrow")],
         "n_classes (8) > dim (4): P cannot have more orthonormal columns than rows"),
    Case("projection", "show of a damaged file", lambda c: ["projection", "show", str(
        Path(_damage_projection(c.run)) / "projection.arrow")],
         "projection.arrow: not a readable Arrow IPC projection file", RUN_KEPT),
    Case("projection", "create over an existing file",
         lambda c: ["projection", "create", "--dim", "8", "--classes", "4", "--out", c.file("p.arrow", "x")],
         "p.arrow: already exists (pass --overwrite to replace it)", "the existing file untouched"),
    # xmr track
    Case("track", "a run that is not finished", lambda c: ["track", "--run", _unfinished(c.run)],
         "not a finished run (status 'running')", RUN_KEPT),
    Case("track", "a directory that is not a run", lambda c: ["track", "--run", str(c.root)], "not a run directory (no run.json)"),
    # xmr serve / index / search: refused before torch or Ray loads (tests/serving/test_preflight.py)
    Case("serve", "a run that is not finished", lambda c: ["serve", "--run", _unfinished(c.run)],
         "not a finished run (status 'running')", RUN_KEPT),
    Case("serve", "a --modality the run lacks", lambda c: ["serve", "--run", c.run, "--modality", "smell"],
         "--modality: unknown modality 'smell'", RUN_KEPT),
    Case("serve", "a --port already in use", lambda c: ["serve", "--run", c.run, "--port", str(_busy_port(c))],
         "cannot listen on 127.0.0.1:", RUN_KEPT),
    Case("serve", "an --index built by another run", lambda c: ["serve", "--run", c.run, "--index", f"image={_foreign_index(c)}"],
         "built by another run (P sha256 ffffffffffff", RUN_KEPT),
    Case("serve", "an --index of a modality not served", lambda c: ["serve", "--run", c.run, "--modality", "text", "--index", f"image={_foreign_index(c)}"],
         "modality 'image' is not served (serving: text)", RUN_KEPT),
    Case("index", "a --table that does not exist", lambda c: ["index", "--run", c.run, "--modality", "image", "--table", str(c.root / "nope.parquet")],
         "nope.parquet: not found", RUN_KEPT),
    Case("index", "an --out that is not empty", lambda c: ["index", "--run", c.run, "--modality", "image", "--table", c.file("t.parquet", b""), "--out", str(Path(c.file("full/x", "x")).parent)],
         "exists and is not empty; choose another path", RUN_KEPT),
    Case("index", "an --out inside a file", lambda c: ["index", "--run", c.run, "--modality", "image", "--table", c.file("t.parquet", b""), "--out", c.afile + "/index"],
         "cannot be written", RUN_KEPT),
    Case("search", "an --out that is a directory", lambda c: ["search", "--run", c.run, "--query-modality", "text", "--query-table", c.file("q.parquet", b""), "--target", "image", "--out", str(c.root)],
         "is a directory; give a file path", RUN_KEPT),
    Case("search", "a run that is not finished", lambda c: ["search", "--run", _unfinished(c.run), "--query-modality", "text", "--query-table", c.file("q.parquet", b""), "--target", "image"],
         "not a finished run (status 'running')", RUN_KEPT),
]


def _busy_port(ctx: Ctx) -> int:
    """A port with a listening socket on 127.0.0.1, held until the case ends."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    ctx.made["socket"] = sock
    return sock.getsockname()[1]


def _foreign_index(ctx: Ctx) -> str:
    """An index directory whose sidecar names another run's P."""
    path = ctx.root / "foreign-index"
    if not path.exists():
        path.mkdir()
        (path / "_xmr_index.json").write_text(json.dumps({"format": "scalable_xmr.index/1", "modality": "image",
                                                          "fingerprint": "f" * 64, "run": "/elsewhere"}))
        (path / "part-0.parquet").write_bytes(b"")
    return str(path)


def make_branch_run(ctx: Ctx) -> str:
    from scalable_xmr.store.meta import RunMeta
    from scalable_xmr.store.run_store import RunStore

    store = RunStore(ctx.root / "pairs-run")
    store.root.mkdir()
    store.write(RunMeta(kind="branch", status="finished", dataset={"uri": ctx.pairs}, models=["vse"],
                        members={"vse": {"status": "finished"}}))
    return str(store.root)


def hold_lock(ctx: Ctx, argv: list[str]) -> list[str]:
    """Start a process holding the run's lock (stopped by the test after the case)."""
    import subprocess
    import textwrap

    run = argv[argv.index("--run") + 1]
    code = textwrap.dedent(f"""
        import time
        from scalable_xmr.store.lock import run_lock
        with run_lock({run!r}, command="xmr train --run {run}"):
            print("held", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    ctx.made["holder"] = proc
    return argv


# The fault kinds the suite survives: test (file::name) -> (fault, what the user sees, what is kept).
FAULTS: dict[str, tuple[str, str, str]] = {
    "tests/e2e/test_sdml_job.py::test_killed_actor_restarts_and_resumes_from_checkpoint": (
        "a training actor's process killed", "the actor restarts and says it resumed at epoch k",
        "every modality finishes; the restarted one from its last checkpoint"),
    "tests/e2e/test_fault_suite.py::test_driver_sigkill_then_resume_finishes_from_checkpoints": (
        "the driver SIGKILLed mid-training", "`--resume`: a warning that it took over the dead job's lock",
        "run.json left `running`; checkpoints intact; `--resume` finishes from them"),
    "tests/e2e/test_fault_suite.py::test_ctrl_c_of_train_says_how_to_resume_and_resume_finishes": (
        "Ctrl-C of `xmr train`", "`xmr: interrupted; <run> is kept ... run the same command with --resume`, "
        "exit 130", "run.json `failed` (KeyboardInterrupt), checkpoints intact; `--resume` finishes"),
    "tests/e2e/test_fault_suite.py::test_ctrl_c_of_add_modality_leaves_the_run_unchanged": (
        "Ctrl-C of `xmr add-modality`", "`xmr: interrupted; <run> is unchanged; run the same add-modality "
        "command again`, exit 130", "the run byte-identical (the new modality trains in a staging folder)"),
    "tests/e2e/test_fault_suite.py::test_ctrl_c_of_a_sweep_says_how_to_resume_and_resume_finishes": (
        "Ctrl-C of `xmr sweep`", "`sweep interrupted ... Resume with: ... --resume`",
        "finished trials kept; `--resume` finishes the sweep"),
    "tests/e2e/test_fault_suite.py::test_mlflow_server_killed_mid_run_training_finishes_and_track_catches_up": (
        "the MLflow tracking server killed mid-run", "one warning; the footer says `xmr track --run <run>` "
        "logs it once MLflow is back", "training finishes; everything in the run store; `xmr track` logs it"),
    "tests/e2e/test_fault_suite.py::test_a_full_disk_is_one_line_keeps_earlier_artifacts_and_resumes": (
        "the disk fills up during training (tmpfs)", "`xmr: error: <file>: No space left on device`, exit 2",
        "earlier checkpoints and run.json intact; `--resume` finishes after space is freed"),
    "tests/sdml/test_sdml_trainer.py::test_a_bit_flipped_checkpoint_is_named_and_the_one_before_it_used": (
        "a checkpoint overwritten with zeros", "a warning naming the file and the older checkpoint used",
        "training resumes from `last.pt.prev`; both damaged: one line naming the file"),
    "tests/e2e/test_actor_errors.py::test_a_non_finite_loss_in_an_actor_is_one_line_naming_modality_epoch_and_term": (
        "a loss that turns NaN in one actor", "`xmr: error: modality 'audio': the ... loss is not finite at "
        "epoch k`, exit 2", "other modalities finished stay finished; that one marked failed in run.json"),
    "tests/store/test_lock.py::test_a_second_job_gets_one_line_naming_the_holder": (
        "two jobs on one run directory", "`xmr: error: <run>: in use by pid N on HOST since T (command)`",
        "the first job's run untouched (even with --overwrite)"),
    "tests/store/test_lock.py::test_a_stale_lock_of_a_dead_process_is_taken_over": (
        "a stale lock left by a dead job", "a warning naming the dead holder", "the job runs"),
    "tests/e2e/test_multinode.py::test_sdml_modalities_spread_one_per_node_and_survive_a_node_loss": (
        "a node of a multi-node cluster lost mid-training",
        "the actor restarts on another node and says where and at which epoch it resumed",
        "every modality finishes; the lost one from its checkpoint on shared storage"),
    "tests/sdml/test_data_parallel.py::test_a_worker_killed_mid_epoch_resumes_from_the_last_checkpoint": (
        "a data-parallel (Ray Train) worker killed mid-epoch",
        "Ray's line that a worker died; the modality's `resumed_at_epoch` in run.json names the epoch",
        "Ray Train restarts the worker group from the last checkpoint; the weights an uninterrupted run gives"),
    "tests/e2e/test_multinode.py::test_a_data_parallel_modality_spans_two_nodes_and_survives_a_node_loss": (
        "a node of a data-parallel modality's workers lost mid-training",
        "as for a killed worker: `resumed_at_epoch` names the checkpoint's epoch",
        "the worker group restarts on the nodes left from the last checkpoint; the uninterrupted run's weights"),
}


def render() -> str:
    lines = ["# Reliability", "",
             "What a user sees for each bad input and fault the test suite exercises, and what is kept.",
             "Generated from `tests/reliability.py` (`python tests/reliability.py > RELIABILITY.md`);",
             "`tests/test_reliability.py` runs every bad input below (exit 2, exactly one `xmr: error` line",
             "holding the excerpt shown, no traceback, every file of the case byte-identical afterwards)",
             "and fails when this file differs from the catalogue.", "",
             f"**{len(CASES)} bad inputs, {len(FAULTS)} fault kinds.**", "",
             "## Bad inputs", "",
             "| command | bad input | the one line holds | kept |", "|---|---|---|---|"]
    for case in CASES:
        lines.append(f"| `xmr {case.command}` | {case.bad} | `{case.sees}` | {case.kept} |")
    lines += ["", "## Faults", "", "| fault | what the user sees | what is kept | test |", "|---|---|---|---|"]
    for test, (kind, sees, kept) in FAULTS.items():
        lines.append(f"| {kind} | {sees} | {kept} | `{test}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
