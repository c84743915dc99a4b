"""Cached artifacts: one helper for every cache-or-compute (poisons, diffusion models, purified sets,
victim runs), and the code identity that keys them.

An artifact's key hashes its inputs (data content, configuration, seed) and the *code identity* of the
modules that compute it: the package modules they import, transitively, each parsed and dumped without
docstrings (comments never reach the syntax tree). So editing a comment or a docstring keeps every
cached artifact, while a change to any statement on the path (a helper in another file included)
makes a new one. Every kind keeps an ``index.json`` beside its hashed entries, naming each key with a
readable label and what made it (``eclipse cache ls``).

Cold cost of a warm run: with ``ECLIPSE_CACHE_LOG`` set to a file, every artifact lookup appends a JSON
line (hit or computed); :func:`cold_cost` then adds, to a run's wall time, the recorded making time of
what it reused, counting each artifact once and following what each was made from (an artifact's own
time excludes the artifacts computed inside it). ``eclipse reproduce`` reports it per notebook, so a
cold-cache wall time can be stated from runs spread over several sessions.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, TypeVar

from .storage import atomic_write_json, cache_dir, config_key

PACKAGE_ROOT = Path(__file__).resolve().parent
PACKAGE = "eclipse"
T = TypeVar("T")
CACHE_LOG_ENV = "ECLIPSE_CACHE_LOG"
# one list per artifact being computed (innermost last): the (kind/key, seconds computed) of the artifacts it used
_computing: list[list[tuple[str, float]]] = []

# What computes each kind of artifact (roots of its import closure). A poison adds its attack's own module
# and a run its network's (``cached(..., code=...)``), so that URP's key does not follow the UNet that ADP's
# surrogate is built from, and a ResNet run's key does not follow the UNet classifier.
ARTIFACT_CODE: dict[str, tuple[str, ...]] = {
    "poisons": ("eclipse.attacks.registry",),
    "runs": ("eclipse.training", "eclipse.victims", "eclipse.defenses"),
    "diffusion": ("eclipse.diffusion.train",),
    "purified": ("eclipse.purify",),
    "consistency": ("eclipse.diffusion.consistency",),
}


def _module_file(name: str, root: Path) -> Path | None:
    """``eclipse.a.b`` -> ``root/a/b.py`` or ``root/a/b/__init__.py`` (None if not a package module)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _imported_modules(tree: ast.AST, name: str, is_package: bool, root: Path) -> set[str]:
    """Package modules that ``name`` imports anywhere (module level or inside functions)."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import gaussian`
    return {m for m in found if _module_file(m, root) is not None}


@lru_cache(maxsize=None)
def _parsed(path: Path, mtime_ns: int) -> tuple[str, str]:
    """(normalised source dump, source) of one file; cached by modification time."""
    source = path.read_text()
    return ast.dump(_strip_docstrings(ast.parse(source)), include_attributes=False), source


def module_closure(*roots: str, root: Path = PACKAGE_ROOT) -> dict[str, str]:
    """``{module: normalised syntax dump}`` for ``roots`` and every package module they import."""
    seen: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name, root)
        if path is None:
            raise ValueError(f"{name!r} is not a module of the {PACKAGE} package under {root}")
        dump, source = _parsed(path, path.stat().st_mtime_ns)
        seen[name] = dump
        todo.extend(_imported_modules(ast.parse(source), name, path.name == "__init__.py", root) - seen.keys())
    return seen


def code_identity(*roots: str, root: Path = PACKAGE_ROOT) -> str:
    """Short hash of the code behind ``roots`` (docstrings and comments excluded, imports followed)."""
    h = hashlib.sha256()
    for name, dump in sorted(module_closure(*roots, root=root).items()):
        h.update(name.encode() + b"\0" + dump.encode() + b"\0")
    return h.hexdigest()[:12]


def artifact_key(kind: str, inputs: dict, *, root: Path = PACKAGE_ROOT, code: tuple[str, ...] = ()) -> str:
    """The cache key of an artifact of ``kind`` made from ``inputs`` (``code``: more root modules of its
    computation, beside the kind's own)."""
    if kind not in ARTIFACT_CODE:
        raise ValueError(f"unknown artifact kind {kind!r}; known: {', '.join(ARTIFACT_CODE)}")
    roots = tuple(dict.fromkeys(ARTIFACT_CODE[kind] + tuple(code)))
    return config_key({"inputs": inputs, "code": code_identity(*roots, root=root)})


def artifact_path(kind: str, key: str, *, label: str = "", suffix: str = "") -> Path:
    """Where an artifact lives: ``<cache>/<kind>/<label>-<key><suffix>`` (a folder when no suffix)."""
    stem = f"{label}-{key}" if label else key
    return cache_dir() / kind / f"{stem}{suffix}"


def _index(kind: str, key: str, path: Path, label: str, inputs: dict, seconds: float,
           used: list[tuple[str, float]] = ()) -> None:
    """Record a new artifact in ``<cache>/<kind>/index.json`` (readable names beside the hashes)."""
    index_path = cache_dir() / kind / "index.json"
    try:
        index = json.loads(index_path.read_text()) if index_path.exists() else {}
    except (OSError, json.JSONDecodeError):
        index = {}  # a damaged index is rebuilt from here on; the artifacts themselves are intact
    summary = {k: v for k, v in inputs.items() if isinstance(v, (str, int, float, bool)) or v is None}
    index[key] = {"label": label, "path": path.name, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "seconds": round(seconds, 1),
                  # the artifacts it used, and its own time without those computed inside it (cold_cost)
                  "used": sorted({ref for ref, _ in used}),
                  "own_seconds": round(max(seconds - sum(s for _, s in used), 0.0), 1), **summary}
    atomic_write_json(index, index_path)


def _index_entry(ref: str) -> dict | None:
    """The index record of ``kind/key`` (None when the index does not have it)."""
    kind, _, key = ref.partition("/")
    try:
        return json.loads((cache_dir() / kind / "index.json").read_text()).get(key)
    except (OSError, json.JSONDecodeError):
        return None


def _log(ref: str, label: str, hit: bool, seconds: float | None) -> None:
    """Append one lookup to ``$ECLIPSE_CACHE_LOG`` (one short line: appends from several processes stay whole)."""
    log = os.environ.get(CACHE_LOG_ENV)
    if log:
        line = json.dumps({"artifact": ref, "label": label, "hit": hit, "seconds": seconds, "pid": os.getpid()})
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def read_cache_log(path: str | Path) -> list[dict]:
    """The lookups recorded in a cache log (an absent file: none)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def cold_cost(events: list[dict], counted: set[str] | None = None) -> dict:
    """What the artifacts a run reused cost to make: the recorded own time of each reused artifact and,
    recursively, of those it was made from, each counted once, leaving out those the run computed itself
    (they are in its wall time) and those in ``counted`` (already charged to an earlier run; updated in
    place). Returns ``computed``/``reused`` counts, ``reused_make_s`` and ``unrecorded`` (reused artifacts
    the index does not know, counted as 0 s)."""
    counted = set() if counted is None else counted
    computed = {e["artifact"] for e in events if not e["hit"]}
    todo = [e["artifact"] for e in events if e["hit"]]
    reused, unrecorded, seconds = set(), 0, 0.0
    while todo:
        ref = todo.pop()
        if ref in computed or ref in counted or ref in reused:
            continue
        reused.add(ref)
        entry = _index_entry(ref)
        if entry is None:
            unrecorded += 1
            continue
        seconds += float(entry.get("own_seconds", entry.get("seconds", 0.0)))   # older entries: no "used"
        todo.extend(entry.get("used", []))
    counted |= computed | reused
    return {"computed": len(computed), "reused": len(reused), "reused_make_s": round(seconds, 1),
            "unrecorded": unrecorded}


def cached(kind: str, inputs: dict, compute: Callable[[Path], T], *, load: Callable[[Path], T],
           save: Callable[[T, Path], Any], label: str = "", suffix: str = "",
           done: Callable[[Path], bool] | None = None, code: tuple[str, ...] = ()) -> tuple[T, bool, Path]:
    """The artifact of ``kind`` for ``inputs``: loaded if it is complete, else computed and saved.

    ``compute(path)`` gets the artifact's path (a folder artifact keeps its resume state there, so an
    interrupted computation continues); ``save(value, path)`` must write atomically; ``done(path)``
    says whether a complete artifact is there (default: the path exists). Returns
    ``(value, was_cached, path)``. ``code``: modules computing this artifact beyond the kind's roots.
    """
    key = artifact_key(kind, inputs, code=code)
    path = artifact_path(kind, key, label=label, suffix=suffix)
    ref = f"{kind}/{key}"
    is_done = done or (lambda p: p.exists())
    if is_done(path):
        if _computing:
            _computing[-1].append((ref, 0.0))
        if os.environ.get(CACHE_LOG_ENV):
            _log(ref, label, True, (_index_entry(ref) or {}).get("seconds"))
        return load(path), True, path
    path.parent.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    _computing.append([])
    try:
        value = compute(path)
        save(value, path)
    finally:
        used = _computing.pop()
    seconds = time.perf_counter() - tick
    _index(kind, key, path, label, inputs, seconds, used)
    if _computing:
        _computing[-1].append((ref, seconds))
    _log(ref, label, False, round(seconds, 1))
    return value, False, path
