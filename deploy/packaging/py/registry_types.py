#!/usr/bin/env python3
"""Prints the device types of a registry document (the operator's iot-registry ConfigMap, key
registry.json) on stdin, sorted, separated by spaces.

    kubectl get cm iot-registry -o jsonpath='{.data.registry\.json}' | python3 deploy/packaging/py/registry_types.py

Accepts either spelling of the key (deviceTypes, device_types); prints an empty line without one.
"""
import json
import sys

r = json.load(sys.stdin)
print(" ".join(sorted(r.get("deviceTypes") or r.get("device_types") or {})))
