#!/usr/bin/env python3
"""Turns every Grafana dashboard query into a Prometheus recording rule, so that promtool can
check that each one is valid PromQL (Grafana's $__rate_interval and $namespace replaced by values).

    python3 deploy/packaging/py/dashboard_rules.py DASHBOARDS_DIR > dashboard-queries.rules.yaml

Reads DASHBOARDS_DIR/*.json; prints a rule file with one group, dashboard-queries.
"""
import json
import pathlib
import sys

import yaml

from dashboard_queries import queries


def main():
    rules = []
    for f in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
        for expr in queries(json.loads(f.read_text())):
            e = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")
            rules.append({"record": f"dashboard_query:{f.stem.replace('-', '_')}:{len(rules)}", "expr": e})
    print(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))


if __name__ == "__main__":
    main()
