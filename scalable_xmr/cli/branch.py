"""``xmr train-pairs`` / ``jobs/train_pairs.py``: image-text branch models (VSE, MTFN, MMCA, VSA).

Each --model (and with --ensemble M each of its M seeds) trains in its own Ray actor, in parallel;
then test R@K is reported plain and re-ranked (MTFN-RR cross-modal re-ranking, K and K' chosen on
the validation split), with an ensemble row per model when M > 1.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import Any

from scalable_xmr.cli.common import (
    add_address_argument,
    add_job_subcommand,
    add_tracking_arguments,
    add_verbose_argument,
    check_data_path,
    job_script_parser,
    local_dir,
    print_run_footer,
    run_job,
)
from scalable_xmr.cli.train import (
    PATIENCE_OFF,
    add_patience_argument,
    add_run_state_arguments,
    print_training_notes,
)
from scalable_xmr.config import TrackingConfig
from scalable_xmr.distributed.logs import set_verbose
from scalable_xmr.errors import InputError
from scalable_xmr.sweep_best import SweepBest

MODELS = ("vse", "mtfn", "mmca", "vsa")
RERANK_KEYS = ("k", "k_text")


class _PerModelDefault(argparse.Action):
    """Stores the flag's value; its help ends with each branch model's default for ``key``.

    The defaults are each model's config ``schedule`` (models/<model>.py, from its paper). The
    model modules import torch, so they are read only when the help is printed, never to parse.
    """

    def __init__(self, *args: Any, key: str, **kwargs: Any) -> None:
        self.key = key
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values)

    @property
    def help(self) -> str:  # argparse reads it only to print the help
        from scalable_xmr.branch.config import schedule_help

        return f"{self._help} ({schedule_help(self.key)})"

    @help.setter
    def help(self, text: str) -> None:
        self._help = text


def add_branch_arguments(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data and models")
    d.add_argument("--model", action="append", choices=MODELS, metavar="NAME",
                   help="branch model to train: vse (GRU + VSE++ hinge), mtfn (rank-R tensor fusion + "
                   "S_TT), mmca (cross attention), vsa (autoencoders + MMD). Repeat for several; they "
                   "train in parallel actors. Default: vse, or the model of --config")
    d.add_argument("--data", metavar="DIR",
                   help="a paired dataset (images.parquet, captions.parquet, vocab.json; see `xmr data "
                   "precomp|synthetic-pairs|mfeat-pairs`). Default: generate SYNTHETIC paired data")
    d.add_argument("--target", metavar="DIR",
                   help="VSA only: a target-domain dataset (same layout). Its train split's images "
                   "and captions join the MMD term unpaired (VSA-AE-MMD §3.4); R@K is also reported "
                   "on its test split (required, with pairs) and val split (if any), as in the "
                   "paper's Table 1. Epoch and re-ranking K are still selected on --data's val split")
    r = p.add_argument_group("run store")
    r.add_argument("--run", metavar="DIR", help="run directory to create (default: runs/pairs-<date>-<time>)")
    r.add_argument("--resume", action="store_true",
                   help="continue the run in --run (finished members are kept, the others resume "
                   "from their checkpoints)")
    r.add_argument("--overwrite", action="store_true", help="delete whatever is at --run first")
    add_run_state_arguments(r, "member", "models/<member>/checkpoints/")
    h = p.add_argument_group("training (defaults: each model's own paper; these flags override them)")
    h.add_argument("--epochs", type=int, default=None, action=_PerModelDefault, key="epochs",
                   help="image-text training epochs of every model")
    h.add_argument("--text-epochs", type=int, default=None,
                   help="MTFN only: epochs of the text-text branch S_TT after the image-text one "
                   "(default: half of mtfn's image-text epochs, at least 1 -- MTFN-RR §4.1 gives no "
                   "number, this is our choice; 0 = re-rank T2I with text-embedding cosine)")
    h.add_argument("--batch-size", type=int, default=None, action=_PerModelDefault, key="batch_size",
                   help="batch size of every model")
    h.add_argument("--lr", type=float, default=None, action=_PerModelDefault, key="lr",
                   help="Adam's initial learning rate of every model")
    h.add_argument("--margin", type=float, default=None,
                   help="hinge margin α >= 0 of every model (default: each model's, 0.2)")
    h.add_argument("--rank", type=int, default=None, help="MTFN: rank R >= 1 of the tensor fusion (20)")
    h.add_argument("--alpha", type=float, default=None,
                   help="MMCA: weight α of the cross-attention score, S = i0·c0 + α·i1·c1 (0.2)")
    h.add_argument("--seed", type=int, default=None, help="seed of the first member (0); synthetic data too")
    h.add_argument("--ensemble", type=int, default=1, metavar="M",
                   help="train M seeds of each model and also report the ensemble that averages their "
                   "similarity matrices (MTFN-RR ensembles; default 1 = no ensemble)")
    h.add_argument("--set", action="append", default=[], metavar="[MODEL.]KEY=VALUE",
                   help="any other model-config or trainer value, e.g. --set embed_dim=256, --set "
                   "mtfn.dim=512 or --set mmca.lr_decay_epochs=5 (schedule keys: epochs, batch_size, "
                   "lr, lr_decay_epochs, lr_decay; text_epochs for mtfn only; each model's defaults "
                   "under --epochs). VALUE is JSON: numbers, lists, strings; repeatable")
    h.add_argument("--config", metavar="JSON",
                   help="best.json of `xmr sweep --model <name>`: its configuration for that model "
                   "(flags given here win)")
    h.add_argument("--checkpoint-every", type=int, default=1, help="checkpoint every N epochs (1)")
    add_patience_argument(h, "member's training stage", "val rsum; MTFN's text-text stage: val tt_r1. An "
                          "image-text stage that stops hands over to MTFN's text-text stage",
                          default=PATIENCE_OFF.format(s="s"))
    k = p.add_argument_group("re-ranking (MTFN-RR §3.2)")
    k.add_argument("--k", type=int, default=None,
                   help="re-ranked list length K >= 1 (<= the gallery). Default: the best of 1, 2, 5, "
                   "10, 15, 20 on the validation split")
    k.add_argument("--k-text", type=int, default=None,
                   help="K' >= 0 neighbour texts of T2I re-ranking. Default: the best of 0, 1, 2, 4, 8 "
                   "on val")
    k.add_argument("--t2i-groups", default="candidate", metavar="{candidate,query}",
                   help="T2I re-ranking scores a candidate image by the first text T_k of its ranking "
                   "that has the query text in T_k's own K'-neighbour group (candidate: MTFN-RR Eq. 15, "
                   "default) or that lies in the query's group (query); K / K' are chosen on val with it")
    c = p.add_argument_group("cluster")
    c.add_argument("--gpus-per-model", type=float, default=None,
                   help="GPUs per model actor (fractional packs several on one GPU; default: 1 when the "
                   "cluster has GPUs, else 0)")
    c.add_argument("--cpus-per-model", type=float, default=None,
                   help="CPUs per model actor (default: the cluster's CPUs shared out evenly)")
    add_address_argument(c)
    add_tracking_arguments(p)
    add_verbose_argument(p)


def register(sub: argparse._SubParsersAction) -> None:
    add_job_subcommand(sub, "train-pairs", "train image-text branch models (VSE, MTFN, MMCA, VSA) in "
                       "parallel, with R@K and cross-modal re-ranking", __doc__, add_branch_arguments,
                       run_branch)


def job_parser() -> argparse.ArgumentParser:
    return job_script_parser("train_pairs.py", __doc__, add_branch_arguments)


# ------------------------------------------------------------------------------ arguments -> request
def _check_flags(args: argparse.Namespace) -> None:
    checks = [("--epochs", args.epochs, 1), ("--text-epochs", args.text_epochs, 0),
              ("--batch-size", args.batch_size, 2), ("--rank", args.rank, 1), ("--k", args.k, 1),
              ("--k-text", args.k_text, 0), ("--seed", args.seed, 0), ("--ensemble", args.ensemble, 1),
              ("--checkpoint-every", args.checkpoint_every, 1)]
    for flag, value, low in checks:
        if value is not None and value < low:
            raise InputError(f"{flag} must be >= {low}, got {value}")
    for flag, value in (("--margin", args.margin), ("--alpha", args.alpha)):
        if value is not None and not value >= 0:
            raise InputError(f"{flag} must be >= 0, got {value}")
    if args.lr is not None and not args.lr > 0:
        raise InputError(f"--lr must be > 0, got {args.lr}")


def load_best(path: str) -> tuple[str, dict[str, Any]]:
    """(model, config) of a sweep's best.json: ``{"model": "<name>", "config": {...}}``."""
    best = SweepBest.read(path, f"--config {path}")
    if best.model not in MODELS:
        raise InputError(f"--config {path}: not a branch-model best.json (model {best.model!r}; "
                         f"expected one of {', '.join(MODELS)})")
    if best.config is None:
        raise InputError(f"--config {path}: no 'config' section")
    return best.model, dict(best.config)


