"""seqio tasks for locca. Importing `tasks` registers every task and mixture
(`register_all`, idempotent; no disk access)."""

import locca  # noqa: F401  (first: quiets probe noise before TensorFlow loads)
from tasks import official_tasks, pretrain_tasks, shapes_tasks


def register_all() -> None:
    """Registers every locca task and mixture (idempotent: a registered name is kept)."""
    shapes_tasks.register()
    official_tasks.register()
    pretrain_tasks.register()
    official_tasks.register_pretrain()


register_all()
