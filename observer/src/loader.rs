//! Loads the embedded eBPF object, configures it and attaches every program; detaching is dropping `Loaded`.
//!
//! Preconditions are checked first so a user gets one clear sentence instead of a verifier dump: capabilities,
//! BTF, a cgroup v2 hierarchy, the interfaces named with `--iface`.
use std::{
    fs::File,
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{
        tc::{self, SchedClassifierLinkId},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SchedClassifier, SockOps, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use observer_common::{
    port_bit, port_word, KernelConfig, CNT_MAX, COUNTER_NAMES, MAX_CAPTURE, PORT_WORDS,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, MetricType},
};
use tracing::{debug, info, warn};

use crate::metrics::{EXCHANGES_LOST, EXCHANGES_LOST_REASONS};
use crate::reader;

/// The eBPF programs, built by build.rs. Empty when the crate was built without the eBPF toolchain.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Privileges(#[from] crate::privileges::PrivilegeError),
    #[error("the kernel exposes no BTF at /sys/kernel/btf/vmlinux: a kernel built with CONFIG_DEBUG_INFO_BTF=y is required")]
    NoBtf,
    #[error("no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo); mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`")]
    NoCgroup2,
    #[error("cgroup path {0} does not exist or is not a cgroup v2 directory")]
    BadCgroup(PathBuf),
    #[error("interface {0:?} not found (see `ip link`)")]
    NoInterface(String),
    #[error("this observer binary was built without its eBPF programs (bpf-linker or the nightly toolchain was missing); build it with `cargo xtask build`")]
    NoObject,
    #[error("loading the eBPF programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("attaching {what} failed: {source}")]
    Attach {
        what: String,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {0} missing or of the wrong type: {1}")]
    Map(&'static str, String),
}

/// What to attach where.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// cgroup v2 directory for cgroup_skb and sock_ops; None = the hierarchy's root.
    pub cgroup: Option<PathBuf>,
    /// Interfaces that also get TC ingress/egress programs.
    pub ifaces: Vec<String>,
    /// Capture only these ports (either end); empty = all ports.
    pub ports: Vec<u16>,
    pub capture_bytes: u32,
}

/// Attached programs and the maps the agent reads. Dropping it detaches everything (links are fd-owned) and removes
/// any clsact qdisc this process added.
pub struct Loaded {
    pub events: reader::Ring,
    pub counters: KernelCounters,
    pub attached: Vec<String>,
    added_qdiscs: Vec<String>,
    _tc_links: Vec<SchedClassifierLinkId>,
    // Declared last: dropped after the maps taken from it.
    _ebpf: Ebpf,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        for iface in &self.added_qdiscs {
            // aya can add a clsact qdisc but not delete one; iproute2 can.
            let ok = std::process::Command::new("tc")
                .args(["qdisc", "del", "dev", iface, "clsact"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                warn!(iface, "could not remove the clsact qdisc observer added");
            }
        }
    }
}

/// Checks everything a load needs that can be checked without loading.
pub fn preflight(opts: &LoadOptions) -> Result<PathBuf, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    crate::privileges::check()?;
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(LoadError::NoBtf);
    }
    let cgroup = match &opts.cgroup {
        Some(p) => p.clone(),
        None => crate::cgroups::cgroup2_mount().map_err(|_| LoadError::NoCgroup2)?,
    };
    if !cgroup.join("cgroup.procs").exists() {
        return Err(LoadError::BadCgroup(cgroup));
    }
    for iface in &opts.ifaces {
        // if_nametoindex asks the kernel in this process's network namespace; /sys/class/net may show another one
        // (a sysfs mounted by a different namespace).
        let known = std::ffi::CString::new(iface.as_str())
            // SAFETY: a valid NUL-terminated string; the call only reads it.
            .map(|name| unsafe { libc::if_nametoindex(name.as_ptr()) } != 0)
            .unwrap_or(false);
        if !known {
            return Err(LoadError::NoInterface(iface.clone()));
        }
    }
    Ok(cgroup)
}

