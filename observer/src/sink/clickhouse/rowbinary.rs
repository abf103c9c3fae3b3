//! ClickHouse RowBinary encoding of an [`Event`], generated from [`crate::event_fields!`]: one `put` per field, in
//! table order, each a few inlined byte copies (what a hand-written encoder would do, without the per-field list).
//!
//! Also the `RowBinaryWithNamesAndTypes` header and the INSERT column list for the same columns, so the server
//! checks every column's name and type against what we send.
use std::net::{IpAddr, Ipv6Addr};

use super::migrations::http_requests_columns;
use crate::event::{
    AttributedBy, Event, KeyState, OriginBy, SharedStr, Side, StoredEnum, Timestamp,
};

/// A field type's RowBinary form. A new field type needs an impl here (and its ClickHouse type in `CH_TYPE`).
pub trait RowBinary {
    /// The ClickHouse type this encoding is for, without `LowCardinality` (which does not change RowBinary).
    const CH_TYPE: &'static str;
    fn put(&self, b: &mut Vec<u8>);
}

/// Unsigned LEB128, RowBinary's length prefix.
pub fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
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

/// A RowBinary `String`: length, then bytes.
pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_varint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

macro_rules! little_endian {
    ($($t:ty => $ch:literal),*) => {
        $(impl RowBinary for $t {
            const CH_TYPE: &'static str = $ch;
            #[inline]
            fn put(&self, b: &mut Vec<u8>) {
                b.extend_from_slice(&self.to_le_bytes());
            }
        })*
    };
}

little_endian!(u16 => "UInt16", u32 => "UInt32", u64 => "UInt64");

impl RowBinary for bool {
    const CH_TYPE: &'static str = "Bool";
    #[inline]
    fn put(&self, b: &mut Vec<u8>) {
        b.push(u8::from(*self));
    }
}

impl RowBinary for String {
    const CH_TYPE: &'static str = "String";
    #[inline]
    fn put(&self, b: &mut Vec<u8>) {
        put_str(b, self);
    }
}

impl RowBinary for SharedStr {
    const CH_TYPE: &'static str = "String";
    #[inline]
    fn put(&self, b: &mut Vec<u8>) {
        put_str(b, self);
    }
}

impl RowBinary for Vec<String> {
    const CH_TYPE: &'static str = "Array(String)";
    #[inline]
    fn put(&self, b: &mut Vec<u8>) {
        put_varint(b, self.len() as u64);
        for s in self {
            put_str(b, s);
        }
    }
}

impl RowBinary for Timestamp {
    const CH_TYPE: &'static str = "DateTime64(6, 'UTC')";
    #[inline]
    fn put(&self, b: &mut Vec<u8>) {
        b.extend_from_slice(&self.0.to_le_bytes());
    }
}

impl RowBinary for IpAddr {
    const CH_TYPE: &'static str = "IPv6";
    #[inline]
    fn put(&self, b: &mut Vec<u8>) {
        b.extend_from_slice(&to_ipv6(*self).octets());
    }
}

macro_rules! enum8 {
    ($($t:ty),*) => {
        $(impl RowBinary for $t {
            const CH_TYPE: &'static str = "Enum8";
            #[inline]
            fn put(&self, b: &mut Vec<u8>) {
                b.push(StoredEnum::code(*self) as u8);
            }
        })*
    };
}

enum8!(Side, KeyState, AttributedBy, OriginBy);

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

macro_rules! encoder {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty => $ch:expr, $codec:literal, $since:literal; )*) => {
        /// Appends one event as a RowBinary row, in `http_requests` column order. Not `#[inline]`: compiled here,
        /// every field's write is inlined into it (a caller in another crate would call them one by one).
        pub fn encode_event(b: &mut Vec<u8>, e: &Event) {
            $( RowBinary::put(&e.$name, b); )*
        }

        /// `(column, CH_TYPE of its Rust type)` in table order, to check the table's types against the encoding.
        pub fn encoded_types() -> Vec<(&'static str, &'static str)> {
            vec![$( (stringify!($name), <$ty as RowBinary>::CH_TYPE), )*]
        }
    };
}

crate::event_fields!(encoder);

/// `RowBinaryWithNamesAndTypes` header for `http_requests`: the server checks names and types.
pub fn rbwnat_header() -> Vec<u8> {
    header_for(
        http_requests_columns()
            .iter()
            .map(|c| (c.name, c.ty.as_str())),
    )
}

/// `RowBinaryWithNamesAndTypes` header for any `(name, ClickHouse type)` columns, in insert order.
pub fn header_for<'a>(columns: impl Iterator<Item = (&'a str, &'a str)> + Clone) -> Vec<u8> {
    let mut b = Vec::with_capacity(1024);
    put_varint(&mut b, columns.clone().count() as u64);
    for (name, _) in columns.clone() {
        put_str(&mut b, name);
    }
    for (_, ty) in columns {
        put_str(&mut b, ty);
    }
    b
}

/// `ts, duration_us, ...` for the INSERT statement.
pub fn column_list() -> String {
    http_requests_columns()
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
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
        // port 2, pid 4, 2 strings, pid 4, 4 strings, truncated 1, conn_id 8, incomplete 1, empty array,
        // 10 strings, 2 enums.
        let enums_end =
            8 + 8 + 1 + 3 + 1 + 2 + 16 + 16 + 2 + 16 + 2 + 4 + 2 + 4 + 4 + 1 + 8 + 1 + 1 + 10 + 2;
        // Pod identity: 3 strings and an array per end; request_hash 8.
        let pods_end = enums_end + 2 * (3 + 1) + 8;
        // Origin: 3 strings, parent_conn_id 8, parent_ts 8, hop 2, origin_by 1.
        let origin_end = pods_end + 3 + 8 + 8 + 2 + 1;
        // trace_id_hash and request_id_hash, 8 each.
        let want = origin_end + 8 + 8;
        assert_eq!(b.len(), want);
        assert_eq!(b[origin_end - 1], 0, "OriginBy::None is 0");
        assert_eq!(b[16], 1, "Side::Client is Enum8 value 1");
        assert_eq!(
            b[enums_end - 2..enums_end],
            [0, 0],
            "KeyState::None and AttributedBy::None are 0"
        );
    }

    #[test]
    fn every_column_type_is_what_its_rust_type_encodes() {
        let columns = http_requests_columns();
        let encoded = encoded_types();
        assert_eq!(columns.len(), encoded.len());
        for (c, (name, ty)) in columns.iter().zip(encoded) {
            assert_eq!(c.name, name);
            let plain = c.ty.replace("LowCardinality(String)", "String");
            let plain = if plain.starts_with("Enum8(") {
                "Enum8"
            } else {
                &plain
            };
            assert_eq!(
                plain, ty,
                "column {name}: table says {}, the encoder writes {ty}",
                c.ty
            );
        }
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
    fn header_names_every_column() {
        let h = rbwnat_header();
        assert_eq!(h[0] as usize, http_requests_columns().len());
        let text = String::from_utf8_lossy(&h);
        for c in http_requests_columns() {
            assert!(
                text.contains(c.name) && text.contains(c.ty.as_str()),
                "header lacks {} {}",
                c.name,
                c.ty
            );
        }
        assert!(column_list().starts_with("ts, duration_us, side, method"));
    }
}
