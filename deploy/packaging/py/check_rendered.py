#!/usr/bin/env python3
"""Static checks of the chart's rendered manifests: hardening, RBAC scope, probes, resources and
image tags.

    python3 deploy/packaging/py/check_rendered.py WORK SET...

Reads WORK/rendered-SET.yaml (helm template output) for each value set SET. Fails (exit 1, one
line per finding) on: a cluster-scoped object (ClusterRole, ClusterRoleBinding, Namespace, CRD),
a wildcard or Secret rule in a Role, a worker ServiceAccount that mounts its token or is bound
to a Role, a pod that is not non-root with RuntimeDefault seccomp, a token in any pod but the
operator's, a container without read-only root, dropped capabilities, resource requests and a
memory limit, probes (except test pods) or a pinned image tag.
"""
import sys

import yaml


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
    print(f"hardening, RBAC scope, probes, resources and image tags OK in {len(sets)} value sets")


if __name__ == "__main__":
    main()
