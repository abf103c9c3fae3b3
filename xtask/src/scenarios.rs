//! `cargo xtask scenarios`: evaluates the insights detectors on generated scenarios (tuning seeds and held-out
//! seeds) with `observer insights scenarios`, and writes the figures into BENCHMARKS.md's insights section, leaving
//! the rest of the file as it is.
use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::toolchain::say;

/// The section this command owns in BENCHMARKS.md.
const HEADING: &str = "## Insights detectors on labelled scenarios";

pub fn run(root: &Path, bin: &Path, tuning: &str, held_out: &str) -> Result<()> {
    let prov = crate::benchmarks_md::provenance(root, "cargo xtask scenarios");
    let mut body = format!(
        "{HEADING}\n\n{prov}\n\nWritten by `cargo xtask scenarios` (`observer insights scenarios`). Each seed generates {} \
         baseline days then 2 scenario days of traffic for 4 APIs and 9 applications, with every scenario once \
         at a seeded time and size, and the decoys (a flash crowd of known clients, a permanent level shift, a \
         20-90 s error blip, the daily ramp, a known metronome health check). A label is detected when a finding \
         of its kind on its API (and application) overlaps its range (plus 10 minutes); recall (overlap) is the \
         share of label ranges the findings cover; precision counts findings that match a label. Targets: \
         per-event governance within 60 s, rate findings within 300 s, no finding in the baseline days or on a \
         decoy. Thresholds were tuned on the tuning seeds only.\n\n",
        4
    );
    for (title, seeds) in [
        (format!("Tuning seeds {tuning}"), tuning),
        (
            format!("Held-out seeds {held_out} (not used for tuning)"),
            held_out,
        ),
    ] {
        say(format!("scoring seeds {seeds}"));
        let out = crate::toolchain::output(Command::new(bin).current_dir(root).args([
            "insights",
            "scenarios",
            "--seeds",
            seeds,
            "--title",
            &title,
        ]))?;
        body.push_str(&out);
        body.push('\n');
    }
    crate::benchmarks_md::write_sections(root, std::slice::from_ref(&body))?;
    print!("{body}");
    say("wrote the insights section of BENCHMARKS.md");
    Ok(())
}
