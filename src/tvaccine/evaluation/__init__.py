"""Evaluation: batched greedy generation, harm judges, task scorers and the ``tvaccine eval`` run
(docs/design.md §3)."""
