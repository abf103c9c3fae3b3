//! The capabilities the agent needs to load and attach its eBPF programs, and the check that names a missing one
//! before the kernel answers with a bare EPERM or a verifier dump. README "Privileges" says how each was measured.

use rustix::thread::{capabilities, CapabilitySet};

/// One capability the agent needs, and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needed {
    /// The `CAP_*` name.
    pub name: &'static str,
    pub cap: CapabilitySet,
    /// What the kernel refuses without it.
    pub why: &'static str,
}

/// Every capability the agent needs, in the order they are checked. Since Linux 5.8 `CAP_SYS_ADMIN` stands in for
/// each of them (the kernel's `bpf_capable()`, `perfmon_capable()` and `bpf_net_capable()` accept it), which is how
/// older kernels, without CAP_BPF and CAP_PERFMON, run the agent.
pub const NEEDED: [Needed; 3] = [
    Needed {
        name: "CAP_BPF",
        cap: CapabilitySet::BPF,
        why: "creating the maps and loading the programs (bpf(BPF_MAP_CREATE, BPF_PROG_LOAD))",
    },
    Needed {
        name: "CAP_PERFMON",
        cap: CapabilitySet::PERFMON,
        why: "the verifier's rules for the programs' packet and memory reads (without it BPF_PROG_LOAD is refused)",
    },
    Needed {
        name: "CAP_NET_ADMIN",
        cap: CapabilitySet::NET_ADMIN,
        why: "attaching cgroup_skb and sock_ops to a cgroup and TC programs to interfaces (bpf_link_create)",
    },
];

/// Why the agent cannot load its programs with the privileges it has.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("{}", missing_message(.0))]
    Missing(Vec<Needed>),
    #[error("cannot read this process's capabilities (capget): {0}")]
    Read(std::io::Error),
}

fn missing_message(missing: &[Needed]) -> String {
    let names: Vec<&str> = missing.iter().map(|n| n.name).collect();
    let mut s = format!(
        "observer lacks {} in its effective capabilities; it needs {} (or run it as root):",
        names.join(", "),
        NEEDED.map(|n| n.name).join(", "),
    );
    for n in missing {
        s.push_str(&format!(" {} for {};", n.name, n.why));
    }
    s.push_str(" see README, Privileges");
    s
}

/// The needed capabilities absent from `effective` (none when it holds CAP_SYS_ADMIN, which stands in for all).
pub fn missing(effective: CapabilitySet) -> Vec<Needed> {
    if effective.contains(CapabilitySet::SYS_ADMIN) {
        return Vec::new();
    }
    NEEDED
        .into_iter()
        .filter(|n| !effective.contains(n.cap))
        .collect()
}

/// Checks this process's effective capabilities (whatever its uid: root with a reduced bounding set is checked too).
pub fn check() -> Result<(), PrivilegeError> {
    let sets = capabilities(None).map_err(|e| PrivilegeError::Read(e.into()))?;
    let missing = missing(sets.effective);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Missing(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL3: CapabilitySet = CapabilitySet::BPF
        .union(CapabilitySet::PERFMON)
        .union(CapabilitySet::NET_ADMIN);

    #[test]
    fn the_three_suffice_and_sys_admin_stands_in_for_them() {
        assert!(missing(ALL3).is_empty());
        assert!(missing(CapabilitySet::SYS_ADMIN).is_empty());
        assert!(missing(ALL3 | CapabilitySet::CHOWN).is_empty());
    }

    #[test]
    fn each_missing_capability_is_named_with_its_reason() {
        for n in NEEDED {
            let m = missing(ALL3.difference(n.cap));
            assert_eq!(m, vec![n]);
            let text = PrivilegeError::Missing(m).to_string();
            assert!(
                text.starts_with(&format!("observer lacks {} in", n.name)),
                "{text}"
            );
            assert!(text.contains(n.why), "{text}");
        }
        let none = PrivilegeError::Missing(missing(CapabilitySet::empty())).to_string();
        assert!(
            none.starts_with("observer lacks CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN in"),
            "{none}"
        );
    }

    #[test]
    fn unrelated_capabilities_do_not_count() {
        let m = missing(CapabilitySet::NET_RAW | CapabilitySet::SYS_PTRACE | CapabilitySet::BPF);
        assert_eq!(
            m.iter().map(|n| n.name).collect::<Vec<_>>(),
            ["CAP_PERFMON", "CAP_NET_ADMIN"]
        );
    }
}
