//! The bench's sections of BENCHMARKS.md: the headline (CPU per exchange), the rounds and their ratios, the peers,
//! the kernel programs' cost and the criterion figures, each opening with where, when and how it was measured.
use std::fmt::Write as _;
use std::path::Path;

use super::load::PORT;
use super::stats::{interval95, mean, ratios, Goal, Ratios};
use super::{Config, Observed, Paced, ProgCost, IDLE_PORT, PACE_MS, WARM_UP_S};

pub struct Inputs<'a> {
    pub duration: u64,
    pub rounds: u32,
    pub peers: bool,
    pub configs: &'a [Config],
    /// Per configuration (as in `configs`), its runs round by round.
    pub runs: &'a [Vec<Observed>],
    /// The extra hooks-only and capturing runs with bpf_stats on ([`super::KERNEL_RUNS`] of each).
    pub idle_k: &'a [Observed],
    pub obs_k: &'a [Observed],
    /// The criterion result lines, when they were run.
    pub criterion: Option<&'a [String]>,
}

impl Inputs<'_> {
    fn of(&self, c: Config) -> &[Observed] {
        let i = self.configs.iter().position(|x| *x == c).unwrap_or(0);
        &self.runs[i]
    }

    /// Machine CPU per request this configuration added to its baseline's, µs, round by round.
    fn added_us(&self, c: Config) -> Vec<f64> {
        self.of(c)
            .iter()
            .zip(self.of(baseline_of(c)))
            .map(|(o, b)| o.busy_us_per_request() - b.busy_us_per_request())
            .collect()
    }
}

/// What a configuration is compared with: the baseline at the same offered load.
fn baseline_of(c: Config) -> Config {
    match c {
        Config::Paced(_) => Config::Paced(Paced::Baseline),
        _ => Config::Baseline,
    }
}

/// Whether `c` is a baseline (compared with nothing).
fn is_baseline(c: Config) -> bool {
    baseline_of(c) == c
}

/// Mean and 95% interval, as text.
fn mean_interval(v: &[f64]) -> String {
    let mean = mean(v);
    let (lo, hi) = interval95(v);
    if lo.is_finite() {
        format!("{mean:.2} ({lo:.2} to {hi:.2})")
    } else {
        format!("{mean:.2}")
    }
}

fn ratio_cell(r: &Ratios) -> String {
    if r.interval.0.is_finite() {
        format!(
            "{:.3} ({:.3} to {:.3})",
            r.of_means, r.interval.0, r.interval.1
        )
    } else {
        format!("{:.3}", r.of_means)
    }
}

/// Kernel program time per request completed in a bpf_stats run, µs.
fn kernel_us(o: &Observed) -> f64 {
    o.progs.iter().map(|c| c.ns as f64).sum::<f64>() / o.wrk.requests.max(1) as f64 / 1000.0
}

/// The mean of `f` over `runs`.
fn mean_of(runs: &[Observed], f: impl Fn(&Observed) -> f64) -> f64 {
    mean(&runs.iter().map(f).collect::<Vec<_>>())
}

/// Own CPU per exchange in the measured window (the agent's count; per request when nothing reports), µs.
fn own_us(o: &Observed) -> f64 {
    o.cpu_s * 1e6 / o.window.max(1.0)
}

pub fn sections(root: &Path, x: &Inputs) -> Vec<String> {
    let cmd = format!(
        "cargo xtask bench --duration {}s --rounds {}{}",
        x.duration,
        x.rounds,
        if x.peers { " --peers" } else { "" }
    );
    let prov = crate::benchmarks_md::provenance(root, &cmd);
    let mut out = vec![headline(&prov, x), rounds(&prov, x)];
    if x.peers {
        out.push(peers(&prov, x));
    }
    out.push(kernel(&prov, x));
    if let Some(lines) = x.criterion {
        out.push(criterion(&prov, lines));
    }
    out
}

