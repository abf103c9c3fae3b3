//! observer: eBPF HTTP traffic observer with business context.
mod cgroups;
mod enrich;
mod event;
mod flow;
mod http;
mod loader;
mod reader;
mod registry;
mod sink;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "observer",
    version,
    about = "Sidecar-free HTTP traffic observer with business context"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Debug: dump raw kernel records.
    Dump {
        #[arg(long)]
        iface: Vec<String>,
        #[arg(long, default_value_t = 5)]
        secs: u64,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Dump { iface, secs } => {
            let opts = loader::LoadOptions {
                cgroup: None,
                ifaces: iface,
                ports: vec![],
                capture_bytes: 4096,
            };
            let mut l = loader::load(&opts)?;
            let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            while std::time::Instant::now() < end {
                reader::drain(&mut l.events, 10000, |r| {
                    match r {
                    reader::Record::Data(h, p) => println!(
                        "DATA hook={} cookie={} cg={} pid={} {}:{}->{}:{} seq={} len={} cap={} fl={} {:?}",
                        h.hook, h.cookie, h.cgroup_id, h.pid_tgid >> 32,
                        std::net::Ipv6Addr::from(h.saddr), h.sport, std::net::Ipv6Addr::from(h.daddr), h.dport,
                        h.seq, h.payload_len, h.cap_len, h.flags, String::from_utf8_lossy(&p[..p.len().min(40)])
                    ),
                    reader::Record::Conn(c) => println!(
                        "CONN op={} cookie={} pid={} {}:{}<->{}:{} snd={} rcv={} acked={} recv={}",
                        c.op, c.cookie, c.pid_tgid >> 32, std::net::Ipv6Addr::from(c.laddr), c.lport,
                        std::net::Ipv6Addr::from(c.raddr), c.rport, c.snd_nxt, c.rcv_nxt, c.bytes_acked, c.bytes_received
                    ),
                }
                });
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            println!("counters {:?}", loader::read_counters(&l.counters));
        }
    }
    Ok(())
}
