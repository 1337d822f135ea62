"""Tasks over the official dataset files (filled in with the readers)."""


def register() -> None:
    pass


def register_pretrain() -> None:
    pass
