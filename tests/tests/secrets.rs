//! No secret leaves the agent: real clients send raw API keys (every header and query form the registry reads),
//! Authorization values (bearer, basic, proxy), cookies, query values, credentials in an absolute-form target and
//! a request body; then everything the agent wrote is searched for them: the NDJSON events, findings.ndjson, the
//! stdout sink, its log at trace level, its insights state, the ClickHouse spool (while ClickHouse is down), every
//! row of every table it stored in ClickHouse (read back), /metrics and every answer of the UI's JSON API. The
//! ClickHouse password, given in a file, must not appear either.
#![forbid(unsafe_code)]
use std::{path::Path, process::Command, time::Duration};

use observer_tests::*;

/// Each secret is distinctive, so finding any 12-character piece of it is a leak (the events keep a key's last 4
/// characters as `key_suffix`, by design).
const K_HEADER: &str = "hdrKey7Qm2Vx9Lp4Rt";
const K_HEADER2: &str = "hdr2KeyWn8Zc3Yb6Kd";
const K_QUERY: &str = "qryKeyT5sJ1uE8oPfa";
const K_QUERY2: &str = "qry2KeyMq4Hx7Ge2Rz";
const K_BEARER: &str = "brrTokA9dF3kL7mN2q";
const K_BASIC_USER: &str = "basicUserR2tY6uI0oP";
const BASIC_PASSWORD: &str = "basicPwS3dF7gH1jK4l";
const K_UNKNOWN: &str = "unkKeyZ8xC4vB6nM1a";
const PROXY_TOKEN: &str = "proxyTokQ1wE5rT9yU3";
const COOKIE: &str = "sessCookieD4fG8hJ2kL";
const QUERY_VALUE: &str = "qvalSecretV7bN3mQ9wE";
const USERINFO_PASSWORD: &str = "uinfoPwX2cV6bN0mA4s";
const BODY_SECRET: &str = "bodySecretP5oI9uY3tR";
const CH_PASSWORD: &str = "chPasswordL8kJ4hG2fD";

const SECRETS: [&str; 14] = [
    K_HEADER,
    K_HEADER2,
    K_QUERY,
    K_QUERY2,
    K_BEARER,
    K_BASIC_USER,
    BASIC_PASSWORD,
    K_UNKNOWN,
    PROXY_TOKEN,
    COOKIE,
    QUERY_VALUE,
    USERINFO_PASSWORD,
    BODY_SECRET,
    CH_PASSWORD,
];

fn registry_yaml(port: u16, fps: &[String; 4]) -> String {
    format!(
        r#"version: 1
teams:
  - {{id: shop, name: Shop, line_of_business: Retail, alert_contact: shop@example.com}}
apis:
  - id: keyed-api
    name: Keyed API
    owner: shop
    match: {{ports: [{port}], base_path: /k}}
    auth: {{type: api_key, headers: [X-Api-Key, X-Other-Key], query: [api_key, apikey]}}
    routes: ["GET /k/items/{{id}}", "POST /k/items"]
  - id: bearer-api
    name: Bearer API
    owner: shop
    match: {{ports: [{port}], base_path: /b}}
    auth: bearer
  - id: basic-api
    name: Basic API
    owner: shop
    match: {{ports: [{port}], base_path: /basic}}
    auth: basic
applications:
  - {{id: storefront, name: Storefront, team: shop, created_by: alice, created_at: 2025-01-01}}
  - {{id: batch, name: Batch, team: shop, created_by: alice, created_at: 2025-01-01}}
keys:
  - {{id: k-header, application: storefront, fingerprint: {}, granted_by: alice, granted_at: 2025-01-01, apis: [keyed-api]}}
  - {{id: k-query, application: storefront, fingerprint: {}, granted_by: alice, granted_at: 2025-01-01, apis: [keyed-api]}}
  - {{id: k-bearer, application: batch, fingerprint: {}, granted_by: alice, granted_at: 2025-01-01, apis: [bearer-api]}}
  - {{id: k-basic, application: batch, fingerprint: {}, granted_by: alice, granted_at: 2025-01-01, apis: [basic-api]}}
"#,
        fps[0], fps[1], fps[2], fps[3]
    )
}

/// The pieces of `secret` whose presence anywhere means it leaked.
fn pieces(secret: &str) -> Vec<&str> {
    (0..=secret.len() - 12)
        .map(|i| &secret[i..i + 12])
        .collect()
}

