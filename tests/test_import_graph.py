"""The import-graph guard (issue 11): read from the source with `ast`, nothing is imported.

Project modules are every .py under the top-level packages in PROJECT_DIRS (tests/ is not
one). An edge A -> B means module A names module B in an `import` statement, at module level
or inside a function; `from X import Y` is an edge to X.Y when X.Y is a project module, else
to X. Importing a submodule runs its parent packages' `__init__` too, but that implicit edge
is not counted (a package may import its own submodules).

Four rules:
  (a) no import cycles between project modules;
  (b) imports go one way, down the floors (FLOORS): the library (locca/) imports nothing
      from the floors above it; tasks/ and checkpoints/ (formats over the library) import
      nothing from transfer/ (the jobs and their entry points) or benchmarks/;
  (c) no project-module imports inside functions;
  (d) gin only on the top floor (transfer/ and the benchmark scripts).
(a), (b) and (d) have no exceptions. (c) carries an allow-list of today's exceptions; each
entry must still occur in the code (an entry that no longer does fails the test: delete
it), so the list only shrinks.
"""

from __future__ import annotations

import ast
import pathlib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT_DIRS = ("locca", "transfer", "tasks", "checkpoints", "benchmarks")
# (b) Floor of each top-level package: a module may import only from its own floor or below.
FLOORS = {"locca": 0, "tasks": 1, "checkpoints": 1, "transfer": 2, "benchmarks": 3}

