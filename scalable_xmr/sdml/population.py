"""Population training: N configurations of one modality's SDML network as one batched computation.

SDML's per-modality networks are small MLPs trained against a fixed P, so configurations of one
modality that differ only in values that change neither a shape nor the data (λ, the learning rate,
the seed: :data:`POPULATION_KEYS`) can train together in one process: the N networks' parameters are
stacked on a leading slot axis, every layer runs as one batched GEMM over the slots
(``torch.baddbmm``, or ``torch.vmap`` over ``torch.func.functional_call`` of the model itself), and
the loss is SDML Eq. 1 (``functional.losses.sdml_loss``) vmapped over the slots with each slot's
own λ. Each slot is, in semantics, one :class:`~scalable_xmr.sdml.trainer.ModalityTrainer`:

- the same initial weights (seeded by :func:`~scalable_xmr.sdml.trainer.modality_seed`),
- the same batch order (its own generator, seeded the same way, reshuffled each epoch),
- its own Adam (betas 0.5, 0.999) with its own learning rate and state: the optimizer holds every
  slot's slice of the stacked tensors as a parameter group of its own (views, no copies),
- its own history and model selection (the epoch with the lowest validation label loss,
  :func:`~scalable_xmr.sdml.trainer.improves`),
- its own early stop (``patience``, shared by the slots like every non-population key): a
  slot whose patience runs out is masked -- its history and selection end at that epoch, as
  its ModalityTrainer's would, while its slot keeps computing (nobody reads it) until every
  slot has stopped or the epochs are done. Masking, not refusing, so a sweep's population
  trial honours ``--set patience=N`` as its single trials do.

tests/sdml/test_population.py checks that against N separate ModalityTrainer runs. Results match
within float tolerance, not bit for bit: a batched GEMM sums in another order than N single ones.
A slot whose loss stops being finite is marked failed (its row keeps computing, nobody reads
it); the others continue, where a ModalityTrainer would stop with an error.

What it costs (bench/population_speed.py, BENCHMARKS.md): the work is N trainings' FLOPs, so on a
CPU where one training already runs near the GEMM rate a population saves only the per-process and
per-step fixed costs; on a GPU, where one small MLP leaves most of the device idle, it fills it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from scalable_xmr.config import SDMLConfig, patience_exhausted
from scalable_xmr.errors import InputError
from scalable_xmr.functional.losses import label_loss_per_sample, mean_label_loss, sdml_loss
from scalable_xmr.models.runtime import make_adam
from scalable_xmr.models.sdml import SDMLAutoencoder
from scalable_xmr.sdml.modality_spec import ModalitySpec, spec_context
from scalable_xmr.sdml.outputs import write_run_outputs
from scalable_xmr.sdml.trainer import (
    SDML_BETAS,
    EpochStats,
    improves,
    modality_seed,
    retain_freed_memory,
    stored_config,
    train_epochs,
)
from scalable_xmr.store import torchfile
from scalable_xmr.store.meta import now_iso
from scalable_xmr.store.run_store import RunStore

POPULATION_KEYS = ("lam", "lr", "seed")  # may differ between slots (no shape or data changes)
LAYOUT = "weights (N, in, out)"  # how a population checkpoint stores Linear weights
KERNELS = ("bmm", "vmap")
PopulationHook = Callable[[list[EpochStats], bool], None]  # (each slot's stats, checkpointed)


def check_compatible(configs: Sequence[SDMLConfig]) -> None:
    """InputError unless ``configs`` differ only in :data:`POPULATION_KEYS`."""
    if not configs:
        raise InputError("a population needs at least one configuration")
    shared = {k: v for k, v in configs[0].to_dict().items() if k not in POPULATION_KEYS}
    for i, cfg in enumerate(configs[1:], 1):
        for key, value in cfg.to_dict().items():
            if key not in POPULATION_KEYS and value != shared[key]:
                raise InputError(f"population slot {i}: {key}={value!r} differs from slot 0's "
                                 f"{shared[key]!r}; slots may differ only in {', '.join(POPULATION_KEYS)}")


def is_weight(name: str) -> bool:
    """A Linear weight: stored transposed in a population (see :class:`StackedAutoencoder`)."""
    return name.endswith(".weight")


def stacked_layout(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A module parameter (or a stack of them) in the population's layout: weights transposed."""
    return tensor.transpose(-1, -2) if is_weight(name) else tensor


