"""t5x-style gin flags shared by every entry point, and the check that every
gin macro set is used (a typo in ``--gin.NAME=VALUE`` is an error, not a new macro)."""

import functools
import itertools
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

REPO_GIN_DIR = pathlib.Path(__file__).resolve().parents[1] / "gin"


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


class GinConfigError(ValueError):
    """A gin config that would silently do something else than asked (e.g. a typo)."""


_REF = re.compile(r"%([A-Za-z_][\w.]*)")
_DEF = re.compile(r"^\s*([A-Za-z_]\w*)\s*=", re.MULTILINE)


def _gin_text(path) -> str:
    try:
        text = pathlib.Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _scan(files: Iterable) -> tuple[frozenset, frozenset]:
    """(macros referenced as ``%NAME``, macros defined as ``NAME = ...``) in gin files."""
    refs, defs = set(), set()
    for f in files:
        text = _gin_text(f)
        refs.update(_REF.findall(text))
        defs.update(_DEF.findall(text))
    return frozenset(refs), frozenset(defs)


@functools.lru_cache(maxsize=8)
def _scan_tree(root: str) -> tuple[frozenset, frozenset]:
    return _scan(sorted(pathlib.Path(root).rglob("*.gin")))


def _macro_refs(value) -> set[str]:
    """Names of the macros (``%NAME``) referenced anywhere in a binding value."""
    from gin import config as gin_config

    names = set()
    for v in gin_config._iterate_flattened_values(value):
        if isinstance(v, gin_config.ConfigurableReference) and (
            v.configurable.wrapped is gin_config.macro
        ):
            names.add(v.config_key[0])
    return names


def unused_gin_macros() -> list[str]:
    """Macros of the parsed gin config that no binding uses (directly or through
    a used macro), sorted."""
    from gin import config as gin_config

    macros, used = {}, set()
    for (scope, selector), params in gin_config._CONFIG.items():
        refs = _macro_refs(params)
        if selector == "gin.macro":
            macros[scope] = refs
        else:
            used |= refs
    todo = list(used)
    while todo:  # a macro used by a used macro is used
        for ref in macros.get(todo.pop(), ()):
            if ref not in used:
                used.add(ref)
                todo.append(ref)
    return sorted(set(macros) - used)


def check_gin_config(gin_files: Sequence[str] = (), search_paths: Sequence[str] = ()) -> None:
    """Raises :class:`GinConfigError` naming each gin macro that is set but used
    by nothing. Call right after parsing, before any work starts.

    ``--gin.TRAIN_STEPZ=3`` parses as a new macro and would otherwise leave
    ``TRAIN_STEPS`` as it was. A macro this job leaves unused is still accepted
    when some gin file uses it (``%NAME`` in the repository's ``gin/`` tree,
    in ``gin_files`` or under the user's ``search_paths``: e.g. a task file's
    ``LABEL_SMOOTHING`` read by fine-tuning but not by eval) or the
    repository's gin files define it (the demo's budget macros, read by code).
    Bindings of an unknown configurable or parameter are gin's own parse
    errors already (a configurable taking ``**kwargs`` passes extra
    parameters to its callee, which rejects unknown ones when called).
    """
    import difflib

    from gin import config as gin_config

    unused = unused_gin_macros()
    if not unused:
        return
    repo_refs, repo_defs = _scan_tree(str(REPO_GIN_DIR))
    user = [f for f in gin_files if os.path.isfile(f)]
    for p in search_paths:
        if os.path.isdir(p) and os.path.abspath(p) != os.path.abspath("."):
            user += itertools.islice(pathlib.Path(p).rglob("*.gin"), 2000)  # bounded scan
    user_refs, _ = _scan(user)
    unknown = [m for m in unused if m not in repo_refs | repo_defs | user_refs]
    if not unknown:
        return
    defined = {scope for scope, selector in gin_config._CONFIG if selector == "gin.macro"}
    candidates = sorted((defined | repo_refs | user_refs) - set(unknown))
    names = []
    for name in unknown:
        close = difflib.get_close_matches(name, candidates, n=1)
        names.append(f"{name} (did you mean {close[0]}?)" if close else name)
    raise GinConfigError(
        f"gin macro{'s' if len(unknown) > 1 else ''} set but used by nothing: "
        f"{', '.join(names)}. A --gin.NAME=VALUE flag (or NAME = VALUE line) must name a "
        "macro that a gin file uses as %NAME, or bind a parameter "
        "(--gin.module.function.param=VALUE); fix or remove it"
    )