/// Loads the object and its programs (the TC ones with `tc`) into the kernel, message heads scanned or not (the
/// kernel programs' `HEAD_SCAN_ENABLED`: a body the agent does not read left uncopied). The scan is a good part of
/// what the verifier walks, near its limit of a million instructions in the largest program (about 0.9 million
/// with it on Linux 6.18), so a kernel whose verifier walks more can refuse it: the caller then loads without.
fn load_programs(head_scan: bool, tc: bool) -> Result<Ebpf, LoadError> {
    // SOCK_FLOWS is socket-local storage, a map type aya 0.13 creates (with its BTF) but has no wrapper for: only
    // the kernel programs use it.
    let mut ebpf = EbpfLoader::new()
        .allow_unsupported_maps()
        .set_global("HEAD_SCAN_ENABLED", &u32::from(head_scan), true)
        .load(OBJECT)?;
    let load_err = |name: &str| {
        let what = name.to_string();
        move |source| LoadError::Attach { what, source }
    };
    for name in ["observer_cg_ingress", "observer_cg_egress"] {
        let prog: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or_else(|| miss(name))?
            .try_into()
            .map_err(load_err(name))?;
        prog.load().map_err(load_err(name))?;
    }
    let sockops: &mut SockOps = ebpf
        .program_mut("observer_sockops")
        .ok_or_else(|| miss("observer_sockops"))?
        .try_into()
        .map_err(load_err("observer_sockops"))?;
    sockops.load().map_err(load_err("observer_sockops"))?;
    if tc {
        for name in ["observer_tc_ingress", "observer_tc_egress"] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| miss(name))?
                .try_into()
                .map_err(load_err(name))?;
            prog.load().map_err(load_err(name))?;
        }
    }
    Ok(ebpf)
}

/// Loads, configures and attaches. On error nothing stays attached (everything loaded so far is dropped).
pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let cgroup_path = preflight(opts)?;
    bump_memlock_rlimit();
    let mut ebpf = match load_programs(true, !opts.ifaces.is_empty()) {
        Ok(ebpf) => ebpf,
        // Only a refusal by the verifier: any other failure would be the same without the scan.
        Err(
            e @ LoadError::Attach {
                source: aya::programs::ProgramError::LoadError { .. },
                ..
            },
        ) => {
            // The verifier's dump is long: its verdict is its last lines.
            let full = e.to_string();
            let verdict = full
                .lines()
                .find(|l| l.contains("processed") || l.contains("too large"))
                .unwrap_or_else(|| full.lines().next().unwrap_or_default());
            warn!(verdict = verdict.trim(), "the kernel's verifier did not take the programs with message heads \
                scanned; loading them without, which copies every body up to --capture-bytes (more CPU per exchange)");
            debug!(error = %e, "loading with message heads scanned");
            load_programs(false, !opts.ifaces.is_empty())?
        }
        Err(e) => return Err(e),
    };

    // On the hierarchy's root every local socket's egress is seen, loopback senders included.
    let at_root = crate::cgroups::cgroup2_mount()
        .ok()
        .and_then(|root| Some(root.canonicalize().ok()? == cgroup_path.canonicalize().ok()?))
        .unwrap_or(false);
    let cfg = KernelConfig {
        capture_bytes: opts.capture_bytes.clamp(64, MAX_CAPTURE as u32),
        filter_ports: u32::from(!opts.ports.is_empty()),
        skip_lo_ingress: u32::from(at_root),
        _pad: 0,
    };
    {
        let mut config: Array<_, KernelConfig> =
            Array::try_from(ebpf.map_mut("CONFIG").ok_or_else(|| miss("CONFIG"))?)
                .map_err(|e| LoadError::Map("CONFIG", e.to_string()))?;
        config
            .set(0, cfg, 0)
            .map_err(|e| LoadError::Map("CONFIG", e.to_string()))?;
        let mut words = [0u64; PORT_WORDS as usize];
        for &p in &opts.ports {
            words[port_word(p) as usize] |= port_bit(p);
        }
        let mut ports: Array<_, u64> =
            Array::try_from(ebpf.map_mut("PORTS").ok_or_else(|| miss("PORTS"))?)
                .map_err(|e| LoadError::Map("PORTS", e.to_string()))?;
        for (i, w) in words.iter().enumerate().filter(|(_, w)| **w != 0) {
            ports
                .set(i as u32, w, 0)
                .map_err(|e| LoadError::Map("PORTS", e.to_string()))?;
        }
    }

    let mut attached = Vec::new();
    let cg = File::open(&cgroup_path).map_err(|_| LoadError::BadCgroup(cgroup_path.clone()))?;
    let attach_err = |what: &str| {
        let what = what.to_string();
        move |source| LoadError::Attach {
            what: what.clone(),
            source,
        }
    };
    for (name, ty) in [
        ("observer_cg_ingress", CgroupSkbAttachType::Ingress),
        ("observer_cg_egress", CgroupSkbAttachType::Egress),
    ] {
        let prog: &mut CgroupSkb = ebpf
            .program_mut(name)
            .ok_or_else(|| miss(name))?
            .try_into()
            .map_err(attach_err(name))?;
        prog.attach(&cg, ty, CgroupAttachMode::Single)
            .map_err(attach_err(&format!("{name} to {}", cgroup_path.display())))?;
        attached.push(format!("cgroup_skb/{name} on {}", cgroup_path.display()));
    }
    let sockops: &mut SockOps = ebpf
        .program_mut("observer_sockops")
        .ok_or_else(|| miss("observer_sockops"))?
        .try_into()
        .map_err(attach_err("observer_sockops"))?;
    sockops
        .attach(&cg, CgroupAttachMode::Single)
        .map_err(attach_err(&format!(
            "sock_ops to {}",
            cgroup_path.display()
        )))?;
    attached.push(format!("sock_ops on {}", cgroup_path.display()));

    let mut tc_links = Vec::new();
    let mut added_qdiscs = Vec::new();
    if !opts.ifaces.is_empty() {
        for iface in &opts.ifaces {
            for (name, ty) in [
                ("observer_tc_ingress", TcAttachType::Ingress),
                ("observer_tc_egress", TcAttachType::Egress),
            ] {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .expect("loaded above")
                    .try_into()
                    .expect("checked above");
                // Kernels >= 6.6 attach through TCX links (no qdisc); older ones need a clsact qdisc.
                let id = match prog.attach(iface, ty) {
                    Ok(id) => id,
                    Err(_) => {
                        if tc::qdisc_add_clsact(iface).is_ok() && !added_qdiscs.contains(iface) {
                            added_qdiscs.push(iface.clone());
                        }
                        prog.attach(iface, ty)
                            .map_err(attach_err(&format!("{name} to {iface}")))?
                    }
                };
                tc_links.push(id);
                attached.push(format!("tc/{name} on {iface}"));
            }
        }
    }

    let flag = match ebpf.take_map("READER").ok_or_else(|| miss("READER"))? {
        Map::Array(data) => data,
        _ => return Err(LoadError::Map("READER", "not an array".into())),
    };
    let events = match ebpf.take_map("EVENTS").ok_or_else(|| miss("EVENTS"))? {
        Map::RingBuf(data) => {
            reader::Ring::new(data, flag).map_err(|e| LoadError::Map("EVENTS", e.to_string()))?
        }
        _ => return Err(LoadError::Map("EVENTS", "not a ring buffer".into())),
    };
    let counters =
        PerCpuArray::try_from(ebpf.take_map("COUNTERS").ok_or_else(|| miss("COUNTERS"))?)
            .map_err(|e| LoadError::Map("COUNTERS", e.to_string()))?;
    for a in &attached {
        info!("attached {a}");
    }
    Ok(Loaded {
        events,
        counters: KernelCounters(Arc::new(counters)),
        attached,
        added_qdiscs,
        _tc_links: tc_links,
        _ebpf: ebpf,
    })
}

