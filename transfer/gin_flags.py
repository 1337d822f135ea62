"""The one gin setup of every entry point: t5x-style flags, parsing, registration,
the saved config and the check that every gin macro set is used.

Gin lives on the top floor only (``transfer/``: the jobs and their entry points);
the library (``locca/``), ``tasks/`` and ``checkpoints/`` never import it
(tests/test_import_graph.py checks). Every entry point goes through here:

* flags: ``--gin_file`` (repeatable), ``--gin.NAME=VALUE`` (rewritten to
  ``--gin_bindings``, as t5x), ``--gin_search_paths`` (searched before the
  repository's ``gin/`` folder, the repository root and the working directory);
* :func:`parse_gin`: files (found as given, else under a search path; a missing
  one is a ``FileNotFoundError`` naming it) and bindings, then
  :func:`check_gin_config` (a typo in ``--gin.NAME=VALUE`` is an error, not a
  new macro);
* :func:`register_configurable`: ``gin.external_configurable`` that tolerates an
  earlier registration (several jobs share pieces);
* :func:`run`: absl ``app.run`` with the flags parsed before ``main`` and one
  ``error:`` line per failure (``locca/cli.py``);
* :func:`write_gin_config`: ``model_dir/config.gin`` (process 0, atomic).
"""

import difflib
import functools
import itertools
import os
import pathlib
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax

import gin
from gin import config as gin_config
from locca import cli
from locca.io_utils import atomic_write_text

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REPO_GIN_DIR = REPO_ROOT / "gin"
DEFAULT_GIN_SEARCH_PATHS = (str(REPO_GIN_DIR), str(REPO_ROOT), ".")


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


def define_gin_flags() -> None:
    """Defines --gin_file, --gin_bindings, --gin_search_paths (idempotent)."""
    from absl import flags

    if "gin_file" in flags.FLAGS:
        return
    flags.DEFINE_multi_string("gin_file", [], "Gin config files (repeatable).")
    flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings; also --gin.NAME=VALUE.")
    flags.DEFINE_list(
        "gin_search_paths",
        [],
        "Extra folders where gin files (and their includes) are searched, "
        "before the repository's gin/ folder and the working directory.",
    )


def find_gin_file(path: str, search_paths: Sequence[str] = ()) -> str | None:
    """``path`` as given when it exists, else the first ``search_path/path``; None if neither."""
    if os.path.exists(path):
        return path
    for d in [*search_paths, *DEFAULT_GIN_SEARCH_PATHS]:
        cand = os.path.join(d, path)
        if os.path.exists(cand):
            return cand
    return None


def parse_gin(
    gin_files: Sequence[str],
    gin_bindings: Sequence[str] = (),
    gin_search_paths: Sequence[str] = (),
) -> None:
    """Parses gin files and bindings (search paths first), then :func:`check_gin_config`.

    The job's configurables must be registered before (its ``register_configurables``).
    """
    paths = [*gin_search_paths, *DEFAULT_GIN_SEARCH_PATHS]
    for path in paths:
        gin.add_config_file_search_path(path)
    files = []
    for f in gin_files:
        found = find_gin_file(f, gin_search_paths)
        if found is None:
            raise FileNotFoundError(f"gin file {f!r} not found (search paths: {paths})")
        files.append(found)
    gin.parse_config_files_and_bindings(
        files, list(gin_bindings), finalize_config=False, skip_unknown=False
    )
    check_gin_config(files, gin_search_paths)  # a typo'd --gin.NAME is an error


def register_configurable(fn, name: str, module: str) -> None:
    """``gin.external_configurable`` that tolerates an earlier registration of ``name``."""
    try:
        gin.external_configurable(fn, name, module=module)
    except ValueError as e:  # already registered (e.g. by another entry point)
        if "already" not in str(e) and "exists" not in str(e):
            raise


def run(main: Callable[[list[str]], Any], register_configurables: Callable[[], None]) -> None:
    """absl ``app.run`` with gin flags parsed before ``main(argv)``; a failure
    is one ``error:`` line and exit status 1 (``--verbose``: the traceback;
    ``--skip_missing_images``: skip and count records without a readable
    image; see locca/cli.py). ``register_configurables``: the job's gin
    registration (e.g. ``transfer.train.register_configurables``)."""
    from absl import app, flags

    define_gin_flags()
    register_configurables()

    def parser(argv):
        return flags.FLAGS(rewrite_gin_args(argv))

    def wrapped(argv):
        cli.quiet_library_info()
        parse_gin(flags.FLAGS.gin_file, flags.FLAGS.gin_bindings, flags.FLAGS.gin_search_paths)
        return main(argv)

    cli.guard(app.run, wrapped, argv=cli.take_cli_options(sys.argv), flags_parser=parser)


def write_gin_config(model_dir: str | None, name: str = "config.gin") -> None:
    """``model_dir/name``: the operative gin config (process 0; atomic; no-op
    without a dir or when gin configured nothing, e.g. a job called from Python)."""
    text = gin.config_str()
    if not model_dir or jax.process_index() != 0 or not text.strip():
        return
    os.makedirs(model_dir, exist_ok=True)
    atomic_write_text(os.path.join(model_dir, name), text)


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
