#!/usr/bin/env python3
"""Static checks of the chart's rendered manifests: hardening, RBAC scope, probes, resources and
image tags.

    python3 deploy/packaging/py/check_rendered.py WORK SET...

Reads WORK/rendered-SET.yaml (helm template output) for each value set SET. Fails (exit 1, one
line per finding) on: a cluster-scoped object (ClusterRole, ClusterRoleBinding, Namespace, CRD),
a wildcard or Secret rule in a Role, a worker ServiceAccount that mounts its token or is bound
to a Role, a pod that is not non-root with RuntimeDefault seccomp, a token in any pod but the
operator's, a container without read-only root, dropped capabilities, resource requests and a
memory limit, probes (except test pods) or a pinned image tag. Also checks that the placement of
the enrichment pods (`enrichment.nodeSelector`, `enrichment.tolerations`) reaches the operator as
IOT_ENRICHMENT_NODE_SELECTOR / IOT_ENRICHMENT_TOLERATIONS: JSON equal to the values in the sets
whose values are known here (default, external), well-formed JSON in every set, absent when empty.
"""
import json
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[3] / "charts" / "iot-cloud"
# The values files of the value sets whose enrichment placement is checked exactly (the other
# sets change no `enrichment` value); deploy/packaging/check.sh defines the sets.
PLACEMENT_VALUES = {
    "default": [CHART / "values.yaml"],
    "external": [CHART / "values.yaml", CHART / "ci" / "external-values.yaml"],
}
# Operator env var, `enrichment` value, JSON type the operator parses.
PLACEMENT_ENV = [
    ("IOT_ENRICHMENT_NODE_SELECTOR", "nodeSelector", dict),
    ("IOT_ENRICHMENT_TOLERATIONS", "tolerations", list),
]


def enrichment_placement(s):
    """The (nodeSelector, tolerations) values of set `s`, or None when not known here."""
    if s not in PLACEMENT_VALUES:
        return None
    placement = {}
    for path in PLACEMENT_VALUES[s]:
        enrichment = (yaml.safe_load(open(path)) or {}).get("enrichment", {})
        for _, key, _ in PLACEMENT_ENV:
            if key in enrichment:
                placement[key] = enrichment[key]
    return placement


def check_operator_placement_env(s, d, err):
    """The operator Deployment `d` passes the enrichment placement of set `s` in its env."""
    container = next(c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "operator")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    expected = enrichment_placement(s)
    for name, key, kind in PLACEMENT_ENV:
        if name in env:
            try:
                got = json.loads(env[name])
            except (TypeError, ValueError) as e:
                err(s, d, f"{name} is not JSON ({e}): {env[name]!r}")
                continue
            if not isinstance(got, kind) or not got:
                err(s, d, f"{name} must be a non-empty JSON {kind.__name__} (omitted when empty): {env[name]!r}")
                continue
        else:
            got = kind()
        if expected is not None and got != (expected.get(key) or kind()):
            err(s, d, f"{name} is {env.get(name, 'absent')!r}, expected enrichment.{key} {expected.get(key)!r}")


def main():
    work, sets = sys.argv[1], sys.argv[2:]
    errors = []

    def err(s, obj, msg):
        errors.append(f"[{s}] {obj['kind']}/{obj['metadata']['name']}: {msg}")

    for s in sets:
        docs = [d for d in yaml.safe_load_all(open(f"{work}/rendered-{s}.yaml")) if d]
        kinds = {d["kind"] for d in docs}
        for bad in ("ClusterRole", "ClusterRoleBinding", "Namespace", "CustomResourceDefinition"):
            if bad in kinds:
                errors.append(f"[{s}] renders a {bad} (nothing cluster-wide; CRDs come from crds/)")
        for d in docs:
            if d["kind"] == "Role":
                for r in d["rules"]:
                    if "*" in r.get("verbs", []) or "*" in r.get("resources", []) or "*" in r.get("apiGroups", []):
                        err(s, d, f"wildcard rule {r}")
                    if "secrets" in r.get("resources", []):
                        err(s, d, "grants access to secrets")
            if d["kind"] == "ServiceAccount" and d["metadata"]["name"].endswith("-worker"):
                if d.get("automountServiceAccountToken") is not False:
                    err(s, d, "worker ServiceAccount must set automountServiceAccountToken: false")
            if d["kind"] == "RoleBinding":
                for sub in d["subjects"]:
                    if sub["name"].endswith("-worker"):
                        err(s, d, "binds a Role to the workers' ServiceAccount")
            if d["kind"] in ("Deployment", "StatefulSet", "Pod"):
                pod = d["spec"] if d["kind"] == "Pod" else d["spec"]["template"]["spec"]
                is_test = d["kind"] == "Pod"
                psc = pod.get("securityContext", {})
                if psc.get("runAsNonRoot") is not True:
                    err(s, d, "pod securityContext.runAsNonRoot is not true")
                if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                    err(s, d, "pod seccompProfile is not RuntimeDefault")
                component = d["metadata"]["labels"].get("app.kubernetes.io/component")
                if component == "operator" and d["kind"] == "Deployment":
                    check_operator_placement_env(s, d, err)
                if component != "operator" and pod.get("automountServiceAccountToken") is not False:
                    err(s, d, "mounts a service account token (only the operator may)")
                for c in pod["containers"]:
                    sc = c.get("securityContext", {})
                    if sc.get("readOnlyRootFilesystem") is not True:
                        err(s, d, f"{c['name']}: readOnlyRootFilesystem is not true")
                    if sc.get("allowPrivilegeEscalation") is not False:
                        err(s, d, f"{c['name']}: allowPrivilegeEscalation is not false")
                    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                        err(s, d, f"{c['name']}: capabilities not dropped (ALL)")
                    if sc.get("privileged"):
                        err(s, d, f"{c['name']}: privileged")
                    if not c.get("resources", {}).get("requests") or "memory" not in c.get("resources", {}).get("limits", {}):
                        err(s, d, f"{c['name']}: no resource requests or memory limit")
                    if not is_test:
                        for p in ("livenessProbe", "readinessProbe"):
                            if p not in c:
                                err(s, d, f"{c['name']}: no {p}")
                    if ":" not in c["image"] or c["image"].endswith(":latest"):
                        err(s, d, f"{c['name']}: image {c['image']} has no pinned tag")
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    print(f"hardening, RBAC scope, probes, resources, image tags and enrichment placement OK in {len(sets)} value sets")


if __name__ == "__main__":
    main()
