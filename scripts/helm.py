#!/usr/bin/env python3
"""`helm template` and `helm lint` for the tests, on Helm's own Go engine.

The Helm CLI is not packaged in the registries this project installs from; PyPI's
helm-python-sdk bundles Helm's Go SDK as a C library (libhelm_c), which this wraps. scripts/setup.sh
installs it into the tools venv; run this with that venv's python.

    helm.py template CHART [--name N] [--namespace NS] [-f VALUES.yaml]... [--set-json K=JSON]...
    helm.py lint CHART [--strict] [--kube-version V] [--namespace NS] [-f VALUES.yaml]...
    helm.py install CHART --name N --kubeconfig FILE [--namespace NS] [--create-namespace]
                    [--wait] [--timeout SECONDS] [-f VALUES.yaml]... [--set-json K=JSON]...

template prints the rendered manifests as `helm template` does (NOTES.txt and empty templates
left out, `# Source:` comments, `---` separators); lint prints each finding and exits 1 when the
chart has errors, or, with --strict, warnings (as `helm lint --strict`). install installs the
chart into the cluster of FILE as `helm install` does (CRDs from crds/ first, a release Secret),
optionally waiting until its workloads are ready, and prints the release's name, namespace,
revision and status.
"""

import argparse
import sys

import helm_python as helm

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def merge(base, top):
    """Helm's values coalescing for -f files: maps merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def user_values(args):
    values = {}
    for path in args.values:
        with open(path, encoding="utf-8") as f:
            values = merge(values, helm.values_from_yaml(f.read()) or {})
    for expr in args.set_json:
        values = merge(values, helm.parse_set_json(expr))
    return values


def template(args):
    chart = helm.Chart.load(args.chart)
    rendered = chart.render(
        user_values(args), name=args.name, namespace=args.namespace, is_install=True
    )
    out = []
    for path in sorted(rendered):
        text = rendered[path]
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        out.append(f"---\n# Source: {path}\n{text.strip()}\n")
    sys.stdout.write("".join(out))
    return 0


def lint(args):
    report = helm.lint(
        args.chart,
        user_values(args),
        strict=args.strict,
        namespace=args.namespace,
        kube_version=args.kube_version,
    )
    failing = 3 if not args.strict else 2
    failed = bool(report.get("errors"))
    for m in report.get("messages") or []:
        sev = m.get("severity", 0)
        print(f"[{SEVERITY.get(sev, sev)}] {m.get('path')}: {m.get('error')}")
        failed |= sev >= failing
    for e in report.get("errors") or []:
        print(f"[ERROR] {e}")
    print(f"1 chart(s) linted, {1 if failed else 0} chart(s) failed")
    return 1 if failed else 0


def install(args):
    with helm.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace) as cfg:
        release = cfg.install(
            args.chart,
            args.name,
            user_values(args),
            namespace=args.namespace,
            create_namespace=args.create_namespace,
            wait="watcher" if args.wait else None,
            timeout=args.timeout,
        )
    info = release.get("info") or {}
    print(
        f"NAME: {release.get('name')}\nNAMESPACE: {release.get('namespace')}\n"
        f"REVISION: {release.get('version')}\nSTATUS: {info.get('status')}"
    )
    return 0


def main():
    p = argparse.ArgumentParser(prog="helm.py")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("template", "lint", "install"):
        s = sub.add_parser(name)
        s.add_argument("chart")
        s.add_argument("--namespace", default="default")
        s.add_argument("-f", "--values", action="append", default=[])
        s.add_argument("--set-json", action="append", default=[])
    sub.choices["template"].add_argument("--name", default="release-name")
    sub.choices["lint"].add_argument("--strict", action="store_true")
    sub.choices["lint"].add_argument("--kube-version")
    sub.choices["install"].add_argument("--name", required=True)
    sub.choices["install"].add_argument("--kubeconfig", required=True)
    sub.choices["install"].add_argument("--create-namespace", action="store_true")
    sub.choices["install"].add_argument("--wait", action="store_true")
    sub.choices["install"].add_argument("--timeout", type=int, default=300)
    args = p.parse_args()
    return {"template": template, "lint": lint, "install": install}[args.command](args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except helm.HelmError as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
