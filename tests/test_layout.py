"""The house rules a forker relies on: no import circle between the project's modules, no file over
500 lines outside tests/. Imports are read from the source (ast), function-local ones included:
a lazy import is still a circle to a reader, and it hides one from `python -c "import x"`."""

import ast
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 500


def tracked_py() -> list[str]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:  # not a git checkout (an sdist, say): walk the folder
        files = [os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(ROOT) for f in fs
                 if f.endswith(".py") and ".git" not in d and "venv" not in d]  # fmt: skip
    else:
        files = out.stdout.split()
    return sorted(f for f in files if not f.startswith("tests/") and os.path.exists(os.path.join(ROOT, f)))


def module_name(path: str) -> str:
    parts = path[:-3].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: str, modules: set[str], root: str = ROOT) -> set[str]:
    """The project modules that `path` imports, anywhere in the file."""
    tree = ast.parse(open(os.path.join(root, path), encoding="utf-8").read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from infra import http` imports infra.http; `from infra.http import x` imports infra.http
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import a.b.c` where only a.b is ours
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, colours white/grey/black)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "grey"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "grey":
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        state[m] = "black"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def import_graph() -> dict[str, set[str]]:
    files = tracked_py()
    mods = {module_name(f): f for f in files}
    graph = {}
    for m, f in mods.items():
        # a package's modules import their package's __init__ implicitly: not an edge a reader writes
        graph[m] = {n for n in imports_of(f, set(mods)) if n != m and not m.startswith(n + ".")}
    return graph


def test_find_cycle_finds_a_circle_and_accepts_a_tree():
    # the checker itself: it must see infra.quantize -> lora -> infra.quantize (the circle this test was
    # written for; the search starts from the first module in sorted order)
    circle = {"lora": {"infra.quantize"}, "infra.quantize": {"lora"}}
    assert find_cycle(circle) == ["infra.quantize", "lora", "infra.quantize"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_of_reads_function_local_imports(tmp_path):
    src = "import os\ndef f():\n    from lora import lora_modules\n    import infra.http\n"
    (tmp_path / "x.py").write_text(src)
    assert imports_of("x.py", {"lora", "infra", "infra.http", "x"}, str(tmp_path)) == {"lora", "infra.http"}


def test_no_import_circle_between_project_modules():
    graph = import_graph()
    assert {"model", "lora", "ppo", "actor", "train", "infra.quantize"} <= set(graph)
    assert "infra.quantize" in graph["lora"]  # the graph sees real edges
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("path", tracked_py())
def test_no_file_over_500_lines(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        n = sum(1 for _ in f)
    assert n <= MAX_LINES, f"{path}: {n} lines (at most {MAX_LINES}): move what is not its concept off"
