//! ClickHouse sink: batches events as RowBinary and inserts them over HTTP with the official `clickhouse` crate.
//!
//! Two cooperating futures run in one task:
//! - the *batcher* encodes events straight into a `RowBinaryWithNamesAndTypes` buffer and seals a batch at
//!   `batch_rows` rows, `batch_max_bytes` bytes or `batch_interval` after its first row (memory stays bounded by a
//!   few batches). A sealed batch gets an id (agent run id + sequence) and a deterministic
//!   `insert_deduplication_token`, and goes to the shipper; if the shipper is behind, straight to the spool.
//! - the *shipper* inserts batches in order. A failed batch goes to the on-disk [`Spool`]; while the spool holds
//!   anything, new batches are spooled behind it and the spool is replayed oldest first with exponential backoff.
//!   Because every retry carries the batch's token, a batch whose first insert succeeded without us hearing back is
//!   stored once.
//!
//! The spool holds the exact request body (the names-and-types header included), so a batch written by an older
//! binary replays unchanged. Only a full (or failing) spool drops rows, and those are counted.
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant as StdInstant};

use bytes::Bytes;
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use super::registry_rows::{ts_micros, RegistryRows};
use super::schema::HTTP_REQUESTS_COLUMNS;
use super::spool::{BatchId, Spool, SpoolError, SpooledBatch};
use super::{SinkError, SinkMetrics};
use crate::event::{AttributedBy, Event, KeyState, Side, Timestamp};

/// The table events go to (a Distributed table when the schema was applied with `--cluster`).
pub const TABLE: &str = "http_requests";

/// Everything the ClickHouse sink needs.
#[derive(Debug, Clone)]
pub struct ClickHouseConfig {
    pub url: String,
    pub database: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Identifies this agent in deduplication tokens (default: host name).
    pub agent_id: String,
    pub batch_rows: usize,
    pub batch_max_bytes: usize,
    pub batch_interval: Duration,
    pub insert_timeout: Duration,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long shutdown keeps replaying the spool before leaving the rest for the next start.
    pub shutdown_grace: Duration,
}

