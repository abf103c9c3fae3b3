//! Parser fixtures: heads, framing and anomalies, the chunk walker, query keys.
use super::*;

#[test]
fn headers_keep_order_and_find_names_case_insensitively() {
    let h: Headers = [
        ("Host", "a.example"),
        ("X-Empty", ""),
        ("Accept", "text/html"),
        ("accept", "application/json"),
    ]
    .into_iter()
    .collect();
    assert_eq!(h.len(), 4);
    assert_eq!(
        h.iter().collect::<Vec<_>>(),
        [
            ("Host", "a.example"),
            ("X-Empty", ""),
            ("Accept", "text/html"),
            ("accept", "application/json")
        ]
    );
    assert_eq!(h.get("HOST"), Some("a.example"));
    assert_eq!(h.get("x-empty"), Some(""));
    assert_eq!(h.get("missing"), None);
    assert_eq!(
        h.all("ACCEPT").collect::<Vec<_>>(),
        ["text/html", "application/json"]
    );
    let mut h = h;
    h.clear();
    assert!(h.is_empty() && h.iter().next().is_none());
}

#[test]
fn parsed_request_headers_are_trimmed_and_lossy_utf8() {
    let Ok(Parsed::Complete(r)) =
        parse_request(b"GET / HTTP/1.1\r\nHost:  h  \r\nX-Bin: a\xffb\r\nX-Last: z\r\n\r\n")
    else {
        panic!("complete request expected")
    };
    assert_eq!(
        r.headers.iter().collect::<Vec<_>>(),
        [("Host", "h"), ("X-Bin", "a\u{fffd}b"), ("X-Last", "z")]
    );
}

/// An ASCII head's values are taken as slices of the head checked once; a head with other bytes has each value
/// checked and trimmed on its own: both give the same fields (the Unicode no-break space is trimmed as before).
#[test]
fn ascii_and_utf8_heads_give_the_same_trimmed_fields() {
    let fields = |buf: &[u8]| {
        req(buf)
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect::<Vec<_>>()
    };
    let ascii = fields(b"GET / HTTP/1.1\r\nHost:\t h \t\r\nX-Empty:\r\nX-A: a b\r\n\r\n");
    let utf8 = fields(
        "GET / HTTP/1.1\r\nHost:\t h \t\r\nX-Empty:\r\nX-A: a b\r\nX-U: \u{a0}\u{e9}t\u{e9}\u{a0}\r\n\r\n"
            .as_bytes(),
    );
    let expected = [("Host", "h"), ("X-Empty", ""), ("X-A", "a b")];
    assert_eq!(ascii, expected.map(|(n, v)| (n.to_string(), v.to_string())));
    assert_eq!(utf8[..3], ascii[..]);
    assert_eq!(utf8[3], ("X-U".to_string(), "\u{e9}t\u{e9}".to_string()));
}

fn req(buf: &[u8]) -> RequestHead {
    match parse_request(buf) {
        Ok(Parsed::Complete(r)) => r,
        other => panic!("expected a complete request from {buf:?}, got {other:?}"),
    }
}

fn resp(buf: &[u8]) -> ResponseHead {
    match parse_response(buf) {
        Ok(Parsed::Complete(r)) => r,
        other => panic!("expected a complete response from {buf:?}, got {other:?}"),
    }
}

#[test]
fn simple_get() {
    let raw =
        b"GET /a/b?x=1&y=2&x=3 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\n\r\nrest";
    let r = req(raw);
    assert_eq!(r.method(), "GET");
    assert_eq!(r.path(), "/a/b");
    assert_eq!(r.query(), "x=1&y=2&x=3");
    assert_eq!(r.host(), "example.com");
    assert_eq!(r.header("user-agent"), Some("curl/8"));
    assert_eq!(r.head_len, raw.len() - 4, "head length excludes the body");
    assert_eq!(r.body_length(), Ok(BodyLength::Empty));
    assert!(r.keep_alive(), "HTTP/1.1 defaults to keep-alive");
}

