#!/usr/bin/env python3
"""Lists every iot_* metric name the Grafana dashboards and alert rules query.

    python3 deploy/packaging/py/metrics_used.py deploy/monitoring

Argument: the monitoring directory (reads dashboards/*.json and rules/*.rules.yaml under it).
Prints the contents of deploy/monitoring/metrics-used.txt: one line per metric, tab-separated,
with the component exporting it (the second word of the name) and the files that use it.
`deploy/packaging-test.sh sync` writes it; the checks compare it with the checked-in file.
"""
import json
import pathlib
import re
import sys

import yaml

from dashboard_queries import queries

COMPONENTS = {"operator", "bridge", "enrichment", "simulator", "dashboard"}


def main():
    root = pathlib.Path(sys.argv[1])
    names = {}

    def scan(expr, source):
        for m in re.findall(r"\biot_[a-z0-9_]+\b", expr):
            names.setdefault(m, set()).add(source)

    for f in sorted(root.glob("dashboards/*.json")):
        # Panel queries and template-variable queries.
        for expr in queries(json.loads(f.read_text()), ("expr", "definition")):
            scan(expr, f"dashboards/{f.name}")
    for f in sorted(root.glob("rules/*.rules.yaml")):
        for g in yaml.safe_load(f.read_text())["groups"]:
            for r in g["rules"]:
                scan(r["expr"], f"rules/{f.name}")
    print("# Metric names queried by the Grafana dashboards and alert rules of deploy/monitoring/, with the")
    print("# component that exports them (name prefix). Generated: `deploy/packaging-test.sh sync`; the")
    print("# packaging check fails when this file is stale. A histogram appears as its _bucket series.")
    print("# metric\tcomponent\tused in")
    for n in sorted(names):
        c = n.split("_")[1]
        print(f"{n}\t{c if c in COMPONENTS else '?'}\t{' '.join(sorted(names[n]))}")


if __name__ == "__main__":
    main()