fn headline(prov: &str, x: &Inputs) -> String {
    let mut md = String::new();
    let agent = mean_of(x.obs_k, own_us);
    let kern = mean_of(x.obs_k, kernel_us);
    let kern_runs: Vec<f64> = x.obs_k.iter().map(kernel_us).collect();
    let per_round: Vec<f64> = x.of(Config::Capturing).iter().map(own_us).collect();
    let _ = writeln!(md, "## CPU per exchange (headline)\n\n{prov}\n");
    let _ = writeln!(md, "What seeing one exchange costs: the kernel programs' run time per exchange \
        (`kernel.bpf_stats_enabled`, every observer program) plus the agent's own CPU per event (process CPU, sinks \
        included), while nginx on 127.0.0.1:{PORT} answers `wrk -t1 -c50` requests carrying an API key the registry \
        knows (every exchange enriched: API, application, key state, route). The headline's sink is ClickHouse (the dev \
        server on loopback: RowBinary, compression and HTTP inserts are in the agent's CPU; the server's own CPU is \
        not); the NDJSON sink's figures are beside it. Goal: <= 1.5 µs.\n");
    let goal = Goal::AtMost(1.5);
    let (lo, hi) = interval95(&per_round);
    let per_round_ch: Vec<f64> = x
        .of(Config::CapturingClickHouse)
        .iter()
        .map(own_us)
        .collect();
    let ch = mean(&per_round_ch);
    let (ch_lo, ch_hi) = interval95(&per_round_ch);
    let _ = writeln!(md, "| figure | µs |\n|---|---|");
    let _ = writeln!(
        md,
        "| **CPU per exchange, ClickHouse sink (kernel + agent, rounds' mean)** | **{:.2}** (goal {goal}: {} on \
         the rounds' interval) |",
        kern + ch,
        goal.judge((ch_lo + kern, ch_hi + kern))
    );
    let _ = writeln!(
        md,
        "| CPU per exchange, NDJSON sink (kernel + agent, bpf_stats runs) | {:.2} (goal {goal}: {} on the rounds' \
         interval) |",
        kern + agent,
        goal.judge((lo + kern, hi + kern))
    );
    let _ = writeln!(
        md,
        "| agent per event, ClickHouse sink, rounds (mean, 95% interval) | {} |",
        mean_interval(&per_round_ch)
    );
    let _ = writeln!(
        md,
        "| kernel programs per exchange ({} bpf_stats runs, mean, 95% interval; {:.0} req/s) | {} |",
        x.obs_k.len(),
        mean_of(x.obs_k, |o| o.wrk.rps),
        mean_interval(&kern_runs)
    );
    let _ = writeln!(md, "| agent per event (same runs) | {agent:.2} |");
    let _ = writeln!(
        md,
        "| agent per event, rounds (mean, 95% interval) | {} |",
        mean_interval(&per_round)
    );
    // The warm-up's own figures: an agent's first seconds, page faults and all.
    let cold: Vec<f64> = x
        .of(Config::CapturingClickHouse)
        .iter()
        .filter_map(|o| o.cold)
        .map(|(cpu, n)| cpu * 1e6 / n.max(1.0))
        .collect();
    let _ = writeln!(
        md,
        "| agent per event, ClickHouse sink, its first {WARM_UP_S} s from start (the unmeasured warm-up; rounds' mean, \
         95% interval) | {} |",
        mean_interval(&cold)
    );
    let _ = writeln!(
        md,
        "| kernel programs per request, hooks only (port {IDLE_PORT}, nothing emitted) | {:.2} |",
        mean_of(x.idle_k, kernel_us)
    );
    for c in [
        Config::Capturing,
        Config::CapturingClickHouse,
        Config::Drain,
        Config::Hooks,
        Config::Floor,
    ] {
        let _ = writeln!(
            md,
            "| machine CPU added per request, {} (rounds, mean, 95% interval) | {} |",
            c.name(),
            mean_interval(&x.added_us(c))
        );
    }
    let _ = writeln!(md, "\nEvery run is measured after {WARM_UP_S} s of the same load, unmeasured, with the agent or \
        peer already running: the figures are those of a process in its steady state. The machine figures are \
        `/proc/stat` busy time per request completed, less the baseline's in the same round: on a box that wrk and \
        nginx saturate they mostly measure throughput lost, and the no-op programs' row is the floor any cgroup_skb hook costs. bpf_stats adds two clock reads to each \
        program run, so the kernel figure is a slight overestimate.\n");
    md
}

