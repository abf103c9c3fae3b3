//! ClickHouse credentials: the password comes from a file or the environment, never from the command line (where
//! every user of the host reads it in `ps`), and the URL that is logged or shown never carries one.

use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;

/// The environment variable read for the password when no `--clickhouse-password-file` is given.
pub const PASSWORD_ENV: &str = "CLICKHOUSE_PASSWORD";

/// Where ClickHouse is and who the agent is there.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The URL without any `user:password@`.
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("url", &self.url)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read ClickHouse password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--clickhouse-url carries a password on the command line, where every user of this host can read it \
         (ps, /proc/PID/cmdline): give the URL without it ({url}) and the password in --clickhouse-password-file \
         or the {PASSWORD_ENV} environment variable (or the whole URL in CLICKHOUSE_URL)"
    )]
    PasswordOnCommandLine { url: String },
}

/// Where the user information of `scheme://userinfo@host...` is: (its start, the offset of its `@`).
fn userinfo_span(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some((start, start + rest[..end].rfind('@')?))
}

/// Splits `scheme://user:password@host...` into the URL without the user information and the percent-decoded
/// user and password it held.
pub fn split_userinfo(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((start, at)) = userinfo_span(url) else {
        return (url.to_string(), None, None);
    };
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let (user, password) = match url[start..at].split_once(':') {
        Some((u, p)) => (decode(u), Some(decode(p))),
        None => (decode(&url[start..at]), None),
    };
    let user = Some(user).filter(|u| !u.is_empty());
    (
        format!("{}{}", &url[..start], &url[at + 1..]),
        user,
        password,
    )
}

/// Resolves the connection from the options. The password, first found wins: `password_file`, the URL's (only when
/// the URL did not come from the command line `argv`), `env_password`. The user: `user`, else the URL's.
pub fn resolve(
    url: &str,
    user: Option<&str>,
    password_file: Option<&Path>,
    env_password: Option<String>,
    argv: &[String],
) -> Result<Credentials, CredentialsError> {
    let (bare, url_user, url_password) = split_userinfo(url);
    if let (Some(p), Some((start, at))) = (&url_password, userinfo_span(url)) {
        // The URL came from the command line when an argument holds its credentials; from CLICKHOUSE_URL otherwise.
        if !p.is_empty() && argv.iter().any(|a| a.contains(&url[start..at])) {
            return Err(CredentialsError::PasswordOnCommandLine { url: bare });
        }
    }
    let password = match password_file {
        Some(path) => Some(read_password(path)?),
        None => url_password.or(env_password),
    };
    Ok(Credentials {
        url: bare,
        user: user.map(str::to_string).or(url_user),
        password: password.filter(|p| !p.is_empty()),
    })
}

/// Reads a password file, dropping one trailing newline.
pub fn read_password(path: &Path) -> Result<String, CredentialsError> {
    let s = std::fs::read_to_string(path).map_err(|source| CredentialsError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(s.strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&s)
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn userinfo_is_taken_out_of_the_url() {
        assert_eq!(
            split_userinfo("http://bob:s%40cret@ch:8123/?database=x"),
            (
                "http://ch:8123/?database=x".to_string(),
                Some("bob".into()),
                Some("s@cret".into())
            )
        );
        assert_eq!(
            split_userinfo("https://bob@ch"),
            ("https://ch".to_string(), Some("bob".into()), None)
        );
        assert_eq!(
            split_userinfo("http://ch:8123/a@b"),
            ("http://ch:8123/a@b".to_string(), None, None)
        );
        assert_eq!(
            split_userinfo("ch:8123"),
            ("ch:8123".to_string(), None, None)
        );
    }

    #[test]
    fn a_password_in_a_url_on_the_command_line_is_refused_without_echoing_it() {
        let url = "http://bob:hunter2pw@ch:8123";
        for args in [
            argv(&["observer", "run", "--clickhouse-url", url]),
            argv(&["observer", "run", &format!("--clickhouse-url={url}")]),
        ] {
            let err = resolve(url, None, None, None, &args)
                .unwrap_err()
                .to_string();
            assert!(err.contains("--clickhouse-password-file"), "{err}");
            assert!(err.contains("http://ch:8123"), "{err}");
            assert!(!err.contains("hunter2pw"), "{err}");
        }
    }

    #[test]
    fn a_password_in_clickhouse_url_from_the_environment_is_used_and_kept_out_of_the_url() {
        let c = resolve(
            "http://bob:hunter2pw@ch:8123",
            None,
            None,
            Some("from-env".into()),
            &argv(&["observer", "run", "--sink", "clickhouse"]),
        )
        .expect("from the environment");
        assert_eq!(c.url, "http://ch:8123");
        assert_eq!(c.user.as_deref(), Some("bob"));
        assert_eq!(c.password.as_deref(), Some("hunter2pw"));
        assert!(!format!("{c:?}").contains("hunter2pw"));
    }

    #[test]
    fn password_file_then_url_then_environment_and_the_explicit_user_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").expect("write");
        let no_args = argv(&["observer"]);
        let c = resolve(
            "http://u:in-url@ch",
            Some("alice"),
            Some(&file),
            Some("env".into()),
            &no_args,
        )
        .expect("resolves");
        assert_eq!(
            (c.user.as_deref(), c.password.as_deref()),
            (Some("alice"), Some("from-file"))
        );
        let c = resolve("http://ch", None, None, Some("env".into()), &no_args).expect("resolves");
        assert_eq!((c.user, c.password.as_deref()), (None, Some("env")));
        let err = resolve(
            "http://ch",
            None,
            Some(&dir.path().join("none")),
            None,
            &no_args,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("password file") && err.contains("none"),
            "{err}"
        );
    }
}
