//! The benchmark's floor: cgroup_skb ingress and egress programs that do nothing (`r0 = 1; exit`), attached to
//! the cgroup v2 root the way the observer attaches its own. What they cost is what any cgroup_skb program costs on
//! this kernel and machine before it reads a byte, so the observer's figures can be read against it.
//!
//! Two instructions need no compiler: they are loaded with the raw `bpf(2)` syscall and attached through BPF
//! links, which the kernel detaches when their file descriptors close (also if the bench dies).
use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SKB: u32 = 8;
const BPF_CGROUP_INET_INGRESS: u32 = 0;
const BPF_CGROUP_INET_EGRESS: u32 = 1;

/// `r0 = 1` (let the packet pass), `exit`.
static PROGRAM: [u64; 2] = [
    u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]),
    u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
];

/// Attached no-op programs; dropping this detaches them.
pub struct NoopHooks {
    _links: Vec<OwnedFd>,
}

/// `union bpf_attr` as far as BPF_PROG_LOAD and BPF_LINK_CREATE read it (the kernel wants the rest zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn call(&mut self, cmd: libc::c_long, what: &str) -> Result<OwnedFd> {
        // SAFETY: bpf(2) reads and writes at most `self.0.len()` bytes of the attribute buffer we own and pass with
        // its length; the integers are plain values.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, self.0.as_mut_ptr(), self.0.len()) };
        if fd < 0 {
            bail!("{what}: {}", std::io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new file descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

fn cgroup2_root() -> Result<PathBuf> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .and_then(|f| f.get(1).map(PathBuf::from))
        .context("no cgroup v2 hierarchy is mounted")
}

impl NoopHooks {
    pub fn attach() -> Result<Self> {
        let root = cgroup2_root()?;
        let cg = File::open(&root).with_context(|| format!("opening {}", root.display()))?;
        let license = c"GPL";
        let mut links = Vec::new();
        for attach_type in [BPF_CGROUP_INET_INGRESS, BPF_CGROUP_INET_EGRESS] {
            let prog = Attr::new()
                .u32(0, BPF_PROG_TYPE_CGROUP_SKB)
                .u32(4, PROGRAM.len() as u32)
                .u64(8, PROGRAM.as_ptr() as u64)
                .u64(16, license.as_ptr() as u64)
                .u32(68, attach_type)
                .call(BPF_PROG_LOAD, "loading a no-op cgroup_skb program")?;
            let link = Attr::new()
                .u32(0, prog.as_raw_fd() as u32)
                .u32(4, cg.as_raw_fd() as u32)
                .u32(8, attach_type)
                .call(BPF_LINK_CREATE, "attaching a no-op cgroup_skb program")?;
            links.push(link);
        }
        Ok(NoopHooks { _links: links })
    }
}
