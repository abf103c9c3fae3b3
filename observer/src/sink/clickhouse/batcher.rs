//! The batcher: encodes events straight into a `RowBinaryWithNamesAndTypes` buffer and seals a batch at
//! `batch_rows` rows, `batch_max_bytes` bytes or `batch_interval` after its first row (memory stays bounded by a
//! few batches). A sealed batch gets an id (agent run id + sequence) and a deterministic
//! `insert_deduplication_token`, and goes to the shipper. While the shipper is busy (a slow insert), a batch past its
//! interval keeps filling up to its size bounds, so a slow ClickHouse gets fewer, larger inserts; a batch at its size
//! bound that the shipper cannot take goes straight to the spool, so capture never waits on ClickHouse.
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::config::TABLE;
use super::rowbinary::{column_list, encode_event, rbwnat_header};
use super::shipper::Ctx;
use super::spool::SpooledBatch;
use crate::courtesy::Courtesy;
use crate::event::Event;
use crate::sink::queue::QueueRx;

/// Events encoded between two chances to give the core back ([`Courtesy`]): about 35 µs of RowBinary (its share of
/// the agent's profile under load), so a burst ends within a piece of its budget.
const ENCODE_EVENTS: usize = 512;

/// A batch being filled.
struct OpenBatch {
    header: Arc<Vec<u8>>,
    buf: Vec<u8>,
    rows: u64,
    opened: Option<Instant>,
}

impl OpenBatch {
    fn new(header: Arc<Vec<u8>>, mut buf: Vec<u8>) -> Self {
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

    /// Encodes a hand-over's events, offering the core back between pieces of [`ENCODE_EVENTS`].
    fn push_all(&mut self, evs: &[Event], courtesy: &mut Courtesy) {
        for piece in courtesy.pieces(evs, ENCODE_EVENTS) {
            piece.iter().for_each(|ev| self.push(ev));
        }
    }

    /// At `batch_rows` rows or `batch_max_bytes` bytes.
    fn is_full(&self, ctx: &Ctx) -> bool {
        self.rows >= ctx.cfg.batch_rows as u64 || self.buf.len() >= ctx.cfg.batch_max_bytes
    }

    /// The filled buffer and its rows; the batch goes on in `next` (empty, from [`Ctx::buffer`]).
    fn take(&mut self, mut next: Vec<u8>) -> (Vec<u8>, u64) {
        next.extend_from_slice(&self.header);
        let rows = self.rows;
        self.rows = 0;
        self.opened = None;
        (std::mem::replace(&mut self.buf, next), rows)
    }
}

pub(super) async fn batcher(mut rx: QueueRx, ship_tx: mpsc::Sender<SpooledBatch>, ctx: Arc<Ctx>) {
    let header = Arc::new(rbwnat_header());
    let columns = column_list();
    let mut open = OpenBatch::new(header, ctx.buffer());
    let mut seq: u64 = 0;
    let mut courtesy = Courtesy::new();
    let seal = |open: &mut OpenBatch, seq: &mut u64| {
        let (payload, rows) = open.take(ctx.buffer());
        *seq += 1;
        ctx.seal(*seq - 1, TABLE, &columns, payload, rows)
    };
    loop {
        let deadline = open.opened.map(|t| t + ctx.cfg.batch_interval);
        let due = deadline.is_some_and(|d| Instant::now() >= d);
        tokio::select! {
            evs = rx.recv() => match evs {
                Some(evs) => {
                    // A capture batch goes into one insert batch whole: an insert batch may exceed
                    // `batch_rows` by at most one capture drain.
                    courtesy.begin();
                    open.push_all(&evs, &mut courtesy);
                    rx.recycle(evs);
                    // Take whatever else is queued without going through select! again.
                    while !open.is_full(&ctx) {
                        match rx.try_recv() {
                            Some(evs) => {
                                open.push_all(&evs, &mut courtesy);
                                rx.recycle(evs);
                            }
                            None => break,
                        }
                    }
                    if open.is_full(&ctx) {
                        let batch = seal(&mut open, &mut seq);
                        match ship_tx.try_send(batch) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) => {
                                // The shipper is busy (slow or failing ClickHouse) and the batch reached its bound:
                                // keep capture moving, park it on disk.
                                ctx.spool_push(b).await;
                            }
                        }
                    }
                }
                None => break,
            },
            // Due, and the shipper has room. While it is busy (a slow insert) the open batch keeps growing up to its
            // bounds instead: a slow ClickHouse gets fewer, larger inserts and keeps up.
            permit = ship_tx.reserve(), if due => {
                let batch = seal(&mut open, &mut seq);
                match permit {
                    Ok(p) => p.send(batch),
                    Err(_) => ctx.spool_push(batch).await,
                }
            },
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && !due => {}
        }
    }
    if open.rows > 0 {
        let batch = seal(&mut open, &mut seq);
        if let Err(mpsc::error::SendError(b)) = ship_tx.send(batch).await {
            ctx.spool_push(b).await;
        }
    }
}