module_layout = stacked_layout  # the transpose is its own inverse


class StackedAutoencoder:
    """N :class:`SDMLAutoencoder` parameter sets stacked on a leading slot axis, and their forward.

    ``template`` gives the architecture (its ``encoder`` / ``decoder`` Sequentials) and holds the
    shared normaliser; ``params`` maps its parameter names to leaf tensors (N, *shape), except that
    Linear weights are stored transposed, (N, in, out): ``h @ W_t`` then needs no transpose and
    autograd produces each weight's gradient in the weight's own layout. Stored as the module's
    (N, out, in), every step's weight gradients came out transposed and AccumulateGrad copied them
    into the parameters' layout: 300 ms of a 583 ms step for 4 image networks on one thread.
    """

    def __init__(self, template: SDMLAutoencoder, params: dict[str, torch.Tensor], kernel: str = "bmm"):
        if kernel not in KERNELS:
            raise InputError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        self.template, self.params, self.kernel = template, params, kernel

    def _mlp(self, prefix: str, layers: nn.Sequential, h: torch.Tensor) -> torch.Tensor:
        for j, layer in enumerate(layers):
            if isinstance(layer, nn.Linear):
                w = self.params[f"{prefix}.{j}.weight"]  # (N, in, out): stored transposed
                b = self.params[f"{prefix}.{j}.bias"]  # (N, out)
                if h.dim() == 2:  # one input shared by every slot: (B, i) -> (N, B, o)
                    h = torch.matmul(h, w) + b.unsqueeze(1)
                else:
                    h = torch.baddbmm(b.unsqueeze(1), h, w)  # (N, B, o)
            else:
                h = layer(h)  # ReLU
        return h

    def _functional(self, x: torch.Tensor, encode_only: bool):
        """The model's own forward (``functional_call``) vmapped over the slots."""
        from torch.func import functional_call

        x_dim = 0 if x.dim() == 3 else None  # (N, B, dim) per slot, or one (B, dim) shared
        params = {k: module_layout(k, v) for k, v in self.params.items()}  # views, (N, out, in)
        if encode_only:  # SDMLAutoencoder.encode_normalized: the encoder, then L2-normalise
            def encode(p, xi):
                return F.normalize(functional_call(self.template.encoder, p, (xi,)), dim=-1)

            return torch.vmap(encode, in_dims=(0, x_dim))(_sub(params, "encoder"), x)
        return torch.vmap(lambda p, xi: functional_call(self.template, p, (xi,)),
                          in_dims=(0, x_dim))(params, x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """h of standardised inputs (N, B, dim) or one shared (B, dim): (N, B, d), L2-normalised."""
        if self.kernel == "vmap":
            return self._functional(x, encode_only=True)
        return F.normalize(self._mlp("encoder", self.template.encoder, x), dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h, x̂) of standardised batches (N, B, dim): (N, B, d), (N, B, dim)."""
        if self.kernel == "vmap":
            return self._functional(x, encode_only=False)
        h = self.encode(x)
        return h, self._mlp("decoder", self.template.decoder, h)

    def slot_state(self, i: int, params: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Slot ``i``'s state_dict (its weights + the shared normaliser), as views."""
        source = self.params if params is None else params
        return {**{k: module_layout(k, v[i].detach()) for k, v in source.items()},
                "feature_mean": self.template.feature_mean, "feature_std": self.template.feature_std}


def _sub(params: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in params.items() if k.startswith(prefix + ".")}


@dataclass
class Slot:
    """One configuration's record: its history and selected epoch, as ModalityTrainer keeps them."""

    config: SDMLConfig
    lr: float
    best_val: float = float("inf")
    best_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    failed: str | None = None  # why it stopped counting (a non-finite loss)
    stopped_early: int | None = None  # the epoch its patience ran out at (masked from then on)

    @property
    def active(self) -> bool:
        return self.failed is None and self.stopped_early is None


class PopulationTrainer:
    """Trains N configurations of ``job.modality`` at once (see the module docstring).

    ``job`` gives the run directory (P, the checkpoint), the data, device and threads; its config
    must be population-compatible with ``configs`` (usually ``configs[0]``).
    """

    def __init__(self, job: ModalitySpec, configs: Sequence[SDMLConfig], kernel: str = "bmm"):
        configs = list(configs)
        check_compatible([job.config, *configs])
        self.job, self.cfg = job, configs[0]
        self.device, self.store, self.P, self.data = spec_context(job)
        self.slots = [Slot(c, c.lr_for(job.modality)) for c in configs]
        n, dim = len(configs), self.data.input_dim
        self.generators, stacked = [], {}
        for i, c in enumerate(configs):  # each slot's init exactly as its ModalityTrainer's
            seed = modality_seed(c, job.modality)
            torch.manual_seed(seed)
            net = SDMLAutoencoder(dim, c.dim, c.hidden).to(self.device)
            for name, p in net.named_parameters():
                p = stacked_layout(name, p.detach())
                if name not in stacked:
                    stacked[name] = torch.empty((n, *p.shape), device=self.device)
                stacked[name][i].copy_(p)
            self.generators.append(torch.Generator(device="cpu").manual_seed(seed))
        self.template = net  # architecture + the shared normaliser (its weights are never used)
        if self.cfg.normalize:
            self.template.fit_normalizer(self.data.features["train"])
        self.x = {s: self.template.normalize(f) for s, f in self.data.features.items()}
        params = {k: v.requires_grad_() for k, v in stacked.items()}
        self.net = StackedAutoencoder(self.template, params, kernel)
        self.best_params = {k: v.detach().clone() for k, v in params.items()}
        # Slot i's optimizer parameters are views of row i of the stacked tensors: Adam (fused)
        # updates the stacked storage in place, with slot i's own rate and state.
        self._views = [[v.detach()[i] for v in params.values()] for i in range(n)]
        groups = [{"params": views, "lr": m.lr} for views, m in zip(self._views, self.slots, strict=True)]
        self.optimizer = make_adam(groups, self.slots[0].lr, SDML_BETAS)
        self.lam = torch.tensor([c.lam for c in configs], device=self.device)  # (N,)
        self.epoch = 0
        self.resumed_at: list[int] = []
        self._resume()

    @property
    def size(self) -> int:
        return len(self.slots)

    @property
    def done(self) -> bool:
        """Every epoch trained, or no slot left that still trains (patience ran out or failed)."""
        return self.epoch >= self.cfg.epochs or not any(m.active for m in self.slots)

    # ---- one epoch -----------------------------------------------------------------------------
    def batch_indices(self) -> torch.Tensor:
        """(N, steps, B) train rows of this epoch's batches, each slot shuffled by its own
        generator as ModalityTrainer.batches does (last partial batch dropped)."""
        retain_freed_memory()
        n, b = len(self.x["train"]), self.cfg.batch_size
        if n < b:
            raise InputError(f"modality {self.job.modality!r}: train split has {n} rows, "
                             f"fewer than one batch of {b}")
        steps = n // b
        perms = [torch.randperm(n, generator=g)[: steps * b] for g in self.generators]
        return torch.stack(perms).view(self.size, steps, b).to(self.device)

    def step(self, rows: torch.Tensor) -> torch.Tensor:
        """One Adam step of every slot on its batch ``rows`` (N, B); returns (3, N) losses."""
        x = self.x["train"].index_select(0, rows.flatten()).view(*rows.shape, -1)  # (N, B, dim)
        y = self.data.labels["train"].index_select(0, rows.flatten()).view(*rows.shape, -1)  # (N, B, c)
        for p in self.net.params.values():
            p.grad = None
        h, x_hat = self.net.forward(x)
        # SDML Eq. 1 per slot, with its own λ: (N,) each.
        total, recon, label = torch.vmap(sdml_loss, in_dims=(0, 0, 0, None, 0, 0))(x_hat, x, h, self.P, y,
                                                                                   self.lam)
        total.sum().backward()  # slots are independent: d(sum)/d(slot i) = d(total_i)
        grads = [p.grad for p in self.net.params.values()]
        for i, views in enumerate(self._views):
            for view, grad in zip(views, grads, strict=True):
                view.grad = grad[i]
        self.optimizer.step()
        return torch.stack([total.detach(), recon.detach(), label.detach()])

    @torch.no_grad()
    def val_label_loss(self) -> torch.Tensor:
        """(N,) mean ‖Pᵀh − y‖₂ over labeled validation rows: each slot's selection criterion."""
        per_sample = torch.vmap(label_loss_per_sample, in_dims=(0, None, None))
        chunks: list[torch.Tensor] = []
        loss = mean_label_loss(self.net.encode, self.x["val"], self.data.labels["val"], self.P,
                               per_sample=per_sample, chunk=1024, keep=chunks)
        self.val_embeddings = torch.cat(chunks, dim=1)  # (N, n_val, d): this epoch's, current weights
        return loss

    def train_epoch(self) -> list[EpochStats]:
        """One pass of every slot over its shuffled train split, then validation.

        Each slot's ``seconds`` is its share of the epoch (the epoch's time / N).
        """
        start = time.perf_counter()
        order = self.batch_indices()  # (N, steps, B)
        sums = torch.zeros(3, self.size, device=self.device)
        for s in range(order.shape[1]):
            sums += self.step(order[:, s])
        self.epoch += 1
        means = (sums / order.shape[1]).T.tolist()  # (N, 3): one host sync per epoch
        val = self.val_label_loss().tolist()
        seconds = (time.perf_counter() - start) / self.size
        stats = [EpochStats(self.epoch, *m, v, seconds) for m, v in zip(means, val, strict=True)]
        for slot, st in zip(self.slots, stats, strict=True):
            bad = [t for t, v in zip(("total", "reconstruction", "label"), (st.loss_train, st.loss_recon,
                                     st.loss_label), strict=True) if not math.isfinite(v)]
            if bad and slot.failed is None:
                slot.failed = (f"modality {self.job.modality!r}: the {' and '.join(bad)} loss is not "
                                 f"finite at epoch {self.epoch} (lr {slot.lr:g}); lower --lr")
        if all(m.failed for m in self.slots):
            raise InputError(self.slots[0].failed)
        return stats

    def record(self, stats: list[EpochStats]) -> None:
        """Each slot's history and model selection (ModalityTrainer.record's rule)."""
        improved = []
        for i, (slot, st) in enumerate(zip(self.slots, stats, strict=True)):
            if slot.stopped_early is not None:
                continue  # masked: its record ends where its patience ran out
            slot.history.append({k: float(v) for k, v in vars(st).items()})
            if slot.failed is None and improves(st.loss_val_label, slot.best_val):
                slot.best_val, slot.best_epoch = st.loss_val_label, st.epoch
                improved.append(i)
            self._check_patience(slot)
        if improved:
            rows = torch.tensor(improved, device=self.device)
            for k, v in self.net.params.items():
                self.best_params[k].index_copy_(0, rows, v.detach().index_select(0, rows))

    def _check_patience(self, slot: Slot) -> None:
        """ModalityTrainer's rule, per slot (config.patience_exhausted)."""
        if (slot.failed is None and self.epoch < self.cfg.epochs
                and patience_exhausted(self.epoch, slot.best_epoch, slot.config.patience)):
            slot.stopped_early = self.epoch

    def fit(self, on_epoch: PopulationHook | None = None,
            out_dirs: Sequence[str | Path] | None = None, checkpoint_at_end: bool = True) -> None:
        """Train to ``epochs`` (a resumed population continues) through ModalityTrainer's loop
        (:func:`~scalable_xmr.sdml.trainer.train_epochs`: ``on_epoch(stats, checkpointed)`` with
        each slot's stats). With ``out_dirs`` (one run directory per slot) each slot's
        outputs are written there."""
        train_epochs(self, on_epoch, checkpoint_at_end)
        for i, directory in enumerate(out_dirs or ()):
            self.write_outputs(i, directory)

    # ---- slots as plain models ---------------------------------------------------------------
    def slot_model(self, i: int, best: bool = True) -> SDMLAutoencoder:
        """Slot ``i`` as an SDMLAutoencoder (its selected epoch, or its current weights).

        The same scratch module is returned each time: copy it before asking for another slot.
        """
        self.template.load_state_dict(self.net.slot_state(i, self.best_params if best else None))
        return self.template.eval()

    def write_outputs(self, i: int, run_dir: str | Path) -> None:
        """Slot ``i``'s selected model, its ``eval_splits`` embeddings and training log in
        ``run_dir`` (the layout of a ModalityTrainer run)."""
        slot, m = self.slots[i], self.job.modality
        write_run_outputs(RunStore(run_dir), self.job, self.slot_model(i, best=True), slot.config,
                          slot.best_epoch, self.data, {
            "modality": m, "best_epoch": slot.best_epoch, "best_val_label": slot.best_val,
            "epochs": slot.stopped_early or self.epoch, "resumed_at_epoch": self.resumed_at,
            "history": slot.history, "input_dim": self.data.input_dim, "n_train": len(self.x["train"]),
            "failed": slot.failed, "patience": slot.config.patience,
            "stopped_early": slot.stopped_early,
            # "member": the slot's index, under the name train_log.json files already carry
            "population": {"size": self.size, "member": i}, "finished": now_iso(),
        })

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        state = {
            "layout": LAYOUT,
            "params": {k: v.detach() for k, v in self.net.params.items()},
            "best_params": self.best_params,
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "generators": [g.get_state() for g in self.generators],
            # the slots, under the key checkpoints already written hold (a resume reads them)
            "members": [{**dataclasses.asdict(m), "config": m.config.to_dict()} for m in self.slots],
            "resumed_at": self.resumed_at,
        }
        torchfile.save_rotating(state, self.store.checkpoint_path(self.job.modality))

    def _resume(self) -> None:
        path = self.store.checkpoint_path(self.job.modality)
        if not path.is_file() and not torchfile.previous(path).is_file():
            return
        state, _, _ = torchfile.load_newest_good(path, self.device)
        configs = [stored_config(m.get("config")) for m in state.get("members", [])]
        if configs != [m.config.to_dict() for m in self.slots]:
            raise InputError(f"{path}: checkpoint was written by another population; delete it or use "
                             "the same configurations")
        if state.get("layout") != LAYOUT:
            raise InputError(f"{path}: checkpoint was written by an older version (weights stored "
                             f"{state.get('layout', '(N, out, in)')}, now {LAYOUT}); delete it to retrain")
        with torch.no_grad():
            for k, v in self.net.params.items():
                v.copy_(state["params"][k])
                self.best_params[k].copy_(state["best_params"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        for g, s in zip(self.generators, state["generators"], strict=True):
            g.set_state(s.cpu())
        for slot, saved in zip(self.slots, state["members"], strict=True):
            slot.best_val, slot.best_epoch = float(saved["best_val"]), int(saved["best_epoch"])
            slot.history, slot.failed = list(saved["history"]), saved["failed"]
            slot.stopped_early = saved.get("stopped_early")
        self.epoch = int(state["epoch"])
        self.resumed_at = [*state.get("resumed_at", []), self.epoch]
