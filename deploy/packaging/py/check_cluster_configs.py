#!/usr/bin/env python3
"""Checks the local cluster configs: deploy/k3d/cluster.yaml is valid against k3d's JSON schema,
and the host ports of kind and k3d (dashboard 5001, console 8086, mosquitto 8883, the device listener) lead to the
NodePorts that deploy/kind/values.yaml and deploy/k3d/values.yaml give those services.

    python3 deploy/packaging/py/check_cluster_configs.py K3D_SCHEMA_JSON KIND_PORTS

K3D_SCHEMA_JSON: pkg/config/v1alpha5/schema.json of the k3d Go module; KIND_PORTS: the kind
config's port mappings, one `ROLE HOST_PORT CONTAINER_PORT PROTOCOL` a line (what the
kind-config-check program prints). Run from the repository root. Fails on an invalid k3d
config (jsonschema's ValidationError) or, exit 1, listing every wrong mapping.
"""
import json
import sys

import jsonschema
import yaml

WANT_HOST = {"dashboard": 5001, "console": 8086, "mosquitto": 8883}


def node_ports(values_file):
    v = yaml.safe_load(open(values_file))
    return {c: v[c]["service"]["nodePort"] for c in WANT_HOST
            if v.get(c, {}).get("service", {}).get("type") == "NodePort"}


def main():
    schema = json.load(open(sys.argv[1]))
    k3d = yaml.safe_load(open("deploy/k3d/cluster.yaml"))
    jsonschema.validate(k3d, schema)
    print("deploy/k3d/cluster.yaml: valid against k3d's v1alpha5 JSON schema")
    kind_map = {}
    for line in open(sys.argv[2]):
        role, host, container, proto = line.split()
        kind_map[int(host)] = int(container)
    k3d_map = {}
    for p in k3d["ports"]:
        parts = p["port"].split("/")[0].split(":")
        k3d_map[int(parts[-2])] = int(parts[-1])
    bad = []
    for name, mapping, values in (("kind", kind_map, "deploy/kind/values.yaml"), ("k3d", k3d_map, "deploy/k3d/values.yaml")):
        nps = node_ports(values)
        for c, host in WANT_HOST.items():
            if c not in nps:
                bad.append(f"{values}: {c} is not a NodePort")
                continue
            if mapping.get(host) != nps[c]:
                bad.append(f"{name}: host port {host} -> {mapping.get(host)}, but {c}.service.nodePort is {nps[c]}")
        print(f"{name}: " + ", ".join(f"localhost:{h} -> nodePort {mapping.get(h)} ({c})" for c, h in WANT_HOST.items()))
    if bad:
        print(*bad, sep="\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