fn b64(s: &str) -> String {
    let out = Command::new("base64")
        .args(["-w0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .expect("base64");
    String::from_utf8(out.stdout).expect("ascii")
}

/// Every leak of a secret in `text`, as "what: secret".
fn leaks(what: &str, text: &[u8], extra: &[String]) -> Vec<String> {
    let hay = String::from_utf8_lossy(text);
    SECRETS
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .filter(|s| pieces(s).iter().any(|p| hay.contains(p)))
        .map(|s| format!("{what}: {s}"))
        .collect()
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn leaks_in_files(dir: &Path, extra: &[String]) -> (usize, Vec<String>) {
    let all = files(dir);
    let found = all
        .iter()
        .flat_map(|f| {
            let bytes = std::fs::read(f).unwrap_or_default();
            leaks(&f.display().to_string(), &bytes, extra)
        })
        .collect();
    (all.len(), found)
}

#[test]
fn no_raw_secret_reaches_any_output() {
    require_root();
    let port = 18711;
    let ch_port = 18798;
    let ui = "127.0.0.1:18797";
    // Inputs (registry, password file, servers, ClickHouse's data) apart from what the agent writes.
    let input = scratch("secrets-in");
    let out = scratch("secrets-out");
    let fps = [K_HEADER, K_QUERY, K_BEARER, K_BASIC_USER].map(|k| fingerprint(&out, k));
    let reg = input.join("registry.yaml");
    std::fs::write(&reg, registry_yaml(port, &fps)).expect("registry");
    let pw = input.join("clickhouse-password");
    std::fs::write(&pw, format!("{CH_PASSWORD}\n")).expect("password file");
    let basic = b64(&format!("{K_BASIC_USER}:{BASIC_PASSWORD}"));
    let extra = vec![basic.clone()];
    assert!(
        !leaks("password file", &std::fs::read(&pw).expect("read"), &extra).is_empty(),
        "the search finds a secret where there is one"
    );

    let _server = python_server(&input, None, "127.0.0.1", port);
    let spool = out.join("spool");
    let stdout = out.join("stdout.txt");
    // ClickHouse is not up yet: the first batches go to the spool, searched before they are replayed.
    let ch_url = format!("http://127.0.0.1:{ch_port}");
    let obs = Observer::launch(
        &Launch {
            log_level: Some("trace"),
            stdout: Some(stdout.clone()),
            ..Launch::default()
        },
        &out,
        &[
            "--ports",
            &port.to_string(),
            "--registry",
            &reg.display().to_string(),
            "--insights",
            "--state-dir",
            &out.join("state").display().to_string(),
            "--origin",
            "--ui",
            ui,
            "--sink",
            "stdout",
            "--sink",
            "clickhouse",
            "--clickhouse-url",
            &ch_url,
            "--clickhouse-user",
            "observer",
            "--clickhouse-password-file",
            &pw.display().to_string(),
            "--spool-dir",
            &spool.display().to_string(),
        ],
    );

    let base = format!("http://127.0.0.1:{port}");
    let get = |args: &[&str]| {
        let mut a = vec!["-o", "/dev/null"];
        a.extend_from_slice(args);
        curl(None, &a);
    };
    get(&[
        "-H",
        &format!("X-Api-Key: {K_HEADER}"),
        &format!("{base}/k/items/1"),
    ]);
    get(&[
        "-H",
        &format!("X-Other-Key: {K_HEADER2}"),
        &format!("{base}/k/items/2"),
    ]);
    get(&[&format!(
        "{base}/k/items/3?api_key={K_QUERY}&q={QUERY_VALUE}"
    )]);
    get(&[&format!("{base}/k/items/4?x=1&apikey={K_QUERY2}")]);
    get(&[
        "-H",
        &format!("X-Api-Key: {K_UNKNOWN}"),
        &format!("{base}/k/items/5"),
    ]);
    get(&[
        "-H",
        &format!("X-Api-Key: {K_HEADER}"),
        "-H",
        "Content-Type: application/json",
        "--data",
        &format!("{{\"card\":\"{BODY_SECRET}\"}}"),
        &format!("{base}/k/items"),
    ]);
    get(&[
        "-H",
        &format!("Authorization: Bearer {K_BEARER}"),
        &format!("{base}/b/orders/9"),
    ]);
    get(&[
        "-u",
        &format!("{K_BASIC_USER}:{BASIC_PASSWORD}"),
        &format!("{base}/basic/stock/1"),
    ]);
    get(&[
        "-H",
        &format!("Cookie: session={COOKIE}; theme=dark"),
        "-H",
        &format!("Proxy-Authorization: Bearer {PROXY_TOKEN}"),
        &format!("{base}/b/profile?token={QUERY_VALUE}"),
    ]);
    // A proxy-style absolute-form target with credentials in it.
    get(&[
        "--request-target",
        &format!("http://admin:{USERINFO_PASSWORD}@127.0.0.1:{port}/k/items/6"),
        &format!("{base}/"),
    ]);
    const SENT: usize = 10;

    let spooled = eventually(Duration::from_secs(20), || {
        files(&spool)
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "batch"))
    });
    assert!(
        spooled,
        "batches spooled while ClickHouse is down; log tail:\n{}",
        tail(&obs.log())
    );
    let (n_spool, in_spool) = leaks_in_files(&spool, &extra);

    let ch = ClickHouse::start(&input, ch_port);
    sh(Command::new(observer_bin()).args(["schema", "apply", "--clickhouse-url", &ch.url]));
    let filter = format!("dst_port = {port}");
    let stored = eventually(Duration::from_secs(90), || {
        ch.count(&format!(
            "SELECT count() FROM observer.http_requests WHERE {filter}"
        )) == SENT as u64
    });
    assert!(
        stored,
        "the spooled events reach ClickHouse; log tail:\n{}",
        tail(&obs.log())
    );
    let findings_stored = eventually(Duration::from_secs(30), || {
        ch.count("SELECT count() FROM observer.insights") > 0
    });
    assert!(
        findings_stored,
        "the unknown key's finding reaches ClickHouse"
    );

    // Everything the agent serves.
    let mut served = vec![("metrics".to_string(), obs.metrics_text())];
    for path in [
        "/".to_string(),
        "/api/overview?range=1h".into(),
        "/api/tail?limit=1000".into(),
        "/api/access?range=1h".into(),
        "/api/insights?range=1h".into(),
        "/api/meta".into(),
        "/api/apis/keyed-api?range=1h".into(),
        "/api/apis/bearer-api?range=1h".into(),
        "/api/apis/basic-api?range=1h".into(),
        "/api/apps/storefront?range=1h".into(),
        "/api/apps/batch?range=1h".into(),
    ] {
        let (status, body) = http_get(ui, &path).unwrap_or_else(|| panic!("UI {path} answered"));
        assert_eq!(status, 200, "UI {path}: {body}");
        served.push((format!("UI {path}"), body));
    }
    let tail_rows = &served[3].1;
    assert!(
        tail_rows.contains("keyed-api") && tail_rows.contains(&K_HEADER[K_HEADER.len() - 4..]),
        "the UI's tail shows the exchanges, with key suffixes: {tail_rows}"
    );

    let all = obs.stop();
    let events = on_port(&all, port);
    assert_eq!(
        events.len(),
        SENT,
        "every exchange once:\n{}",
        brief(&events)
    );
    // The events did carry what the secrets identify: fingerprints, suffixes and query keys.
    let fp_of = |path: &str| {
        events
            .iter()
            .find(|e| e["path"] == path)
            .map(|e| (e["key_fingerprint"].clone(), e["key_state"].clone()))
            .unwrap_or_else(|| panic!("no event for {path}:\n{}", brief(&events)))
    };
    assert_eq!(fp_of("/k/items/1").0, fps[0].as_str());
    assert_eq!(fp_of("/k/items/3").0, fps[1].as_str());
    assert_eq!(fp_of("/b/orders/9").0, fps[2].as_str());
    assert_eq!(fp_of("/basic/stock/1").0, fps[3].as_str());
    assert_eq!(fp_of("/k/items/5").1, "unknown");

    // ClickHouse, read back: every row of every table observer has there.
    let tables = ch.query(
        "SELECT name FROM system.tables WHERE database = 'observer' AND engine LIKE '%MergeTree' ORDER BY name",
    );
    let mut in_clickhouse = Vec::new();
    let mut rows = 0;
    for t in tables.lines() {
        let dump = ch.query(&format!("SELECT * FROM observer.`{t}` FORMAT TSVRaw"));
        rows += dump.lines().count();
        in_clickhouse.extend(leaks(
            &format!("ClickHouse observer.{t}"),
            dump.as_bytes(),
            &extra,
        ));
    }
    assert!(rows >= SENT, "ClickHouse rows read back: {rows}");

    let (n_out, in_out) = leaks_in_files(&out, &extra);
    let log = obs_log(&out);
    assert!(log.contains("TRACE"), "the log was written at trace level");
    let mut all_leaks: Vec<String> = in_spool;
    all_leaks.extend(in_clickhouse);
    all_leaks.extend(in_out);
    for (what, text) in &served {
        all_leaks.extend(leaks(what, text.as_bytes(), &extra));
    }
    assert!(
        all_leaks.is_empty(),
        "secrets leaked ({n_spool} spool files, {n_out} files written, {rows} ClickHouse rows, {} answers \
         searched):\n{}",
        served.len(),
        all_leaks.join("\n")
    );
    assert!(
        n_spool >= 1 && n_out >= 5,
        "{n_spool} spool files, {n_out} files"
    );
    CaseReport {
        case: "raw secrets in traffic".into(),
        checked: format!(
            "no piece of any raw key, Authorization, cookie, query value or ClickHouse password in {n_out} files \
             written, {n_spool} spool files, {rows} ClickHouse rows or {} UI/metrics answers",
            served.len()
        ),
        sent: SENT as u64,
        stored: rows as u64,
        counted: Default::default(),
    }
    .passed("secrets");
}

fn obs_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("observer.log")).unwrap_or_default()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
