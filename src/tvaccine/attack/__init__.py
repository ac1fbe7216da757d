"""The attack stage: ``config.py`` (its settings), ``rows.py`` (what it trains on), ``run.py`` (``attack``, the
entry point) and ``lisa.py`` (a defense that runs during the attack)."""

from tvaccine.attack.config import AttackConfig
from tvaccine.attack.rows import AttackData
from tvaccine.attack.run import AttackRun, attack, is_finished, load_attacked

__all__ = ["AttackConfig", "AttackData", "AttackRun", "attack", "is_finished", "load_attacked"]
