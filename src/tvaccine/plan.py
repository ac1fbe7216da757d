"""Predict the peak memory of one alignment step from a model's config alone, without loading weights.

The activation model is an inventory of what autograd saves in a Llama-style decoder layer with LoRA on
q,k,v,o,gate,up,down (measured with ``tvaccine.profiling`` and checked against it in ``tests/test_plan.py``), per
token and per layer state:

- ``full``: the layer's LoRA trains and its input needs a gradient (both RMSNorm inputs in float32 and their
  rsqrt; rotated q, k, v, the attention output and its float32 log-sum-exp; gate, up and SiLU outputs; per LoRA
  module the dropout mask and dropped input in the adapter's dtype and the rank-r A output);
- ``entry``: as ``full`` for the lowest layer in the graph, whose input needs no gradient (no input-norm, no masks
  of q/k/v);
- ``frozen``: a layer whose LoRA does not train but whose input needs a gradient (no dropped inputs, no A outputs);
- ``mlp``: as ``frozen``, but the MLP's LoRA trains (T-Vaccine's inactive layers under ``freeze_scope: attention``);
- ``leaf``: pass 1's lowest perturbed layer, where the graph starts at the attention output (post-attention half);
- ``checkpointed``: only the layer input, plus, while it is recomputed in backward, a layer's worth in the state it
  runs in (``frozen``, ``mlp`` or ``full``).

Pass 2 of T-Vaccine runs its lowest active layer as ``entry``, the other active layers ``full`` and every inactive
layer ``checkpointed``, recomputed as ``mlp`` (under ``freeze_scope: attention``, the default, every layer's MLP LoRA
trains, so the graph starts at layer 0). Pass 1 of Vaccine and T-Vaccine runs with every parameter frozen, and
nothing below the lowest perturbed layer is recorded. On top: the final norm, the float32 log-softmax over the
target positions, and ε (pass 2) or the captured outputs (pass 1), one B×T×H tensor per perturbed layer.

Every other method is a sequence of such passes (``NOTES`` says which, one line per method); its peak is the largest
pass, plus what the step holds outside autograd (noise, hidden states, copies of the adapter), which
``tvaccine.profiling`` does not see and the planner counts from the code. ``tests/test_plan.py`` checks every
method's saved bytes against the profiler on tiny Llamas; the rest of a prediction is modelled. Every
prediction is an upper bound in the data: all positions are targets (``target_fraction`` 1), every RepNoise row
has a harmful partner, side batches (probe, harmful, TR) are as long as the rows.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from tvaccine.errors import UserError

# The 11 methods of `tvaccine align`, and SFT and Vaccine under the Trainer's activation checkpointing of every layer.
METHODS = ("sft", "sft_gc", "vaccine", "vaccine_gc", "tvaccine", "tvaccine-uniform", "tvaccine-topk",
           "tvaccine-no-perturbation", "random-vaccine", "repnoise", "booster", "tar", "tar-tvaccine")
# T-Vaccine and its ablations: S sampled layers perturbed and trained, the other layers checkpointed.
SAMPLED = ("tvaccine", "tvaccine-uniform", "tvaccine-topk", "tvaccine-no-perturbation")
NOTES = {
    "sft": "one forward and backward, every layer's activations",
    "sft_gc": "sft with every layer checkpointed: the layer inputs, plus one layer recomputed in backward",
    "vaccine": "pass 1 (parameters frozen) then pass 2 (as sft), each with ε or the captured outputs, B×T×H a layer",
    "vaccine_gc": "vaccine with every layer checkpointed; pass 1 recomputes layers without weight-gradient tensors",
    "tvaccine": "vaccine's passes over the S active layers, the inactive ones checkpointed; every K steps an "
                "importance pass (probe batch, every layer captured, frozen and checkpointed)",
    "tvaccine-uniform": "tvaccine without the importance pass (layers drawn uniformly)",
    "tvaccine-topk": "as tvaccine (the S most important layers; the planner's lowest S is the costliest set anyway)",
    "tvaccine-no-perturbation": "tvaccine's pass 2 (no ε) and importance pass; no pass 1",
    "random-vaccine": "as sft, plus one B×T×H Gaussian noise tensor a layer, held through backward",
    "repnoise": "harmless and harmful forwards alive together for one backward: 2 × sft, plus per layer two float32 "
                "B×T×H copies (MMD) and the logit lens input; hidden states and MLP outputs held",
    "booster": "three sft passes in turn (harmful at w and at w', alignment); plus two adapter-size copies",
    "tar": "sft-size adversary passes and DPO tamper-resistance passes on 2B rows in turn, then the retain pass; "
           "plus the adversary's AdamW state and copies (up to 5 adapter sizes)",
    "tar-tvaccine": "three sft passes in turn (harmful, alignment at the attacked weights, alignment); plus two "
                    "adapter-size copies",
}
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
ADAPTER_BYTES = 4  # PEFT keeps LoRA weights in float32 on a bf16/fp16 model (autocast_adapter_dtype)
RTX_4090_BYTES = 24 * 2**30


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool = False

    @classmethod
    def from_config(cls, cfg: dict, where: str = "config") -> "ModelShape":
        cfg = cfg.get("text_config", cfg)
        try:
            hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            return cls(hidden=hidden, intermediate=int(cfg["intermediate_size"]),
                       layers=int(cfg["num_hidden_layers"]), heads=heads,
                       kv_heads=int(cfg.get("num_key_value_heads") or heads),
                       head_dim=int(cfg.get("head_dim") or hidden // heads), vocab=int(cfg["vocab_size"]),
                       tied=bool(cfg.get("tie_word_embeddings", False)))
        except KeyError as err:
            raise UserError(f"{where}: missing field {err.args[0]!r}; the planner needs a Llama-style decoder "
                            "config (hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, "
                            "vocab_size)") from err

    def _linears(self) -> list[tuple[int, int]]:
        """(in, out) of q, k, v, o, gate, up, down."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def params(self) -> int:
        per_layer = sum(a * b for a, b in self._linears()) + 2 * self.hidden
        return self.layers * per_layer + self.vocab * self.hidden * (1 if self.tied else 2) + self.hidden

    def lora_params(self, r: int) -> int:
        return self.layers * sum(r * (a + b) for a, b in self._linears())


