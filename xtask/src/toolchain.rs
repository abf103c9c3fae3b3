//! Installs, idempotently and saying what it does, what building and testing observer needs: the nightly's
//! rust-src, bpf-linker built against the nightly's own LLVM, and the Debian packages the tests drive.
use std::{
    io::{BufRead, BufReader, IsTerminal, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

pub const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn say(msg: impl AsRef<str>) {
    eprintln!("xtask [{}]: {}", since_start(), msg.as_ref());
}

/// Time since xtask's first message, as `m:ss`: a CI log then shows what each step took.
fn since_start() -> String {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let s = START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

/// Runs a command, failing with its command line when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs a cargo command whose build runs observer/build.rs, showing the nested eBPF build (aya-build forwards every
/// line of it as a `warning: observer@...:` line) as one progress line instead; everything else cargo prints goes
/// through. The nested output is kept in `log` and printed in full when the command fails.
pub fn run_cargo(cmd: &mut Command, log: &Path) -> Result<()> {
    let tty = std::io::stderr().is_terminal();
    if tty {
        cmd.env("CARGO_TERM_COLOR", "always");
    }
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stderr = child.stderr.take().context("cargo's stderr")?;
    let mut nested = Vec::new();
    let mut err = std::io::stderr().lock();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading cargo's output")?;
        match nested_ebpf_line(&line) {
            Some(text) => {
                if nested.is_empty() {
                    let _ = writeln!(
                        err,
                        "xtask: building the eBPF programs (nested cargo build, output kept in {})",
                        log.display()
                    );
                }
                nested.push(text);
            }
            None => {
                let _ = writeln!(err, "{line}");
            }
        }
    }
    drop(err);
    let status = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    if !nested.is_empty() {
        if let Some(dir) = log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(log, nested.join("\n") + "\n");
    }
    if !status.success() {
        if !nested.is_empty() {
            eprintln!("xtask: output of the nested eBPF build:");
            for line in &nested {
                eprintln!("    {line}");
            }
        }
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// The text of a line cargo prints for a build script's `cargo:warning=` of the observer package (aya-build's
/// forwarding of the nested eBPF build), colour codes removed; None for any other line.
fn nested_ebpf_line(line: &str) -> Option<String> {
    let plain = strip_ansi(line);
    let rest = plain.strip_prefix("warning: observer@")?;
    let text = rest.split_once(": ").map_or("", |(_version, text)| text);
    Some(text.to_string())
}

/// `line` without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs a command and returns its stdout, failing with the command line and its stderr when it exits non-zero.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates the Python virtualenv `venv` unless it exists; returns its interpreter. `purpose` names what needs it.
pub fn python_venv(venv: &Path, purpose: &str) -> Result<PathBuf> {
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let python3 =
            which::which("python3").with_context(|| format!("python3 is needed for {purpose}"))?;
        say(format!("creating Python venv {}", venv.display()));
        if let Some(parent) = venv.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let status = Command::new(python3)
            .args(["-m", "venv"])
            .arg(venv)
            .status()?;
        if !status.success() {
            bail!(
                "`python3 -m venv {}` failed ({status}); on Debian/Ubuntu install python3-venv",
                venv.display()
            );
        }
    }
    Ok(python)
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u"))
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

/// Everything the eBPF build needs. Prints what it checks; installs only what is missing.
pub fn ensure_ebpf_toolchain() -> Result<()> {
    ensure_nightly()?;
    ensure_bpf_linker()
}

/// The nightly toolchain with rust-src (the eBPF build and the fuzz targets need it).
pub fn ensure_nightly() -> Result<()> {
    let toolchains =
        output(Command::new("rustup").args(["toolchain", "list"])).context("rustup is required")?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        say("installing the nightly toolchain (the eBPF programs need it)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if !comps.lines().any(|l| l.starts_with("rust-src")) {
        say("adding rust-src to the nightly toolchain (build-std for the BPF target)");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    Ok(())
}

/// bpf-linker must use the very LLVM the nightly rustc emits bitcode for. We build it against the nightly's own
/// libLLVM and remember which one in a stamp file, so a nightly update triggers exactly one rebuild.
fn ensure_bpf_linker() -> Result<()> {
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{NIGHTLY}"))
            .args(["--print", "sysroot"]),
    )?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.*-rust-* in {}: is the nightly toolchain complete?",
                lib.display()
            )
        })?;
    let name = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let major = name
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or("")
        .to_string();
    let stamp_dir = cargo_home().join("observer-bpf-linker");
    let stamp = stamp_dir.join("stamp");
    let linker = cargo_home().join("bin/bpf-linker");
    let want = format!("{BPF_LINKER_VERSION} {name}");
    if linker.exists()
        && std::fs::read_to_string(&stamp)
            .map(|s| s.trim() == want)
            .unwrap_or(false)
    {
        say(format!(
            "bpf-linker {BPF_LINKER_VERSION} for {name} already installed"
        ));
        return Ok(());
    }
    say(format!("building bpf-linker {BPF_LINKER_VERSION} against the nightly's {name} (about 3 minutes, once)"));
    let prefix = stamp_dir.join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix))?;
    std::fs::write(&stamp, want)?;
    Ok(())
}

/// Debian packages the tests and benchmarks drive (real servers and clients). Installs the missing ones.
pub fn ensure_packages(pkgs: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = pkgs
        .iter()
        .filter(|(bin, _)| which::which(bin).is_err())
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        let mut all: Vec<&str> = pkgs.iter().map(|(_, p)| *p).collect();
        all.dedup();
        say(format!("packages present: {}", all.join(", ")));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages {missing:?}: install them with `sudo apt-get install -y {}`",
            missing.join(" ")
        );
    }
    say(format!("installing Debian packages: {}", missing.join(" ")));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// The packages the privileged tests and the benchmark use: binary to look for, package that provides it.
pub const TEST_PACKAGES: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("curl", "curl"),
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("bpftool", "bpftool"),
    // The hostile-traffic test sends a TLS ClientHello with `openssl s_client`.
    ("openssl", "openssl"),
    // The UI test loads every page in headless Chromium; fontconfig brings a font for its screenshots' text.
    ("chromium", "chromium"),
    ("fc-list", "fontconfig"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_build_lines_are_recognised_with_or_without_colour() {
        assert_eq!(
            nested_ebpf_line("warning: observer@0.1.0:    Compiling core v0.0.0").as_deref(),
            Some("   Compiling core v0.0.0")
        );
        assert_eq!(
            nested_ebpf_line(
                "\x1b[1m\x1b[33mwarning\x1b[0m\x1b[1m:\x1b[0m observer@0.1.0: error[E0425]: x"
            )
            .as_deref(),
            Some("error[E0425]: x")
        );
        assert_eq!(
            nested_ebpf_line("warning: observer@0.1.0: ").as_deref(),
            Some("")
        );
        for other in [
            "   Compiling observer v0.1.0",
            "warning: unused variable: `x`",
            "warning: observer-common@0.1.0: something",
        ] {
            assert_eq!(nested_ebpf_line(other), None, "{other}");
        }
    }
}
