"""The causal-LM loss computed on the target positions only.

With prompt tokens masked to -100, most positions of an alignment row carry no loss, yet the model would still
project every position to the vocabulary and keep a full B×T×V float32 log-softmax for backward: the largest
single activation of a small model (49152 × 4 bytes per token for SmolLM2). Selecting the positions whose next
token is a target before ``lm_head`` gives the same loss (the model's own loss function, fed ``shift_labels``) at
a fraction of the memory and of the ``lm_head`` work. Evaluation (``return_outputs``), label smoothing and custom
loss functions need the full logits and take the Trainer's path unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch.nn.functional as F

from tvaccine.data.tokenize import IGNORE_INDEX
from tvaccine.layers import unwrap


@contextmanager
def target_positions(head, labels):
    """Within the block, ``head`` (the output embeddings) projects only the positions whose next token is a target.

    Yields (keep, targets): the B×T mask of those positions and their next tokens, in the order of the head's rows.
    Used by the loss below, TAR's tamper-resistance losses and RepNoise's harmful terms.
    """
    targets = labels[:, 1:]
    keep = F.pad(targets != IGNORE_INDEX, (0, 1), value=False)  # position t predicts token t + 1
    handle = head.register_forward_pre_hook(lambda module, args: (args[0][keep], *args[1:]))
    try:
        yield keep, targets[targets != IGNORE_INDEX]
    finally:
        handle.remove()


class TargetPositionsLoss:
    """Mixin for a ``transformers.Trainer`` subclass (list it first)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        head = unwrap(model).get_output_embeddings()
        if return_outputs or labels is None or head is None or self.label_smoother is not None \
                or self.compute_loss_func is not None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        with target_positions(head, labels) as (_, targets):
            inputs = {**inputs, "shift_labels": targets}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
