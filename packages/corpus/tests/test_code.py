"""Repository-level code ordering: imports resolved per language, dependency order, cycles, docs placement."""

import posixpath
import random
from collections import defaultdict

import pytest

from shusheng.corpus.code import collect_files, import_graph, repo_document, repo_documents


def write(root, files):
    for path, text in files.items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


HANDMADE = {
    "README.md": "# mypkg\n",
    "setup.py": "from mypkg import cli\n",
    "docs/guide.md": "Guide\n",
    "docs/api.rst": "API\n",
    "mypkg/__init__.py": "from .core import run\n",
    "mypkg/core.py": "import os\nfrom . import utils\nimport mypkg.models\n\ndef run():\n    pass\n",
    "mypkg/utils.py": "import os\n\ndef helper():\n    pass\n",
    "mypkg/cli.py": "from mypkg.core import run\n",
    "mypkg/models/__init__.py": "",
    "mypkg/models/README.md": "models\n",
    "mypkg/models/base.py": "from ..utils import helper\n\nclass Base:\n    pass\n",
    "mypkg/models/net.py": "from .base import Base\n",
    "tests/test_core.py": "from mypkg.core import run\n",
    "data.json": "{}\n",  # neither code nor doc: left out
    ".github/workflow.py": "x = 1\n",  # hidden folder: left out
}


def test_handmade_repo_exact_order(tmp_path):
    write(tmp_path / "myrepo", HANDMADE)
    doc = repo_document(tmp_path / "myrepo")
    assert doc.id == "myrepo" and doc.source == "code"
    assert doc.metadata["files"] == [
        "README.md", "docs/api.rst", "docs/guide.md",  # root docs (docs/ belongs to the root), README first
        "mypkg/models/README.md",  # before the first code file of mypkg/models
        "mypkg/models/__init__.py", "mypkg/utils.py",  # no imports: path order
        "mypkg/core.py",  # imports utils and mypkg.models
        "mypkg/__init__.py", "mypkg/cli.py",  # import core
        "mypkg/models/base.py", "mypkg/models/net.py",  # base imports ..utils; net imports .base
        "setup.py", "tests/test_core.py",
    ]
    assert doc.metadata["import_cycles"] == []
    assert doc.metadata["languages"] == {"doc": 4, "python": 9}


def test_text_format_and_cycle_rule(tmp_path):
    # b -> c -> a -> b is a cycle; main imports it. Cycle files are placed together, in path order.
    write(tmp_path, {"b.py": "import c\n", "c.py": "import a", "a.py": "import b\n", "main.py": "import b\n",
                     "README": "hello\n", "empty.py": ""})
    doc = repo_document(tmp_path, name="r")
    assert doc.metadata["import_cycles"] == [["a.py", "b.py", "c.py"]]
    assert doc.text == (
        '<file path="README">\nhello\n'
        '<file path="a.py">\nimport b\n'
        '<file path="b.py">\nimport c\n'
        '<file path="c.py">\nimport a\n'  # a newline is added to files that lack one
        '<file path="empty.py">\n'
        '<file path="main.py">\nimport b\n'
    )


