//! Fixtures the per-exchange benches share: nginx's answer to a keep-alive GET and loopback addresses as the kernel
//! records them.

/// A 612-byte page with nginx's response head.
pub fn response() -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 20:00:00 GMT\r\n\
Content-Type: application/json\r\nContent-Length: 612\r\nConnection: keep-alive\r\nETag: \"6565\"\r\n\r\n"
        .to_vec();
    r.extend(std::iter::repeat_n(b'x', 612));
    r
}

/// 127.0.0.`last` as an IPv4-mapped IPv6 address.
pub fn v4(last: u8) -> [u8; 16] {
    let mut x = [0u8; 16];
    x[10] = 0xff;
    x[11] = 0xff;
    x[12..].copy_from_slice(&[127, 0, 0, last]);
    x
}