fn rounds(prov: &str, x: &Inputs) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Loopback nginx under wrk, without and with the observer\n\n{prov}\n"
    );
    let _ = writeln!(md, "nginx (1 worker, 612-byte page) on 127.0.0.1, `wrk -t1 -c50 -d{d}s --latency` with a key \
        header, {r} rounds. A round runs every configuration one after the other, baseline and capturing next to \
        each other, and every other round in reverse order (so that a machine speeding up or slowing down over \
        minutes favours none): no observer (baseline); `observer run --ports {PORT} --registry ... --sink \
        ndjson:...` (capturing and enriching every exchange); the same with `--sink clickhouse` \
        into the ClickHouse dev server on loopback (capturing, ClickHouse sink); the same with `--drain-only` (the kernel captures \
        every exchange and the reader drains the ring buffer, but drops every record unread); `observer run --ports \
        {IDLE_PORT}` (hooks only: cgroup_skb + sock_ops classifying every packet, nothing on that port so nothing \
        emitted); two no-op cgroup_skb programs (`r0 = 1; exit`) on the root cgroup (the floor). Each run starts \
        with {w} s of the same load, unmeasured (the warm-up).\n",
        d = x.duration, r = x.rounds, w = WARM_UP_S);
    let _ = writeln!(md, "| round | configuration | req/s | p99 ms | machine µs/request | reported (warm-up included) | drops | own CPU % |\n|---|---|---|---|---|---|---|---|");
    for r in 0..x.rounds as usize {
        for (c, runs) in x.configs.iter().zip(x.runs) {
            let Some(o) = runs.get(r) else { continue };
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.1} |",
                r + 1,
                c.name(),
                o.wrk.rps,
                o.wrk.p99_ms,
                o.busy_us_per_request(),
                o.reported.map_or("-".into(), |n| format!("{n:.0}")),
                o.drops,
                100.0 * o.cpu_s / x.duration as f64
            );
        }
    }
    let _ = writeln!(md, "\n| figure | ratio of the means | median of the rounds' ratios | mean of the rounds' ratios, 95% interval | rounds' ratios, lowest to highest |\n|---|---|---|---|---|");
    for c in x.configs.iter().filter(|c| !is_baseline(**c)) {
        let base: Vec<&Observed> = x.of(baseline_of(*c)).iter().collect();
        let runs: Vec<&Observed> = x.of(*c).iter().collect();
        for (what, r) in [
            ("throughput", ratios(&runs, &base, |o| o.wrk.rps)),
            ("p99", ratios(&runs, &base, |o| o.wrk.p99_ms)),
        ] {
            let _ = writeln!(
                md,
                "| {what}, {} / baseline | {:.3} ({:+.1}%) | {:.3} | {:.3} to {:.3} | {:.3} to {:.3} |",
                c.name(),
                r.of_means,
                100.0 * (r.of_means - 1.0),
                r.median,
                r.interval.0,
                r.interval.1,
                r.lowest,
                r.highest
            );
        }
    }
    for c in [Config::Capturing, Config::CapturingClickHouse] {
        let cap = x.of(c);
        let events: f64 = cap.iter().filter_map(|o| o.reported).sum();
        let requests: f64 = cap.iter().map(|o| o.sent).sum();
        let drops: f64 = cap.iter().map(|o| o.drops).sum();
        let _ = writeln!(
            md,
            "\n{}: {events:.0} events for {requests:.0} requests completed ({:.3}; goal 1.000), {drops:.0} drops \
             (kernel, flow evictions, sink; goal 0).",
            c.name(),
            events / requests.max(1.0)
        );
    }
    let _ = writeln!(
        md,
        "\nEvents are the lines the agent wrote (NDJSON) or the rows it added to ClickHouse, counted after it flushed \
         and exited; requests are those wrk completed while the agent ran (its warm-up's and the measured window's), \
         and the agent also reports requests in flight when wrk stops, so the ratio can exceed 1 by up to the \
         connection count.\n"
    );
    let _ = writeln!(md, "How to read this: each configuration adds one thing to the one before. No-op: running a \
        cgroup_skb program on every packet at all. Hooks only: the observer's classification of every packet. Drain \
        only: the kernel copying every exchange into the ring buffer and the reader waking to drain it. Capturing: \
        the agent's parsing, pairing, enrichment and writing on top (NDJSON, or RowBinary inserts into ClickHouse). wrk and nginx keep both vCPUs busy, so whatever \
        the observer runs is taken from them. The 95% interval is that of the mean of the rounds' ratios (Student's \
        t over the rounds, each round a paired sample).\n");
    md
}

