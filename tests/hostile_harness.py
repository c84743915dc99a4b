"""Run hostile cases in this (child) process and report each one as JSON on stdout.

``python tests/hostile_harness.py CASES.json``: each case is ``{"cli": [argv...]}`` (``eclipse.cli.main``)
or ``{"call": "module:function", "args": [...], "kwargs": {...}}`` (a library call whose only acceptable
failure is :class:`eclipse.errors.DataError`). Per case it reports the exit status (``cli``) or the outcome
(``call``: ``ok``, ``DataError`` or the unexpected exception type), stderr, seconds, and the process's peak
RSS so far (the last case's is the child's peak).
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import resource
import sys
import time
import traceback


def run_case(case: dict) -> dict:
    from eclipse import cli
    from eclipse.errors import DataError

    err = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        if "cli" in case:
            try:
                outcome = cli.main(case["cli"])
            except SystemExit as exit_:  # argparse errors
                outcome = exit_.code
        else:
            module, name = case["call"].split(":")
            fn = getattr(importlib.import_module(module), name)
            try:
                fn(*case.get("args", []), **case.get("kwargs", {}))
                outcome = "ok"
            except DataError as error:
                outcome = "DataError"
                print(error, file=sys.stderr)
            except BaseException as error:  # noqa: BLE001 - reported, the test fails on it
                outcome = type(error).__name__
                traceback.print_exc(file=sys.stderr)
    return {"name": case.get("name", ""), "outcome": outcome, "stderr": err.getvalue(),
            "seconds": time.perf_counter() - started,
            "peak_mib": peak_mib()}


def peak_mib() -> float:
    """This process's peak resident memory (``VmHWM``; ``ru_maxrss`` would include the parent's, which
    Linux carries across fork and exec)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(path: str) -> None:
    with open(path) as handle:
        cases = json.load(handle)
    for case in cases:
        print(json.dumps(run_case(case)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
