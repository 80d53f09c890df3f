#!/usr/bin/env python3
"""Checks the output of `tilt alpha tiltfile-result`: the Tiltfile evaluated without error, has
every expected resource for its flags, and builds the right images (the operator two: its own
and the worker's it deploys; bridge, simulator and dashboard one each).

    python3 deploy/packaging/py/check_tiltfile_result.py RESULT_JSON ARGS

RESULT_JSON: tilt's output; ARGS: the Tiltfile arguments it was run with, as one string (for
instance "-- --monitoring"; "" for the defaults). Fails with an AssertionError naming what is off.
"""
import json
import sys

WORKLOADS = ["operator", "bridge", "simulator", "dashboard", "mosquitto", "redpanda", "console"]


def main():
    r = json.load(open(sys.argv[1]))
    args = sys.argv[2]
    assert not r.get("Error"), r["Error"]
    names = {m["Name"] for m in r["Manifests"]}
    want = {"crds", "uncategorized"} | {f"iot-cloud-{w}" for w in WORKLOADS}
    if "--no-samples" not in args:
        want.add("samples")
    if "--monitoring" in args:
        want |= {"kube-prometheus-stack", "grafana", "iot-cloud-monitoring"}
    assert want <= names, f"missing Tilt resources: {sorted(want - names)}"
    images = {m["Name"]: len(m.get("ImageTargets") or []) for m in r["Manifests"]}
    # The operator deploys both images: its own and, through IOT_WORKER_IMAGE, the worker's.
    assert images["iot-cloud-operator"] == 2, images
    assert all(images[f"iot-cloud-{w}"] == 1 for w in ["bridge", "simulator", "dashboard"]), images
    print(f"tilt alpha tiltfile-result {args or '(defaults)'}: {len(names)} resources, no error")


if __name__ == "__main__":
    main()
