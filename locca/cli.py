"""One error wrapper for every command-line entry point.

A failing command prints one line on stderr, ``error: <what>: <message>``,
where the message names the file / record / what was expected (the library's
errors are written that way) and, for a TensorFlow error raised inside a
tf.data pipeline, is the original Python error with the TensorFlow wrapping
(``{{function_node __wrapped__IteratorGetNext...}}``, ``[Op:...]``, the
embedded traceback) stripped. The command exits with status 1 (130 on
Ctrl-C). The full traceback is printed only with ``--verbose`` or
``LOCCA_DEBUG=1``.

Options every entry point accepts (removed from argv before its own parser):
  --verbose               full tracebacks (same as LOCCA_DEBUG=1)
  --skip_missing_images   skip (count and report) records whose image is missing
                          or not a readable image (same as LOCCA_SKIP_MISSING_IMAGES=1)
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

DEBUG_ENV = "LOCCA_DEBUG"
SKIP_ENV = "LOCCA_SKIP_MISSING_IMAGES"
_TRUE = ("1", "true", "yes", "on")

_PY_ERROR = re.compile(
    r"^\s*(?:\{\{[^}]*\}\}\s*)?([A-Za-z_][\w.]*(?:Error|Exception|Exit)): ?(.*)$", re.MULTILINE
)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in _TRUE


def take_cli_options(argv: Sequence[str]) -> list[str]:
    """Removes ``--verbose`` / ``--skip_missing_images`` from ``argv`` (setting
    ``LOCCA_DEBUG`` / ``LOCCA_SKIP_MISSING_IMAGES``); returns the rest."""
    out = []
    for a in argv:
        if a in ("--verbose", "--debug"):
            os.environ[DEBUG_ENV] = "1"
        elif a == "--skip_missing_images":
            os.environ[SKIP_ENV] = "1"
        else:
            out.append(a)
    return out


def _is_tf_error(exc: BaseException) -> bool:
    return any(
        c.__module__.startswith("tensorflow") and c.__name__.endswith("Error")
        for c in type(exc).__mro__
    )


def _clean(text: str) -> str:
    text = re.sub(r"\{\{[^}]*\}\}", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\](\s*name:\s*\S*)?", "", text)
    text = re.sub(r"\s*\[\[\{\{node [^]]*\]\]", "", text)
    return text.strip()


def unwrap(exc: BaseException) -> tuple[str, str]:
    """(error type name, message) of ``exc``; for a TensorFlow error carrying a
    Python error raised inside tf.data, the innermost Python error."""
    if _is_tf_error(exc):
        msg = getattr(exc, "message", None) or str(exc)
        found = _PY_ERROR.findall(msg)
        if found:
            name, text = found[-1]
            return name.rsplit(".", 1)[-1], _clean(text)
        return type(exc).__name__, _clean(msg)
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return type(exc).__name__, exc.args[0]  # str(KeyError) would quote the message
    return type(exc).__name__, str(exc)


def original_error(exc: BaseException) -> BaseException:
    """``exc``, or for a TensorFlow-wrapped Python error a builtin exception of
    the original type with the clean message (``except FileNotFoundError``
    then works), chained to ``exc``."""
    if not _is_tf_error(exc):
        return exc
    name, text = unwrap(exc)
    cls = getattr(__import__("builtins"), name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return exc
    new = cls(text)
    new.__cause__ = exc
    return new


def describe(exc: BaseException) -> str:
    """One line: ``<ErrorType>: <message>`` (message lines joined with ' | ')."""
    name, text = unwrap(exc)
    loc = exc.args[1] if isinstance(exc, SyntaxError) and len(exc.args) > 1 else None
    if hasattr(loc, "line_content"):  # a gin parse error: say where and what
        where = f"file {loc.filename}" if loc.filename else "bindings (--gin.NAME=VALUE flags)"
        text = f"{exc.args[0]} in gin {where} line {loc.line_num}: {loc.line_content.strip()!r}"
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and set(ln) != {"^"}]
    return f"{name}: {' | '.join(lines)}" if lines else name


def guard(fn: Callable[..., Any], *args, **kwargs) -> Any:
    """Calls ``fn``; an exception becomes one ``error:`` line and exit status 1."""
    try:
        return fn(*args, **kwargs)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except Exception as e:  # noqa: BLE001 - the entry point's last word
        if debug_enabled():
            traceback.print_exc()
            print(f"error: {describe(e)}", file=sys.stderr, flush=True)
        else:
            print(
                f"error: {describe(e)} (full traceback: --verbose or {DEBUG_ENV}=1)",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit(1) from None


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> Any:
    """For argparse-style ``main(argv)``: takes the shared options, then guards
    ``main`` (``argv`` excludes the program name; default ``sys.argv[1:]``)."""
    args = take_cli_options(sys.argv[1:] if argv is None else argv)
    return guard(main, args)


def quiet_library_info() -> None:
    """Library chatter (orbax, seqio, tfds log INFO through absl) down to
    warnings, unless ``--verbose``; the run's own ``locca``/``transfer`` logs stay."""
    if not debug_enabled():
        logging.getLogger("absl").setLevel(logging.WARNING)