NAMED = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       vocab_size=32000),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        vocab_size=32000),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=32000),
    "qwen2-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
}


def resolve_shape(model: str) -> ModelShape:
    """A built-in name, a local folder with config.json, or a hub id (config only, never weights)."""
    key = str(model).lower()
    if key in NAMED:
        return ModelShape.from_config(NAMED[key], where=key)
    path = Path(model).expanduser()
    if path.is_dir() or path.suffix == ".json":
        config = path / "config.json" if path.is_dir() else path
        if not config.is_file():
            raise UserError(f"{path}: no config.json in this folder")
        try:
            return ModelShape.from_config(json.loads(config.read_text(encoding="utf-8")), where=str(config))
        except json.JSONDecodeError as err:
            raise UserError(f"{config}: not valid JSON (line {err.lineno}: {err.msg})") from err
    from tvaccine.models import hub_error, hub_kwargs, resolve_model_path

    name = resolve_model_path(model)  # clear errors for a missing local path
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(name, **hub_kwargs(name))
    except OSError as err:
        raise hub_error(name, err) from err
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config()
    return ModelShape.from_config(cfg.to_dict(), where=name)


@dataclass
class Plan:
    model: str
    method: str
    batch: int
    seq: int
    dtype: str
    components: dict  # bytes: weights, lora_params, lora_grads, optimizer_state, activations, stash, held, logits
    saved_by_pass: dict  # peak bytes autograd keeps (plus stash), per pass: what tvaccine.profiling measures
    saved_peak: int
    total: int
    peak_pass: str = ""
    basis: str = ""

    def summary(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        gib = lambda b: f"{b / 2**30:8.2f} GiB"  # noqa: E731
        rows = [f"{self.method} on {self.model}: batch {self.batch} × {self.seq} tokens, {self.dtype}"]
        rows += [f"  {name:<16}{gib(value)}" for name, value in self.components.items()]
        rows.append(f"  {'total (peak)':<16}{gib(self.total)}"
                    f"   {'fits' if self.total <= RTX_4090_BYTES else 'does not fit'} in 24 GiB (RTX 4090)")
        rows.append("  saved for backward per pass: "
                    + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in self.saved_by_pass.items())
                    + f"; peak in {self.peak_pass}")
        rows.append(f"  model: {NOTES[self.method]}")
        rows.append(f"  basis: {self.basis}")
        return "\n".join(rows)


def _lora_saved(m: ModelShape, n: int, r: int, b: int, p: float, groups, weight_grads: bool, input_grad: bool) -> int:
    """Bytes the LoRA branches of ``groups`` [(input width, modules sharing that input)] save for backward."""
    total = 0
    for width, k in groups:
        if p > 0:  # dropout: a mask for the input gradient, the dropped input for the weight gradient
            total += (k * n * width * ADAPTER_BYTES) if input_grad else 0
            total += k * n * (width + r) * ADAPTER_BYTES if weight_grads else 0
        elif weight_grads:  # no dropout: the (cast) input itself, shared by the modules when no cast is needed
            total += (n * width * b if ADAPTER_BYTES == b else k * n * width * ADAPTER_BYTES)
            total += k * n * r * ADAPTER_BYTES
    return total


