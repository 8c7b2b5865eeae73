#!/usr/bin/python3
"""Counts meson test results (and doctest cases) over one or more testlog.json
files and prints the final "N passed, N failed" line. A skipped test counts
as failed: a skip must never hide a missing feature."""
import json
import sys

passed = failed = 0
for path in sys.argv[1:]:
    try:
        lines = open(path).read().splitlines()
    except OSError as e:
        print(f"{path}: {e}", file=sys.stderr)
        failed += 1
        continue
    for line in lines:
        t = json.loads(line)
        ok = t["result"] in ("OK", "EXPECTEDFAIL")
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"FAILED: {t['name']} ({t['result']}) in {path}", file=sys.stderr)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
