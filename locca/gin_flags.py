"""t5x-style gin flags shared by every entry point."""

from collections.abc import Sequence


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
    """``--gin.NAME=VALUE`` -> ``--gin_bindings=NAME = VALUE`` (as t5x)."""
    out = []
    for arg in argv:
        if arg.startswith("--gin."):
            body = arg[len("--gin.") :]
            if "=" not in body:
                raise ValueError(f"gin flag {arg!r} needs the form --gin.NAME=VALUE")
            name, value = body.split("=", 1)
            out.append(f"--gin_bindings={name} = {value}")
        else:
            out.append(arg)
    return out
