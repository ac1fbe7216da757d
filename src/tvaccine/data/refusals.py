"""A deterministic refusal writer for harmful prompts that come without a refusal.

The alignment stage needs harmful prompt → refusal pairs. The authors use the refusals of
``beavertails_with_refusals_train.json``, which is not available offline; for sources that only have harmful
prompts, this module writes a refusal from a small fixed set of templates. The template is chosen by a hash of
the prompt and ``seed``, so the same prompt always gets the same refusal (a set can be rebuilt from its manifest)
and different prompts get varied refusals (a model trained on one sentence learns to say that sentence, not to
refuse). The texts do not quote the prompt: repeating harmful content inside a refusal would train it too.
"""

from __future__ import annotations

import hashlib

REFUSALS = (
    "I'm sorry, but I can't help with that. It could cause real harm to people, and I won't assist with it.",
    "I can't assist with this request. It asks for something that could hurt others or break the law.",
    "Sorry, I won't help with that. If you are dealing with a difficult situation, I'm happy to talk about "
    "safe and legal options instead.",
    "I'm not able to provide that. Helping with this could put people at risk, so I have to decline.",
    "I must decline this request because it could lead to harm. Is there something else I can help you with?",
    "That's not something I can help with. I don't provide assistance that could be used to harm others.",
    "I'm sorry, but I can't comply. This request involves harmful or unethical activity.",
    "No, I can't help with this. Please consider the safety and wellbeing of everyone involved.",
)


def write_refusal(prompt: str, seed: int = 0) -> str:
    """A refusal for ``prompt``: template number ``sha256(f"{seed}:{prompt}") mod len(REFUSALS)``."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode("utf-8")).digest()
    return REFUSALS[int.from_bytes(digest[:8], "big") % len(REFUSALS)]
