//! `cargo xtask scenarios`: evaluates the insights detectors on generated scenarios (tuning seeds and held-out
//! seeds) with `observer insights scenarios`, and writes the figures into BENCHMARKS.md's insights section, leaving
//! the rest of the file as it is.
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::toolchain::say;

/// The section this command owns in BENCHMARKS.md.
const HEADING: &str = "## Insights detectors on labelled scenarios";

pub fn run(root: &Path, bin: &Path, tuning: &str, held_out: &str) -> Result<()> {
    let mut body = format!(
        "{HEADING}\n\nWritten by `cargo xtask scenarios` (`observer insights scenarios`). Each seed generates {} \
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
        let out = Command::new(bin)
            .current_dir(root)
            .args(["insights", "scenarios", "--seeds", seeds, "--title", &title])
            .output()
            .context("running observer insights scenarios")?;
        if !out.status.success() {
            bail!(
                "observer insights scenarios failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        body.push_str(&String::from_utf8_lossy(&out.stdout));
        body.push('\n');
    }
    let path = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = replace_section(&old, &body);
    std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
    print!("{body}");
    say(format!("wrote the insights section of {}", path.display()));
    Ok(())
}

/// `doc` with its insights section (up to the next `## ` heading) replaced by `section`, or `section` appended.
fn replace_section(doc: &str, section: &str) -> String {
    let Some(start) = doc.find(HEADING) else {
        let sep = if doc.is_empty() || doc.ends_with("\n\n") {
            ""
        } else {
            "\n"
        };
        return format!("{doc}{sep}{section}");
    };
    let rest = &doc[start + HEADING.len()..];
    let end = rest
        .find("\n## ")
        .map_or(doc.len(), |i| start + HEADING.len() + i + 1);
    format!("{}{}{}", &doc[..start], section, &doc[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_in_place_or_appended() {
        let s = format!("{HEADING}\n\nnew\n");
        assert_eq!(replace_section("# B\n", &s), format!("# B\n\n{s}"));
        let doc = format!("# B\n\n{HEADING}\n\nold\n\n## Other\n\nkept\n");
        assert_eq!(
            replace_section(&doc, &s),
            format!("# B\n\n{s}## Other\n\nkept\n")
        );
    }
}