#[test]
fn partial_and_errors() {
    assert_eq!(
        parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n"),
        Ok(Parsed::Partial)
    );
    assert_eq!(parse_head(b"HTT"), Ok(Parsed::Partial));
    assert_eq!(parse_head(b""), Ok(Parsed::Partial));
    assert_eq!(parse_head(b"\x00\x01binary"), Err(ParseError::NotHttp));
    // A method longer than the classifier's longest is not one, complete or not; the longest still is.
    let method = |n: usize| format!("{} / HTTP/1.1\r\n\r\n", "A".repeat(n));
    assert_eq!(
        parse_head(method(MAX_METHOD_LEN + 1).as_bytes()),
        Err(ParseError::NotHttp)
    );
    assert_eq!(
        parse_head(&method(99).as_bytes()[..40]),
        Err(ParseError::NotHttp)
    );
    assert!(matches!(
        parse_head(method(MAX_METHOD_LEN).as_bytes()),
        Ok(Parsed::Complete(_))
    ));
    assert!(
        matches!(
            parse_head(b"GET / HTTP/9.9\r\n\r\n"),
            Err(ParseError::Malformed(_))
        ),
        "bad version must be malformed"
    );
}

#[test]
fn heads_with_more_fields_than_the_stack_slots_parse_whole() {
    // 10,000 fields (a hostile client; also a real one with more than 64): nothing is refused for the count, and
    // fields after the 64th still frame the message.
    let mut many = b"POST /many HTTP/1.1\r\nHost: many.test\r\n".to_vec();
    for i in 0..10_000 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"Content-Length: 7\r\nX-Request-Id: late-id\r\n\r\n");
    let r = req(&many);
    assert_eq!(
        (r.method(), r.target(), r.head_len),
        ("POST", "/many", many.len())
    );
    assert_eq!(r.body_length(), Ok(BodyLength::Length(7)));
    assert_eq!(r.header("x-request-id"), Some("late-id"));
    assert_eq!(r.header("x-h9999"), Some("v"));
    // Cut anywhere, it is partial, never an error; a response likewise.
    assert_eq!(parse_head(&many[..many.len() / 2]), Ok(Parsed::Partial));
    let mut resp = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..(MAX_HEADERS + 1) {
        resp.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    resp.extend_from_slice(b"Content-Length: 3\r\n\r\n");
    let Ok(Parsed::Complete(Head::Response(r))) = parse_head(&resp) else {
        panic!("response with {} fields not parsed", MAX_HEADERS + 2)
    };
    assert_eq!(
        (r.status, r.body_length("GET")),
        (200, Ok(BodyLength::Length(3)))
    );
}

