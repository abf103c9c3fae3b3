//! Builds the eBPF programs (observer-ebpf, nightly + bpf-linker) into OUT_DIR for `include_bytes_aligned!`.
//!
//! Without the eBPF toolchain (plain `cargo test` on a box without nightly/bpf-linker, or AYA_BUILD_SKIP=1) an empty
//! object is written instead and the agent refuses to start with a message saying how to build it properly
//! (`cargo xtask build`). Unit tests of the userspace pipeline need no eBPF object.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR set by cargo"));
    let object = out_dir.join("observer");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let skip = matches!(env::var("AYA_BUILD_SKIP").as_deref(), Ok("1") | Ok("true"));
    // Re-run when bpf-linker appears or changes (a missing path makes cargo re-run the script every build).
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    println!(
        "cargo:rerun-if-changed={}",
        cargo_home.join("bin/bpf-linker").display()
    );
    let linker = which::which("bpf-linker").is_ok();
    if skip || !linker {
        if !skip {
            println!("cargo:warning=bpf-linker not found: building observer without eBPF programs (run `cargo xtask build`)");
        }
        fs::write(&object, b"")?;
        return Ok(());
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../observer-ebpf");
    let root = root.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "observer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
