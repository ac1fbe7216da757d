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
- ``leaf``: pass 1's lowest perturbed layer, where the graph starts at the attention output (post-attention half);
- ``checkpointed``: only the layer input, plus a ``frozen`` layer's worth while it is recomputed in backward.

Pass 2 of T-Vaccine runs its lowest active layer as ``entry``, the other active layers ``full`` and every inactive
layer above the lowest active one ``checkpointed``; nothing below the lowest active layer is recorded. Pass 1 of
Vaccine and T-Vaccine runs with every parameter frozen. On top: the final norm, the float32 log-softmax over the
target positions, and ε (pass 2) or the captured outputs (pass 1), one B×T×H tensor per perturbed layer.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tvaccine.errors import UserError

METHODS = ("sft", "vaccine", "tvaccine")
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
    from tvaccine.models import _hub_error, _hub_kwargs, resolve_model_path

    name = resolve_model_path(model)  # clear errors for a missing local path
    try:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(name, **_hub_kwargs(name))
    except OSError as err:
        raise _hub_error(name, err) from err
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
    components: dict  # bytes: weights, lora_params, lora_grads, optimizer_state, activations, stash, logits
    saved_by_pass: dict  # peak bytes autograd keeps (plus stash), per pass: what tvaccine.profiling measures
    saved_peak: int
    total: int

    def summary(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        gib = lambda b: f"{b / 2**30:8.2f} GiB"  # noqa: E731
        rows = [f"{self.method} on {self.model}: batch {self.batch} × {self.seq} tokens, {self.dtype}"]
        rows += [f"  {name:<16}{gib(value)}" for name, value in self.components.items()]
        rows.append(f"  {'total (peak)':<16}{gib(self.total)}"
                    f"   {'fits' if self.total <= RTX_4090_BYTES else 'does not fit'} in 24 GiB (RTX 4090)")
        rows.append("  saved for backward per pass: "
                    + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in self.saved_by_pass.items()))
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
    attn = n * (2 * q + 2 * kv) * b + n * m.heads * 4
    return (norm * (2 if input_grad else 1) + attn + mlp
            + _lora_saved(m, n, r, b, p, [(h, 3)], train, input_grad)
            + _lora_saved(m, n, r, b, p, [(q, 1)] + mlp_groups, train, True))


def _pass_peak(m: ModelShape, states: list[str | None], n: int, seq: int, b: int, r: int, p: float,
               head: int, stash: int) -> tuple[int, int]:
    """(peak saved bytes, of which head/logits) over a pass: end of forward, or a recomputation in backward."""
    saved = [layer_bytes(m, n, b, r, p, s) if s else 0 for s in states]
    rope = 2 * seq * m.head_dim * b
    live = sum(saved) + head + rope + stash
    peak, peak_head = live, head
    live -= head  # backward starts at the loss and frees the logits first
    for s, size in zip(reversed(states), reversed(saved)):
        if s == "checkpointed" and live + layer_bytes(m, n, b, r, p, "frozen") > peak:
            peak, peak_head = live + layer_bytes(m, n, b, r, p, "frozen"), 0
        live -= size
    return peak, peak_head


def plan(shape: ModelShape, method: str, batch: int, seq: int, dtype: str = "bfloat16", lora_r: int = 8,
         lora_dropout: float = 0.1, num_active_layers: int = 8, target_fraction: float = 1.0,
         active_layers: list[int] | None = None, model: str = "model") -> Plan:
    """Peak memory of one step. ``target_fraction``: share of positions whose next token is a target (the loss
    and the logits cover those only). T-Vaccine's active set defaults to the lowest ``num_active_layers`` layers:
    importance puts layer 0 in almost every draw, so backward reaches the bottom, and the most layers above it run
    checkpointed."""
    if method not in METHODS:
        raise UserError(f"method: unknown '{method}' (use {', '.join(METHODS)})")
    if dtype not in DTYPE_BYTES:
        raise UserError(f"dtype: unknown '{dtype}' (use {', '.join(DTYPE_BYTES)})")
    if batch < 1 or seq < 2:
        raise UserError(f"batch and seq: need batch ≥ 1 and seq ≥ 2 (got {batch} × {seq})")
    if not 0 < target_fraction <= 1:
        raise UserError(f"target_fraction: must be in (0, 1] (got {target_fraction})")
    L, b, n = shape.layers, DTYPE_BYTES[dtype], batch * seq
    if method == "tvaccine":
        active = sorted(active_layers) if active_layers else list(range(min(num_active_layers, L)))
        if not 1 <= num_active_layers <= L or any(not 0 <= a < L for a in active):
            raise UserError(f"num_active_layers: must be between 1 and the model's {L} layers")
    else:
        active = list(range(L))
    keep = round(target_fraction * batch * (seq - 1))
    head = n * shape.hidden * 4 + n * 4 + keep * shape.vocab * 4 + 3 * keep * 8  # final norm, log-softmax, indices
    stash = len(active) * n * shape.hidden * b

    def states(lowest: str, other_active: str) -> list[str | None]:
        lo = active[0]
        return [None if j < lo else lowest if j == lo else other_active if j in active else "checkpointed"
                for j in range(L)]

    by_pass = {}
    if method == "sft":
        by_pass["pass2"] = _pass_peak(shape, states("entry", "full"), n, seq, b, lora_r, lora_dropout, head, 0)
    else:
        by_pass["pass1"] = _pass_peak(shape, states("leaf", "frozen"), n, seq, b, lora_r, lora_dropout, head, stash)
        by_pass["pass2"] = _pass_peak(shape, states("entry", "full"), n, seq, b, lora_r, lora_dropout, head, stash)
    peak_pass = max(by_pass, key=lambda k: by_pass[k][0])
    saved_peak, head_at_peak = by_pass[peak_pass]
    lora = shape.lora_params(lora_r) * ADAPTER_BYTES
    trained = len(active) / L if method == "tvaccine" else 1.0
    components = {
        "weights": shape.params() * b,
        "lora_params": lora,
        "lora_grads": round(lora * trained),
        "optimizer_state": 2 * lora,  # AdamW moments; over a run every layer's LoRA gets them
        "activations": saved_peak - head_at_peak - (stash if method != "sft" else 0),
        "stash": stash if method != "sft" else 0,
        # saved log-softmax plus, while the loss is formed, the logits in the model dtype and their float32 copy
        "logits": head_at_peak + keep * shape.vocab * (4 + b),
    }
    return Plan(model=model, method=method, batch=batch, seq=seq, dtype=dtype, components=components,
                saved_by_pass={k: v[0] for k, v in by_pass.items()}, saved_peak=saved_peak,
                total=sum(components.values()))


def plan_named(model: str, method: str, **kwargs) -> Plan:
    return plan(resolve_shape(model), method, model=model, **kwargs)
