#!/usr/bin/env python3
"""Checks the image build context that .dockerignore leaves: every file of the Cargo workspace
(Cargo.toml, Cargo.lock, each member's files) is in it, and none of the local state (target/,
.git/, deploy/testenv/.run/, the chart, the test environment's scripts).

    python3 deploy/packaging/py/check_build_context.py

No arguments; run from the repository root (reads .dockerignore, Cargo.toml and the members).
Matches .dockerignore's patterns the way Docker does for these cases (last match wins, `!`
re-includes, `**/` matches any depth). Fails (exit 1) listing the misplaced paths.
"""
import fnmatch
import os
import sys
import tomllib


def main():
    patterns = []
    for line in open(".dockerignore"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        p = os.path.normpath(line.lstrip("!").lstrip("/"))
        patterns.append((neg, p))

    def excluded(path):
        parts = path.split("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        out = False
        for neg, p in patterns:
            if any(fnmatch.fnmatchcase(c, p) or fnmatch.fnmatchcase(c, p.replace("**/", "")) for c in candidates):
                out = not neg
        return out

    ws = tomllib.load(open("Cargo.toml", "rb"))["workspace"]["members"]
    need = ["Cargo.toml", "Cargo.lock"]
    for m in ws:
        need.append(f"{m}/Cargo.toml")
        for root, _, files in os.walk(m):
            need += [os.path.join(root, f) for f in files if not f.endswith(".swp")]
    must_not = ["target/debug/iot-operator", "deploy/testenv/.run/kubeconfig", "deploy/testenv/.run/certs/ca.key",
                ".git/HEAD", "charts/iot-cloud/Chart.yaml", "deploy/testenv/up.sh"]
    bad = [p for p in need if excluded(p)] + [f"{p} (should be excluded)" for p in must_not if not excluded(p)]
    if bad:
        print("build context wrong:", *bad, sep="\n  ")
        sys.exit(1)
    print(f"build context: {len(need)} workspace files included (members {', '.join(ws)}); "
          "target/, .git/, deploy/testenv/.run/ excluded")


if __name__ == "__main__":
    main()
