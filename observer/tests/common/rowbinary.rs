//! Reading `http_requests` rows back as [`Event`]s in the tests: a RowBinary decoder generated from
//! [`observer::event_fields!`], the inverse of the sink's encoder. Test-only, so it lives with the tests.
use std::net::{IpAddr, Ipv6Addr};

use observer::event::{AttributedBy, Event, KeyState, OriginBy, SharedStr, Side, Timestamp};
use observer::sink::clickhouse::rowbinary::from_ipv6;

/// Bytes of a RowBinary stream not yet read.
pub struct Reader<'a>(pub &'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        assert!(self.0.len() >= n, "RowBinary ends in the middle of a value");
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        self.take(N).try_into().expect("length checked")
    }

    fn varint(&mut self) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.array::<1>()[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
        }
        panic!("varint longer than 10 bytes")
    }

    fn string(&mut self) -> String {
        let n = self.varint() as usize;
        String::from_utf8(self.take(n).to_vec()).expect("UTF-8 string")
    }
}

/// A field type read back from RowBinary.
pub trait FromRowBinary: Sized {
    fn read(r: &mut Reader) -> Self;
}

macro_rules! little_endian {
    ($($t:ty),*) => {
        $(impl FromRowBinary for $t {
            fn read(r: &mut Reader) -> Self {
                <$t>::from_le_bytes(r.array())
            }
        })*
    };
}

little_endian!(u16, u32, u64);

impl FromRowBinary for bool {
    fn read(r: &mut Reader) -> Self {
        r.array::<1>()[0] != 0
    }
}

impl FromRowBinary for String {
    fn read(r: &mut Reader) -> Self {
        r.string()
    }
}

impl FromRowBinary for SharedStr {
    fn read(r: &mut Reader) -> Self {
        r.string().into()
    }
}

impl FromRowBinary for Vec<String> {
    fn read(r: &mut Reader) -> Self {
        let n = r.varint();
        (0..n).map(|_| r.string()).collect()
    }
}

impl FromRowBinary for Timestamp {
    fn read(r: &mut Reader) -> Self {
        Timestamp(i64::from_le_bytes(r.array()))
    }
}

impl FromRowBinary for IpAddr {
    fn read(r: &mut Reader) -> Self {
        from_ipv6(Ipv6Addr::from(r.array::<16>()))
    }
}

macro_rules! enum8 {
    ($($t:ty),*) => {
        $(impl FromRowBinary for $t {
            fn read(r: &mut Reader) -> Self {
                let code = r.array::<1>()[0] as i8;
                <$t>::from_code(code).unwrap_or_else(|| panic!("unknown {} code {code}", stringify!($t)))
            }
        })*
    };
}

enum8!(Side, KeyState, AttributedBy, OriginBy);

macro_rules! decoder {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty => $ch:expr, $codec:literal, $since:literal; )*) => {
        /// One row written by `encode_event` (columns in table order) back to an event.
        pub fn decode_event(r: &mut Reader) -> Event {
            Event {
                $( $name: <$ty as FromRowBinary>::read(r), )*
            }
        }
    };
}

observer::event_fields!(decoder);

/// Every row of a `FORMAT RowBinary` result.
pub fn decode_events(bytes: &[u8]) -> Vec<Event> {
    let mut r = Reader(bytes);
    let mut out = Vec::new();
    while !r.0.is_empty() {
        out.push(decode_event(&mut r));
    }
    out
}
