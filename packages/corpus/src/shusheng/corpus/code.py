"""Repository-level code documents: all files of a repository concatenated in dependency order.

The InternLM2 report (Cai et al., 2024, sec. 3.1.2) trains on code "concatenated at the repository level in the
order of their dependencies", so a file's imports come before it. `repo_document(folder)` builds one `Document`
per repository; `repo_documents(root)` does it for every sub-folder of `root`.

Text format: each file is one header line, then the file's text (ending with a newline):

    <file path="pkg/util.py">
    def helper(): ...
    <file path="pkg/main.py">
    from .util import helper

Order (deterministic):
  1. Code files (by extension: Python, JavaScript/TypeScript, Java, C/C++, Go) and their imports that resolve to
     files of the repository form a graph: Python `import a.b` / `from .x import y` (absolute names resolve from any
     folder that is not itself a package, so `src/` layouts and namespace packages work), JS/TS relative
     `import ... from './x'`, `export ... from`, `require('./x')`, `import('./x')`; C/C++ `#include "x.h"` (next to
     the file first, then the closest file with that path suffix); Java `import a.b.C;` / `a.b.*` / `static`
     mapped to `a/b/C.java` under any source root; Go imports of a package of a module declared by a `go.mod` in
     the repository (every non-test `.go` file of that package folder).
  2. Files are grouped into strongly connected components (Tarjan); the components are sorted topologically, and
     among components whose imports are all placed, the one holding the smallest path goes first.
  3. Cycle rule: the files of one component (an import cycle) are placed in path order; `metadata["import_cycles"]`
     lists them.
  4. Docs (README*, *.md, *.markdown, *.rst, and *.txt inside a `docs/` or `doc/` folder) belong to their folder
     (files under `docs/` to the folder holding `docs/`) and are placed just before the first code file of that
     folder or its sub-folders, READMEs first, then by path; outer folders' docs before inner ones. Docs of folders
     without code come last, in path order.
Paths are POSIX-style and relative to the repository folder; "path order" is plain string order.
"""

from __future__ import annotations

import ast
import heapq
import os
import posixpath
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

from .document import Document

LANGUAGES = {
    ".py": "python",
    ".js": "javascript", ".jsx": "javascript", ".mjs": "javascript", ".cjs": "javascript",
    ".ts": "typescript", ".tsx": "typescript", ".mts": "typescript", ".cts": "typescript",
    ".java": "java",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".hh": "cpp", ".hxx": "cpp",
    ".go": "go",
}
DOC_EXTENSIONS = (".md", ".markdown", ".rst")
DOC_DIRS = ("docs", "doc")
SKIP_DIRS = frozenset({"node_modules", "__pycache__", "vendor", "site-packages"})
HEADER = '<file path="{path}">'
_JS_EXTS = (".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts")


# -- collecting files ---------------------------------------------------------------------------------------------

def is_doc(path: str) -> bool:
    """README* (but not README.py), Markdown and reStructuredText anywhere; also plain text inside docs/."""
    name = posixpath.basename(path)
    if name.lower().endswith(DOC_EXTENSIONS):
        return True
    if name.upper().startswith("README"):
        return posixpath.splitext(name)[1].lower() not in LANGUAGES
    return name.lower().endswith(".txt") and any(d in DOC_DIRS for d in path.split("/")[:-1])


def collect_files(repo: str | Path, max_file_bytes: int = 1 << 20,
                  skip_dirs: frozenset[str] = SKIP_DIRS) -> tuple[dict[str, str], int]:
    """Text of the repository's code and doc files, by relative path (sorted).

    Hidden folders and files, `skip_dirs`, symlinks, files over `max_file_bytes`, binary (NUL bytes) and
    non-UTF-8 files are left out.

    Returns:
        (path -> text, number of candidate files left out for size or encoding).
    """
    repo = Path(repo)
    files, left_out = {}, 0
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in skip_dirs)
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(repo).as_posix()
            if name.startswith(".") or full.is_symlink():
                continue
            if posixpath.splitext(name)[1].lower() not in LANGUAGES and not is_doc(rel):
                continue
            data = full.read_bytes() if full.stat().st_size <= max_file_bytes else None
            try:
                if data is None or b"\0" in data:
                    raise ValueError
                files[rel] = data.decode("utf-8")
            except ValueError:  # UnicodeDecodeError is a ValueError
                left_out += 1
    return dict(sorted(files.items())), left_out


def _language(path: str) -> str:
    return "doc" if is_doc(path) else LANGUAGES[posixpath.splitext(path)[1].lower()]


