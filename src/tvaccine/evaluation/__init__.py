"""Evaluation: batched greedy generation, harm judges, task scorers and the ``tvaccine eval`` run (DESIGN.md §3)."""
