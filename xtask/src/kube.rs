//! `cargo xtask k8s render|check`: the Helm chart (deploy/helm/observer) rendered and checked offline with Helm's own
//! engine, and the plain manifests (deploy/kubernetes) built by kubectl's kustomize.
//!
//! Helm is in neither Debian nor PyPI as a binary; the PyPI package `helm-python-sdk` bundles Helm v4's Go SDK as a
//! shared library, so `xtask/kube/charts.py` renders and lints with the code `helm template`/`helm lint` run. It
//! lives in its own venv (`.data/kube-venv`) beside `kubernetes-validate` (Kubernetes' OpenAPI schemas, bundled).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::toolchain::{ensure_packages, run, say};

/// Pinned so a check that passed keeps passing: Helm v4.2.3's engine, schemas up to Kubernetes 1.37.
const PIP_PACKAGES: &[(&str, &str)] = &[
    ("helm-python-sdk", "0.2.2"),
    ("kubernetes-validate", "1.37.0"),
];
/// The oldest Kubernetes the chart supports (Chart.yaml kubeVersion allows 1.29+; 1.30 is the oldest schema set
/// still maintained upstream) and the newest the schemas know.
pub const KUBE_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// kubectl's kustomize builds deploy/kubernetes; Debian ships kubectl in kubernetes-client.
const KUBECTL: &[(&str, &str)] = &[("kubectl", "kubernetes-client")];

/// Where `check` leaves each values file's rendered objects for observer/tests/kubernetes_manifests.rs.
pub fn rendered_dir(root: &Path) -> PathBuf {
    root.join("target").join("k8s-rendered")
}

/// Creates `.data/kube-venv` and installs the pinned packages when missing; returns its python.
fn ensure_venv(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".data").join("kube-venv");
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let python3 =
            which::which("python3").context("python3 is needed to render the Helm chart")?;
        say(format!("creating Python venv {}", venv.display()));
        std::fs::create_dir_all(root.join(".data"))?;
        run(Command::new(python3).args(["-m", "venv"]).arg(&venv))
            .context("on Debian/Ubuntu install python3-venv")?;
    }
    let check = "import importlib.metadata as m, sys\n\
                 pins = dict(a.split('==') for a in sys.argv[1:])\n\
                 try:\n    ok = all(m.version(n) == v for n, v in pins.items())\n\
                 except Exception:\n    ok = False\n\
                 sys.exit(0 if ok else 1)";
    let pins: Vec<String> = PIP_PACKAGES
        .iter()
        .map(|(n, v)| format!("{n}=={v}"))
        .collect();
    let present = Command::new(&python)
        .args(["-c", check])
        .args(&pins)
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", python.display()))?
        .success();
    if !present {
        say(format!(
            "installing {} into {} (~80 MB, once)",
            pins.join(" "),
            venv.display()
        ));
        run(Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(&pins))?;
    }
    Ok(python)
}

fn charts(root: &Path, python: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg(root.join("xtask/kube/charts.py"));
    cmd
}

/// Rewrites deploy/kubernetes from the chart and deploy/kubernetes/values.yaml.
pub fn render(root: &Path) -> Result<()> {
    let python = ensure_venv(root)?;
    run(charts(root, &python).arg("render").arg("--root").arg(root))
}

/// Lints and renders the chart for every values file, validates every object against [`KUBE_VERSIONS`], checks the
/// committed plain manifests are current and that kustomize builds them. Leaves the renders in [`rendered_dir`].
pub fn check(root: &Path) -> Result<PathBuf> {
    let python = ensure_venv(root)?;
    ensure_packages(KUBECTL)?;
    let out = rendered_dir(root);
    say("rendering and validating the Helm chart for every values file");
    let mut cmd = charts(root, &python);
    cmd.arg("check")
        .arg("--root")
        .arg(root)
        .arg("--out")
        .arg(&out);
    for v in KUBE_VERSIONS {
        cmd.args(["--kube-version", v]);
    }
    run(&mut cmd)?;
    say("building deploy/kubernetes with kubectl kustomize");
    let text = crate::toolchain::output(
        Command::new("kubectl")
            .arg("kustomize")
            .arg(root.join("deploy/kubernetes")),
    )?;
    let objects = text.matches("\nkind: ").count() + usize::from(text.starts_with("kind: "));
    let mut expected = 1; // namespace.yaml
    for entry in std::fs::read_dir(out.join("plain"))? {
        let body = std::fs::read_to_string(entry?.path())?;
        expected += body.lines().filter(|l| l.starts_with("kind: ")).count();
    }
    if objects != expected {
        bail!("kubectl kustomize deploy/kubernetes built {objects} objects, the chart renders {expected}");
    }
    say(format!(
        "kubectl kustomize deploy/kubernetes: {objects} objects"
    ));
    Ok(out)
}