# (c) Project-module imports inside functions that exist today: (file, function, module).
# `function` is the dotted path of the enclosing defs/classes, e.g. "Trainer.step.inner".
# None of them dodges a cycle any more. Two kinds:
#  - deferred TensorFlow/seqio (`tasks` imports in transfer/ and benchmarks/): importing
#    `tasks` loads TensorFlow (tens of seconds on a loaded 2-core machine, CUDA-probe lines
#    on stderr), so the jobs import it only once the CLI has parsed its flags and quieted
#    library logging, and a benchmark only in the optional timing that reads data;
#  - older ones in checkpoints/, locca/ and tasks/ (optional converters and verifiers,
#    the shapes corpus of the vocabulary): each can move to module top when its owner
#    next edits the file.
LOCAL_ALLOWED: set[tuple[str, str, str]] = {
    # benchmarks/pretrain_step.py
    ("benchmarks/pretrain_step.py", "time_pipeline", "transfer.pretrain"),
    ("benchmarks/pretrain_step.py", "time_pipeline", "tasks.pretrain_tasks"),
    # checkpoints/hf_clip.py
    ("checkpoints/hf_clip.py", "run_reference", "checkpoints.verify"),
    ("checkpoints/hf_clip.py", "verify_dir", "checkpoints.verify"),
    # checkpoints/hf_siglip.py
    ("checkpoints/hf_siglip.py", "apply_nchw", "locca.models.vit"),
    ("checkpoints/hf_siglip.py", "export_hf_npz", "checkpoints.bv_npz"),
    ("checkpoints/hf_siglip.py", "nested_params", "checkpoints.bv_npz"),
    ("checkpoints/hf_siglip.py", "run_reference", "checkpoints.verify"),
    ("checkpoints/hf_siglip.py", "verify_dir", "checkpoints.verify"),
    # checkpoints/hf_t5.py
    ("checkpoints/hf_t5.py", "_expected_shapes", "locca.models.t5"),
    ("checkpoints/hf_t5.py", "config_from_hf", "locca.models.t5"),
    ("checkpoints/hf_t5.py", "verify_dir", "locca.decoding"),
    ("checkpoints/hf_t5.py", "verify_dir", "locca.models.t5"),
    # checkpoints/inspect.py
    ("checkpoints/inspect.py", "_hf_to_bv", "checkpoints.hf_clip"),
    ("checkpoints/inspect.py", "_hf_to_bv", "checkpoints.hf_siglip"),
    ("checkpoints/inspect.py", "infer_vit_config", "locca.models.vit"),
    # checkpoints/verify.py
    ("checkpoints/verify.py", "run_bv_vit", "checkpoints.bv_npz"),
    ("checkpoints/verify.py", "run_bv_vit", "locca.models.vit"),
    # locca/decoding.py
    ("locca/decoding.py", "T5DecodeStep.__call__", "locca.models.t5"),
    ("locca/decoding.py", "t5_tokens_to_logits", "locca.models.t5"),
    # locca/models/locca.py
    ("locca/models/locca.py", "build_model", "locca.models.vit"),
    # locca/vocab.py
    ("locca/vocab.py", "_recipe_digest", "locca.data.render"),
    ("locca/vocab.py", "_recipe_digest", "locca.data.shapes"),
    ("locca/vocab.py", "shapes_corpus", "locca.data.shapes"),
    # tasks/rec_eval.py
    ("tasks/rec_eval.py", "run_refcoco", "tasks.sources.refcoco"),
    # tasks/sources/shapes.py
    ("tasks/sources/shapes.py", "ShapesSource.world", "locca.data.shapes"),
    # transfer/common.py
    ("transfer/common.py", "get_task", "tasks"),
    ("transfer/common.py", "model_dataset", "tasks.feature_converters"),
    ("transfer/common.py", "set_data_dir", "tasks.registry"),
    # transfer/demo.py
    ("transfer/demo.py", "register_demo_tasks", "tasks.shapes_tasks"),
    # transfer/eval.py
    ("transfer/eval.py", "_TaskData.__init__", "tasks.feature_converters"),
    ("transfer/eval.py", "_report_skips", "tasks.sources.common"),
    ("transfer/eval.py", "evaluate", "tasks.exports"),
    ("transfer/eval.py", "export_predictions", "tasks.exports"),
    # transfer/pretrain.py
    ("transfer/pretrain.py", "_get_task", "tasks"),
    ("transfer/pretrain.py", "make_dataset", "tasks.feature_converters"),
    ("transfer/pretrain.py", "register_configurables", "tasks.pretrain_tasks"),
    # transfer/experiment.py
    ("transfer/experiment.py", "_ensure_mixture", "tasks.registry"),
}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_files() -> dict[str, pathlib.Path]:
    """Module name -> source path for every project module."""
    files = {}
    for top in PROJECT_DIRS:
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            files[_module_name(path)] = path
    return files


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module named by a (possibly relative) `from ... import`."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _project_target(name: str, modules: set[str]) -> str | None:
    """The longest project module that `name` (a dotted module path) starts with."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in modules:
            return candidate
    return None


class _ImportVisitor(ast.NodeVisitor):
    """Collects (enclosing function or "", imported project module, line) per import."""

    def __init__(self, module: str, is_package: bool, modules: set[str]):
        self.module, self.is_package, self.modules = module, is_package, modules
        self.scope: list[str] = []
        self.in_function = 0
        self.imports: list[tuple[str, str, int]] = []

    def _add(self, name: str, lineno: int) -> None:
        target = _project_target(name, self.modules)
        if target is not None and target != self.module:
            where = ".".join(self.scope) if self.in_function else ""
            self.imports.append((where, target, lineno))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve(self.module, self.is_package, node)
        for alias in node.names:
            full = f"{base}.{alias.name}"
            self._add(full if full in self.modules else base, node.lineno)

    def _scoped(self, node, is_function: bool) -> None:
        self.scope.append(node.name)
        self.in_function += is_function
        self.generic_visit(node)
        self.in_function -= is_function
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node, True)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._scoped(node, True)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scoped(node, False)


def collect_imports() -> dict[str, list[tuple[str, str, int]]]:
    """Module -> [(enclosing function or "" at module level, project module, line)]."""
    files = project_files()
    modules = set(files)
    out = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        visitor = _ImportVisitor(module, path.name == "__init__.py", modules)
        visitor.visit(tree)
        out[module] = visitor.imports
    return out


def _rel(module: str) -> str:
    path = project_files()[module]
    return path.relative_to(REPO_ROOT).as_posix()


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each edge that lies on a cycle, deduplicated."""
    cycles: dict[frozenset, list[str]] = {}
    for a in sorted(graph):
        for b in sorted(graph[a]):
            # Shortest path b -> a closes the cycle a -> b -> ... -> a.
            prev = {b: None}
            frontier = [b]
            while frontier and a not in prev:
                nxt = []
                for node in frontier:
                    for succ in sorted(graph.get(node, ())):
                        if succ not in prev:
                            prev[succ] = node
                            nxt.append(succ)
                frontier = nxt
            if a not in prev:
                continue
            path = [a]
            while path[-1] != b:
                path.append(prev[path[-1]])
            cycle = [a] + list(reversed(path))[:-1]
            key = frozenset(zip(cycle, cycle[1:] + cycle[:1]))
            cycles.setdefault(key, cycle)
    return sorted(cycles.values(), key=lambda c: (len(c), c))


