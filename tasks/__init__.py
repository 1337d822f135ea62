"""seqio tasks for locca. Importing `tasks` registers every task and mixture
(see tasks/registry.py:register_all, idempotent; no disk access)."""

from tasks.registry import register_all

register_all()
