"""The alignment stage's settings: what every method's config (``tvaccine.methods``) builds on."""

from __future__ import annotations

from dataclasses import dataclass, field

from tvaccine.lora import LoraTrainingConfig


@dataclass
class AlignmentConfig(LoraTrainingConfig):
    """Alignment defaults from T-Vaccine §5.1 (LoRA r 8 on q,k,v,o,gate,up,down; AdamW lr 1e-3, weight decay 0.1,
    cosine schedule, warm-up 0.1, 20 epochs, batch 10, max length 200)."""

    output_dir: str | None = "runs/align"
    layers_path: str | None = field(default=None, metadata={"help": "dotted path of the decoder layer list"})
    attention_attr: str | None = field(default=None, metadata={"help": "attribute of each layer's attention"})

    method = "sft"

    def check_model(self, model):
        """Also finds the decoder layers, which the perturbation methods need; returns them."""
        from tvaccine.layers import find_decoder_layers

        super().check_model(model)
        return find_decoder_layers(model, self.layers_path, self.attention_attr)

    def needs_harmful_data(self) -> bool:
        """Whether the method trains or probes on harmful prompt → harmful answer rows (``--harmful-data``)."""
        return False

    def harmful_data_limit(self) -> int | None:
        """How many harmful rows to read (None: all)."""
        return None