def test_each_language_resolves_its_imports(tmp_path):
    write(tmp_path, {
        "go.mod": "module example.com/m\n\ngo 1.21\n",
        "cmd/main.go": 'package main\n\nimport (\n\t"fmt"\n\tu "example.com/m/util"\n)\n',
        "util/a.go": "package util\n", "util/b.go": 'package util\nimport "strings"\n',
        "util/a_test.go": "package util\n",
        "web/app.tsx": "import React from 'react';\nimport {\n  x,\n} from './lib/x';\nexport * from \"../shared\";\n",
        "web/lib/x.ts": "const y = require('./y.js');\nconst z = await import('./z');\n",
        "web/lib/y.ts": "", "web/lib/z/index.js": "", "shared/index.ts": "",
        "src/main.c": '#include <stdio.h>\n#include "util.h"\n# include "net/sock.h"\n',
        "src/util.h": "", "include/net/sock.h": '#include "../../src/util.h"\n',
        "java/src/com/ex/App.java": "package com.ex;\nimport com.ex.db.Store;\nimport static com.ex.db.Keys.KEY;\n"
                                    "import com.ex.util.*;\nimport java.util.List;\n",
        "java/src/com/ex/db/Store.java": "", "java/src/com/ex/db/Keys.java": "",
        "java/src/com/ex/util/A.java": "", "java/src/com/ex/util/B.java": "",
        "py/legacy.py": "print 'python 2'\nfrom os import path\nimport helpers\n", "py/helpers.py": "",
    })
    files, _ = collect_files(tmp_path)
    graph = {p: deps for p, deps in import_graph(tmp_path, files).items() if deps}
    assert graph == {
        "cmd/main.go": {"util/a.go", "util/b.go"},
        "web/app.tsx": {"web/lib/x.ts", "shared/index.ts"},
        "web/lib/x.ts": {"web/lib/y.ts", "web/lib/z/index.js"},
        "src/main.c": {"src/util.h", "include/net/sock.h"},
        "include/net/sock.h": {"src/util.h"},
        "java/src/com/ex/App.java": {"java/src/com/ex/db/Store.java", "java/src/com/ex/db/Keys.java",
                                     "java/src/com/ex/util/A.java", "java/src/com/ex/util/B.java"},
        "py/legacy.py": {"py/helpers.py"},
    }


# -- a generated repository with a known import graph ----------------------------------------------------------

def rel(src, dst):
    r = posixpath.relpath(dst, posixpath.dirname(src))
    return r if r.startswith("..") else "./" + r


def py_import(src, dst, rng):
    """An import statement for py/<pkg>/<mod>.py files, in one of the styles Python allows."""
    (sp, _), (dp, dm) = src.split("/")[1:3], dst[:-3].split("/")[1:3]
    styles = [f"import {dp}.{dm}", f"from {dp} import {dm}", f"from {dp}.{dm} import thing"]
    styles += [f"from .{dm} import thing", f"from . import {dm}"] if sp == dp else [
        f"from ..{dp}.{dm} import thing", f"from ..{dp} import {dm}"]
    return rng.choice(styles)


