"""seqio tasks for locca. Importing `tasks` registers every task and mixture
(see tasks/registry.py:register_all, idempotent; no disk access)."""

import locca  # noqa: F401  (first: quiets probe noise before TensorFlow loads)
from tasks.registry import register_all

register_all()
