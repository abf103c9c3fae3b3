//! BENCHMARKS.md is written by several commands (`bench`, `scenarios`), each owning its `## ` sections: a command
//! replaces its own sections in place and leaves the others as they are. Every section opens with where and when
//! its figures were measured, from which commit, and the command that reproduces them.
use std::{path::Path, process::Command};

use anyhow::{Context, Result};

/// Replaces, in `root`/BENCHMARKS.md, each section whose first line is one of `sections`' first lines (a `## `
/// heading) with the new text, appending those not there yet.
pub fn write_sections(root: &Path, sections: &[String]) -> Result<()> {
    let path = root.join("BENCHMARKS.md");
    let mut doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    for (i, s) in sections.iter().enumerate() {
        // A section not there yet goes before the next of this command's sections that is, keeping their order.
        let heading = |s: &str| s.lines().next().unwrap_or("").to_string();
        let at = (!has_heading(&doc, &heading(s)))
            .then(|| {
                sections[i + 1..]
                    .iter()
                    .find_map(|n| find_heading(&doc, &heading(n)))
            })
            .flatten();
        doc = match at {
            Some(at) => format!("{}{}{}", &doc[..at], ensure_blank_end(s), &doc[at..]),
            None => replace_section(&doc, s),
        };
    }
    std::fs::write(&path, doc).with_context(|| format!("writing {}", path.display()))
}

fn ensure_blank_end(s: &str) -> String {
    format!("{}\n\n", s.trim_end())
}

/// Where the line `heading` starts in `doc`, if it is there as a whole line.
fn find_heading(doc: &str, heading: &str) -> Option<usize> {
    doc.match_indices(heading).map(|(i, _)| i).find(|&i| {
        (i == 0 || doc[..i].ends_with('\n')) && doc[i + heading.len()..].starts_with('\n')
    })
}

fn has_heading(doc: &str, heading: &str) -> bool {
    find_heading(doc, heading).is_some()
}

/// `doc` with the section headed by `section`'s first line (up to the next `## ` heading) replaced by `section`, or
/// `section` appended.
pub fn replace_section(doc: &str, section: &str) -> String {
    let heading = section.lines().next().unwrap_or("");
    let section = if section.ends_with("\n\n") {
        section.to_string()
    } else {
        format!("{}\n\n", section.trim_end())
    };
    let found = doc.match_indices(heading).map(|(i, _)| i).find(|&i| {
        (i == 0 || doc[..i].ends_with('\n')) && doc[i + heading.len()..].starts_with('\n')
    });
    let Some(start) = found else {
        let sep = if doc.is_empty() || doc.ends_with("\n\n") {
            ""
        } else if doc.ends_with('\n') {
            "\n"
        } else {
            "\n\n"
        };
        return format!("{doc}{sep}{section}");
    };
    let rest = &doc[start + heading.len()..];
    let end = rest
        .find("\n## ")
        .map_or(doc.len(), |i| start + heading.len() + i + 1);
    format!("{}{}{}", &doc[..start], section, &doc[end..])
}

/// One line saying where, when and from which commit figures come, and the command that reproduces them.
pub fn provenance(root: &Path, command: &str) -> String {
    let out = |cmd: &mut Command| {
        cmd.output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let date = out(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]));
    let commit = out(Command::new("git").current_dir(root).args([
        "describe",
        "--always",
        "--dirty",
        "--abbrev=10",
    ]));
    let kernel = out(Command::new("uname").arg("-r"));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    // Other work on the box changes every figure: say how busy it was when the figures were written.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "?".into());
    format!(
        "Measured {date} at commit `{commit}` on {n} vCPU ({cpu}), Linux {kernel}, load average {load} over the \
         last 5 minutes. Reproduce with `{command}`."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_in_place_or_appended() {
        let s = "## Mine\n\nnew\n";
        assert_eq!(replace_section("# B\n", s), "# B\n\n## Mine\n\nnew\n\n");
        let doc = "# B\n\n## Mine\n\nold\n\n## Other\n\nkept\n";
        assert_eq!(
            replace_section(doc, s),
            "# B\n\n## Mine\n\nnew\n\n## Other\n\nkept\n"
        );
        // The last section runs to the end; a heading that only starts like another is not it.
        let doc = "# B\n\n## Mine too\n\nx\n\n## Mine\n\nold\n";
        assert_eq!(
            replace_section(doc, s),
            "# B\n\n## Mine too\n\nx\n\n## Mine\n\nnew\n\n"
        );
    }

    #[test]
    fn a_new_section_goes_before_the_next_one_of_its_command() {
        let dir = tempfile_dir();
        std::fs::write(
            dir.join("BENCHMARKS.md"),
            "# B\n\n## Two\n\nold\n\n## Other\n\nkept\n",
        )
        .unwrap();
        write_sections(
            &dir,
            &[
                "## One\n\n1".into(),
                "## Two\n\n2".into(),
                "## Three\n\n3".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("BENCHMARKS.md")).unwrap(),
            "# B\n\n## One\n\n1\n\n## Two\n\n2\n\n## Other\n\nkept\n\n## Three\n\n3\n\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("benchmarks-md-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
