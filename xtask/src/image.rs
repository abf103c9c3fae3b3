//! `cargo xtask image`: builds the OCI image from the repository's Dockerfile with the first container engine found
//! (podman, buildah, or docker with a reachable daemon), and says plainly when there is none.
//!
//! The Dockerfile's build stage runs `cargo xtask build`, so the image is built with exactly the toolchain pins the
//! xtask keeps; its base images are build arguments, for registries that mirror them under other names.
use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::toolchain::{run, say};

/// Base images, overridable where Docker Hub's names are not reachable (a mirror, an air-gapped registry).
pub struct Bases {
    pub rust: Option<String>,
    pub runtime: Option<String>,
}

/// Engines in order of preference: daemonless first.
fn engine() -> Option<(&'static str, Vec<&'static str>)> {
    if which::which("podman").is_ok() {
        return Some(("podman", vec!["build"]));
    }
    if which::which("buildah").is_ok() {
        return Some(("buildah", vec!["build"]));
    }
    let docker_up = which::which("docker").is_ok()
        && Command::new("docker")
            .arg("info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    docker_up.then(|| ("docker", vec!["build"]))
}

pub fn build(root: &Path, tag: &str, bases: &Bases) -> Result<()> {
    let Some((name, sub)) = engine() else {
        bail!(
            "no container engine: none of podman, buildah or docker (with a running daemon) is available here. \
             Install one (`apt-get install podman`) and run `cargo xtask image` again; the Dockerfile needs its base \
             images ({}) from a registry the engine can reach",
            "docker.io/library/rust:1-bookworm, docker.io/library/debian:bookworm-slim"
        );
    };
    say(format!(
        "building image {tag} with {name} (Dockerfile; the build stage runs `cargo xtask build`)"
    ));
    let mut cmd = Command::new(name);
    cmd.current_dir(root)
        .args(sub)
        .args(["-t", tag, "-f", "Dockerfile"]);
    if let Some(img) = &bases.rust {
        cmd.args(["--build-arg", &format!("RUST_IMAGE={img}")]);
    }
    if let Some(img) = &bases.runtime {
        cmd.args(["--build-arg", &format!("RUNTIME_IMAGE={img}")]);
    }
    run(cmd.arg(".")).with_context(|| {
        format!(
            "{name} could not build the image; if it could not pull the base images (no route to their registry), \
             pass --rust-image/--runtime-image naming images it has locally or can reach"
        )
    })?;
    say(format!(
        "built {tag}; push it and set image.repository/image.tag in the chart's values"
    ));
    Ok(())
}
