"""T-Vaccine (Liu et al., arXiv 2410.09760): Vaccine's perturbation on a few safety-critical layers only.

Every K optimizer steps, the gradient norm of a harmful probe batch w.r.t. each layer's attention output gives the
layer importance P. Every J optimizer steps, S layers are drawn from P without replacement. In each step only those
layers are perturbed and their LoRA trains. The other layers' attention LoRA is frozen; their MLP LoRA trains with
``freeze_scope: attention`` (the default: the authors' code, which produced the paper's results) and is frozen with
``layer`` (the paper's text). The inactive layers run under activation checkpointing, which is where the memory goes
down. Cost per step: Vaccine's two passes, but pass 1 stops at the lowest active layer and pass 2 keeps full
activations for S layers only; plus one forward/backward on the probe batch every K steps.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import torch

from tvaccine.errors import UserError
from tvaccine.importance import grad_norms, importance_probs, sample_layers, top_layers
from tvaccine.layers import unwrap
from tvaccine.methods.auxiliary import SeededBatches, load_state, save_state, torch_order
from tvaccine.methods.vaccine import VaccineConfig, VaccineTrainer
from tvaccine.perturb import capture_outputs, frozen
from tvaccine.training import report_scalars

SCHEDULE_FILE = "tvaccine_schedule.json"
# The authors keep layer i-1 un-checkpointed next to each sampled layer i, but only in models deeper than this.
NEIGHBOR_MIN_LAYERS = 26


@dataclass
class TVaccineConfig(VaccineConfig):
    rho: float = field(default=3.0, metadata={"help": "perturbation intensity ρ"})
    num_active_layers: int = field(default=8, metadata={"help": "S: layers perturbed and trained per step"})
    layer_resample_steps: int = field(default=20, metadata={"help": "J: optimizer steps between layer draws"})
    importance_update_steps: int = field(default=200, metadata={"help": "K: optimizer steps between importance"})
    num_probe_samples: int = field(default=200, metadata={"help": "size of the harmful probe pool"})
    probe_batch_size: int = field(default=1, metadata={"help": "harmful rows per importance pass (paper: 1)"})
    layer_sampling: str = field(
        default="importance", metadata={"help": "importance (paper) | uniform | topk (ablations)"}
    )
    freeze_scope: str = field(
        default="attention",
        metadata={"help": "attention: inactive layers freeze only their attention LoRA, the MLP LoRA of every "
                  "layer trains (the authors' code, behind the paper's results); layer: inactive layers freeze "
                  "all their LoRA (the paper's text)"},
    )
    checkpoint_inactive: bool = field(default=True, metadata={"help": "activation-checkpoint inactive layers"})
    neighbor_uncheckpointed: bool = field(
        default=False,
        metadata={"help": f"also leave layer i-1 un-checkpointed for each active i in models with more than "
                  f"{NEIGHBOR_MIN_LAYERS} layers (the original code's behaviour)"},
    )
    reentrant_gradient_gap: bool = field(
        default=False,
        metadata={"help": "freeze all LoRA of the layers below the lowest un-checkpointed layer (the original "
                  "code's behaviour: its reentrant checkpointing with frozen embeddings passes no gradient "
                  "below that layer, so their MLP LoRA never trains). Needs freeze_scope: attention and "
                  "checkpoint_inactive: true"},
    )

    # The trainable set changes between steps: under DDP the frozen layers' LoRA is unused in a step, which DDP
    # must be told (and must not assume a static graph), or ranks diverge at step 0 and step 1 fails.
    ddp_find_unused_parameters: bool | None = field(
        default=True, metadata={"help": "must stay true: the trained layers change between steps"})

    method = "tvaccine"

    def __post_init__(self):
        super().__post_init__()
        self._check(self.ddp_find_unused_parameters is not False, "ddp_find_unused_parameters",
                    "must be true for T-Vaccine (the trained layers change between steps)")
        self._check(not self.ddp_static_graph, "ddp_static_graph",
                    "must be false for T-Vaccine (the trained layers change between steps)")
        self._check(self.num_active_layers >= 1, "num_active_layers", "must be at least 1")
        self._check(self.layer_resample_steps >= 1, "layer_resample_steps", "must be at least 1")
        self._check(self.importance_update_steps >= 1, "importance_update_steps", "must be at least 1")
        self._check(self.num_probe_samples >= 1, "num_probe_samples", "must be at least 1")
        self._check(self.probe_batch_size >= 1, "probe_batch_size", "must be at least 1")
        self._check(self.layer_sampling in ("importance", "uniform", "topk"), "layer_sampling",
                    "must be importance, uniform or topk")
        self._check(self.freeze_scope in ("layer", "attention"), "freeze_scope", "must be layer or attention")
        if self.reentrant_gradient_gap:  # the gap only exists where inactive layers train and are checkpointed
            self._check(self.freeze_scope == "attention", "reentrant_gradient_gap",
                        f"needs freeze_scope: attention (under freeze_scope: {self.freeze_scope} nothing below "
                        "the active layers trains anyway)")
            self._check(self.checkpoint_inactive, "reentrant_gradient_gap",
                        "needs checkpoint_inactive: true (the gap comes from checkpointing the inactive layers)")
        if self.gradient_checkpointing:
            raise UserError("gradient_checkpointing: T-Vaccine checkpoints the inactive layers itself; "
                            "leave it off and use checkpoint_inactive")

    def check_model(self, model):
        decoder = super().check_model(model)
        self._check(self.num_active_layers <= len(decoder), "num_active_layers",
                    f"must be at most the model's {len(decoder)} layers")
        return decoder

    def needs_harmful_data(self) -> bool:
        return self.layer_sampling != "uniform"  # the importance probe

    def harmful_data_limit(self) -> int | None:
        return self.num_probe_samples


@dataclass
class LayerSchedule:
    """What T-Vaccine carries between steps; saved with every Trainer checkpoint so a resumed run continues it."""

    generator: torch.Generator
    probs: list[float] | None = None
    active: list[int] | None = None
    step: int = -1  # optimizer step the current layers were scheduled for
    probe_epoch: int = 0
    probe_pos: int = 0

    def state_dict(self) -> dict:
        state = bytes(self.generator.get_state().tolist())
        return {"generator": base64.b64encode(state).decode(), "probs": self.probs, "active": self.active,
                "step": self.step, "probe_epoch": self.probe_epoch, "probe_pos": self.probe_pos}

    def load_state_dict(self, d: dict) -> None:
        self.generator.set_state(torch.tensor(list(base64.b64decode(d["generator"])), dtype=torch.uint8))
        self.probs, self.active, self.step = d["probs"], d["active"], d["step"]
        self.probe_epoch, self.probe_pos = d["probe_epoch"], d["probe_pos"]


class TVaccineTrainer(VaccineTrainer):
    def __init__(self, *args, harmful_dataset=None, **kwargs):
        super().__init__(*args, **kwargs)
        a, n = self.args, len(self.decoder)
        if a.num_active_layers > n:
            raise UserError(f"num_active_layers: {a.num_active_layers} is more than the model's {n} layers")
        if a.layer_sampling != "uniform" and not harmful_dataset:
            raise UserError("T-Vaccine's layer importance needs a harmful probe set (harmful_dataset / "
                            "--harmful-data)")
        # The position in the probe stream is the schedule's (probe_epoch, probe_pos), saved with it.
        self.probe_batches = SeededBatches(harmful_dataset, a.probe_batch_size, a.seed + 1, order=torch_order) \
            if harmful_dataset else None
        self.schedule = LayerSchedule(torch.Generator().manual_seed(a.seed))
        # The names of the trainable (LoRA) parameters of each layer, split by whether they sit in the attention
        # sub-module. All of them require grad now, when the optimizer and a DDP/DeepSpeed/FSDP wrapper are built
        # over them. Names, not the tensors: FSDP2 replaces each parameter by a sharded one when it wraps the model.
        self._attn_names, self._other_names = [], []
        for layer, attn in zip(self.decoder.layers, self.decoder.attentions):
            in_attn = {id(p) for p in attn.parameters()}
            trainable = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
            self._attn_names.append([n for n, p in trainable if id(p) in in_attn])
            self._other_names.append([n for n, p in trainable if id(p) not in in_attn])
        if a.checkpoint_inactive:
            self._enable_layer_checkpointing()

    def _enable_layer_checkpointing(self) -> None:
        base = unwrap(self.model)
        if not all(hasattr(layer, "gradient_checkpointing") for layer in self.decoder.layers):
            raise UserError(f"{type(base).__name__} has no per-layer activation checkpointing; "
                            "set checkpoint_inactive: false")
        # Non-reentrant: autograd.grad w.r.t. captured outputs works through checkpointed layers only then.
        base.activation_checkpointing_enable({"use_reentrant": False})
        # Without input grads nothing below the lowest trainable layer is recorded, so backward stops there.
        base.disable_input_require_grads()
        self._set_checkpointed(set())

    def _set_checkpointed(self, layers: set[int]) -> None:
        for i, layer in enumerate(self.decoder.layers):
            layer.gradient_checkpointing = i in layers

    def perturbed_layers(self) -> list[int]:
        return list(self.schedule.active)

    def begin_micro_step(self, model) -> None:
        # Importance and sampling follow optimizer steps: every micro-step of one accumulation shares them.
        s, a, step = self.schedule, self.args, self.state.global_step
        if s.step != step or s.active is None:
            if s.probs is None or step % a.importance_update_steps == 0:
                s.probs = self._from_main_process(self.layer_importance(model)).tolist()
                self.state.log_history.append({"step": step, "tvaccine/layer_probs": s.probs})
                report_scalars(self, {f"tvaccine/layer_prob/{i}": p for i, p in enumerate(s.probs)})
            if s.active is None or step % a.layer_resample_steps == 0:
                probs = torch.tensor(s.probs)
                if a.layer_sampling == "topk":
                    s.active = top_layers(probs, a.num_active_layers)
                else:
                    s.active = sample_layers(probs, a.num_active_layers, s.generator)
                self.state.log_history.append({"step": step, "tvaccine/active_layers": s.active})
                # the lists above stay as they are in log_history.json (the report reads them); the integrations
                # plot scalars only: one per layer, 1 where the layer was drawn
                drawn = set(s.active)
                report_scalars(self, {f"tvaccine/active/{i}": float(i in drawn) for i in range(len(self.decoder))})
            s.step = step
        self._activate(s.active)

    def _from_main_process(self, probs: torch.Tensor) -> torch.Tensor:
        """Rank 0's P on every rank. Every rank runs the probe pass on the same probe batch (its forward is a
        collective under DDP's buffer broadcast and ZeRO-3's gathers), but LoRA dropout, and so P, can differ
        between ranks; with one P and one identically seeded generator per rank, every rank draws the same layers."""
        if self.accelerator.num_processes == 1:
            return probs
        from accelerate.utils import broadcast

        return broadcast(probs.to(self.accelerator.device), from_process=0).cpu()

    def _activate(self, active: list[int]) -> None:
        """The active layers' LoRA trains, with freeze_scope attention every layer's MLP LoRA too (none below the
        reentrant gradient gap, if on); the rest is frozen, and the inactive layers are (optionally) checkpointed."""
        on = set(active)
        keep = set(on)  # un-checkpointed layers
        if self.args.neighbor_uncheckpointed and len(self.decoder) > NEIGHBOR_MIN_LAYERS:
            keep |= {i - 1 for i in on if i > 0}
        # The original's reentrant checkpoint passes a gradient only to inputs that require one; with frozen
        # embeddings the hidden states do not until the lowest un-checkpointed layer, so nothing below it trains.
        gap = min(keep) if self.args.reentrant_gradient_gap else 0
        for i, layer in enumerate(self.decoder.layers):
            params = dict(layer.named_parameters())
            for name in self._attn_names[i]:
                params[name].requires_grad_(i in on)
            for name in self._other_names[i]:
                params[name].requires_grad_(i >= gap and (i in on or self.args.freeze_scope == "attention"))
        if self.args.checkpoint_inactive:
            self._set_checkpointed(set(range(len(self.decoder))) - keep)

    def layer_importance(self, model) -> torch.Tensor:
        """P over layers from ‖∂L/∂a_l‖ on the next probe batch (uniform under the uniform-sampling ablation).

        Only ∂L/∂a_l is needed: every parameter is frozen, as in pass 1, and with ``checkpoint_inactive`` every
        layer is checkpointed, so this pass (every layer captured) stays below a step's memory peak even for one
        long row. Recomputation replays the same dropout masks and leaves the RNG stream as it was: P is unchanged.
        """
        n = len(self.decoder)
        if self.args.layer_sampling == "uniform":
            return torch.full((n,), 1.0 / n)
        batch = self._prepare_inputs(self._next_probe_batch())
        checkpointed = [layer.gradient_checkpointing for layer in self.decoder.layers] \
            if self.args.checkpoint_inactive else None
        if checkpointed:
            self._set_checkpointed(set(range(n)))
        try:
            with self.accelerator.no_sync(model), self.compute_loss_context_manager(), frozen(model.parameters()):
                # The hooks stay during autograd.grad: layer 0, recomputed, must again turn its frozen attention
                # output into a leaf, or it saves nothing.
                with capture_outputs(self.decoder.attentions) as captured:
                    loss = self.compute_loss(model, batch)
                    grads = torch.autograd.grad(loss, list(captured))
        finally:
            if checkpointed:
                self._set_checkpointed({i for i, c in enumerate(checkpointed) if c})
        return importance_probs(grad_norms(grads))

    def _next_probe_batch(self) -> dict:
        s = self.schedule
        rows, s.probe_epoch, s.probe_pos = self.probe_batches.rows_from(s.probe_epoch, s.probe_pos)
        return self.data_collator(rows)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        save_state(self, output_dir, SCHEDULE_FILE, self.schedule.state_dict())

    def _load_rng_state(self, checkpoint) -> None:
        super()._load_rng_state(checkpoint)
        state = load_state(checkpoint, SCHEDULE_FILE)
        if state:
            self.schedule.load_state_dict(state)
