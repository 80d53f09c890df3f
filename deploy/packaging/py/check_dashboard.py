#!/usr/bin/env python3
"""Checks one Grafana dashboard JSON: it has a uid and a title, its panel ids are unique, and every
panel but a row has queries and uses the ${datasource} variable as its data source.

    python3 deploy/packaging/py/check_dashboard.py DASHBOARD_JSON

Fails with an AssertionError naming the panel; prints the uid and the panel count when valid.
"""
import json
import sys


def main():
    d = json.load(open(sys.argv[1]))
    assert d.get("uid") and d.get("title"), "uid and title required"
    ids = set()
    for p in d["panels"]:
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        if p["type"] != "row":
            assert p.get("datasource", {}).get("uid") == "${datasource}", f"panel {p['title']}: datasource must be the variable"
            assert p.get("targets"), f"panel {p['title']}: no queries"
    print(f"{sys.argv[1]}: valid, uid {d['uid']}, {sum(p['type'] != 'row' for p in d['panels'])} panels")


if __name__ == "__main__":
    main()
