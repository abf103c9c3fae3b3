//! The stdout sink: one human-readable line per exchange, for a person watching a terminal (NDJSON is the
//! machine format).
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};

use super::queue::QueueRx;
use super::{SinkError, SinkMetrics};
use crate::event::{Event, KeyState, Side};

pub(super) async fn run_stdout<W: AsyncWrite + Unpin>(
    mut rx: QueueRx,
    out: W,
    metrics: Arc<SinkMetrics>,
) -> Result<(), SinkError> {
    let mut w = BufWriter::new(out);
    let mut text = String::new();
    while let Some(batch) = rx.recv().await {
        text.clear();
        for ev in &batch {
            text.push_str(&format_line(ev));
            text.push('\n');
        }
        let written = w.write_all(text.as_bytes()).await.is_ok();
        let counter = if written {
            &metrics.stdout_lines
        } else {
            &metrics.dropped_write_error
        };
        counter.inc_by(batch.len() as u64);
        rx.recycle(batch);
        if written && rx.is_empty() {
            let _ = w.flush().await;
        }
    }
    let _ = w.flush().await;
    Ok(())
}

fn human_bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n}B"),
        10_000..=9_999_999 => format!("{:.1}KB", n as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1}MB", n as f64 / 1e6),
        _ => format!("{:.1}GB", n as f64 / 1e9),
    }
}

fn human_duration(us: u64) -> String {
    match us {
        0..=999 => format!("{us}us"),
        1_000..=999_999 => format!("{:.1}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

fn proc_label(comm: &str, pid: u32) -> String {
    match (comm.is_empty(), pid) {
        (true, 0) => "?".to_string(),
        (true, p) => format!("({p})"),
        (false, 0) => comm.to_string(),
        (false, p) => format!("{comm}({p})"),
    }
}

/// One human-readable line per exchange:
/// `12:00:01.123456 GET example.com/v1/x -> 200 1.2ms 345B curl(1234) -> nginx(99) api=... app=... key=...`.
pub fn format_line(e: &Event) -> String {
    let ts = e.ts.to_rfc3339();
    let time = ts.get(11..26).unwrap_or(&ts);
    let status = if e.status == 0 {
        "---".to_string()
    } else {
        e.status.to_string()
    };
    let client = if e.client_pid == 0 && e.client_comm.is_empty() {
        format!("{}:{}", e.src_ip, e.src_port)
    } else {
        proc_label(&e.client_comm, e.client_pid)
    };
    let server = if e.server_pid == 0 && e.server_comm.is_empty() {
        format!("{}:{}", e.dst_ip, e.dst_port)
    } else {
        proc_label(&e.server_comm, e.server_pid)
    };
    let target = if e.host.is_empty() && e.path.is_empty() {
        "-".to_string()
    } else {
        format!("{}{}", e.host, e.path)
    };
    let mut line = format!(
        "{time} {method} {target} -> {status} {dur} {bytes} {client} -> {server}",
        method = if e.method.is_empty() { "?" } else { &e.method },
        dur = human_duration(e.duration_us),
        bytes = human_bytes(e.resp_bytes),
    );
    if e.side != Side::Client {
        line.push_str(&format!(" side={}", e.side.as_str()));
    }
    for (k, v) in [("api", &e.api_id), ("route", &e.route), ("app", &e.app_id)] {
        if !v.is_empty() {
            line.push_str(&format!(" {k}={v}"));
        }
    }
    if e.key_state != KeyState::None {
        let suffix = if e.key_suffix.is_empty() {
            "?"
        } else {
            &e.key_suffix
        };
        line.push_str(&format!(" key=…{suffix}:{}", e.key_state.as_str()));
    }
    if e.truncated {
        line.push_str(" truncated");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::tests::sample;

    #[test]
    fn stdout_line_is_readable() {
        assert_eq!(
            format_line(&sample()),
            "12:00:01.123456 GET example.com/v1/x -> 200 1.2ms 345B curl(1234) -> nginx(99) api=payments app=shop key=…a1b2:valid"
        );
        let remote = Event {
            src_ip: "10.0.0.1".parse().expect("ip"),
            src_port: 5555,
            status: 0,
            side: Side::Server,
            server_comm: "app".into(),
            ..Event::default()
        };
        assert_eq!(
            format_line(&remote),
            "00:00:00.000000 ? - -> --- 0us 0B 10.0.0.1:5555 -> app side=server"
        );
    }
}
