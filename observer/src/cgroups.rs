//! cgroup v2 discovery (temporary; replaced by the flow branch).
use std::path::PathBuf;

pub fn cgroup2_mount() -> Result<PathBuf, std::io::Error> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        let mut parts = line.split(" - ");
        let (Some(pre), Some(post)) = (parts.next(), parts.next()) else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = pre.split_whitespace().nth(4) {
                return Ok(PathBuf::from(mp));
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "no cgroup2 mount",
    ))
}
