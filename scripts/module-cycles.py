#!/usr/bin/env python3
"""Lists import cycles between the modules of a crate.

Usage: scripts/module-cycles.py CRATE_SRC_DIR [--depth N]

A module is a file (`foo.rs` or `foo/mod.rs`), named by its path from the
crate root (`api::director_sync`). An edge A -> B is a `crate::`, `super::`
or `self::` path in A's code (tests excluded: a `#[cfg(test)]` module may use
anything) that names an item of B. With `--depth N` modules are folded to
their first N path segments (`--depth 1`: top-level modules only). Prints each
strongly connected set of more than one module and exits 1 if there is any.
"""
import os
import re
import sys


def module_of(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return ()
    return tuple(rel)


def strip_tests(text):
    # Drop `#[cfg(test)] mod x { ... }` blocks by brace matching.
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def main():
    args = sys.argv[1:]
    depth = None
    if "--depth" in args:
        k = args.index("--depth")
        depth = int(args[k + 1])
        del args[k : k + 2]
    root = args[0]
    files = {}
    for d, _, names in os.walk(root):
        for n in names:
            if n.endswith(".rs") and not (d == root and n == "main.rs"):
                p = os.path.join(d, n)
                files[module_of(root, p)] = p
    modules = set(files)

    def resolve(here, segs):
        # The longest known module prefix of an absolute path.
        for k in range(len(segs), 0, -1):
            if tuple(segs[:k]) in modules:
                return tuple(segs[:k])
        return None

    fold = (lambda m: m[:depth]) if depth else (lambda m: m)
    edges = {}
    path_re = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
    group_re = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{([^}]*)\}")
    for mod, path in files.items():
        text = strip_tests(open(path, encoding="utf-8").read())
        text = re.sub(r"//[^\n]*", "", text)
        refs = []
        for m in group_re.finditer(text):
            for item in m.group(3).split(","):
                item = item.strip().split(" as ")[0].split("::{")[0]
                if item:
                    refs.append((m.group(1), m.group(2) + "::" + item))
        refs += [(m.group(1), m.group(2)) for m in path_re.finditer(text)]
        for kind, tail in refs:
            segs = [s for s in tail.split("::") if s]
            if kind == "crate":
                base = []
            elif kind == "self":
                base = list(mod)
            else:
                base = list(mod[:-1])
                while segs and segs[0] == "super":
                    base, segs = base[:-1], segs[1:]
            target = resolve(mod, base + segs)
            if target is None or target == mod:
                continue
            # A parent naming its own child module is structure, not an import
            # cycle risk; a child reaching up to its parent is an import.
            a, b = fold(mod), fold(target)
            if a != b:
                edges.setdefault(a, set()).add(b)

    # Tarjan's strongly connected components.
    index, low, stack, on, sccs, n = {}, {}, [], set(), [], [0]
    nodes = sorted({fold(m) for m in modules})

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    name = lambda m: "::".join(m) or "crate"
    for comp in sccs:
        print("cycle:", ", ".join(name(m) for m in comp))
        for a in comp:
            for b in sorted(edges.get(a, ())):
                if b in comp:
                    print(f"  {name(a)} -> {name(b)}")
    print(f"{len(nodes)} modules, {sum(len(e) for e in edges.values())} edges, {len(sccs)} cycles")
    sys.exit(1 if sccs else 0)


main()
