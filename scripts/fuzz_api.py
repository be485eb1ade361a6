"""A longer schemathesis run over the live OpenAPI document than the test suite affords.

Runs tests/service/test_openapi.py (a real server on loopback, every operation,
positive and negative data, free and anchored to the served model) with more
examples per operation, and the bad-input corpus of tests/service/test_errors.py;
prints and writes the figures docs/reliability.md reports:

    .venv/bin/python -m scripts.fuzz_api [--examples 75] [--out docs/reliability-fuzz.json]

Requests per run = operations x 2 modes x 2 runs x examples, less what Hypothesis
cannot generate (an operation without inputs has no negative data).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import REPO


def corpus_cases() -> int:
    from tests.service.test_errors import CASES, RAW_CASES

    return len(CASES) + len(RAW_CASES)


def run_tests(path: str, **env: str) -> tuple[bool, float]:
    """Run one test file of this checkout in a fresh interpreter: (passed, seconds)."""
    environment = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    began = time.monotonic()
    command = [sys.executable, "-m", "pytest", path, "-q", "-p", "no:logging", "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=REPO, env=environment)
    return result.returncode == 0, time.monotonic() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--examples", type=int, default=75, help="examples per operation, mode and run (x4 per operation)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "reliability-fuzz.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "fuzz.json"
        fuzz_ok, fuzz_s = run_tests(
            "tests/service/test_openapi.py",
            OODGATE_FUZZ_EXAMPLES=str(args.examples),
            OODGATE_FUZZ_REPORT=str(report),
        )
        summary = json.loads(report.read_text())
    corpus_ok, corpus_s = run_tests("tests/service/test_errors.py")
    summary.update(
        {
            "schemathesis_passed": fuzz_ok,
            "schemathesis_seconds": round(fuzz_s, 1),
            "corpus_cases": corpus_cases(),
            "corpus_passed": corpus_ok,  # each case asserts its 4xx, so passing means no 5xx
            "corpus_seconds": round(corpus_s, 1),
        }
    )
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if fuzz_ok and corpus_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
