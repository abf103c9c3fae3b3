//! What the engine keeps of a connection it evicted from a full table: enough to merge the records of it that come
//! later instead of reporting them again. When both ends are local, each segment is seen twice (the sender's egress,
//! the receiver's ingress); a connection evicted between the two would otherwise be tracked afresh from the later
//! copy and its exchange reported once per end. The evicted connection's exchanges are reported at eviction (without
//! the responses still to come); a later copy of bytes already walked is a duplicate, and the responses those
//! requests were still owed are skipped.
//!
//! A tombstone is dropped at the connection's close, and a record of another socket on the same endpoints is not
//! taken for the evicted connection's: a tombstone remembers its ends' socket cookies ([`Tombstone::continues`]).
use super::conn::Conn;
use super::stream::MsgState;

/// An evicted connection's walked extent, per direction (index as in the connection's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tombstone {
    /// End of the furthest segment seen.
    walked: [Option<u32>; 2],
    /// Start of the last message walked (its second copy is a duplicate, not a reordering).
    last_start: [Option<u32>; 2],
    /// Final responses still to come whose request was already reported.
    skip_resp: [u32; 2],
    /// Socket cookie of each end (index as in the connection's key), 0 where no local socket was seen.
    cookies: [u64; 2],
    /// Record time (CLOCK_MONOTONIC ns) of the eviction.
    pub(super) ts: u64,
}

impl Tombstone {
    /// What `conn` leaves behind when evicted at `ts`; taken before [`Conn::finalize`] empties its queues.
    pub(super) fn of(conn: &Conn, ts: u64) -> Self {
        let unanswered = |dir: usize| {
            conn.pending[dir]
                .iter()
                .filter(|p| p.resp.is_none())
                .count() as u32
        };
        Tombstone {
            walked: [conn.streams[0].max_end, conn.streams[1].max_end],
            last_start: [
                conn.streams[0].recent.last_start(),
                conn.streams[1].recent.last_start(),
            ],
            // Responses travel opposite to their requests.
            skip_resp: [
                conn.skip_resp[0] + unanswered(1),
                conn.skip_resp[1] + unanswered(0),
            ],
            cookies: [conn.ends[0].cookie, conn.ends[1].cookie],
            ts,
        }
    }

    /// Whether a record of local socket `cookie` at end `end` may belong to the evicted connection. A 4-tuple is
    /// held by one socket per end at a time and a cookie is never reused, so a cookie other than the one that end
    /// had is a later connection on the same endpoints (sock_ops sends no record when a server accepts one: this is
    /// where it is told apart). An end the connection was not seen from yet (the server's, when only the client's
    /// request was seen before the eviction), and a record that names no socket (cookie 0: TC hooks at ingress, and
    /// forwarded traffic), cannot be told apart: they are taken for the evicted connection's, within the idle timeout.
    pub(super) fn continues(&self, end: usize, cookie: u64) -> bool {
        let known = self.cookies[end];
        known == 0 || cookie == 0 || known == cookie
    }

    /// Makes `conn`, just created for the evicted connection's key, take what was walked as already seen.
    pub(super) fn revive(&self, conn: &mut Conn) {
        for dir in 0..2 {
            let st = &mut conn.streams[dir];
            if let Some(end) = self.walked[dir] {
                st.next_seq = Some(end);
                st.max_end = Some(end);
                // Bytes after the walked extent continue a message whose start was walked before: not placeable.
                st.state = MsgState::Unknown;
            }
            if let Some(start) = self.last_start[dir] {
                st.recent.mark(start, super::stream::START);
            }
            conn.skip_resp[dir] = self.skip_resp[dir];
        }
    }
}