fn miss(name: &'static str) -> LoadError {
    LoadError::Map(name, "not in the eBPF object".into())
}

/// The kernel's per-CPU failure and event counters (`COUNTERS` map); clones share the map, which stays readable
/// after the programs are detached. Registered on `/metrics`, it is read at each scrape.
#[derive(Clone)]
pub struct KernelCounters(Arc<PerCpuArray<MapData, u64>>);

impl std::fmt::Debug for KernelCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KernelCounters").field(&self.read()).finish()
    }
}

impl KernelCounters {
    /// The counters summed over CPUs, in `COUNTER_NAMES` order.
    pub fn read(&self) -> [u64; CNT_MAX as usize] {
        let mut out = [0u64; CNT_MAX as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(values) = self.0.get(&(i as u32), 0) {
                *slot = values.iter().sum();
            }
        }
        out
    }
}

impl Collector for KernelCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let values = self.read();
        let mut lost = encoder.encode_descriptor(
            EXCHANGES_LOST,
            "Exchanges lost before the agent saw their request, per reason (counted by the kernel, one per request start)",
            None,
            MetricType::Counter,
        )?;
        for (reason, idx) in EXCHANGES_LOST_REASONS {
            let labels = vec![("reason", reason)];
            ConstCounter::new(values[idx as usize]).encode(lost.encode_family(&labels)?)?;
        }
        for (name, v) in COUNTER_NAMES.iter().zip(values) {
            let counter = ConstCounter::new(v);
            let name = format!("kernel_{name}");
            let metric = encoder.encode_descriptor(
                &name,
                "Kernel-side counter (summed over CPUs).",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// Turns transparent huge pages off for the agent's process (`prctl(PR_SET_THP_DISABLE)`), before it allocates
/// much. mimalloc asks for huge pages on its arenas (`MADV_HUGEPAGE`), so each first touch of a fresh arena page
/// faulted in and zeroed 2 MiB: with the ClickHouse sink at about 25-60k events/s, 21-23% of the agent's CPU
/// samples were `clear_page_erms` under `do_huge_pmd_anonymous_page` (perf, 2026-11-28). With 4 KiB pages that
/// share fell out of the profile's top entries, and RSS under the same load went from 122-168 MiB to 96 MiB.
/// Failure (a kernel without THP) only costs that gain.
pub fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only; no memory is passed to the kernel.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not disable transparent huge pages");
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raising it is harmless elsewhere.
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit only reads the struct passed by reference, which lives across the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK; map creation may fail on kernels before 5.11"
        );
    }
}
