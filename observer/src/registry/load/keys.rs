//! The `keys` section: where the key's fingerprint comes from (written, `key_env`, `key_file`), its key-wide window
//! and its dated grant entries.
use super::super::fingerprint::{key_suffix, parse_fingerprint};
use super::super::model::*;
use super::super::yaml::Node;
use super::fields::{label, show};
use super::Ctx;

impl Ctx<'_> {
    pub(super) fn window(&mut self, n: &Node, what: &str, require_grant: bool) -> Window {
        let granted_by = self.opt_str(n, "granted_by", what);
        let granted_at = self.opt_date(n, "granted_at", what);
        let expires_at = self.opt_date(n, "expires_at", what);
        let revoked_at = self.opt_date(n, "revoked_at", what);
        let revoked_by = self.opt_str(n, "revoked_by", what);
        if require_grant {
            if granted_by.is_none() && n.get("granted_by").is_none_or(Node::is_null) {
                self.err(
                    n.line,
                    format!("{what}: missing required field `granted_by`"),
                );
            }
            if granted_at.is_none() && n.get("granted_at").is_none_or(Node::is_null) {
                self.err(
                    n.line,
                    format!("{what}: missing required field `granted_at`"),
                );
            }
        }
        if let (Some((g, _)), Some((e, line))) = (granted_at, expires_at) {
            if e <= g {
                self.err(
                    line,
                    format!(
                        "{what}: dates out of order: expires_at {} is not after granted_at {}",
                        show(e),
                        show(g)
                    ),
                );
            }
        }
        if let (Some((g, _)), Some((r, line))) = (granted_at, revoked_at) {
            if r < g {
                self.err(
                    line,
                    format!(
                        "{what}: dates out of order: revoked_at {} is before granted_at {}",
                        show(r),
                        show(g)
                    ),
                );
            }
        }
        match (&revoked_at, &revoked_by) {
            (Some((_, line)), None) => self.err(
                *line,
                format!("{what}: `revoked_at` needs `revoked_by` (who revoked it)"),
            ),
            (None, Some((_, line))) => {
                self.err(*line, format!("{what}: `revoked_by` without `revoked_at`"))
            }
            _ => {}
        }
        Window {
            granted_by: granted_by.map(|v| v.0).unwrap_or_default(),
            granted_at: granted_at.map(|v| v.0),
            expires_at: expires_at.map(|v| v.0),
            revoked_at: revoked_at.map(|v| v.0),
            revoked_by: revoked_by.map(|v| v.0).unwrap_or_default(),
        }
    }

    pub(super) fn key(&mut self, n: &Node, i: usize) -> Option<Key> {
        let what = label("key", "keys", i, n.get("id").and_then(Node::as_str));
        if !self.fields(
            n,
            &what,
            &[
                "id",
                "application",
                "fingerprint",
                "key_env",
                "key_file",
                "suffix",
                "granted_by",
                "granted_at",
                "expires_at",
                "revoked_at",
                "revoked_by",
                "apis",
                "grants",
            ],
        ) {
            return None;
        }
        let id = self.id(n, "key", "keys", i).map(|v| v.0);
        let application = self.req_str(n, "application", &what).map(|v| v.0);
        let fp = self.opt_str(n, "fingerprint", &what);
        let env = self.opt_str(n, "key_env", &what);
        let file = self.opt_str(n, "key_file", &what);
        let mut suffix = self
            .opt_str(n, "suffix", &what)
            .map(|v| v.0)
            .unwrap_or_default();
        let given = fp.is_some() as u8 + env.is_some() as u8 + file.is_some() as u8;
        if given != 1 {
            self.err(
                n.line,
                format!("{what}: give exactly one of `fingerprint`, `key_env` or `key_file` (found {given})"),
            );
        }
        let (fingerprint, source) = if let Some((f, line)) = fp {
            if parse_fingerprint(&f).is_none() {
                self.err(
                    line,
                    format!("{what}: fingerprint must be 64 hex characters (see `observer registry fingerprint`), found {} characters", f.len()),
                );
            }
            (f.to_ascii_lowercase(), KeySource::Fingerprint)
        } else if let Some((var, line)) = env {
            match self.source.env_var(&var) {
                Some(raw) if !raw.trim().is_empty() => {
                    let raw = raw.trim();
                    if suffix.is_empty() {
                        suffix = key_suffix(raw).to_string();
                    }
                    (
                        self.secret.fingerprint_hex(raw.as_bytes()),
                        KeySource::Env(var),
                    )
                }
                _ => {
                    self.err(
                        line,
                        format!("{what}: environment variable `{var}` is not set or empty"),
                    );
                    (String::new(), KeySource::Env(var))
                }
            }
        } else if let Some((f, line)) = file {
            let path = self.base_dir.join(&f);
            self.dependencies.push(path.clone());
            match self.source.read_file(&path) {
                Ok(raw) if !raw.trim().is_empty() => {
                    let raw = raw.trim();
                    if suffix.is_empty() {
                        suffix = key_suffix(raw).to_string();
                    }
                    (
                        self.secret.fingerprint_hex(raw.as_bytes()),
                        KeySource::File(path),
                    )
                }
                Ok(_) => {
                    self.err(
                        line,
                        format!("{what}: key file {} is empty", path.display()),
                    );
                    (String::new(), KeySource::File(path))
                }
                Err(e) => {
                    self.err(
                        line,
                        format!("{what}: cannot read key file {}: {e}", path.display()),
                    );
                    (String::new(), KeySource::File(path))
                }
            }
        } else {
            (String::new(), KeySource::Fingerprint)
        };
        let window = self.window(n, &what, false);
        let mut grants = Vec::new();
        let short = self.strings(n, "apis", &what);
        if !short.is_empty() {
            if window.granted_by.is_empty() || window.granted_at.is_none() {
                self.err(
                    n.line,
                    format!("{what}: `apis` needs key-level `granted_by` and `granted_at` (every grant is dated), or use `grants` entries"),
                );
            }
            for (api, line) in short {
                grants.push(Grant {
                    api,
                    window: window.clone(),
                    note: String::new(),
                    line,
                });
            }
        }
        if let Some(list) = n.get("grants").filter(|g| !g.is_null()) {
            match list.as_seq() {
                Some(items) => {
                    for g in items {
                        let gw = format!("{what} grant");
                        if !self.fields(
                            g,
                            &gw,
                            &[
                                "api",
                                "granted_by",
                                "granted_at",
                                "expires_at",
                                "revoked_at",
                                "revoked_by",
                                "note",
                            ],
                        ) {
                            continue;
                        }
                        let api = self.req_str(g, "api", &gw);
                        let gw = match &api {
                            Some((a, _)) => format!("{what} grant of api `{a}`"),
                            None => gw,
                        };
                        let w = self.window(g, &gw, true);
                        let note = self
                            .opt_str(g, "note", &gw)
                            .map(|v| v.0)
                            .unwrap_or_default();
                        if let Some((api, _)) = api {
                            grants.push(Grant {
                                api,
                                window: w,
                                note,
                                line: g.line,
                            });
                        }
                    }
                }
                None => self.err(
                    list.line,
                    format!("{what}: `grants` must be a list, found {}", list.kind()),
                ),
            }
        }
        Some(Key {
            id: id?,
            application: application?,
            fingerprint,
            suffix,
            source,
            window,
            grants,
            line: n.line,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::test_support::*;
    use crate::registry::model::KeySource;

    #[test]
    fn key_problems() {
        let key = |body: &str| format!("{BASE}keys:\n  - id: k\n    application: app\n{body}");
        assert_problem(
            &key(""),
            12,
            "exactly one of `fingerprint`, `key_env` or `key_file` (found 0)",
        );
        assert_problem(
            &key(&format!("    fingerprint: {FP}\n    key_env: X\n")),
            12,
            "(found 2)",
        );
        assert_problem(
            &key("    fingerprint: xyz\n"),
            14,
            "fingerprint must be 64 hex characters",
        );
        assert_problem(
            &key("    key_env: OBSERVER_TEST_SURELY_UNSET_VAR\n"),
            14,
            "environment variable `OBSERVER_TEST_SURELY_UNSET_VAR` is not set",
        );
        assert_problem(
            &key("    key_file: no-such-key-file\n"),
            14,
            "cannot read key file",
        );
        assert_problem(
            &key(&format!("    fingerprint: {FP}\n    apis: [a]\n")),
            12,
            "`apis` needs key-level `granted_by` and `granted_at`",
        );
        assert_problem(
            &key(&format!(
                "    fingerprint: {FP}\n    grants:\n      - api: a\n"
            )),
            16,
            "missing required field `granted_by`",
        );
        assert_problem(
            &key(&format!("    fingerprint: {FP}\n    grants:\n      - api: a\n        granted_by: me\n        granted_at: someday\n")),
            18,
            "`granted_at` value `someday` is not a date",
        );
        assert_problem(
            &key(&format!("    fingerprint: {FP}\n    grants: {{}}\n")),
            15,
            "`grants` must be a list",
        );
    }

    #[test]
    fn date_order_problems() {
        let key = |body: &str| {
            format!("{BASE}keys:\n  - id: k\n    application: app\n    fingerprint: {FP}\n{body}")
        };
        assert_problem(
            &key("    granted_by: me\n    granted_at: 2026-03-02\n    expires_at: 2026-03-02\n"),
            17,
            "dates out of order: expires_at 2026-03-02 is not after granted_at 2026-03-02",
        );
        assert_problem(
            &key("    granted_by: me\n    granted_at: 2026-03-02\n    revoked_at: 2026-03-01T23:59:59Z\n    revoked_by: x\n"),
            17,
            "revoked_at 2026-03-01T23:59:59.000000Z is before granted_at 2026-03-02",
        );
        assert_problem(
            &key("    revoked_at: 2026-03-01\n"),
            15,
            "`revoked_at` needs `revoked_by`",
        );
        assert_problem(
            &key("    revoked_by: x\n"),
            15,
            "`revoked_by` without `revoked_at`",
        );
        let grants = "    grants:\n      - api: a\n        granted_by: me\n        granted_at: 2026-05-01\n      - api: a\n        granted_by: me\n        granted_at: 2026-04-01\n";
        assert_problem(
            &key(grants),
            19,
            "grant of api `a` at 2026-04-01 is before the previous entry for that api (line 16)",
        );
    }

    #[test]
    fn key_env_and_file_are_fingerprinted() {
        let dir = Path::new("/registry-dir");
        let source = InMemory::default()
            .file(dir.join("k.txt"), "file-key-0123456789abcd\n")
            .var("KEY_ENV_FP", "env-key-0123456789wxyz");
        let text = format!(
            "{BASE}keys:\n  - id: e\n    application: app\n    key_env: KEY_ENV_FP\n  - id: f\n    application: app\n    key_file: k.txt\n"
        );
        let l = load_with(&text, dir, &secret(), &source)
            .unwrap_or_else(|p| panic!("env/file keys valid: {p:?}"));
        let keys = &l.registry.keys;
        assert_eq!(
            keys[0].fingerprint,
            secret().fingerprint_hex(b"env-key-0123456789wxyz")
        );
        assert_eq!(keys[0].suffix, "wxyz");
        assert_eq!(keys[0].source, KeySource::Env("KEY_ENV_FP".into()));
        assert_eq!(
            keys[1].fingerprint,
            secret().fingerprint_hex(b"file-key-0123456789abcd"),
            "file content trimmed"
        );
        assert_eq!(keys[1].suffix, "abcd");
        assert_eq!(
            l.dependencies,
            vec![dir.join("k.txt")],
            "key file is watched"
        );
        let empty = InMemory::default()
            .file(dir.join("k.txt"), " \n")
            .var("KEY_ENV_FP", "");
        let ps = load_with(&text, dir, &secret(), &empty).expect_err("empty key sources refused");
        assert!(
            ps.iter()
                .any(|p| p.line == 14 && p.message.contains("`KEY_ENV_FP` is not set or empty")),
            "{ps:?}"
        );
        assert!(
            ps.iter().any(
                |p| p.line == 17 && p.message.contains("key file /registry-dir/k.txt is empty")
            ),
            "{ps:?}"
        );
    }
}