fn peers(prov: &str, x: &Inputs) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Peers on the same workload\n\n{prov}\n");
    let _ = writeln!(
        md,
        "The same rounds (interleaved with the observer's runs above), each peer seeing the same \
        traffic instead of the observer:\n"
    );
    for c in x.configs {
        if let Config::Peer(p) = c {
            let _ = writeln!(md, "- {}: {}", p.name(), p.command());
        }
    }
    let _ = writeln!(
        md,
        "\nThe paced rows run the baseline, the observer (NDJSON sink) and the sidecar stand-in once more in every \
         round at a fixed offered rate: wrk's Lua `delay()` makes each of the 50 connections wait {PACE_MS} ms before \
         each request (at most {} requests/s), and each is compared with the paced baseline. With the machine mostly \
         idle, its busy time per request is CPU actually spent, not throughput lost, and the p99 is the latency each \
         adds rather than queueing behind a saturated server. {}",
        50 * 1000 / PACE_MS,
        match super::load::paced_cpus() {
            Some((nginx, wrk)) => format!(
                "In the paced runs the app's nginx worker runs on CPU {nginx} and wrk on CPU {wrk}: left to the \
                 scheduler, they share a CPU in some runs and not in others, which moves an idle machine's busy time \
                 per request by more than the observer adds. The observer and the sidecar stand-in run wherever the \
                 scheduler puts them."
            ),
            None => "This machine has one CPU: nothing is pinned.".to_string(),
        }
    );
    let _ = writeln!(md, "\n| configuration | throughput / baseline (95% interval) | p99 / baseline (95% interval) | machine CPU added per request, µs (95% interval) | own CPU per request, µs | requests reported by the end of the run |\n|---|---|---|---|---|---|");
    let mut figures = Vec::new();
    for c in x.configs.iter().filter(|c| {
        matches!(
            c,
            Config::Capturing
                | Config::CapturingClickHouse
                | Config::Peer(_)
                | Config::Paced(Paced::Capturing | Paced::Sidecar)
        )
    }) {
        let base: Vec<&Observed> = x.of(baseline_of(*c)).iter().collect();
        let runs: Vec<&Observed> = x.of(*c).iter().collect();
        let rps = ratios(&runs, &base, |o| o.wrk.rps);
        let p99 = ratios(&runs, &base, |o| o.wrk.p99_ms);
        let added = x.added_us(*c);
        let requests: f64 = runs.iter().map(|o| o.sent).sum();
        let window: f64 = runs.iter().map(|o| o.window).sum();
        let cpu: f64 = runs.iter().map(|o| o.cpu_s).sum();
        let reported: Option<f64> = runs.iter().map(|o| o.reported).sum();
        let notes: Vec<&str> = runs
            .iter()
            .map(|o| o.note.as_str())
            .filter(|n| !n.is_empty())
            .collect();
        let share = match reported {
            Some(n) => format!("{:.3}", n / requests.max(1.0)),
            None => format!(
                "none decoded (packets only){}",
                notes
                    .last()
                    .map_or(String::new(), |n| format!("; last run: {n}"))
            ),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.2} | {share} |",
            c.name(),
            ratio_cell(&rps),
            ratio_cell(&p99),
            mean_interval(&added),
            cpu * 1e6 / window.max(1.0)
        );
        let mean_added = mean(&added);
        figures.push((*c, rps.of_means, p99.of_means, mean_added));
    }
    let find = |c: Config| figures.iter().find(|f| f.0 == c).copied();
    if let (Some(o), Some(s), Some(po), Some(ps)) = (
        find(Config::Capturing),
        find(Config::Peer(super::Peer::Proxy)),
        find(Config::Paced(Paced::Capturing)),
        find(Config::Paced(Paced::Sidecar)),
    ) {
        // Derived from the means: the goals are judged on the point figures, and only when the observer's cost
        // was measurable at all (on a disturbed machine a round's noise can exceed it).
        let (g_cpu, g_loss, g_p99) = (Goal::AtLeast(10.0), Goal::AtLeast(3.0), Goal::AtMost(0.5));
        let judged = |ours: f64, theirs: f64, goal: Goal, what: &str| {
            if ours <= 0.0 || theirs <= 0.0 {
                format!("{what}: not judged (observer {ours:.3}, sidecar {theirs:.3}: one of them is not a cost here)")
            } else {
                let r = if matches!(goal, Goal::AtMost(_)) {
                    ours / theirs
                } else {
                    theirs / ours
                };
                format!("{what} {r:.2} (goal {goal}: {})", goal.judge((r, r)))
            }
        };
        let _ = writeln!(
            md,
            "\nAgainst the sidecar stand-in, on the means (NDJSON sink): at the fixed offered rate, {}; {}. At \
             saturation, {}; {}; {}.\n",
            judged(
                po.3,
                ps.3,
                g_cpu,
                "sidecar's added machine CPU per request over the observer's"
            ),
            judged(
                po.2 - 1.0,
                ps.2 - 1.0,
                g_p99,
                "observer's p99 increase over the sidecar's"
            ),
            judged(
                1.0 - o.1,
                1.0 - s.1,
                g_loss,
                "sidecar's throughput loss over the observer's"
            ),
            judged(
                o.3,
                s.3,
                g_cpu,
                "sidecar's added machine CPU per request over the observer's"
            ),
            judged(
                o.2 - 1.0,
                s.2 - 1.0,
                g_p99,
                "observer's p99 increase over the sidecar's"
            ),
        );
    }
    md
}

