"""Renders and checks the Helm chart deploy/helm/observer with Helm's own template engine, offline.

Helm is packaged neither by Debian nor as a plain binary on PyPI; `helm-python-sdk` (PyPI) binds Helm v4's Go SDK
(libhelm_c, bundled in its wheel), so `Chart.render` and `lint` here are the very code `helm template` and
`helm lint` run. `cargo xtask k8s` runs this script from the venv it installs; it does three things:

  render  write deploy/kubernetes/<template>.yaml (+ kustomization.yaml) from deploy/kubernetes/values.yaml
  check   lint and render the chart for every values file in ci/ (and for the plain manifests' values, comparing
          them with the committed files), reject duplicate YAML keys, validate every object with
          kubernetes-validate (bundled OpenAPI schemas, strict) against each --kube-version, check that values
          which must fail do fail with the message naming the problem, and write each case's objects to --out
          for the Rust posture test (observer/tests/kubernetes_manifests.rs)

Exit status 0 only when every check passed; every problem is printed with the case and object it concerns.
"""

import argparse
import pathlib
import sys

import helm_python as helm
import kubernetes_validate
import yaml

RELEASE = "observer"
NAMESPACE = "observer"
HEADER = (
    "# Rendered from deploy/helm/observer with deploy/kubernetes/values.yaml by `cargo xtask k8s render`: edit the\n"
    "# chart or the values, not this file (`cargo xtask test` fails when it is stale).\n"
)
# Kinds from CRDs, which the bundled Kubernetes schemas do not describe: checked for shape by the posture test.
CRD_API_VERSIONS = {"monitoring.coreos.com/v1"}
# Values that must be refused, and a fragment of the message that must say why.
MUST_FAIL = [
    ({"clickhouse": {"url": "http://ch:8123"}}, "keySecret: set keySecret.existingSecret"),
    ({"keySecret": {"existingSecret": "k"}}, "clickhouse.url is required"),
    (
        {"keySecret": {"existingSecret": "k"}, "clickhouse": {"url": "http://ch:8123"}, "agent": {"tc": {"enabled": True}}},
        "agent.tc.enabled needs agent.tc.interfaces",
    ),
    (
        {"keySecret": {"existingSecret": "k"}, "clickhouse": {"url": "http://ch:8123"}, "agent": {"captureBytes": 10}},
        "captureBytes",
    ),
]


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping with the same key twice (PyYAML and kubectl keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def render(chart_dir, values):
    """{template file name: rendered text} for templates that produced objects, NOTES.txt left out."""
    with helm.Chart.load(chart_dir) as chart:
        chart.validate_schema(values)
        out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    rendered = {}
    for path, text in sorted(out.items()):
        name = pathlib.PurePosixPath(path).name
        if name == "NOTES.txt" or not text.strip():
            continue
        docs = [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d]
        if docs:
            rendered[name] = text.strip() + "\n"
    return rendered


def objects(rendered):
    for name, text in rendered.items():
        for doc in yaml.load_all(text, Loader=UniqueKeyLoader):
            if doc:
                yield name, doc


def lint(chart_dir, values, kube_version):
    report = helm.lint(chart_dir, values, strict=True, namespace=NAMESPACE, kube_version=kube_version)
    return [f"{m.get('path')}: {m.get('error')}" for m in report.get("messages", []) if m.get("severity", 0) >= 2] + list(
        report.get("errors") or []
    )


def check_case(case, chart_dir, values, versions, out_dir):
    problems = []
    for version in versions:
        problems += [f"{case}: helm lint (Kubernetes {version}): {p}" for p in lint(chart_dir, values, "v" + version)]
    try:
        rendered = render(chart_dir, values)
    except (helm.HelmError, yaml.YAMLError) as e:
        return [f"{case}: rendering failed: {e}"], {}
    count = 0
    for name, obj in objects(rendered):
        count += 1
        what = f"{case}: {name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("apiVersion") in CRD_API_VERSIONS:
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{what}: invalid for Kubernetes {version}: {e.message} at {list(e.path)}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                problems.append(f"{what}: {e}")
    if out_dir:
        case_dir = out_dir / case
        case_dir.mkdir(parents=True, exist_ok=True)
        for old in case_dir.glob("*.yaml"):
            old.unlink()
        for name, text in rendered.items():
            (case_dir / name).write_text(text)
    print(f"charts: {case}: {count} objects rendered, linted and valid for Kubernetes {', '.join(versions)}"
          if not problems else f"charts: {case}: {len(problems)} problem(s)")
    return problems, rendered


def plain_files(rendered):
    files = {name: HEADER + text for name, text in rendered.items()}
    resources = ["namespace.yaml"] + sorted(files)
    files["kustomization.yaml"] = (
        HEADER
        + "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: observer\nresources:\n"
        + "".join(f"  - {r}\n" for r in resources)
    )
    return files


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["render", "check"])
    p.add_argument("--root", type=pathlib.Path, required=True)
    p.add_argument("--kube-version", action="append", default=[])
    p.add_argument("--out", type=pathlib.Path)
    a = p.parse_args()
    chart_dir = a.root / "deploy/helm/observer"
    plain_dir = a.root / "deploy/kubernetes"
    plain_values = yaml.safe_load((plain_dir / "values.yaml").read_text())
    generated = "# Rendered from deploy/helm/observer"

    if a.command == "render":
        files = plain_files(render(chart_dir, plain_values))
        for old in plain_dir.glob("*.yaml"):
            if old.read_text().startswith(generated) and old.name not in files:
                old.unlink()
        for name, text in files.items():
            (plain_dir / name).write_text(text)
        print(f"charts: wrote {len(files)} files to {plain_dir}")
        return 0

    versions = a.kube_version or ["1.30.0", "1.37.0"]
    problems = []
    cases = [(f.name.removesuffix("-values.yaml"), yaml.safe_load(f.read_text())) for f in sorted((chart_dir / "ci").glob("*-values.yaml"))]
    cases.append(("plain", plain_values))
    for case, values in cases:
        found, rendered = check_case(case, chart_dir, values, versions, a.out)
        problems += found
        if case == "plain" and rendered:
            for name, text in plain_files(rendered).items():
                path = plain_dir / name
                if not path.exists() or path.read_text() != text:
                    problems.append(f"plain: {path} is stale: run `cargo xtask k8s render` and commit the result")
    for values, expected in MUST_FAIL:
        try:
            render(chart_dir, values)
            problems.append(f"values {values} rendered, but must fail with {expected!r}")
        except helm.HelmError as e:
            if expected not in str(e):
                problems.append(f"values {values} failed with {e}, expected a message with {expected!r}")
    print(f"charts: {len(MUST_FAIL)} invalid values files refused with the expected message"
          if not any("must fail" in p or "expected a message" in p for p in problems) else "")
    for problem in problems:
        print(f"charts: PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