def _parse_sets(items: list[str], models: list[str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """``--set [MODEL.]KEY=VALUE`` -> (model-config values, trainer values) per model.

    A key of the model's config class goes there; otherwise a PairTrainerConfig key (e.g.
    ``lr_decay_epochs``, ``warmup_sum_epochs``) goes to the trainer. Unqualified keys apply to
    every selected model that has them; a key no selected model has is an error, and so is a
    schedule key the named model does not have (``text_epochs`` is MTFN's alone).
    """
    from scalable_xmr.branch.config import TEXT_STAGE_KEY, model_keys, schedule_keys, trainer_keys

    owned_by_trainer = {m: trainer_keys(m) - {"seed"} for m in models}
    keys = {m: model_keys(m) for m in models}
    out: dict[str, dict[str, Any]] = {m: {} for m in models}
    trainer: dict[str, dict[str, Any]] = {m: {} for m in models}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected [MODEL.]KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        model, _, name = key.rpartition(".")
        if model and model not in models:
            raise InputError(f"--set {item!r}: model {model!r} is not among --model {', '.join(models)}")
        scope = [model] if model else models
        targets = [m for m in scope if name in keys[m]]
        trainer_targets = [m for m in scope if name in owned_by_trainer[m]]
        if targets:
            for m in targets:
                out[m][name] = value
        elif trainer_targets:
            for m in trainer_targets:
                trainer[m][name] = value
        elif name == TEXT_STAGE_KEY:
            raise InputError(f"--set {item!r}: {name!r} is not a schedule key of {', '.join(scope)} "
                             f"(schedule keys: {', '.join(schedule_keys(scope[0]))}; {name} is mtfn's)")
        else:
            known = sorted(set().union(*(keys[m] | owned_by_trainer[m] for m in scope)))
            raise InputError(f"--set {item!r}: no selected model has a config key {name!r} (known: {known})")
    return out, trainer


def _models(args: argparse.Namespace, best: tuple[str, dict] | None) -> list[str]:
    models = list(dict.fromkeys(args.model or ([best[0]] if best else ["vse"])))
    if best and best[0] not in models:
        raise InputError(f"--config {args.config}: a best.json for model {best[0]!r}, but --model is "
                         f"{', '.join(models)}; train {best[0]!r} or pass that model's best.json")
    for flag, value, model in (("--rank", args.rank, "mtfn"), ("--alpha", args.alpha, "mmca")):
        if value is not None and model not in models:
            raise InputError(f"{flag} applies to --model {model} only (models: {', '.join(models)})")
    if args.text_epochs and "mtfn" not in models:
        raise InputError(f"--text-epochs applies to --model mtfn only (models: {', '.join(models)})")
    return models


def build_configs(args: argparse.Namespace, one_caption: bool = False):
    """(trainer configs, model config values, ks, k_texts) from the flags and --config.

    ``one_caption``: the training data has one caption per image, so MTFN's text-text stage
    (pairs of captions of one image) cannot train and its default ``text_epochs`` is 0.
    """
    from scalable_xmr.branch.config import (
        PairTrainerConfig,
        default_text_epochs,
        model_schedule,
        split_values,
    )
    from scalable_xmr.models.registry import branch_config

    _check_flags(args)
    best = load_best(args.config) if args.config else None
    models = _models(args, best)
    set_model, set_trainer = _parse_sets(args.set, models)
    # Precedence, least to most specific: best.json < the flags < --set.
    model_values: dict[str, dict[str, Any]] = {m: {} for m in models}
    trainer_values: dict[str, dict[str, Any]] = {m: {} for m in models}
    rerank = {"k": args.k, "k_text": args.k_text}
    if best:
        model, config = best
        for key in RERANK_KEYS:
            if key in config and rerank[key] is None:
                rerank[key] = config[key]
        trainer_values[model], model_values[model] = split_values(
            model, {k: v for k, v in config.items() if k not in RERANK_KEYS}, f"--config {args.config}:")
    flags = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "patience": args.patience}
    # The margin is each model's own (its config); the flag sets it for every selected model.
    model_flags = {m: {"margin": args.margin} for m in models}
    model_flags["mtfn"] = {**model_flags.get("mtfn", {}), "rank": args.rank}
    model_flags["mmca"] = {**model_flags.get("mmca", {}), "alpha": args.alpha}
    trainers = {}
    for m in models:
        model_values[m].update({k: v for k, v in model_flags.get(m, {}).items() if v is not None})
        model_values[m].update(set_model[m])
        given = {**flags, "text_epochs": args.text_epochs if m == "mtfn" else None}
        values = {**trainer_values[m], **{k: v for k, v in given.items() if v is not None}, **set_trainer[m]}
        if "text_epochs" not in values:  # MTFN: half its image-text epochs (our choice), else 0
            epochs = values.get("epochs", model_schedule(m).epochs)
            values["text_epochs"] = default_text_epochs(m, epochs, one_caption)
        trainers[m] = PairTrainerConfig.from_dict({"model": m, **values})
    for m in models:
        branch_config(m, model_values[m])  # bad values fail before anything starts
    ks = None if rerank["k"] is None else (int(rerank["k"]),)
    k_texts = None if rerank["k_text"] is None else (int(rerank["k_text"]),)
    return trainers, {m: v for m, v in model_values.items() if v}, ks, k_texts


def _default_run_dir() -> str:
    return str(Path("runs") / _dt.datetime.now().strftime("pairs-%Y%m%d-%H%M%S"))


def resolve_data(args: argparse.Namespace, run_dir: str) -> str:
    """``--data`` checked to exist, or synthetic paired data generated once under <run parent>/data.
    (Opening it -- "not a paired dataset" -- is the caller's, once.)"""
    from scalable_xmr.data.paired import make_synthetic_pairs

    if args.data:
        check_data_path(args.data)
        return args.data
    seed = args.seed or 0
    out = local_dir(run_dir).parent / "data" / f"synthetic-pairs-seed{seed}"
    note = ["NOTE: no --data given: using SYNTHETIC paired image-text data (regions and token",
            "      captions from latent concepts; R@K here says nothing about Flickr30K/COCO).",
            f"      Cached at {out}"]
    print("\n".join(["=" * 78, *note, "=" * 78]), file=sys.stderr)
    if not (out / "captions.parquet").is_file():
        make_synthetic_pairs(out, seed=seed, overwrite=out.exists())
    return str(out)


def request_from_args(args: argparse.Namespace):
    from scalable_xmr.branch.job import BranchRequest
    from scalable_xmr.data.paired import open_paired_dataset

    models = build_configs(args)[0]  # flag errors first, before any data is generated or read
    if args.target and "vsa" not in models:
        raise InputError("--target is the unpaired target domain of VSA (VSA-AE-MMD): add --model vsa")
    run_dir = args.run or _default_run_dir()
    data = resolve_data(args, run_dir)
    # Opened once here: "not a paired dataset" fails before anything is written.
    one_caption = open_paired_dataset(data).split_sizes("train")[2] == 1
    trainers, model_configs, ks, k_texts = build_configs(args, one_caption)
    return BranchRequest(
        run_dir=run_dir, dataset_uri=data, trainers=trainers, model_configs=model_configs,
        ensemble=args.ensemble, target_uri=args.target, ks=ks, k_texts=k_texts,
        t2i_groups=args.t2i_groups, checkpoint_every=args.checkpoint_every,
        gpus_per_model=args.gpus_per_model, cpus_per_model=args.cpus_per_model,
        tracking=TrackingConfig(args.tracking_uri, args.experiment, not args.no_tracking),
        resume=args.resume, overwrite=args.overwrite, show_progress=not args.no_progress,
        keep_checkpoints=args.keep_checkpoints,
    )


def run_branch(args: argparse.Namespace) -> int:
    from scalable_xmr.branch.job import train_branch

    set_verbose(args.verbose)
    summary = train_branch(request_from_args(args), address=args.address)
    print()
    print(summary.table)
    print()
    print_run_footer(summary.run_dir, summary.tracking, summary.seconds, metrics_file=True)
    print_training_notes(summary.results, summary.training_state)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job(job_parser(), run_branch, argv)
