#!/usr/bin/env python3
"""Validates the manifests `helm template` rendered (read from a file or stdin).

1. Every Kubernetes object against the OpenAPI schemas that kubernetes-validate
   bundles, strictly (unknown fields are errors), for each --kube-version.
   Unlike the kubernetes-validate command, a kind it has no schema for is an
   ERROR here, not a warning that passes.
2. The one CRD the chart renders, ServiceMonitor, against our own strict subset
   of its schema (servicemonitor-v1.schema.json beside this file).
3. What no schema can see: names unique per kind, the Deployment's selector
   matching its pod labels, the Service, PDB, HPA and ServiceMonitor pointing
   at those pods and ports, probes on declared ports, the grace period covering
   preStop + SHUTDOWN_TIMEOUT, the ConfigMap it loads being rendered.

Exits 1 on any error. Needs the venv that scripts/check_chart.sh makes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv

HERE = Path(__file__).resolve().parent
SERVICE_MONITOR_SCHEMA = json.loads((HERE / "servicemonitor-v1.schema.json").read_text())


class Report:
    def __init__(self, label: str) -> None:
        self.label = label
        self.errors: list[str] = []

    def error(self, what: str, message: str) -> None:
        self.errors.append(f"{what}: {message}")
        print(f"  ERROR {self.label}: {what}: {message}")


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def validate_schema(docs: list[dict], versions: list[str], report: Report) -> None:
    for doc in docs:
        what = name_of(doc)
        if doc.get("kind") == "ServiceMonitor":
            validator = jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA)
            problems = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
            for problem in problems:
                path = ".".join(str(p) for p in problem.path)
                report.error(what, f"own ServiceMonitor schema: {path}: {problem.message}")
            if not problems:
                print(f"  ok   {what} (own ServiceMonitor schema)")
            continue
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.ValidationError as problem:
                path = ".".join(str(p) for p in problem.path)
                report.error(what, f"Kubernetes {version} schema: {path}: {problem.message}")
            except kv.SchemaNotFoundError as problem:
                report.error(what, f"no schema: {problem.message}")
            except kv.VersionNotSupportedError:
                report.error(what, f"kubernetes-validate has no schemas for Kubernetes {version}")
        if not any(e.startswith(what + ":") for e in report.errors):
            print(f"  ok   {what} (Kubernetes {', '.join(versions)}, strict)")


def seconds(duration: str) -> float:
    """A humantime duration as the chart writes it (e.g. 8s, 1m30s)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*(ms|s|m|h)", duration):
        total += int(number) * units[unit]
    return total


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def check_consistency(docs: list[dict], report: Report) -> None:
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        key = (doc.get("kind"), doc.get("metadata", {}).get("name"))
        if key in seen:
            report.error(name_of(doc), "rendered twice")
        seen.add(key)

    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    def component(doc: dict) -> str:
        return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")

    deployments = [d for d in by_kind.get("Deployment", []) if component(d) == "server"]
    if len(deployments) != 1:
        report.error("Deployment", f"expected exactly one of component server, found {len(deployments)}")
        return
    deploy = deployments[0]
    what = name_of(deploy)
    spec = deploy["spec"]
    pod = spec["template"]
    pod_labels = pod["metadata"].get("labels", {})
    selector = spec["selector"].get("matchLabels", {})
    if not matches(selector, pod_labels):
        report.error(what, f"selector {selector} does not match the pod labels {pod_labels}")

    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(probe_name)
        if not probe:
            report.error(what, f"{probe_name} missing")
            continue
        if "grpc" in probe:
            if probe["grpc"]["port"] not in ports.values():
                report.error(what, f"{probe_name} gRPC port {probe['grpc']['port']} is not a container port")
        elif "httpGet" in probe:
            port = probe["httpGet"]["port"]
            if port not in ports and port not in ports.values():
                report.error(what, f"{probe_name} HTTP port {port} is not a container port")

    configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref and not ref.get("optional"):
            if ref["name"] not in configmaps:
                report.error(what, f"envFrom ConfigMap {ref['name']} is not rendered")
            else:
                env.update(configmaps[ref["name"]].get("data", {}))
    if "SHUTDOWN_TIMEOUT" not in env:
        report.error(what, "SHUTDOWN_TIMEOUT not set by the ConfigMap")
    else:
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        needed = pre_stop + seconds(env["SHUTDOWN_TIMEOUT"])
        if grace < needed:
            report.error(what, f"terminationGracePeriodSeconds {grace} < preStop {pre_stop}s + SHUTDOWN_TIMEOUT {env['SHUTDOWN_TIMEOUT']}")
        else:
            print(f"  ok   {what}: grace {grace}s >= preStop {pre_stop}s + SHUTDOWN_TIMEOUT {env['SHUTDOWN_TIMEOUT']}")
    for var, port_name in (("GRPC_ADDR", "grpc"), ("HTTP_ADDR", "http")):
        address = env.get(var, "")
        if not address.endswith(f":{ports.get(port_name)}"):
            report.error(what, f"{var}={address!r} does not listen on the {port_name} container port {ports.get(port_name)}")

    for service in by_kind.get("Service", []):
        if not matches(service["spec"].get("selector"), pod_labels):
            report.error(name_of(service), "selector does not select the Deployment's pods")
        for port in service["spec"]["ports"]:
            if port["targetPort"] not in ports:
                report.error(name_of(service), f"targetPort {port['targetPort']} is not a container port")
    for doc in by_kind.get("PodDisruptionBudget", []):
        if not matches(doc["spec"]["selector"].get("matchLabels"), pod_labels):
            report.error(name_of(doc), "selector does not select the Deployment's pods")
    services = by_kind.get("Service", [])
    service_ports = {p["name"] for s in services for p in s["spec"]["ports"]}
    for doc in by_kind.get("ServiceMonitor", []):
        if not any(matches(doc["spec"]["selector"].get("matchLabels"), s["metadata"].get("labels", {})) for s in services):
            report.error(name_of(doc), "selector matches no Service the chart renders")
        for endpoint in doc["spec"]["endpoints"]:
            if endpoint["port"] not in service_ports:
                report.error(name_of(doc), f"endpoint port {endpoint['port']} is not a Service port")
    for doc in by_kind.get("Deployment", []):
        if doc is deploy:
            continue
        # The workers (values: worker): never the Service's endpoints, and
        # they read the same Secret as the service for DATABASE_URL.
        worker_pod = doc["spec"]["template"]
        if component(doc) != "worker":
            report.error(name_of(doc), "a Deployment that is neither the server nor the workers")
        if matches(selector, worker_pod["metadata"].get("labels", {})):
            report.error(name_of(doc), "its pods match the Deployment's selector (and the Service's)")
        if not matches(doc["spec"]["selector"].get("matchLabels"), worker_pod["metadata"].get("labels", {})):
            report.error(name_of(doc), "selector does not match its pod labels")
        worker_env = {e["name"]: e for e in worker_pod["spec"]["containers"][0].get("env", [])}
        secrets = {ref["secretRef"]["name"] for ref in container.get("envFrom", []) if "secretRef" in ref}
        database = worker_env.get("DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
        if database.get("name") not in secrets:
            report.error(name_of(doc), f"DATABASE_URL not from the service's Secret {sorted(secrets)}")
        if worker_env.get("TRANSLATION_QUEUE", {}).get("value") != env.get("TRANSLATION_QUEUE", "translation_jobs"):
            report.error(name_of(doc), "TRANSLATION_QUEUE differs from the service's")
        else:
            print(f"  ok   {name_of(doc)}: the service's Secret and queue, not behind the Service")
    for doc in by_kind.get("Job", []):
        # A Job pod the Service selected would get gRPC traffic while it runs.
        if matches(selector, doc["spec"]["template"]["metadata"].get("labels", {})):
            report.error(name_of(doc), "its pods match the Deployment's selector (and the Service's)")
    for doc in by_kind.get("HorizontalPodAutoscaler", []):
        ref = doc["spec"]["scaleTargetRef"]
        if ref["kind"] != "Deployment" or ref["name"] != deploy["metadata"]["name"]:
            report.error(name_of(doc), f"scaleTargetRef {ref} is not the Deployment")
        if "replicas" in spec:
            report.error(what, "sets replicas although an HPA manages it")
    for doc in by_kind.get("NetworkPolicy", []):
        if not matches(doc["spec"]["podSelector"].get("matchLabels"), pod_labels):
            report.error(name_of(doc), "podSelector does not select the Deployment's pods")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kube-version", action="append", required=True, help="e.g. 1.30.0; repeatable")
    parser.add_argument("--label", default="manifests", help="name of this render in messages")
    parser.add_argument("file", nargs="?", default="-")
    args = parser.parse_args()

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d]
    report = Report(args.label)
    if not docs:
        report.error("render", "no objects")
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            report.error("render", f"not a Kubernetes object: {str(doc)[:80]}")
    docs = [d for d in docs if isinstance(d, dict) and "kind" in d and "apiVersion" in d]
    validate_schema(docs, args.kube_version, report)
    if report.errors:
        print("  (cross-object checks skipped until the schema errors are fixed)")
    else:
        try:
            check_consistency(docs, report)
        except (KeyError, TypeError, IndexError, AttributeError) as error:
            report.error("render", f"cross-object checks could not read the objects: {error!r}")
    kinds = ", ".join(sorted({d["kind"] for d in docs}))
    if report.errors:
        print(f"FAIL {args.label}: {len(report.errors)} error(s) in {len(docs)} objects")
        return 1
    print(f"PASS {args.label}: {len(docs)} objects ({kinds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