def _graph(imports) -> dict[str, set[str]]:
    return {m: {t for _, t, _ in edges} for m, edges in imports.items()}


def _where(imports, a: str, b: str) -> str:
    lines = sorted({line for _, t, line in imports[a] if t == b})
    return f"{_rel(a)}:{','.join(map(str, lines))}"


def test_no_import_cycles():
    imports = collect_imports()
    cycles = find_cycles(_graph(imports))
    report = []
    for cycle in cycles:
        hops = zip(cycle, cycle[1:] + cycle[:1])
        steps = ", ".join(f"{a} -> {b} ({_where(imports, a, b)})" for a, b in hops)
        report.append(" -> ".join(cycle + cycle[:1]) + f"\n    {steps}")
    assert not cycles, f"{len(cycles)} import cycle(s) between project modules:\n" + "\n".join(
        report
    )


def upward_imports(imports) -> list[str]:
    """'file:line -> module' for each import of a module on a higher floor (FLOORS)."""
    out = []
    for module, edges in imports.items():
        floor = FLOORS[module.split(".")[0]]
        for _, target, line in edges:
            if FLOORS[target.split(".")[0]] > floor:
                out.append(f"{_rel(module)}:{line} -> {target}")
    return sorted(out)


def test_imports_go_one_way_down():
    assert set(FLOORS) == set(PROJECT_DIRS)
    found = upward_imports(collect_imports())
    assert not found, (
        "imports from a higher floor (floors: "
        + ", ".join(f"{k}/ {v}" for k, v in FLOORS.items())
        + "); move the shared code down or the caller up:\n  "
        + "\n  ".join(found)
    )


def local_imports(imports) -> set[tuple[str, str, str]]:
    return {
        (_rel(module), where, target)
        for module, edges in imports.items()
        for where, target, _ in edges
        if where
    }


def test_no_project_imports_inside_functions():
    imports = collect_imports()
    found = local_imports(imports)
    new = sorted(found - LOCAL_ALLOWED)
    stale = sorted(LOCAL_ALLOWED - found)
    assert not new, (
        "project modules imported inside functions (import at module top; if that makes a "
        "cycle, move the shared code down a floor):\n  "
        + "\n  ".join(f"{f} {fn}(): {m}" for f, fn, m in new)
    )
    assert not stale, "LOCAL_ALLOWED entries that no longer occur; delete them:\n  " + "\n  ".join(
        map(str, stale)
    )


def test_guard_sees_cycles_and_local_imports():
    """The guard's own parsing: a cycle, a relative import and a local import are found."""
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert find_cycles(graph) == [["p.a", "p.b", "p.c"]]
    src = (
        "from . import b\n"
        "def f():\n    from .c import x\n"
        "class K:\n    def g(self):\n        import p.d\n"
    )
    visitor = _ImportVisitor("p.a", False, {"p", "p.a", "p.b", "p.c", "p.d"})
    visitor.visit(ast.parse(src))
    assert visitor.imports == [("", "p.b", 1), ("f", "p.c", 3), ("K.g", "p.d", 6)]


# The top floor: the jobs and their entry points (transfer/gin_flags.py is the one gin
# setup) and the benchmark scripts, which are entry points too.
GIN_FLOORS = ("transfer", "benchmarks")


def gin_importers() -> list[str]:
    """Project files below the top floor (GIN_FLOORS) that import gin: 'path:line'."""
    out = []
    for module, path in project_files().items():
        if module.split(".")[0] in GIN_FLOORS:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(n.split(".")[0] in ("gin", "__gin__") for n in names):
                out.append(f"{path.relative_to(REPO_ROOT).as_posix()}:{node.lineno}")
    return sorted(out)


def test_gin_only_on_the_top_floor():
    """gin at the edges: only the jobs and entry points (transfer/, benchmarks/) import it."""
    found = gin_importers()
    assert not found, (
        "gin imported below the top floor (bind keyword arguments from an entry point in "
        "transfer/ instead; setup: transfer/gin_flags.py):\n  " + "\n  ".join(found)
    )