impl ClickHouseConfig {
    /// Defaults that follow ClickHouse's guidance (large batches, about one insert per second).
    pub fn new(url: &str, spool_dir: PathBuf) -> Self {
        ClickHouseConfig {
            url: url.to_string(),
            database: "observer".into(),
            user: None,
            password: None,
            agent_id: default_agent_id(),
            batch_rows: 100_000,
            batch_max_bytes: 32 << 20,
            batch_interval: Duration::from_secs(1),
            insert_timeout: Duration::from_secs(30),
            spool_dir,
            spool_max_bytes: 1 << 30,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }

    /// A client for this server and database (LZ4 compression on, validation on for typed inserts).
    pub fn client(&self) -> clickhouse::Client {
        let mut c = clickhouse::Client::default()
            .with_url(&self.url)
            .with_database(&self.database);
        if let Some(u) = &self.user {
            c = c.with_user(u);
        }
        if let Some(p) = &self.password {
            c = c.with_password(p);
        }
        c
    }
}

/// The host name, or `observer` when it cannot be read.
pub fn default_agent_id() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if let Ok(s) = std::str::from_utf8(&buf[..end]) {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    "observer".to_string()
}

// ---------------------------------------------------------------------------------------------------------------
// RowBinary encoding

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf.push(b);
            return;
        }
        buf.push(b | 0x80);
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_varint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`).
pub fn to_ipv6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Inverse of [`to_ipv6`]: IPv4-mapped addresses come back as IPv4.
pub fn from_ipv6(ip: Ipv6Addr) -> IpAddr {
    match ip.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip),
    }
}

pub fn side_code(s: Side) -> i8 {
    match s {
        Side::Client => 1,
        Side::Server => 2,
        Side::Both => 3,
    }
}

pub fn key_state_code(k: KeyState) -> i8 {
    match k {
        KeyState::None => 0,
        KeyState::Valid => 1,
        KeyState::Unknown => 2,
        KeyState::NotGrantedForApi => 3,
        KeyState::Expired => 4,
        KeyState::Revoked => 5,
        KeyState::NotYetValid => 6,
    }
}

pub fn attributed_by_code(a: AttributedBy) -> i8 {
    match a {
        AttributedBy::None => 0,
        AttributedBy::Key => 1,
        AttributedBy::Workload => 2,
    }
}

/// `RowBinaryWithNamesAndTypes` header for [`HTTP_REQUESTS_COLUMNS`]: the server checks names and types.
pub fn rbwnat_header() -> Vec<u8> {
    let mut b = Vec::with_capacity(1024);
    put_varint(&mut b, HTTP_REQUESTS_COLUMNS.len() as u64);
    for (name, _, _) in HTTP_REQUESTS_COLUMNS {
        put_str(&mut b, name);
    }
    for (_, ty, _) in HTTP_REQUESTS_COLUMNS {
        put_str(&mut b, ty);
    }
    b
}

/// `ts, duration_us, ...` for the INSERT statement.
pub fn column_list() -> String {
    HTTP_REQUESTS_COLUMNS
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends one event as a RowBinary row, in [`HTTP_REQUESTS_COLUMNS`] order.
pub fn encode_event(b: &mut Vec<u8>, e: &Event) {
    // Destructure so that a new Event field is a compile error here until it is stored.
    let Event {
        ts,
        duration_us,
        side,
        method,
        host,
        path,
        query_keys,
        status,
        req_bytes,
        resp_bytes,
        src_ip,
        src_port,
        dst_ip,
        dst_port,
        client_pid,
        client_comm,
        client_cgroup,
        server_pid,
        server_comm,
        server_cgroup,
        user_agent,
        request_id,
        truncated,
        conn_id,
        api_id,
        api_name,
        api_owner,
        route,
        app_id,
        app_name,
        app_team,
        line_of_business,
        key_fingerprint,
        key_suffix,
        key_state,
        attributed_by,
    } = e;
    b.extend_from_slice(&ts.0.to_le_bytes());
    b.extend_from_slice(&duration_us.to_le_bytes());
    b.push(side_code(*side) as u8);
    put_str(b, method);
    put_str(b, host);
    put_str(b, path);
    put_varint(b, query_keys.len() as u64);
    for k in query_keys {
        put_str(b, k);
    }
    b.extend_from_slice(&status.to_le_bytes());
    b.extend_from_slice(&req_bytes.to_le_bytes());
    b.extend_from_slice(&resp_bytes.to_le_bytes());
    b.extend_from_slice(&to_ipv6(*src_ip).octets());
    b.extend_from_slice(&src_port.to_le_bytes());
    b.extend_from_slice(&to_ipv6(*dst_ip).octets());
    b.extend_from_slice(&dst_port.to_le_bytes());
    b.extend_from_slice(&client_pid.to_le_bytes());
    put_str(b, client_comm);
    put_str(b, client_cgroup);
    b.extend_from_slice(&server_pid.to_le_bytes());
    put_str(b, server_comm);
    put_str(b, server_cgroup);
    put_str(b, user_agent);
    put_str(b, request_id);
    b.push(u8::from(*truncated));
    b.extend_from_slice(&conn_id.to_le_bytes());
    for s in [
        api_id,
        api_name,
        api_owner,
        route,
        app_id,
        app_name,
        app_team,
        line_of_business,
        key_fingerprint,
        key_suffix,
    ] {
        put_str(b, s);
    }
    b.push(key_state_code(*key_state) as u8);
    b.push(attributed_by_code(*attributed_by) as u8);
}

/// `http_requests` as a typed row, for reading events back (`SELECT * FROM http_requests`) and for typed inserts.
#[derive(Debug, Clone, PartialEq, Row, Serialize, Deserialize)]
pub struct HttpRequestRow {
    #[serde(with = "ts_micros")]
    pub ts: Timestamp,
    pub duration_us: u64,
    pub side: i8,
    pub method: String,
    pub host: String,
    pub path: String,
    pub query_keys: Vec<String>,
    pub status: u16,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    pub src_ip: Ipv6Addr,
    pub src_port: u16,
    pub dst_ip: Ipv6Addr,
    pub dst_port: u16,
    pub client_pid: u32,
    pub client_comm: String,
    pub client_cgroup: String,
    pub server_pid: u32,
    pub server_comm: String,
    pub server_cgroup: String,
    pub user_agent: String,
    pub request_id: String,
    pub truncated: bool,
    pub conn_id: u64,
    pub api_id: String,
    pub api_name: String,
    pub api_owner: String,
    pub route: String,
    pub app_id: String,
    pub app_name: String,
    pub app_team: String,
    pub line_of_business: String,
    pub key_fingerprint: String,
    pub key_suffix: String,
    pub key_state: i8,
    pub attributed_by: i8,
}

impl From<&Event> for HttpRequestRow {
    fn from(e: &Event) -> Self {
        HttpRequestRow {
            ts: e.ts,
            duration_us: e.duration_us,
            side: side_code(e.side),
            method: e.method.clone(),
            host: e.host.clone(),
            path: e.path.clone(),
            query_keys: e.query_keys.clone(),
            status: e.status,
            req_bytes: e.req_bytes,
            resp_bytes: e.resp_bytes,
            src_ip: to_ipv6(e.src_ip),
            src_port: e.src_port,
            dst_ip: to_ipv6(e.dst_ip),
            dst_port: e.dst_port,
            client_pid: e.client_pid,
            client_comm: e.client_comm.to_string(),
            client_cgroup: e.client_cgroup.to_string(),
            server_pid: e.server_pid,
            server_comm: e.server_comm.to_string(),
            server_cgroup: e.server_cgroup.to_string(),
            user_agent: e.user_agent.clone(),
            request_id: e.request_id.clone(),
            truncated: e.truncated,
            conn_id: e.conn_id,
            api_id: e.api_id.clone(),
            api_name: e.api_name.clone(),
            api_owner: e.api_owner.clone(),
            route: e.route.clone(),
            app_id: e.app_id.clone(),
            app_name: e.app_name.clone(),
            app_team: e.app_team.clone(),
            line_of_business: e.line_of_business.clone(),
            key_fingerprint: e.key_fingerprint.clone(),
            key_suffix: e.key_suffix.clone(),
            key_state: key_state_code(e.key_state),
            attributed_by: attributed_by_code(e.attributed_by),
        }
    }
}

impl HttpRequestRow {
    /// Back to an [`Event`]; `None` when an enum code is unknown to this binary.
    pub fn to_event(&self) -> Option<Event> {
        let side = Side::ALL.into_iter().find(|s| side_code(*s) == self.side)?;
        let key_state = KeyState::ALL
            .into_iter()
            .find(|k| key_state_code(*k) == self.key_state)?;
        let attributed_by = AttributedBy::ALL
            .into_iter()
            .find(|a| attributed_by_code(*a) == self.attributed_by)?;
        Some(Event {
            ts: self.ts,
            duration_us: self.duration_us,
            side,
            method: self.method.clone(),
            host: self.host.clone(),
            path: self.path.clone(),
            query_keys: self.query_keys.clone(),
            status: self.status,
            req_bytes: self.req_bytes,
            resp_bytes: self.resp_bytes,
            src_ip: from_ipv6(self.src_ip),
            src_port: self.src_port,
            dst_ip: from_ipv6(self.dst_ip),
            dst_port: self.dst_port,
            client_pid: self.client_pid,
            client_comm: self.client_comm.as_str().into(),
            client_cgroup: self.client_cgroup.as_str().into(),
            server_pid: self.server_pid,
            server_comm: self.server_comm.as_str().into(),
            server_cgroup: self.server_cgroup.as_str().into(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
            truncated: self.truncated,
            conn_id: self.conn_id,
            api_id: self.api_id.clone(),
            api_name: self.api_name.clone(),
            api_owner: self.api_owner.clone(),
            route: self.route.clone(),
            app_id: self.app_id.clone(),
            app_name: self.app_name.clone(),
            app_team: self.app_team.clone(),
            line_of_business: self.line_of_business.clone(),
            key_fingerprint: self.key_fingerprint.clone(),
            key_suffix: self.key_suffix.clone(),
            key_state,
            attributed_by,
        })
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Batching

/// A batch being filled.
struct OpenBatch {
    header: Arc<Vec<u8>>,
    buf: Vec<u8>,
    rows: u64,
    opened: Option<Instant>,
}

impl OpenBatch {
    fn new(header: Arc<Vec<u8>>) -> Self {
        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(&header);
        OpenBatch {
            header,
            buf,
            rows: 0,
            opened: None,
        }
    }

    fn push(&mut self, e: &Event) {
        if self.rows == 0 {
            self.opened = Some(Instant::now());
        }
        encode_event(&mut self.buf, e);
        self.rows += 1;
    }

    fn take(&mut self) -> (Vec<u8>, u64) {
        let mut next = Vec::with_capacity(self.buf.capacity().min(4 << 20));
        next.extend_from_slice(&self.header);
        let rows = self.rows;
        self.rows = 0;
        self.opened = None;
        (std::mem::replace(&mut self.buf, next), rows)
    }
}

/// Exponential backoff with a cap.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Shared state of the batcher and the shipper.
struct Ctx {
    cfg: ClickHouseConfig,
    client: clickhouse::Client,
    spool: Arc<Mutex<Spool>>,
    metrics: Arc<SinkMetrics>,
    run_id: u64,
}

impl Ctx {
    fn update_spool_gauges(&self, s: &Spool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.metrics.spool_bytes.store(s.bytes(), Relaxed);
        self.metrics.spool_batches.store(s.len() as u64, Relaxed);
        self.metrics
            .quarantined_files
            .store(s.quarantined(), Relaxed);
    }

    fn spool_len(&self) -> usize {
        self.spool.lock().map(|s| s.len()).unwrap_or(0)
    }

    async fn with_spool<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let ctx = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = ctx.spool.lock().unwrap_or_else(|p| p.into_inner());
            let r = f(&mut s);
            ctx.update_spool_gauges(&s);
            r
        })
        .await
        .unwrap_or_else(|e| {
            Err(SpoolError::Io {
                path: self.cfg.spool_dir.clone(),
                source: std::io::Error::other(format!("spool task failed: {e}")),
            })
        })
    }

    /// Stores a batch on disk; counts the rows as dropped when that fails.
    async fn spool_push(self: &Arc<Self>, batch: SpooledBatch) {
        use std::sync::atomic::Ordering::Relaxed;
        let rows = batch.rows;
        let id = batch.id;
        match self.with_spool(move |s| s.push(&batch)).await {
            Ok(_) => {
                self.metrics.spooled_batches.fetch_add(1, Relaxed);
                self.metrics.spooled_rows.fetch_add(rows, Relaxed);
                tracing::debug!(?id, rows, "batch spooled");
            }
            Err(e @ SpoolError::Full { .. }) => {
                self.metrics.dropped_spool_full.fetch_add(rows, Relaxed);
                tracing::warn!(error = %e, rows, "ClickHouse unavailable and spool full: dropping a batch");
            }
            Err(e) => {
                self.metrics.dropped_spool_error.fetch_add(rows, Relaxed);
                tracing::error!(error = %e, rows, "cannot write batch to the spool: dropping it");
            }
        }
    }

    /// One INSERT of a batch, with its deduplication token.
    async fn insert(&self, b: &SpooledBatch) -> Result<(), clickhouse::error::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = StdInstant::now();
        let sql = format!(
            "INSERT INTO {}.{} ({}) FORMAT RowBinaryWithNamesAndTypes",
            self.cfg.database, b.table, b.columns
        );
        let t = Some(self.cfg.insert_timeout);
        let mut ins = self
            .client
            .insert_formatted_with(sql)
            .with_setting("insert_deduplicate", "1")
            .with_setting("insert_deduplication_token", b.token.clone())
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1")
            .with_timeouts(t, t);
        let res = async {
            const CHUNK: usize = 1 << 20;
            let mut off = 0;
            while off < b.payload.len() {
                let end = (off + CHUNK).min(b.payload.len());
                ins.send(b.payload.slice(off..end)).await?;
                off = end;
            }
            ins.end().await
        };
        let res = match tokio::time::timeout(self.cfg.insert_timeout * 2, res).await {
            Ok(r) => r,
            Err(_) => Err(clickhouse::error::Error::TimedOut),
        };
        match &res {
            Ok(()) => {
                self.metrics.rows_sent.fetch_add(b.rows, Relaxed);
                self.metrics.batches_sent.fetch_add(1, Relaxed);
                self.metrics.insert_latency.observe(started.elapsed());
            }
            Err(_) => {
                self.metrics.insert_errors.fetch_add(1, Relaxed);
            }
        }
        res
    }

    /// Inserts the oldest spooled batch and deletes it. `Ok(false)` when the spool was empty.
    async fn replay_oldest(self: &Arc<Self>) -> Result<bool, clickhouse::error::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let batch = match self.with_spool(|s| s.read_oldest()).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(false),
            Err(e) => {
                // An unreadable spool directory: nothing we can replay now; retry later.
                tracing::error!(error = %e, "cannot read the spool");
                return Err(clickhouse::error::Error::Custom(e.to_string()));
            }
        };
        self.insert(&batch).await?;
        self.metrics.replayed_batches.fetch_add(1, Relaxed);
        self.metrics.replayed_rows.fetch_add(batch.rows, Relaxed);
        let id = batch.id;
        if let Err(e) = self.with_spool(move |s| s.remove(id)).await {
            // It was inserted; replaying it again is harmless thanks to the token.
            tracing::error!(error = %e, ?id, "cannot delete a replayed spool file");
        }
        tracing::debug!(?id, rows = batch.rows, "spooled batch replayed");
        Ok(true)
    }
}

/// Starts the sink; the returned future runs until `rx` is closed and everything is inserted or spooled.
pub(super) async fn start(
    cfg: ClickHouseConfig,
    metrics: Arc<SinkMetrics>,
    rx: super::QueueRx,
) -> Result<impl std::future::Future<Output = Result<(), SinkError>> + Send + 'static, SinkError> {
    let dir = cfg.spool_dir.clone();
    let max = cfg.spool_max_bytes;
    let spool = tokio::task::spawn_blocking(move || Spool::open(&dir, max))
        .await
        .map_err(|e| SinkError::Internal(format!("spool open task: {e}")))?
        .map_err(|source| SinkError::Spool {
            dir: cfg.spool_dir.clone(),
            source,
        })?;
    let run_id = Timestamp::now().0 as u64;
    let ctx = Arc::new(Ctx {
        client: cfg.client(),
        cfg,
        spool: Arc::new(Mutex::new(spool)),
        metrics,
        run_id,
    });
    {
        let s = ctx.spool.lock().unwrap_or_else(|p| p.into_inner());
        ctx.update_spool_gauges(&s);
    }
    tracing::info!(
        url = %ctx.cfg.url,
        database = %ctx.cfg.database,
        agent_id = %ctx.cfg.agent_id,
        run_id = format!("{run_id:016x}"),
        spool = %ctx.cfg.spool_dir.display(),
        "ClickHouse sink started"
    );
    let (ship_tx, ship_rx) = mpsc::channel(2);
    Ok(async move {
        tokio::join!(
            batcher(rx, ship_tx, ctx.clone()),
            shipper(ship_rx, ctx.clone())
        );
        Ok(())
    })
}

async fn batcher(mut rx: super::QueueRx, ship_tx: mpsc::Sender<SpooledBatch>, ctx: Arc<Ctx>) {
    let header = Arc::new(rbwnat_header());
    let columns = column_list();
    let mut open = OpenBatch::new(header);
    let mut seq: u64 = 0;
    let seal = |open: &mut OpenBatch, seq: &mut u64| {
        let (payload, rows) = open.take();
        let id = BatchId {
            run_id: ctx.run_id,
            seq: *seq,
        };
        *seq += 1;
        SpooledBatch {
            id,
            rows,
            created_us: Timestamp::now().0,
            token: format!("{}:{:016x}:{}", ctx.cfg.agent_id, id.run_id, id.seq),
            table: TABLE.to_string(),
            columns: columns.clone(),
            payload: Bytes::from(payload),
        }
    };
    loop {
        let deadline = open.opened.map(|t| t + ctx.cfg.batch_interval);
        let full = tokio::select! {
            evs = rx.recv() => match evs {
                Some(evs) => {
                    // A capture batch goes into one insert batch whole: an insert batch may exceed
                    // `batch_rows` by at most one capture drain.
                    evs.iter().for_each(|ev| open.push(ev));
                    rx.recycle(evs);
                    // Take whatever else is queued without going through select! again.
                    while open.rows < ctx.cfg.batch_rows as u64 && open.buf.len() < ctx.cfg.batch_max_bytes {
                        match rx.try_recv() {
                            Some(evs) => {
                                evs.iter().for_each(|ev| open.push(ev));
                                rx.recycle(evs);
                            }
                            None => break,
                        }
                    }
                    open.rows >= ctx.cfg.batch_rows as u64 || open.buf.len() >= ctx.cfg.batch_max_bytes
                }
                None => break,
            },
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => true,
        };
        if full && open.rows > 0 {
            let batch = seal(&mut open, &mut seq);
            match ship_tx.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) => {
                    // The shipper is busy (slow or failing ClickHouse): keep capture moving, park it on disk.
                    ctx.spool_push(b).await;
                }
            }
        }
    }
    if open.rows > 0 {
        let batch = seal(&mut open, &mut seq);
        if let Err(mpsc::error::SendError(b)) = ship_tx.send(batch).await {
            ctx.spool_push(b).await;
        }
    }
}

async fn shipper(mut rx: mpsc::Receiver<SpooledBatch>, ctx: Arc<Ctx>) {
    let mut backoff = Backoff::new(ctx.cfg.backoff_min, ctx.cfg.backoff_max);
    let mut next_try = Instant::now();
    let mut closing: Option<Instant> = None;
    loop {
        if ctx.spool_len() > 0 {
            // Keep production order: what queued up behind the backlog goes to disk behind it.
            while let Ok(b) = rx.try_recv() {
                ctx.spool_push(b).await;
            }
            if let Some(deadline) = closing {
                if Instant::now() >= deadline || Instant::now() < next_try {
                    break;
                }
            } else if Instant::now() < next_try {
                tokio::select! {
                    _ = sleep_until(next_try) => {}
                    b = rx.recv() => match b {
                        Some(b) => ctx.spool_push(b).await,
                        None => closing = Some(Instant::now() + ctx.cfg.shutdown_grace),
                    },
                }
                continue;
            }
            match ctx.replay_oldest().await {
                Ok(_) => backoff.reset(),
                Err(e) => {
                    let wait = backoff.fail();
                    next_try = Instant::now() + wait;
                    tracing::warn!(error = %e, retry_in = ?wait, spooled = ctx.spool_len(), "replaying spooled batch failed");
                }
            }
            continue;
        }
        if closing.is_some() {
            break;
        }
        match rx.recv().await {
            None => closing = Some(Instant::now() + ctx.cfg.shutdown_grace),
            Some(b) => match ctx.insert(&b).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    let wait = backoff.fail();
                    next_try = Instant::now() + wait;
                    tracing::warn!(error = %e, rows = b.rows, retry_in = ?wait, "ClickHouse insert failed; spooling the batch");
                    ctx.spool_push(b).await;
                }
            },
        }
    }
    let left = ctx.spool_len();
    if left > 0 {
        tracing::warn!(batches = left, dir = %ctx.cfg.spool_dir.display(), "shutting down with spooled batches; the next start replays them");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Registry

/// Inserts registry rows (the client must point at observer's database).
pub async fn write_registry(
    client: &clickhouse::Client,
    rows: &RegistryRows,
) -> Result<(), clickhouse::error::Error> {
    async fn put<T>(
        client: &clickhouse::Client,
        table: &str,
        rows: &[T],
    ) -> Result<(), clickhouse::error::Error>
    where
        T: clickhouse::RowOwned + clickhouse::RowWrite,
    {
        if rows.is_empty() {
            return Ok(());
        }
        let mut ins = client.insert::<T>(table).await?;
        for r in rows {
            ins.write(r).await?;
        }
        ins.end().await
    }
    put(client, "apis", &rows.apis).await?;
    put(client, "applications", &rows.applications).await?;
    put(client, "key_grants", &rows.key_grants).await?;
    put(client, "teams", &rows.teams).await?;
    Ok(())
}

/// Writes the newest registry state, retrying with backoff until it lands or a newer one replaces it.
pub(super) async fn registry_task(
    client: clickhouse::Client,
    mut rx: watch::Receiver<Option<Arc<RegistryRows>>>,
    metrics: Arc<SinkMetrics>,
    backoff_min: Duration,
    backoff_max: Duration,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut backoff = Backoff::new(backoff_min, backoff_max);
    while rx.changed().await.is_ok() {
        let Some(rows) = rx.borrow_and_update().clone() else {
            continue;
        };
        loop {
            match write_registry(&client, &rows).await {
                Ok(()) => {
                    metrics.registry_writes.fetch_add(1, Relaxed);
                    backoff.reset();
                    tracing::info!(rows = rows.len(), "registry written to ClickHouse");
                    break;
                }
                Err(e) => {
                    metrics.registry_errors.fetch_add(1, Relaxed);
                    let wait = backoff.fail();
                    tracing::warn!(error = %e, retry_in = ?wait, "writing the registry to ClickHouse failed");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        r = rx.changed() => if r.is_err() { return } else { break },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_matches_leb128() {
        for (v, want) in [
            (0u64, vec![0u8]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (300, vec![0xac, 0x02]),
            (
                u64::MAX,
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b, want, "varint of {v}");
        }
    }

    #[test]
    fn default_event_row_layout() {
        let mut b = Vec::new();
        encode_event(&mut b, &Event::default());
        // ts 8, duration 8, side 1, 3 empty strings, empty array, status 2, 2 counters 16, ip 16, port 2, ip 16,
        // port 2, pid 4, 2 strings, pid 4, 4 strings, truncated 1, conn_id 8, 10 strings, 2 enums.
        let want = 8 + 8 + 1 + 3 + 1 + 2 + 16 + 16 + 2 + 16 + 2 + 4 + 2 + 4 + 4 + 1 + 8 + 10 + 2;
        assert_eq!(b.len(), want);
        assert_eq!(b[16], 1, "Side::Client is Enum8 value 1");
        assert_eq!(
            b[b.len() - 2..],
            [0, 0],
            "KeyState::None and AttributedBy::None are 0"
        );
    }

    #[test]
    fn ipv4_is_stored_mapped_and_comes_back() {
        let v4: IpAddr = "10.1.2.3".parse().expect("ip");
        let m = to_ipv6(v4);
        assert_eq!(m.to_string(), "::ffff:10.1.2.3");
        assert_eq!(from_ipv6(m), v4);
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(from_ipv6(to_ipv6(v6)), v6);
    }

    #[test]
    fn typed_row_round_trips_an_event() {
        let e = Event {
            side: Side::Both,
            key_state: KeyState::NotYetValid,
            attributed_by: AttributedBy::Workload,
            src_ip: "192.0.2.1".parse().expect("ip"),
            ..Event::default()
        };
        assert_eq!(HttpRequestRow::from(&e).to_event(), Some(e));
    }

    #[test]
    fn header_names_every_column() {
        let h = rbwnat_header();
        assert_eq!(h[0] as usize, HTTP_REQUESTS_COLUMNS.len());
        let text = String::from_utf8_lossy(&h);
        for (n, t, _) in HTTP_REQUESTS_COLUMNS {
            assert!(text.contains(n) && text.contains(t), "header lacks {n} {t}");
        }
        assert!(column_list().starts_with("ts, duration_us, side, method"));
    }

    #[test]
    fn backoff_doubles_to_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let got: Vec<_> = (0..4).map(|_| b.fail().as_millis()).collect();
        assert_eq!(got, vec![100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.fail().as_millis(), 100);
    }
}