def layer_bytes(m: ModelShape, n: int, b: int, r: int, p: float, state: str) -> int:
    """Saved bytes of one decoder layer over ``n`` tokens in ``state`` (see the module docstring)."""
    h, i, q, kv = m.hidden, m.intermediate, m.heads * m.head_dim, m.kv_heads * m.head_dim
    if state == "checkpointed":
        return n * h * b
    norm = n * h * 4 + n * 4  # float32 input copy and rsqrt
    mlp = 3 * n * i * b
    mlp_groups = [(h, 2), (i, 1)]
    if state == "leaf":
        return norm + mlp + _lora_saved(m, n, r, b, p, mlp_groups, weight_grads=False, input_grad=True)
    train, input_grad = state in ("full", "entry"), state != "entry"
    mlp_train = train or state == "mlp"
    attn = n * (2 * q + 2 * kv) * b + n * m.heads * 4
    if train and p == 0 and ADAPTER_BYTES == b:  # o_proj's LoRA keeps its input uncast and undropped: that is
        attn -= n * q * b  # the attention output, whose storage SDPA already saves (measured on CPU)
    return (norm * (2 if input_grad else 1) + attn + mlp
            + _lora_saved(m, n, r, b, p, [(h, 3)], train, input_grad)
            + _lora_saved(m, n, r, b, p, [(q, 1)], train, True)
            + _lora_saved(m, n, r, b, p, mlp_groups, mlp_train, True))


def _pass_peak(m: ModelShape, states: list[str | None], n: int, seq: int, b: int, r: int, p: float,
               head: int, stash: int, recompute: str = "frozen") -> tuple[int, int]:
    """(peak saved bytes, of which head/logits) over a pass: end of forward, or a recomputation in backward, where a
    checkpointed layer saves what a ``recompute`` layer saves until its backward has used it."""
    saved = [layer_bytes(m, n, b, r, p, s) if s else 0 for s in states]
    rope = 2 * seq * m.head_dim * b
    live = sum(saved) + head + rope + stash
    peak, peak_head = live, head
    live -= head  # backward starts at the loss and frees the logits first
    # in float32 the recomputed input norm keeps the checkpoint's saved input itself, not a float32 copy of it
    redo = layer_bytes(m, n, b, r, p, recompute) - (n * m.hidden * b if b == 4 else 0)
    for s, size in zip(reversed(states), reversed(saved)):
        if s == "checkpointed" and live + redo > peak:
            peak, peak_head = live + redo, 0
        live -= size
    return peak, peak_head


@dataclass
class _Pass:
    saved: int  # peak bytes autograd keeps, stash included: what tvaccine.profiling reports for the pass
    head: int  # of saved: final norm and log-softmax at that peak
    stash: int  # of saved: ε, captured outputs or a gradient term beside the graph
    held: int  # beside saved, unseen by the profiler: noise, hidden states, copies of the adapter
    keep: int  # target positions, whose logits exist for a moment while the loss is formed


