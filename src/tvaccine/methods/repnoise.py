"""RepNoise (Rosati et al., "Representation Noising: A Defence Mechanism Against Harmful Finetuning", NeurIPS 2024).

Each training row pairs a harmless sequence (harmful prompt → refusal) with a harmful one (the same prompt →
harmful answer). The loss on a batch is

    CE(harmless) + β · MMD(harmful representations, Gaussian noise) − α · log(1 + L_harm)

- MMD: at every decoder layer, the MLP output of the harmful sequence, flattened per sequence, against standard
  normal noise of the same shape; positions outside the answer are zeroed in both; Gaussian kernel with five
  bandwidths around the mean pairwise distance; averaged over the layers (all as the authors' ``loss.py``).
- L_harm: the harmful answer's cross-entropy read out through the logit lens — the final norm and ``lm_head`` on
  the embeddings and on each layer's output, the last readout being the model's own logits — averaged over those
  L + 1 readouts. Minimising −log(1 + L_harm) pushes the harmful answer's likelihood down at every depth.
- Masks: the positions of the prefix the two token sequences share (the prompt, and any answer tokens they begin
  with alike) carry no loss in any term, for the harmless CE as well (the original masks that one the same way);
  prompt tokens are never targets, also where two prompts that match as text tokenize differently.

Cost per step: two forwards (harmless; harmful with hidden states, plus L + 1 logit-lens projections of the answer
positions only) and one backward. With ``checkpoint_lens`` each readout's B×T×V logits are recomputed in backward
instead of kept (one more ``lm_head`` projection per layer, a fraction of the memory). The lens dominates on
models whose ``lm_head`` is a large share of the weights: on SmolLM2-135M (vocabulary 49k) a step cost 4–15 SFT
steps on a busy 2-core CPU; on Llama-2-7B the L + 1 projections cost about two thirds of a forward per answer
token.

Alignment rows without a harmful partner (benign rows, prompts absent from the harmful file) train on the harmless
CE alone; how many there are is printed when the data is built.

Where the authors' code and T-Vaccine's copy of it differ from this implementation:

- Pairing: T-Vaccine's trainer draws a random harmful batch for each alignment batch, so the "shared prefix" is
  only the template. Here rows are paired by prompt text (instruction + input).
- Mask: the original marks the positions where the two padded sequences hold different tokens, which also drops
  later positions that match by chance and counts padding facing text. Here: the shared token prefix.
- CE: the original's masked CE zeroes the logits before the first answer token (that token then costs a constant
  log V) and drops token id 0. Here: plain cross-entropy on the target positions.
- L_harm: the original sums the final CE and L + 1 lens CEs (the last applying the final norm twice) and divides
  by L + 1. Here: the mean of L + 1 readouts, the last being the model's own logits.
- MMD distances come from the Gram matrix instead of an expanded (2B)²×T·D tensor (same values).

Defaults follow T-Vaccine's runs of RepNoise (α 0.1, β 0.001, batch 8, max length 100) on the shared alignment
settings; the authors' ``loss.py`` defaults to α 1, β 0.001. The logit lens calls the final norm and ``lm_head``
outside the model's forward, which sharded engines (FSDP, ZeRO-3) do not gather parameters for.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import Trainer

from tvaccine.align.config import AlignmentConfig
from tvaccine.data.tokenize import IGNORE_INDEX, CausalCollator, encode_row
from tvaccine.errors import UserError
from tvaccine.layers import find_decoder_layers, unwrap
from tvaccine.methods.auxiliary import StepMeans, refuse_sharded_weights
from tvaccine.methods.loss import TargetPositionsLoss, target_positions
from tvaccine.perturb import capture_outputs

HARMFUL = "harmful_"  # prefix of the harmful half's keys in a batch
# Where Hugging Face blocks keep their MLP, and where the final norm sits beside the block list.
MLP_ATTRS = ("mlp", "feed_forward", "ffn")
FINAL_NORM_ATTRS = ("norm", "ln_f", "final_layer_norm", "final_norm")


@dataclass
class RepNoiseConfig(AlignmentConfig):
    alpha: float = field(default=0.1, metadata={
        "help": "α, weight of −log(1 + harmful loss) (T-Vaccine's runs 0.1; the authors' code 1)"})
    beta: float = field(default=0.001, metadata={
        "help": "β, weight of the MMD to Gaussian noise (T-Vaccine's runs and the authors' code 0.001)"})
    checkpoint_lens: bool = field(default=True, metadata={
        "help": "recompute each layer's logit-lens logits in backward instead of keeping them (less memory, "
                "one more lm_head projection of the answer tokens per layer)"})
    mlp_attr: str | None = field(default=None, metadata={
        "help": "attribute of each decoder layer's MLP, whose output is noised (default: mlp, feed_forward, ffn)"})
    final_norm_path: str | None = field(default=None, metadata={
        "help": "dotted path of the final norm used by the logit lens (default: found beside the layer list)"})
    per_device_train_batch_size: int = 8
    max_length: int = field(default=100, metadata={"help": "tokens per row (prompt + answer)"})

    method = "repnoise"

    def __post_init__(self):
        super().__post_init__()
        self._check(self.alpha >= 0, "alpha", "must be non-negative")
        self._check(self.beta >= 0, "beta", "must be non-negative")

    def needs_harmful_data(self) -> bool:
        return True  # the harmful halves of the pairs


# ---------------------------------------------------------------------------------------------------------- loss


def mmd(x: torch.Tensor, y: torch.Tensor, kernel_mul: float = 2.0, kernel_num: int = 5) -> torch.Tensor:
    """Biased squared MMD between samples ``x`` (n×d) and ``y`` (m×d), as in the authors' code.

    Gaussian kernel summed over ``kernel_num`` bandwidths ``b·kernel_mul^k`` centred on the mean pairwise squared
    distance of the pooled samples (not differentiated: it only sets the scale).
    """
    z = torch.cat([x, y]).float()
    sq = z.pow(2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min(0)
    n = z.shape[0]
    base = dist.detach().sum() / (n * n - n) / kernel_mul ** (kernel_num // 2)
    k = sum(torch.exp(-dist / (base * kernel_mul**i)) for i in range(kernel_num))
    nx = x.shape[0]
    return k[:nx, :nx].mean() + k[nx:, nx:].mean() - 2 * k[:nx, nx:].mean()


def noise_mmd(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MMD between one layer's representations (B×T×D, ``mask`` B×T of answer positions) and N(0, I) noise of
    the same shape; both zeroed outside the mask and flattened per sequence."""
    keep = mask.unsqueeze(-1).to(hidden.dtype)
    h = hidden * keep
    noise = torch.randn_like(h) * keep
    return mmd(h.flatten(1), noise.flatten(1))


