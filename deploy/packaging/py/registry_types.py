#!/usr/bin/env python3
"""Prints the device types of a registry document (the operator's iot-registry ConfigMap, binaryData
key registry.json.gz: compact JSON, gzip-compressed) on stdin, sorted, separated by spaces.

    kubectl get cm iot-registry -o jsonpath='{.binaryData.registry\\.json\\.gz}' | base64 -d |
      python3 deploy/packaging/py/registry_types.py

Reads plain JSON too (`iot-operator registry -f ...`), told apart by gzip's magic bytes, as the
workers do. Accepts either spelling of the key (deviceTypes, device_types); prints an empty line
without one.
"""
import gzip
import json
import sys

data = sys.stdin.buffer.read()
if data[:2] == b"\x1f\x8b":
    data = gzip.decompress(data)
r = json.loads(data)
print(" ".join(sorted(r.get("deviceTypes") or r.get("device_types") or {})))