#[test]
fn request_framing() {
    let r = req(b"POST /u HTTP/1.1\r\nContent-Length: 10\r\n\r\n");
    assert_eq!(r.body_length(), Ok(BodyLength::Length(10)));
    let r =
        req(b"POST /u HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(r.body_length(), Ok(BodyLength::Chunked), "chunked wins");
    let r = req(b"POST /u HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n");
    assert_eq!(r.body_length(), Ok(BodyLength::Length(4)));
    let r = req(b"POST /u HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n");
    assert!(
        r.body_length().is_err(),
        "conflicting lengths are malformed"
    );
    let r = req(b"POST /u HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
    assert!(r.body_length().is_err(), "negative length is malformed");
    let r = req(b"PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
    assert!(r.expects_continue());
}

#[test]
fn response_framing() {
    let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(r.body_length("GET"), Ok(BodyLength::Length(5)));
    assert_eq!(
        r.body_length("HEAD"),
        Ok(BodyLength::Empty),
        "HEAD has no body"
    );
    let r = resp(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(r.body_length("GET"), Ok(BodyLength::Empty));
    let r = resp(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(r.body_length("GET"), Ok(BodyLength::Empty));
    let r = resp(b"HTTP/1.1 100 Continue\r\n\r\n");
    assert!(r.is_interim());
    assert_eq!(r.body_length("POST"), Ok(BodyLength::Empty));
    let r = resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n");
    assert!(!r.is_interim(), "101 is final");
    assert!(r.starts_tunnel("GET"));
    let r = resp(b"HTTP/1.0 200 OK\r\n\r\n");
    assert_eq!(r.body_length("GET"), Ok(BodyLength::UntilClose));
    assert!(!r.keep_alive(), "HTTP/1.0 defaults to close");
    let r = resp(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
    assert!(r.keep_alive());
    assert_eq!(r.body_length("GET"), Ok(BodyLength::Empty));
    let r = resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(r.body_length("GET"), Ok(BodyLength::Chunked));
    let r = resp(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n");
    assert!(!r.keep_alive());
    let r = resp(b"HTTP/1.1 200 Connection established\r\n\r\n");
    assert!(r.starts_tunnel("CONNECT"));
    assert_eq!(r.body_length("CONNECT"), Ok(BodyLength::Empty));
    // Framing is read from the fields as parsed, without keeping them.
    let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nContent-Length: 7\r\n\r\n");
    assert_eq!(r.body_length("GET"), Ok(BodyLength::Length(7)));
    let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nContent-Length: 8, 9\r\nContent-Length: x\r\n\r\n");
    assert_eq!(
        r.body_length("GET"),
        Err(ParseError::BadContentLength("8, 9".into())),
        "the first bad field is named"
    );
    for bad in [&b""[..], b"+3", b"99999999999999999999", b"1\xff"] {
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: ".to_vec();
        head.extend_from_slice(bad);
        head.extend_from_slice(b"\r\n\r\n");
        assert!(resp(&head).body_length("GET").is_err(), "{bad:?}");
    }
    let r =
        resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(
        r.body_length("GET"),
        Ok(BodyLength::UntilClose),
        "a final coding other than chunked runs to the close"
    );
    let r = resp(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n");
    assert!(!r.keep_alive(), "close wins");
}

#[test]
fn targets() {
    let r = req(b"GET http://h.example:8080/p/q?a=1#f HTTP/1.1\r\n\r\n");
    assert_eq!(r.path(), "/p/q");
    assert_eq!(r.query(), "a=1");
    assert_eq!(r.host(), "h.example:8080");
    let r = req(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.path(), "*");
    let r = req(b"CONNECT db:5432 HTTP/1.1\r\n\r\n");
    assert_eq!(r.host(), "db:5432");
    let r = req(b"GET http://h?z=1 HTTP/1.1\r\n\r\n");
    assert_eq!(r.path(), "/", "an empty absolute-form path is /");
    assert_eq!(r.query(), "z=1");
    let r = req(b"GET http://h#f HTTP/1.1\r\n\r\n");
    assert_eq!(r.path(), "/");
    // An origin-form target whose query holds a URL is not mistaken for absolute form.
    let r = req(b"GET /login?next=https://x.example/home HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.path(), "/login");
    assert_eq!(r.query(), "next=https://x.example/home");
}

#[test]
fn userinfo_never_reaches_the_host() {
    let r = req(b"GET http://user:pass@h.example:1234/p HTTP/1.1\r\n\r\n");
    assert_eq!((r.host(), r.path()), ("h.example:1234", "/p"));
    let r = req(b"GET http://a%40b:p%40ss@h?x=1 HTTP/1.1\r\n\r\n");
    assert_eq!((r.host(), r.path(), r.query()), ("h", "/", "x=1"));
    let r = req(b"GET / HTTP/1.1\r\nHost: user:pw@h.example\r\n\r\n");
    assert_eq!(r.host(), "h.example");
    let r = req(b"CONNECT user:pw@db:5432 HTTP/1.1\r\n\r\n");
    assert_eq!(r.host(), "db:5432");
    let r = req(b"GET /a@b HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(
        (r.host(), r.path()),
        ("h", "/a@b"),
        "an @ in the path is not userinfo"
    );
}

#[test]
fn methods_by_shape() {
    for line in [
        &b"PURGE /x HTTP/1.1\r\nHost: h\r\n\r\n"[..],
        b"M-SEARCH * HTTP/1.1\r\nHost: h\r\n\r\n",
        b"QUERY /q HTTP/1.1\r\nHost: h\r\n\r\n",
        b"VERSION-CONTROL /v HTTP/1.1\r\n\r\n",
        b"x-custom.1 /v HTTP/1.1\r\n\r\n",
    ] {
        let method = line.split(|b| *b == b' ').next().unwrap_or_default();
        assert!(looks_like_request(line), "{line:?}");
        match parse_head(line) {
            Ok(Parsed::Complete(Head::Request(r))) => assert_eq!(r.method().as_bytes(), method),
            other => panic!("{line:?}: {other:?}"),
        }
    }
    assert!(!looks_like_request(b"{\"a\": 1}"));
    assert!(!looks_like_request(b"Host: x"));
}

#[test]
fn framing_anomalies_are_named() {
    let names = |a: Anomalies| a.names().collect::<Vec<_>>();
    let r = req(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n");
    assert!(r.anomalies.is_empty(), "{:?}", names(r.anomalies));
    let r = req(b"GET / HTTP/1.1\nHost: h\n\n");
    assert_eq!(names(r.anomalies), ["bare_lf"]);
    // "Missing CR between headers": the smuggling reading takes the hidden field as the body length.
    let r = req(b"GET / HTTP/1.1\r\nDummy: x\nContent-Length: 23\r\n\r\n");
    assert_eq!(names(r.anomalies), ["bare_lf"]);
    assert_eq!(
        r.body_length(),
        Ok(BodyLength::Length(23)),
        "read the lenient way"
    );
    let r = req(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(names(r.anomalies), ["cl_and_te"]);
    assert_eq!(r.body_length(), Ok(BodyLength::Chunked));
    let r = req(b"POST / HTTP/1.1\r\nContent-Length: 1 0\r\n\r\n");
    assert_eq!(names(r.anomalies), ["content_length"]);
    let r = req(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n");
    assert_eq!(names(r.anomalies), ["content_length"]);
    assert_eq!(r.body_length(), Ok(BodyLength::Length(5)));
    let r = req(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(names(r.anomalies), ["content_length"]);
    let r = req(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert_eq!(names(r.anomalies), ["transfer_encoding"]);
    let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\n\r\n");
    assert_eq!(names(r.anomalies), ["bare_lf", "cl_and_te"]);
    let r = resp(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert!(r.anomalies.is_empty(), "a response may run until the close");
}

#[test]
fn query_key_extraction() {
    assert_eq!(query_keys("b=1&a=2&b=3&&=x&c"), vec!["b", "a", "c"]);
    assert_eq!(
        query_keys("na%6De=1&x+y=2&bad%zz=3&tail%"),
        vec!["name", "x y", "bad%zz", "tail%"]
    );
    assert!(query_keys("").is_empty());
}

#[test]
fn traceparent() {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(
        traceparent_trace_id(tp),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(
        traceparent_trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        None
    );
    assert_eq!(traceparent_trace_id("garbage"), None);
    assert_eq!(
        traceparent_trace_id("00-4bf92f35-00f067aa0ba902b7-01"),
        None
    );
}

#[test]
fn truncated_heads() {
    let cut = b"GET /long?k=v HTTP/1.1\r\nHost: a\r\nCookie: xxxxxxxx";
    let Some(Head::Request(r)) = parse_truncated_head(cut) else {
        panic!("a request cut after its host line must still parse");
    };
    assert_eq!((r.method(), r.path(), r.host()), ("GET", "/long", "a"));
    assert_eq!(r.head_len, cut.len());
    let Some(Head::Request(r)) = parse_truncated_head(b"GET /very/long/path/aaaa") else {
        panic!("a request cut inside its request line must still give the method");
    };
    assert_eq!((r.method(), r.target()), ("GET", "/very/long/path/aaaa"));
    let Some(Head::Response(r)) = parse_truncated_head(b"HTTP/1.1 404 Not Found\r\nX-A: aaaa")
    else {
        panic!("a cut response must give its status");
    };
    assert_eq!(r.status, 404);
    assert_eq!(parse_truncated_head(b"\x01\x02\x03"), None);
    // A bare LF ends a line as a CRLF does; a CR at the cut does not.
    let Some(Head::Request(r)) =
        parse_truncated_head(b"GET /a HTTP/1.1\r\nHost: h\r\nX: 1\nY: 2\r")
    else {
        panic!("a request cut after a CR must parse up to its last line end");
    };
    assert_eq!(
        (r.path(), r.host(), r.header("x"), r.header("y")),
        ("/a", "h", Some("1"), None)
    );
}

/// Heads cut at every length: a cut head reads as [`parse_head`] reads it whenever it is complete, and otherwise
/// as [`parse_truncated_head`] reads it, or as malformed where parse_head finds it so.
#[test]
fn a_cut_head_reads_as_the_whole_parse_or_the_truncated_parse_reads_it() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let starts: [&[u8]; 4] = [
        b"GET /a?b=c HTTP/1.1",
        b"POST /p HTTP/1.0",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 404",
    ];
    let fields: [&[u8]; 7] = [
        b"Host: h",
        b"Content-Length: 3",
        b"Cookie: c=0123456789abcdef0123456789abcdef",
        b"X-Api-Key: k",
        b"Bad Line",
        b"X: \x01",
        b"Transfer-Encoding: chunked",
    ];
    let mut cases = 0;
    for _ in 0..3_000 {
        let eol: &[u8] = if rng.random_range(0..8) == 0 {
            b"\n"
        } else {
            b"\r\n"
        };
        let mut buf = starts[rng.random_range(0..starts.len())].to_vec();
        buf.extend_from_slice(eol);
        for _ in 0..rng.random_range(0..6) {
            let f = fields[rng.random_range(0..fields.len())];
            // Invalid lines now and then.
            if (f.starts_with(b"Bad") || f.starts_with(b"X: ")) && rng.random_range(0..4) != 0 {
                continue;
            }
            buf.extend_from_slice(f);
            buf.extend_from_slice(eol);
        }
        buf.extend_from_slice(eol);
        buf.extend_from_slice(b"abc\nmore");
        for cut in 1..=buf.len() {
            let b = &buf[..cut];
            cases += 1;
            match (parse_head(b), parse_cut_head(b)) {
                (Ok(Parsed::Complete(whole)), CutHead::Complete(cut)) => {
                    assert_eq!(whole, cut, "{b:?}")
                }
                (Ok(Parsed::Partial), CutHead::Truncated(h)) => {
                    assert_eq!(Some(h), parse_truncated_head(b), "{b:?}")
                }
                (Err(_), CutHead::Malformed(_)) => {}
                // Too little to read even as a start line ("P"): the truncated parse finds nothing either.
                (Ok(Parsed::Partial), CutHead::Malformed(_)) => {
                    assert_eq!(parse_truncated_head(b), None, "{b:?}")
                }
                // The line the capture cut is not read: an error there is not seen.
                (Err(_), CutHead::Truncated(_)) => {}
                (whole, cut) => panic!("{b:?}: whole {whole:?}, cut {cut:?}"),
            }
        }
    }
    assert!(cases > 100_000, "{cases}");
}

#[test]
fn chunked_walk() {
    let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let mut d = ChunkedDecoder::new();
    assert_eq!(d.feed(body), Ok(ChunkStep::Done(body.len() - 4)));

    // Byte by byte gives the same end.
    let mut d = ChunkedDecoder::new();
    let mut done = None;
    for (i, b) in body.iter().enumerate() {
        if let ChunkStep::Done(n) = d.feed(std::slice::from_ref(b)).expect("valid chunking") {
            assert_eq!(n, 1, "the final byte ends the body");
            done = Some(i + 1);
            break;
        }
    }
    assert_eq!(done, Some(body.len() - 4));

    let mut d = ChunkedDecoder::new();
    assert_eq!(d.feed(b"10\r\n0123456789"), Ok(ChunkStep::NeedMore));
    assert_eq!(d.feed(b"abcdef\r\n0\r\n\r\n"), Ok(ChunkStep::Done(13)));

    let mut d = ChunkedDecoder::new();
    assert_eq!(d.feed(b"zz\r\n"), Err(ParseError::BadChunk));
    let mut d = ChunkedDecoder::new();
    assert_eq!(
        d.feed(b"ffffffffffffffff\r\n"),
        Err(ParseError::BadChunk),
        "size overflow"
    );
}

#[test]
fn invalid_utf8_in_target_and_fields_is_kept_as_replacement_characters() {
    let r = req(
        b"GET /utf8/\xff\xfe\xc3\x28?k\xff=v HTTP/1.1\r\nHost: bad\xff\xc3\x28.test\r\n\
          User-Agent: ua\xfe\xff\r\nX-Request-Id: id\xc0\xaf\r\n\r\n",
    );
    // httparse alone refuses a target that is not UTF-8; servers (nginx, python) answer it.
    assert_eq!(r.target(), "/utf8/\u{fffd}\u{fffd}\u{fffd}(?k\u{fffd}=v");
    assert_eq!(r.header("host"), Some("bad\u{fffd}\u{fffd}(.test"));
    assert_eq!(r.header("user-agent"), Some("ua\u{fffd}\u{fffd}"));
    assert_eq!(
        (r.method(), r.headers.len(), r.headers.iter().next()),
        ("GET", 3, Some(("Host", "bad\u{fffd}\u{fffd}(.test"))),
        "the fields follow the rewritten target"
    );
    // Valid UTF-8 is kept as it is; NUL stays refused.
    assert_eq!(
        req(b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n").target(),
        "/caf\u{e9}"
    );
    assert!(parse_head(b"GET /nul\x00\xff HTTP/1.1\r\n\r\n").is_err());
    assert_eq!(
        parse_head(b"GET /cut\xff HTTP/1.1\r\nHost"),
        Ok(Parsed::Partial)
    );
}

#[test]
fn a_non_ascii_method_is_malformed_whatever_the_rest_of_the_line_holds() {
    // Found by the http_head fuzz target (fuzz/corpus/http_head/crash-non-ascii-method): the method's bytes used to be
    // replaced like the target's when the line was not UTF-8, so the full head parsed while its first 8 bytes (valid
    // UTF-8) did not.
    let head = b"HT\xc8\xbfTfG*T ttp://us\x88\xc5\x97> HTTP/1.1\nrtsH:\n\n";
    assert!(matches!(parse_head(head), Err(ParseError::Malformed(_))));
    assert!(matches!(
        parse_head(&head[..8]),
        Err(ParseError::Malformed(_))
    ));
    assert!(parse_head(b"G\xffT /x HTTP/1.1\r\n\r\n").is_err());
    // A non-UTF-8 target after an ASCII method is still taken.
    assert_eq!(
        req(b"GET /x\x88\xc5\x97 HTTP/1.1\r\n\r\n").target(),
        "/x\u{fffd}\u{157}"
    );
}

#[test]
fn eq_ignore_case_agrees_with_the_standard_comparison() {
    let words: [&[u8]; 12] = [
        b"",
        b"host",
        b"Host",
        b"HOST",
        b"hosT ",
        b"content-length",
        b"Content-Length",
        b"content\rlength",
        b"x-request-id",
        b"X-Request-Id",
        "h\u{f6}st".as_bytes(),
        "H\u{d6}ST".as_bytes(),
    ];
    for a in words {
        for b in words {
            assert_eq!(
                eq_ignore_case(a, b),
                a.eq_ignore_ascii_case(b),
                "{:?} against {:?}",
                String::from_utf8_lossy(a),
                String::from_utf8_lossy(b)
            );
        }
    }
    // Only ASCII letters fold: '-' (0x2d) and CR (0x0d) differ by the case bit, and so do 0xf6 and 0xd6.
    assert!(!eq_ignore_case(b"a-b", b"a\rb"));
    assert!(!eq_ignore_case("\u{f6}".as_bytes(), "\u{d6}".as_bytes()));
}

#[test]
fn response_heads_refused_awaited_and_accepted() {
    use httparse::Error as E;
    let err = |e: E| Err(ParseError::from(e));
    let verdict = |b: &[u8]| parse_response(b).map(|p| matches!(p, Parsed::Complete(_)));
    // Refused, wherever the bad byte is (also in a line not yet complete).
    let refused: [(&[u8], E); 14] = [
        (b"HTTP/1.1 200 OK\r\nX-A: a\x7fb\r\n\r\n", E::HeaderValue),
        (b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n", E::HeaderValue),
        (b"HTTP/1.1 200 OK\r\nX-A: a\x01", E::HeaderValue),
        (b"HTTP/1.1 200 OK\r\nX-A : a\r\n\r\n", E::HeaderName),
        (b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\n\r\n", E::HeaderName),
        (b"HTTP/1.1 200 OK\r\n: a\r\n\r\n", E::HeaderName),
        (b"HTTP/1.1 200 OK\r\n\rX", E::NewLine),
        (b"HTTP/1.1 200 O\x00K\r\n\r\n", E::Status),
        (b"HTTP/1.1 20x OK\r\n\r\n", E::Status),
        (b"HTTP/1.1 200\rX", E::Status),
        (b"HTTP/1.1  200 OK\r\n\r\n", E::Status),
        (b"HTTP/2.0 200 OK\r\n\r\n", E::Version),
        (b"HTTP/1.1\t200 OK\r\n\r\n", E::Version),
        (b"HTTX", E::Version),
    ];
    for (head, e) in refused {
        assert_eq!(verdict(head), err(e), "{:?}", String::from_utf8_lossy(head));
    }
    // Waits for more.
    for partial in [
        &b"HTTP/1."[..],
        b"HTTP/1.1",
        b"HTTP/1.1 2",
        b"HTTP/1.1 200 OK\r",
        b"HTTP/1.1 200 OK\r\nX-A",
        b"HTTP/1.1 200 OK\r\nX-A:  ",
        b"HTTP/1.1 200 OK\r\nX-A: a\r",
        b"HTTP/1.1 200 OK\r\nX-A: a\r\n\r",
    ] {
        assert_eq!(
            verdict(partial),
            Ok(false),
            "{:?}",
            String::from_utf8_lossy(partial)
        );
    }
    // Accepted: empty lines before the status line, no reason phrase, obs-text, an empty value, bare LFs.
    let head = b"\r\nHTTP/1.0 204\nX-Obs: caf\xe9\r\nX-Empty:\t\r\nContent-Length: 0 \r\n\r\nbody";
    let Ok(Parsed::Complete(r)) = parse_response(head) else {
        panic!("not parsed")
    };
    assert_eq!(
        (r.status, r.minor_version, r.head_len),
        (204, 0, head.len() - 4)
    );
    assert!(r.anomalies.contains(Anomalies::BARE_LF));
    assert_eq!(r.body_length("GET"), Ok(BodyLength::Empty));
}

/// Every head built from `heads` by one change: cut anywhere, and each position replaced by (or preceded by) each
/// byte that changes how a head reads (separators, line ends, controls, DEL, obs-text, digits, letters).
fn mutations(heads: &[&[u8]]) -> Vec<Vec<u8>> {
    let bytes = b" \t\r\n:,;/?0129aAzZ-_\"\x00\x01\x0b\x7f\x80\xe9\xff";
    let mut out = Vec::new();
    for head in heads {
        for cut in 0..=head.len() {
            out.push(head[..cut].to_vec());
        }
        for at in 0..head.len() {
            for &b in bytes {
                let mut m = head.to_vec();
                m[at] = b;
                out.push(m.clone());
                m[at] = head[at];
                m.insert(at, b);
                out.push(m);
            }
        }
    }
    out
}

/// The hand-written reading of plain heads agrees with httparse on `heads` (each of which it reads) and every
/// mutation of them, and reads many of those itself: the comparison covers its path, not only the fallback.
fn plain_agrees_with_httparse<T: PartialEq + std::fmt::Debug>(
    heads: &[&[u8]],
    by_hand: fn(&[u8]) -> Option<T>,
    parse: fn(&[u8]) -> Result<Parsed<T>, ParseError>,
    httparse_only: fn(&[u8]) -> Result<Parsed<T>, ParseError>,
) {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    for head in heads {
        assert!(by_hand(head).is_some(), "{:?}", text(head));
    }
    let mut read = 0;
    for m in mutations(heads) {
        assert_eq!(parse(&m), httparse_only(&m), "{:?}", text(&m));
        read += usize::from(by_hand(&m).is_some());
    }
    assert!(read > 1000, "{read} mutated heads read by hand");
}

#[test]
fn plain_response_heads_read_as_httparse_reads_them() {
    let heads: [&[u8]; 6] = [
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 20:00:00 GMT\r\n\
Content-Type: application/json\r\nContent-Length: 612\r\nConnection: keep-alive\r\nETag: \"6565\"\r\n\r\nbody",
        b"HTTP/1.0 204\r\nConnection: Keep-Alive\r\nX-Empty:\t\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: /x?a=1:2\r\nTransfer-Encoding: gzip, chunked \r\nContent-Length: 5, 5\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"HTTP/1.1 500 \r\nContent-Length: x\r\nContent-Length:  7\t\r\nconnection: close\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
    ];
    plain_agrees_with_httparse(
        &heads,
        plain::response,
        parse_response,
        parse_response_httparse,
    );
}

/// Fields and all: a request's fields are kept, where a response's are only read for framing.
#[test]
fn plain_request_heads_read_as_httparse_reads_them() {
    let heads: [&[u8]; 5] = [
        b"GET /v1/orders/12345?x=1&y=%20 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: bench/1.0\r\n\
Accept: application/json\r\nX-Api-Key: sk_live_0123\r\nX-Request-Id: 4bf92f35\r\n\r\n",
        b"POST http://h.example:8080/p HTTP/1.0\r\nContent-Length: 5, 5\r\nConnection: keep-alive\r\nX-Empty:\t\r\n\r\nhello",
        b"PUT * HTTP/1.1\r\nTransfer-Encoding: gzip, chunked \r\nExpect: 100-continue\r\nCookie: a=b; c=\"d e\"\r\n\r\n",
        b"CONNECT h.example:443 HTTP/1.1\r\nHost: h.example:443\r\nProxy-Authorization: Basic  YTpi  \r\n\r\n",
        b"OPTIONS / HTTP/1.1\r\n\r\n",
    ];
    plain_agrees_with_httparse(
        &heads,
        plain::request,
        parse_request,
        parse_request_httparse,
    );
}