def repnoise_loss(harmless_ce, noise, harmful, alpha: float, beta: float):
    """CE(harmless) + β·MMD − α·log(1 + L_harm); the 1 (the original's) keeps the log finite as L_harm → 0."""
    return harmless_ce + beta * noise - alpha * torch.log1p(harmful)


# ---------------------------------------------------------------------------------------------------------- data


def shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pair_encoded(harmless: dict, harmful: dict) -> dict | None:
    """One training row from two encoded rows ({input_ids, labels}) of the same prompt: the positions of their
    shared token prefix are masked in both; None if either has no target left after it."""
    p = shared_prefix(harmless["input_ids"], harmful["input_ids"])

    def masked(labels):
        return [IGNORE_INDEX] * min(p, len(labels)) + list(labels[p:])

    a, b = masked(harmless["labels"]), masked(harmful["labels"])
    if all(x == IGNORE_INDEX for x in a) or all(x == IGNORE_INDEX for x in b):
        return None
    return {"input_ids": list(harmless["input_ids"]), "labels": a,
            HARMFUL + "input_ids": list(harmful["input_ids"]), HARMFUL + "labels": b}


@dataclass
class Pairs:
    rows: list[dict]
    paired: int = 0
    no_partner: int = 0  # alignment rows without a harmful row of the same prompt (e.g. benign rows)
    no_difference: int = 0  # nothing left after the shared prefix (within max_length)
    dropped: int = 0  # alignment rows with no answer token within max_length
    harmful_unused: int = 0


def prompt_key(row: dict) -> tuple[str, str]:
    return row["instruction"].strip(), (row.get("input") or "").strip()


def pair_rows(tokenizer, refusals: list[dict], harmful: list[dict], max_length: int) -> Pairs:
    """One row per alignment row, its harmful partner the harmful row with the same prompt (instruction + input),
    wherever it sits in its file. Several refusals of one prompt take its harmful answers in turn. Rows without a
    partner keep only their refusal (they contribute to the harmless CE alone)."""
    by_prompt: dict[tuple, list[dict]] = defaultdict(list)
    for row in harmful:
        by_prompt[prompt_key(row)].append(row)
    seen: dict[tuple, int] = defaultdict(int)
    used: set[tuple] = set()
    out = Pairs([])
    for row in refusals:
        enc = encode_row(tokenizer, row, max_length)
        if enc is None:
            out.dropped += 1
            continue
        key = prompt_key(row)
        partners = by_prompt.get(key)
        pair = None
        if partners:
            i = seen[key] % len(partners)
            seen[key] += 1
            used.add((key, i))
            harm = encode_row(tokenizer, partners[i], max_length)
            pair = pair_encoded(enc, harm) if harm is not None else None
            out.no_difference += pair is None
        else:
            out.no_partner += 1
        out.paired += pair is not None
        out.rows.append(pair or enc)
    out.harmful_unused = len(harmful) - len(used)
    return out