# -- parsing imports ----------------------------------------------------------------------------------------------

_PY_IMPORT = re.compile(r"^\s*import\s+([\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+(?:\s+as\s+\w+)?)*)", re.M)
_PY_FROM = re.compile(r"^\s*from\s+(\.*)([\w.]*)\s+import\s+\(?\s*([\w\s,]+)", re.M)
_JS_SPEC = re.compile(
    r"""(?:\b(?:import|export)\s[^'"`;]*?\bfrom\s*|\bimport\s*\(?\s*|\brequire\s*\(\s*)['"]([^'"\n]+)['"]""")
_C_INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"\n]+)[>"]', re.M)
_JAVA_IMPORT = re.compile(r"^\s*import\s+(static\s+)?([\w.]+?)(\.\*)?\s*;", re.M)
_GO_IMPORT = re.compile(r'^\s*import\s+(?:[\w.]+\s+)?"([^"]+)"|^\s*import\s*\(([^)]*)\)', re.M)
_GO_SPEC = re.compile(r'"([^"]+)"')
_GO_MODULE = re.compile(r"^\s*module\s+(\S+)", re.M)


def _python_imports(text: str) -> list[tuple[int, str, list[str]]]:
    """(level, module, imported names) per import statement; regexes when the file does not parse (Python 2)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(text)
    except (SyntaxError, ValueError):
        out = [(0, m.split()[0], []) for g in _PY_IMPORT.findall(text) for m in g.split(",")]
        return out + [(len(dots), mod, [n.strip() for n in names.split(",") if n.strip()])
                      for dots, mod, names in _PY_FROM.findall(text)]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(0, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or "", [a.name for a in node.names]))
    return out


class _Resolver:
    """Maps the imports of each file to files of the repository."""

    def __init__(self, files: dict[str, str], go_modules: dict[str, str]):
        self.files = files
        self.by_name: dict[str, list[str]] = defaultdict(list)  # basename -> paths, for suffix lookups
        for p in files:
            self.by_name[posixpath.basename(p)].append(p)
        self.py_modules: dict[str, list[tuple[tuple[str, ...], str]]] = defaultdict(list)  # last part -> modules
        for p in files:
            if p.endswith(".py"):
                parts = tuple(p[:-3].split("/"))
                parts = parts[:-1] if parts[-1] == "__init__" else parts
                if parts:
                    self.py_modules[parts[-1]].append((parts, p))
        self.go_modules = sorted(go_modules.items(), key=lambda kv: -len(kv[0]))  # longest module path first
        self.dirs: dict[str, list[str]] = defaultdict(list)
        for p in files:
            self.dirs[posixpath.dirname(p)].append(p)

    def deps(self, path: str) -> set[str]:
        lang, text = _language(path), self.files[path]
        found: set[str | None] = set()
        if lang == "python":
            found = self._python(path, text)
        elif lang in ("javascript", "typescript"):
            found = {self._js(path, spec) for spec in _JS_SPEC.findall(text) if spec.startswith((".", "/"))}
        elif lang in ("c", "cpp"):
            found = {self._include(path, kind, spec.strip()) for kind, spec in _C_INCLUDE.findall(text)}
        elif lang == "java":
            found = {self._java(static, name, star) for static, name, star in _JAVA_IMPORT.findall(text)}
        elif lang == "go":
            for single, block in _GO_IMPORT.findall(text):
                for spec in [single] if single else _GO_SPEC.findall(block):
                    found |= self._go(spec)
        found.discard(None)
        found.discard(path)
        return found  # type: ignore[return-value]

    def _closest(self, path: str, candidates: list[str]) -> str | None:
        """The candidate sharing the longest folder prefix with `path`; then the shortest; then path order."""
        here = path.split("/")[:-1]

        def shared(c: str) -> int:
            return len(os.path.commonprefix([here, c.split("/")[:-1]]))

        return min(candidates, key=lambda c: (-shared(c), c.count("/"), c)) if candidates else None

    def _suffix(self, path: str, suffix: str) -> str | None:
        candidates = [c for c in self.by_name.get(posixpath.basename(suffix), ()) if c == suffix
                      or c.endswith("/" + suffix)]
        return self._closest(path, candidates)

    # Python
    def _py_file(self, parts: list[str] | tuple[str, ...]) -> str | None:
        base = "/".join(parts)
        for p in (base + ".py", base + "/__init__.py"):
            if p in self.files:
                return p
        return None

    def _py_absolute(self, path: str, name: tuple[str, ...]) -> str | None:
        # `a.b` is importable from any root folder that is not itself a package (no __init__.py).
        candidates = [p for parts, p in self.py_modules.get(name[-1], ()) if parts[-len(name):] == name
                      and "/".join(parts[:-len(name)] + ("__init__.py",)) not in self.files]
        return self._closest(path, candidates)

    def _python(self, path: str, text: str) -> set[str | None]:
        found: set[str | None] = set()
        here = path.split("/")[:-1]
        for level, module, names in _python_imports(text):
            mod = tuple(module.split(".")) if module else ()
            if level:
                if level - 1 > len(here):
                    continue
                base = tuple(here[:len(here) - (level - 1)]) + mod
                targets = [self._py_file(base + (n,)) for n in names if n != "*"]
                found |= {t for t in targets if t} or {self._py_file(base) if base else None}
                continue
            if names:  # from a.b import c: c may be a module a/b/c.py
                targets = {self._py_absolute(path, mod + (n,)) for n in names if n != "*"} - {None}
                if targets:
                    found |= targets
                    continue
            for k in range(len(mod), 0, -1):  # the deepest module that exists: a.b.c, else a.b, else a
                if target := self._py_absolute(path, mod[:k]):
                    found.add(target)
                    break
        return found

    # JavaScript / TypeScript
    def _js(self, path: str, spec: str) -> str | None:
        base = posixpath.normpath(posixpath.join(posixpath.dirname(path), spec) if spec.startswith(".")
                                  else spec.lstrip("/"))
        if base.startswith(".."):
            return None
        stem, ext = posixpath.splitext(base)
        candidates = [base] + [base + e for e in _JS_EXTS] + [f"{base}/index{e}" for e in _JS_EXTS]
        if ext in (".js", ".jsx", ".mjs", ".cjs"):  # TypeScript sources are imported as the .js they compile to
            candidates += [stem + e for e in (".ts", ".tsx", ".mts", ".cts")]
        return next((c for c in candidates if c in self.files), None)

    # C / C++
    def _include(self, path: str, kind: str, spec: str) -> str | None:
        if kind == '"':
            local = posixpath.normpath(posixpath.join(posixpath.dirname(path), spec))
            if local in self.files:
                return local
        return self._suffix(path, posixpath.normpath(spec).lstrip("./") or spec)

    # Java
    def _java(self, static: str, name: str, star: str) -> str | None:
        parts = name.split(".")
        if star and not static:  # a.b.*: the package folder (any of its classes stands for it: take all below)
            return None
        if static:
            parts = parts if star else parts[:-1]
        for k in range(len(parts), 1, -1):  # a.b.C.Inner -> a/b/C/Inner.java, else a/b/C.java
            if target := self._suffix("", "/".join(parts[:k]) + ".java"):
                return target
        return None

    def java_star(self, path: str) -> set[str]:
        """Files of packages imported with `import a.b.*;`."""
        found = set()
        for static, name, star in _JAVA_IMPORT.findall(self.files[path]):
            if star and not static:
                suffix = "/" + name.replace(".", "/")
                for folder, members in self.dirs.items():
                    if ("/" + folder).endswith(suffix):
                        found |= {m for m in members if m.endswith(".java")}
        return found - {path}

    # Go
    def _go(self, spec: str) -> set[str]:
        for module, folder in self.go_modules:
            if spec == module or spec.startswith(module + "/"):
                pkg = posixpath.normpath(posixpath.join(folder, spec[len(module):].lstrip("/")))
                pkg = "" if pkg == "." else pkg
                return {p for p in self.dirs.get(pkg, ()) if p.endswith(".go") and not p.endswith("_test.go")}
        return set()


def _go_modules(repo: Path) -> dict[str, str]:
    """Module path -> folder (relative, "" for the root) of every go.mod in the repository."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in SKIP_DIRS]
        if "go.mod" in filenames:
            m = _GO_MODULE.search((Path(dirpath) / "go.mod").read_text(errors="replace"))
            if m:
                rel = Path(dirpath).relative_to(repo).as_posix()
                out[m.group(1)] = "" if rel == "." else rel
    return out