fn kernel(prov: &str, x: &Inputs) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Kernel program cost\n\n{prov}\n");
    let _ = writeln!(md, "{} more hooks-only and {} more capturing runs, alternated (not part of the rounds above), \
        with `kernel.bpf_stats_enabled=1`: the kernel then times every program run, which adds two clock reads (some \
        tens of ns) to each. Runs and time are summed over the runs of each kind.\n", x.idle_k.len(), x.obs_k.len());
    let _ = writeln!(md, "| program | hooks only: runs | ns per run | capturing: runs | ns per run |\n|---|---|---|---|---|");
    // Each program's runs and time summed over `runs`, in the order the first run lists them.
    let summed = |runs: &[Observed]| -> Vec<ProgCost> {
        let mut out: Vec<ProgCost> = Vec::new();
        for c in runs.iter().flat_map(|o| &o.progs) {
            match out.iter_mut().find(|s| s.name == c.name) {
                Some(s) => {
                    s.runs += c.runs;
                    s.ns += c.ns;
                }
                None => out.push(ProgCost {
                    name: c.name.clone(),
                    runs: c.runs,
                    ns: c.ns,
                }),
            }
        }
        out
    };
    let (idle, obs) = (summed(x.idle_k), summed(x.obs_k));
    let per_run = |c: &ProgCost| c.ns as f64 / c.runs.max(1) as f64;
    for c in &obs {
        let h = idle.iter().find(|h| h.name == c.name);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} |",
            c.name,
            h.map_or("-".to_string(), |h| h.runs.to_string()),
            h.map_or("-".to_string(), |h| format!("{:.0}", per_run(h))),
            c.runs,
            per_run(c)
        );
    }
    let _ = writeln!(
        md,
        "\nKernel program time per request completed: hooks only {:.2} µs, capturing {} µs (the runs' mean, 95% \
         interval; {:.0} req/s). It is spent on the CPUs of the processes that send and receive, on top of the \
         agent's own CPU.\n",
        mean_of(x.idle_k, kernel_us),
        mean_interval(&x.obs_k.iter().map(kernel_us).collect::<Vec<_>>()),
        mean_of(x.obs_k, |o| o.wrk.rps)
    );
    md
}

fn criterion(prov: &str, lines: &[String]) -> String {
    let mut md = format!("## Criterion micro-benchmarks\n\n{prov}\n\n```\n");
    for l in lines {
        let _ = writeln!(md, "{}", l.trim());
    }
    md.push_str("```\n");
    md
}