@dataclass
class PairedCollator:
    """Pads the harmless half (``input_ids``, ``labels``, ``attention_mask``) of every row and, under the
    ``harmful_`` keys, the harmful half of the rows that have one."""

    pad_token_id: int

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        pad = CausalCollator(self.pad_token_id)
        batch = pad([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        harmful = [{"input_ids": f[HARMFUL + "input_ids"], "labels": f[HARMFUL + "labels"]}
                   for f in features if HARMFUL + "input_ids" in f]
        if harmful:
            batch.update({HARMFUL + k: v for k, v in pad(harmful).items()})
        return batch


# ------------------------------------------------------------------------------------------------------- trainer


def _child(module: nn.Module, names: Sequence[str]) -> nn.Module | None:
    for name in names:
        child = getattr(module, name, None)
        if isinstance(child, nn.Module):
            return child
    return None


class RepNoiseTrainer(TargetPositionsLoss, Trainer):
    # Every term is a mean over its micro-batch (as in the original); the Trainer divides by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        refuse_sharded_weights(self, "repnoise")
        a = self.args
        decoder = find_decoder_layers(self.model, a.layers_path, a.attention_attr)
        base = unwrap(self.model)
        names = (a.mlp_attr,) if a.mlp_attr else MLP_ATTRS
        self.mlps = [_child(layer, names) for layer in decoder.layers]
        if any(m is None for m in self.mlps):
            raise UserError(f"mlp_attr: the decoder layers of {type(base).__name__} have no sub-module "
                            f"{' / '.join(names)}; name it with mlp_attr")
        if a.final_norm_path:
            try:
                self.final_norm = base.get_submodule(a.final_norm_path)
            except AttributeError as err:
                raise UserError(f"final_norm_path: {type(base).__name__} has no '{a.final_norm_path}'") from err
        else:  # the decoder that holds the block list holds the final norm too (model.norm, transformer.ln_f, ...)
            parent = base.get_submodule(decoder.path.rpartition(".")[0])
            self.final_norm = _child(parent, FINAL_NORM_ATTRS)
            if self.final_norm is None:
                raise UserError(f"final_norm_path: no final norm beside {decoder.path} in {type(base).__name__}; "
                                "name it with final_norm_path")
        self.head = base.get_output_embeddings()
        self.metrics = StepMeans()

    @classmethod
    def trainer_inputs(cls, config, data) -> dict:
        pairs = pair_rows(data.tokenizer, data.records(), data.harmful_records(), data.max_length)
        print(f"repnoise: {pairs.paired} of {len(pairs.rows)} alignment rows paired with a harmful answer to the "
              f"same prompt; {pairs.no_partner} without a partner and {pairs.no_difference} with nothing after "
              f"the shared prefix train on the refusal alone; {pairs.harmful_unused} harmful rows unused"
              + (f"; {pairs.dropped} rows dropped (no answer token within max_length {data.max_length})"
                 if pairs.dropped else ""))
        if not pairs.paired:
            raise UserError(f"{data.data} and {data.harmful_data}: no alignment row has a harmful row with the same "
                            "prompt (instruction + input); RepNoise pairs them by prompt")
        return {"train_dataset": pairs.rows, "data_collator": PairedCollator(data.tokenizer.pad_token_id)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        harmless = {k: v for k, v in inputs.items() if not k.startswith(HARMFUL)}
        ce = super().compute_loss(model, harmless, return_outputs)
        if return_outputs or HARMFUL + "input_ids" not in inputs:
            return ce
        noise, harmful = self.harmful_terms(model, {k[len(HARMFUL):]: v for k, v in inputs.items()
                                                    if k.startswith(HARMFUL)})
        self.metrics.add(**{"repnoise/harmless_ce": ce.item(), "repnoise/mmd": noise.item(),
                            "repnoise/harmful_loss": harmful.item()})
        return repnoise_loss(ce, noise, harmful, self.args.alpha, self.args.beta)

    def harmful_terms(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(MMD averaged over the layers, L_harm) on the harmful half of the batch."""
        # lm_head sees the answer positions only: B×T×V logits are never formed
        with target_positions(self.head, batch["labels"]) as (keep, y), capture_outputs(self.mlps) as mlp_out:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        output_hidden_states=True)
        answer = batch["labels"] != IGNORE_INDEX
        noise = sum(noise_mmd(h, answer) for h in mlp_out) / len(mlp_out)
        # hidden_states: the embeddings, then each layer's output; the last is already normed (the model's logits)
        readouts = [F.cross_entropy(out.logits.float(), y)]
        for h in out.hidden_states[:-1]:
            h = h[keep]
            if self.args.checkpoint_lens:
                readouts.append(checkpoint(self._lens_ce, h, y, use_reentrant=False))
            else:
                readouts.append(self._lens_ce(h, y))
        return noise, sum(readouts) / len(readouts)

    def _lens_ce(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.head(self.final_norm(h)).float(), y)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # training logs: the mean of each term since the last log
            logs.update(self.metrics.pop())
        super().log(logs, start_time)
