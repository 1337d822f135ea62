"""Runs every benchmark in sequence with small arguments (``make bench``).

    python -m benchmarks.run_all          # decode_speed, shapes_speed, pretrain_step,
                                          # rec_step, resume_latency (~2 min)
    python -m benchmarks.run_all --all    # also aref_diagnostics overfit (minutes)
    python -m benchmarks.run_all --only decode_speed --only shapes_speed

Each benchmark's ``main(argv)`` is called in this process with the arguments below and
prints its own numbers under a ``== name`` header, followed by its wall-clock seconds. A
benchmark that raises (or returns a non-zero status) is reported and the rest still run;
the exit status is 1 if any failed. For full-size numbers run a module on its own
(``python -m benchmarks.decode_speed``; see each module's docstring).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

# (module under benchmarks/, argv for its main): small sizes, seconds each on one CPU core.
BENCHMARKS: tuple[tuple[str, list[str]], ...] = (
    ("decode_speed", ["--batch", "2", "--new_tokens", "8", "--layers", "2", "--vocab", "2304"]),
    ("shapes_speed", ["--num", "100"]),
    ("pretrain_step", ["--batch", "8", "--steps", "3"]),
    ("rec_step", ["--batch", "8", "--steps", "3"]),
    ("resume_latency", ["--num_train", "100", "--batch", "8", "--steps", "0", "200"]),
)
# Minutes: only with --all.
SLOW_BENCHMARKS: tuple[tuple[str, list[str]], ...] = (
    ("aref_diagnostics", ["overfit"]),  # its defaults: 16 scenes, 400 steps (~5 min)
)


def run_one(name: str, argv: list[str]) -> bool:
    """Runs ``benchmarks.<name>.main(argv)``; True when it finished without failure."""
    print(f"== {name} {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    try:
        status = importlib.import_module(f"benchmarks.{name}").main(argv)
        ok = not (isinstance(status, int) and not isinstance(status, bool) and status != 0)
    except Exception:  # report and keep going: one broken benchmark must not hide the rest
        traceback.print_exc()
        ok = False
    print(f"-- {name}: {'ok' if ok else 'FAILED'} in {time.perf_counter() - start:.1f} s\n")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--all", action="store_true", help="also the slow ones (aref_diagnostics)")
    ap.add_argument("--only", action="append", default=[], help="run just this benchmark")
    args = ap.parse_args(argv)
    chosen = list(BENCHMARKS) + (list(SLOW_BENCHMARKS) if args.all else [])
    if args.only:
        known = {n: a for n, a in BENCHMARKS + SLOW_BENCHMARKS}
        unknown = sorted(set(args.only) - set(known))
        if unknown:
            ap.error(f"unknown benchmark(s) {unknown}; known: {sorted(known)}")
        chosen = [(n, known[n]) for n in args.only]
    failed = [name for name, bench_argv in chosen if not run_one(name, bench_argv)]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
