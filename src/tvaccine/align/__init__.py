"""The alignment stage: ``config.py`` (the settings every method builds on), ``run.py`` (``align``, the entry point).
The methods themselves (a config and a Trainer each) are in ``tvaccine.methods``."""

from tvaccine.align.config import AlignmentConfig
from tvaccine.align.run import AlignmentData, align, is_finished

__all__ = ["AlignmentConfig", "AlignmentData", "align", "is_finished"]