def import_graph(repo: str | Path, files: dict[str, str]) -> dict[str, set[str]]:
    """Code file -> the repository files it imports (docs have no edges)."""
    resolver = _Resolver(files, _go_modules(Path(repo)))
    graph = {}
    for p in files:
        if not is_doc(p):
            graph[p] = resolver.deps(p) | (resolver.java_star(p) if p.endswith(".java") else set())
    return graph


# -- ordering -----------------------------------------------------------------------------------------------------

def _sccs(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (iterative Tarjan), each sorted by path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps = []
    for root in sorted(graph):
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(sorted(graph[root])))]
        while work:
            v, edges = work[-1]
            for w in edges:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:  # all edges of v done
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while not comp or comp[-1] != v:
                        comp.append(stack.pop())
                        on_stack.discard(comp[-1])
                    comps.append(sorted(comp))
    return comps


def dependency_order(graph: dict[str, set[str]]) -> tuple[list[str], list[list[str]]]:
    """Files ordered so each comes after the files it imports (cycles: path order inside the cycle).

    Args:
        graph: File -> files it imports (targets missing from the graph are ignored).

    Returns:
        (order, import cycles: the components of more than one file, each in path order).
    """
    graph = {p: {d for d in deps if d in graph} for p, deps in graph.items()}
    comps = _sccs(graph)
    comp_of = {p: i for i, comp in enumerate(comps) for p in comp}
    waiting = [0] * len(comps)  # distinct components each component still waits for
    dependents: dict[int, set[int]] = defaultdict(set)
    for i, comp in enumerate(comps):
        needs = {comp_of[d] for p in comp for d in graph[p]} - {i}
        waiting[i] = len(needs)
        for j in needs:
            dependents[j].add(i)
    ready = [(comp[0], i) for i, comp in enumerate(comps) if waiting[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, i = heapq.heappop(ready)
        order += comps[i]
        for j in dependents[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, (comps[j][0], j))
    return order, [c for c in comps if len(c) > 1]


def _doc_home(path: str) -> str:
    """The folder a doc belongs to: its own, or the one holding the docs/ folder it sits in."""
    parts = path.split("/")[:-1]
    for k, part in enumerate(parts):
        if part in DOC_DIRS:
            return "/".join(parts[:k])
    return "/".join(parts)


def place_docs(code_order: list[str], docs: list[str]) -> list[str]:
    """Inserts docs before the first code file of their folder (or its sub-folders); see the module docstring."""
    by_home: dict[str, list[str]] = defaultdict(list)
    for d in docs:
        by_home[_doc_home(d)].append(d)
    for home in by_home:
        by_home[home].sort(key=lambda d: (not posixpath.basename(d).upper().startswith("README"), d))
    order = []
    for path in code_order:
        parts = path.split("/")[:-1]
        for k in range(len(parts) + 1):  # outer folders first
            order += by_home.pop("/".join(parts[:k]), [])
        order.append(path)
    return order + sorted(d for rest in by_home.values() for d in rest)


def order_files(repo: str | Path, files: dict[str, str] | None = None) -> tuple[list[str], list[list[str]]]:
    """The repository's files in document order, and its import cycles."""
    files = collect_files(repo)[0] if files is None else files
    code_order, cycles = dependency_order(import_graph(repo, files))
    return place_docs(code_order, [p for p in files if is_doc(p)]), cycles


# -- documents ----------------------------------------------------------------------------------------------------

def repo_document(repo: str | Path, name: str | None = None, source: str = "code", header: str = HEADER,
                  max_file_bytes: int = 1 << 20) -> Document | None:
    """One document: the repository's files in dependency order, each after a header line.

    Args:
        repo: The repository folder.
        name: Document id (default: the folder name).
        source: `Document.source`.
        header: Header line per file, formatted with `path`.
        max_file_bytes: Larger files are left out.

    Returns:
        The document (metadata: `repo`, `files` in order, `import_cycles`, `languages`, `files_left_out`), or None
        when the repository has no code or doc files.
    """
    repo = Path(repo)
    files, left_out = collect_files(repo, max_file_bytes)
    if not files:
        return None
    order, cycles = order_files(repo, files)
    parts = []
    for p in order:
        text = files[p]
        parts.append(header.format(path=p) + "\n" + text + ("" if text.endswith("\n") or not text else "\n"))
    name = name or repo.name
    meta = {"repo": name, "files": order, "import_cycles": cycles,
            "languages": dict(sorted(Counter(_language(p) for p in order).items())), "files_left_out": left_out}
    return Document(id=name, text="".join(parts), source=source, metadata=meta)


def repo_documents(root: str | Path, **kwargs) -> Iterator[Document]:
    """One document per repository sub-folder of `root` (sorted by name; hidden folders and empty repos skipped).

    Args:
        root: Folder holding one sub-folder per repository.
        **kwargs: Passed to `repo_document` (not `name`).
    """
    for sub in sorted(Path(root).iterdir()):
        if sub.is_dir() and not sub.name.startswith("."):
            doc = repo_document(sub, **kwargs)
            if doc is not None:
                yield doc
