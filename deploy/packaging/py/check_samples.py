#!/usr/bin/env python3
"""Checks that the chart's samples render to exactly the objects of deploy/samples/: the same
DeviceTypes and Applications with identical specs (the chart adds only labels and the namespace).

    python3 deploy/packaging/py/check_samples.py RENDERED_YAML SAMPLES_DIR

RENDERED_YAML: helm template output with samples.enabled=true; SAMPLES_DIR: deploy/samples.
Exits non-zero with the first difference found.
"""
import pathlib
import sys

import yaml


def main():
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(open(sys.argv[1]))
                if d and d["kind"] in ("DeviceType", "Application")}
    n = 0
    for f in sorted(pathlib.Path(sys.argv[2]).glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if not d:
                continue
            key = (d["kind"], d["metadata"]["name"])
            r = rendered.pop(key, None)
            if r is None:
                sys.exit(f"{f}: {key} not rendered by the chart")
            if r["spec"] != d["spec"]:
                sys.exit(f"{f}: {key} spec differs after templating")
            n += 1
    if rendered:
        sys.exit(f"rendered but not in deploy/samples: {list(rendered)}")
    print(f"{n} sample objects render with identical specs")


if __name__ == "__main__":
    main()