def plan(shape: ModelShape, method: str, batch: int, seq: int, dtype: str = "bfloat16", lora_r: int = 8,
         lora_dropout: float = 0.1, num_active_layers: int = 8, target_fraction: float = 1.0,
         active_layers: list[int] | None = None, probe_batch: int = 1, model: str = "model") -> Plan:
    """Peak memory of one step. ``target_fraction``: share of positions whose next token is a target (the loss
    and the logits cover those only). T-Vaccine's active set defaults to the lowest ``num_active_layers`` layers:
    importance puts layer 0 in almost every draw, so backward reaches the bottom, and the most layers above it run
    checkpointed. ``probe_batch``: rows of T-Vaccine's importance pass."""
    if method not in METHODS:
        raise UserError(f"method: unknown '{method}' (use {', '.join(METHODS)})")
    if dtype not in DTYPE_BYTES:
        raise UserError(f"dtype: unknown '{dtype}' (use {', '.join(DTYPE_BYTES)})")
    if batch < 1 or seq < 2:
        raise UserError(f"batch and seq: need batch ≥ 1 and seq ≥ 2 (got {batch} × {seq})")
    if not 0 < target_fraction <= 1:
        raise UserError(f"target_fraction: must be in (0, 1] (got {target_fraction})")
    L, b, h, n = shape.layers, DTYPE_BYTES[dtype], shape.hidden, batch * seq
    if method in SAMPLED:
        active = sorted(active_layers) if active_layers else list(range(min(num_active_layers, L)))
        if not 1 <= num_active_layers <= L or any(not 0 <= a < L for a in active):
            raise UserError(f"num_active_layers: must be between 1 and the model's {L} layers")
    else:
        active = list(range(L))
    lora = shape.lora_params(lora_r) * ADAPTER_BYTES

    def states(lowest: str, other_active: str, layers=active) -> list[str | None]:
        lo = layers[0]
        return [None if j < lo else lowest if j == lo else other_active if j in layers else "checkpointed"
                for j in range(L)]

    def run(rows: int, layer_states: list, stash: int = 0, held: int = 0, recompute: str = "frozen") -> _Pass:
        """One forward and backward over ``rows`` rows."""
        tokens, keep = rows * seq, round(target_fraction * rows * (seq - 1))
        head = tokens * h * 4 + tokens * 4 + keep * shape.vocab * 4 + 3 * keep * 8  # final norm, log-softmax
        peak, at_peak = _pass_peak(shape, layer_states, tokens, seq, b, lora_r, lora_dropout, head, stash, recompute)
        return _Pass(peak, at_peak, stash, held, keep)

    train, perturb, recompute = states("entry", "full"), states("leaf", "frozen"), "frozen"
    if method in SAMPLED:  # freeze_scope attention: the MLP LoRA of every layer trains, so the graph starts at layer 0
        train = ["checkpointed" if j not in active else "entry" if j == 0 else "full" for j in range(L)]
        recompute = "mlp"
    eps = len(active) * n * h * b  # ε or the captured outputs: one B×T×H tensor per perturbed layer
    everything = ["checkpointed"] * L  # the Trainer's checkpointing; the embeddings' output requires grad
    passes: dict[str, _Pass] = {}
    if method in ("sft", "random-vaccine"):  # random-vaccine: its noise is drawn once and held through backward
        passes["pass2"] = run(batch, train, held=L * n * h * b if method == "random-vaccine" else 0)
    elif method == "sft_gc":
        passes["pass2"] = run(batch, everything, recompute="full")
    elif method == "vaccine_gc":  # pass 1 still reaches every layer's output: the embeddings' output requires grad
        passes["pass1"] = run(batch, everything, stash=eps)
        passes["pass2"] = run(batch, everything, stash=eps, recompute="full")
    elif method in ("vaccine",) + SAMPLED:
        if method in ("tvaccine", "tvaccine-topk", "tvaccine-no-perturbation"):
            # every K steps, before pass 1: every parameter frozen, every layer checkpointed, every output
            # captured (held beside the graph)
            passes["importance"] = run(probe_batch, everything, held=L * probe_batch * seq * h * b)
        if method == "tvaccine-no-perturbation":  # ε is zero: no pass 1, nothing stashed
            passes["pass2"] = run(batch, train, recompute=recompute)
        else:
            passes["pass1"] = run(batch, perturb, stash=eps)
            passes["pass2"] = run(batch, train, stash=eps, recompute=recompute)
    elif method == "repnoise":
        one = run(batch, train)  # the harmless and the harmful forward, alive together until the one backward
        mmd_and_lens = L * (16 * n * h + n * b + one.keep * h * b)  # per layer: 2 float32 B×T×H, mask, lens input
        passes["pass2"] = _Pass(2 * one.saved + mmd_and_lens, 2 * one.head, 0, (2 * L + 1) * n * h * b, one.keep)
    else:  # booster, tar, tar-tvaccine: sft passes one after another; pass 2 saves the update's extra gradient
        # Adapter-size tensors beside the attack passes: the saved weights and a harmful gradient (booster,
        # tar-tvaccine); TAR adds g_TR and its adversary's two AdamW moments.
        copies = {"booster": 2, "tar-tvaccine": 2, "tar": 5}[method]
        passes["attack"] = run(batch, train, held=copies * lora)
        if method == "tar":  # DPO's chosen and rejected answer of each x_tr row: 2B rows (no gradient being formed)
            passes["tamper"] = run(2 * batch, train, held=(copies - 1) * lora)
        passes["pass2"] = run(batch, train, stash=lora)

    def step_bytes(p: _Pass) -> int:  # the pass's share of the total: saved, held, and the logits for a moment
        return p.saved + p.held + p.keep * shape.vocab * (4 + b)

    peak_pass = max(passes, key=lambda k: step_bytes(passes[k]))
    top = passes[peak_pass]
    trained = len(active) / L if method in SAMPLED else 1.0
    components = {
        "weights": shape.params() * b,
        "lora_params": lora,
        "lora_grads": round(lora * trained),
        "optimizer_state": 2 * lora,  # AdamW moments; over a run every layer's LoRA gets them
        "activations": top.saved - top.head - top.stash,
        "stash": top.stash,
        "held": top.held,
        # saved log-softmax plus, while the loss is formed, the logits in the model dtype and their float32 copy
        "logits": top.head + top.keep * shape.vocab * (4 + b),
    }
    basis = "saved bytes checked against tvaccine.profiling on tiny Llamas (tests/test_plan.py)"
    if top.held:
        basis += "; held tensors modelled"
    basis += "; an upper bound in the data (every position a target unless --target-fraction)"
    return Plan(model=model, method=method, batch=batch, seq=seq, dtype=dtype, components=components,
                saved_by_pass={k: v.saved for k, v in passes.items()}, saved_peak=top.saved,
                total=sum(components.values()), peak_pass=peak_pass, basis=basis)