def generate_repo(root, seed):
    """Files in five languages, each importing only earlier files of its language, plus one Python cycle.

    Returns:
        (path -> set of imported paths, the cycle's files).
    """
    rng = random.Random(seed)
    files: dict[str, list[str]] = {}
    edges: dict[str, set[str]] = defaultdict(set)

    def node(path, pool, make):
        files[path] = []
        for dep in rng.sample(pool, k=min(len(pool), rng.randrange(4))):
            files[path].append(make(path, dep))
            edges[path].add(dep)
        pool.append(path)

    py, js, c, java = [], [], [], []
    for i in range(30):
        node(f"py/pkg{rng.randrange(4)}/m{i:02d}.py", py, lambda s, d: py_import(s, d, rng))
    for pkg in {p.split("/")[1] for p in py}:
        files[f"py/{pkg}/__init__.py"] = []
    for i in range(15):
        ext = rng.choice([".ts", ".tsx", ".js"])

        def js_import(s, d):
            spec = rel(s, d)
            spec = rng.choice([spec.rsplit(".", 1)[0], spec.replace(".ts", ".js") if d.endswith(".ts") else spec])
            return rng.choice([f"import {{ x }} from '{spec}';", f"const y = require(\"{spec}\");",
                               f"export * from '{spec}';", f"import '{spec}';"])

        node(f"js/d{rng.randrange(3)}/f{i:02d}{ext}", js, js_import)
    for i in range(15):
        node(f"c/lib{rng.randrange(3)}/h{i:02d}.h", c, lambda s, d: rng.choice(
            [f'#include "{rel(s, d).removeprefix("./")}"', f'#include "{"/".join(d.split("/")[1:])}"']))
    for i in range(15):
        def java_import(s, d):
            cls = d.removeprefix("java/src/main/java/").removesuffix(".java").replace("/", ".")
            return rng.choice([f"import {cls};", f"import static {cls}.helper;"])

        node(f"java/src/main/java/com/ex/p{rng.randrange(3)}/C{i:02d}.java", java, java_import)
    go_pkgs: list[list[str]] = []
    for k in range(4):
        members = [f"go/p{k}/f{j}.go" for j in range(rng.randint(1, 3))]
        used = rng.sample(range(k), k=min(k, rng.randrange(3)))
        for m in members:
            files[m] = [f"package p{k}", "import (", '\t"fmt"'] + [f'\tq{u} "example.com/proj/p{u}"' for u in used]
            files[m].append(")")
            edges[m] = {f for u in used for f in go_pkgs[u]}
        go_pkgs.append(members)
    files["go/p0/f0_test.go"] = ["package p0"]

    cycle = ["py/cyc/a.py", "py/cyc/b.py", "py/cyc/c.py"]
    files["py/cyc/__init__.py"] = []
    files[cycle[0]] = ["from . import b", f"from {py[3][3:-3].replace('/', '.')} import thing"]
    files[cycle[1]] = ["from .c import f"]
    files[cycle[2]] = ["import cyc.a"]
    files["py/user.py"] = ["from cyc import a"]
    edges.update({cycle[0]: {cycle[1], py[3]}, cycle[1]: {cycle[2]}, cycle[2]: {cycle[0]}, "py/user.py": {cycle[0]}})

    docs = ["README.md", "docs/index.md", "docs/howto.txt", "py/pkg1/README.md", "js/NOTES.rst", "go/p2/README",
            "java/src/main/java/com/ex/p1/package.md", "assets/README.md"]
    write(root / "go", {"go.mod": "module example.com/proj\n"})
    write(root, {p: "\n".join(lines) + "\n" for p, lines in files.items()} | {d: f"doc {d}\n" for d in docs})
    return {p: edges.get(p, set()) for p in files}, cycle


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_generated_repo_is_in_dependency_order(tmp_path, seed):
    edges, cycle = generate_repo(tmp_path, seed)
    files, _ = collect_files(tmp_path)
    assert import_graph(tmp_path, files) == edges  # every import style resolved, nothing extra

    doc = repo_document(tmp_path)
    order = doc.metadata["files"]
    assert sorted(order) == sorted(files)
    pos = {p: i for i, p in enumerate(order)}
    for src, deps in edges.items():
        for dep in deps:
            if not (src in cycle and dep in cycle):
                assert pos[dep] < pos[src], f"{src} comes before its import {dep}"
    # The cycle: together, in path order.
    assert order[pos[cycle[0]]:pos[cycle[0]] + 3] == sorted(cycle)
    assert doc.metadata["import_cycles"] == [sorted(cycle)]
    # Docs: just before the first code file of their folder (docs/ belongs to its parent); folders without code last.
    code = [p for p in order if p in edges]
    for d in [p for p in order if p not in edges]:
        parts = d.split("/")[:-1]
        home = "/".join(parts[:parts.index("docs")] if "docs" in parts else parts)
        inside = [pos[p] for p in code if home == "" or p.startswith(home + "/")]
        if not inside:
            assert pos[d] > max(pos[p] for p in code)
            continue
        first = min(inside)
        assert pos[d] < first and all(p not in edges for p in order[pos[d]:first])
    assert order[:3] == ["README.md", "docs/howto.txt", "docs/index.md"]
    assert order[-1] == "assets/README.md"
    # Deterministic: a second run gives the same document.
    assert repo_document(tmp_path) == doc


def test_repo_documents_walks_repositories(tmp_path):
    write(tmp_path / "b_repo", {"x.py": "import y\n", "y.py": ""})
    write(tmp_path / "a_repo", {"main.go": "package main\n"})
    write(tmp_path / ".hidden", {"z.py": ""})
    write(tmp_path / "no_code", {"data.csv": "1,2\n"})
    (tmp_path / "a_repo" / "bin.c").write_bytes(b"\x00\x01binary")
    (tmp_path / "a_repo" / "latin1.c").write_bytes("caf\xe9".encode("latin-1"))
    docs = list(repo_documents(tmp_path))
    assert [d.id for d in docs] == ["a_repo", "b_repo"]
    assert docs[0].metadata["files_left_out"] == 2
    assert docs[1].metadata["files"] == ["y.py", "x.py"]