def plan_named(model: str, method: str, **kwargs) -> Plan:
    return plan(resolve_shape(model), method, model=model, **kwargs)


def plans_table(plans: list[Plan]) -> str:
    """One line per method: the predicted peak, its activations and whether it fits in 24 GiB."""
    first = plans[0]
    out = [f"{first.model}: batch {first.batch} × {first.seq} tokens, {first.dtype}. The planner's prediction from the "
           "config, an upper bound in the data.",
           f"{'method':<26}{'peak GiB':>10}{'activations':>13}{'held':>7}  {'24 GiB':<7}peak in"]
    for p in plans:
        out.append(f"{p.method:<26}{p.total / 2**30:>10.2f}{p.components['activations'] / 2**30:>13.2f}"
                   f"{p.components['held'] / 2**30:>7.2f}  {'fits' if p.total <= RTX_4090_BYTES else 'no':<7}"
                   f"{p.peak_pass}")
    return "\n".join(out)


UNITS = {"gib": 2**30, "mib": 2**20, "gb": 10**9, "mb": 10**6}
FIT_SEQS = (256, 512, 1024, 2048)


def parse_size(text: str, option: str = "--fit") -> int:
    """Bytes of a memory size such as '24GiB', '24 GB' or '80000MiB' (a unit is required: GB and GiB differ by 7 %)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*", str(text), re.IGNORECASE)
    if not match or match.group(2).lower() not in UNITS:
        raise UserError(f"{option}: '{text}' is not a memory size; give a number and a unit, GiB, GB, MiB or MB "
                        "(e.g. 24GiB)")
    size = round(float(match.group(1)) * UNITS[match.group(2).lower()])
    if size <= 0:
        raise UserError(f"{option}: '{text}' must be more than zero")
    return size


def largest_batch(shape: ModelShape, method: str, seq: int, budget: int, **kwargs) -> int:
    """The largest batch of ``seq``-token rows whose predicted peak is at most ``budget`` bytes; 0 if one row does
    not fit. The peak grows with the batch, so a doubling search and a bisection find it."""
    def fits(batch: int) -> bool:
        return plan(shape, method, batch, seq, **kwargs).total <= budget

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


@dataclass
class Fit:
    model: str
    dtype: str
    budget: int
    seqs: list
    rows: list  # {method, seq, batch, peak (bytes at that batch, None when batch is 0)}

    def summary(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """One row per method, one column per sequence length: the largest batch that fits (0: not one row)."""
        out = [f"Largest batch (rows of SEQ tokens) whose predicted peak fits in {self.budget / 2**30:.2f} GiB "
               f"({self.model}, {self.dtype}; 0: not one row). The planner's prediction from the config, an upper "
               "bound in the data."]
        out.append(f"{'method':<26}" + "".join(f"{'seq ' + str(s):>11}" for s in self.seqs))
        by_method: dict[str, list] = {}
        for row in self.rows:
            by_method.setdefault(row["method"], []).append(row)
        for method, rows in by_method.items():
            out.append(f"{method:<26}" + "".join(f"{r['batch']:>11}" for r in rows))
        return "\n".join(out)


def fit(shape: ModelShape, methods, budget: int, seqs=FIT_SEQS, model: str = "model", dtype: str = "bfloat16",
        **kwargs) -> Fit:
    rows = []
    for method in methods:
        for seq in seqs:
            batch = largest_batch(shape, method, seq, budget, dtype=dtype, **kwargs)
            peak = plan(shape, method, batch, seq, dtype=dtype, **kwargs).total if batch else None
            rows.append({"method": method, "seq": seq, "batch": batch, "peak": peak})
    return Fit(model=model, dtype=dtype, budget=budget, seqs=list(seqs), rows=rows)
