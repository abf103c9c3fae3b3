//! The built-in web UI (`observer run --ui ADDR`): pages served by the agent, each fed by a JSON endpoint.
//!
//! Data comes from ClickHouse when the agent has a ClickHouse sink ([`clickhouse::ClickHouseSource`]), else from
//! the agent's recent aggregates ([`memory::MemoryStore`], the last hour); names, predecessors and grants come from
//! the registry the agent loaded. Pages and endpoints are in [`http`], the embedded assets in [`assets`]. Binds to
//! loopback unless a bearer token file is given ([`UiArgs::check`]).
pub mod assets;
pub mod cells;
pub mod clickhouse;
pub mod http;
pub mod memory;
pub mod model;
pub mod origin;
pub mod pages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use thiserror::Error;

use crate::sink::clickhouse::registry_rows::RegistryRows;
use cells::{Cell, CellQuery};
use model::{Insight, TailRow};

/// Errors of the UI: at start (address, token) and while answering (ClickHouse).
#[derive(Debug, Error)]
pub enum UiError {
    #[error("--ui {0}: a non-loopback address serves traffic data to the network; give --ui-token-file so every request needs the bearer token")]
    TokenRequired(SocketAddr),
    #[error("--ui-token-file {path}: {why}")]
    Token { path: PathBuf, why: String },
    #[error("binding the UI to {addr}: {err}")]
    Bind {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("ClickHouse: {0}")]
    ClickHouse(String),
    #[error("bad request: {0}")]
    BadRequest(String),
}

/// UI options of `observer run`.
#[derive(Debug, Clone, Args)]
pub struct UiArgs {
    /// Serve the web UI (pages and their JSON endpoints under /api) at this address, e.g. 127.0.0.1:9464.
    #[arg(long = "ui", value_name = "ADDR")]
    pub addr: Option<SocketAddr>,
    /// A file holding the bearer token every UI request must present (`Authorization: Bearer TOKEN`, or the
    /// `token` query parameter once, which sets a cookie). Required for a non-loopback --ui address.
    #[arg(long, value_name = "PATH")]
    pub ui_token_file: Option<PathBuf>,
}

impl UiArgs {
    /// The token (from the file), checked against the address: a non-loopback address needs one.
    pub fn check(&self, addr: SocketAddr) -> Result<Option<String>, UiError> {
        let token = match &self.ui_token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| UiError::Token {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
                let t = text.trim().to_string();
                if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(UiError::Token {
                        path: path.clone(),
                        why: "the token must be one line of at least 16 characters without spaces"
                            .into(),
                    });
                }
                Some(t)
            }
        };
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(UiError::TokenRequired(addr));
        }
        Ok(token)
    }
}

/// Where the pages' traffic data comes from.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // one per UI, cloned rarely
pub enum Source {
    ClickHouse(clickhouse::ClickHouseSource),
    Memory(Arc<memory::MemoryStore>),
}

impl Source {
    pub fn name(&self) -> &'static str {
        match self {
            Source::ClickHouse(_) => "clickhouse",
            Source::Memory(_) => "memory",
        }
    }

    pub async fn cells(&self, q: &CellQuery) -> Result<Vec<Cell>, UiError> {
        match self {
            Source::ClickHouse(c) => c.cells(q).await,
            Source::Memory(m) => Ok(m.cells(q)),
        }
    }

    pub async fn tail(
        &self,
        from: i64,
        to: i64,
        limit: usize,
        text: &str,
    ) -> Result<Vec<TailRow>, UiError> {
        match self {
            Source::ClickHouse(c) => c.tail(from, to, limit, text).await,
            Source::Memory(m) => Ok(m.tail(from, to, limit, text)),
        }
    }

    pub async fn insights(&self, from: i64, to: i64) -> Result<Vec<Insight>, UiError> {
        match self {
            Source::ClickHouse(c) => c.insights(from, to).await,
            Source::Memory(m) => Ok(m.insights(from, to)),
        }
    }
}

/// The registry as the UI reads it (rows, as written to ClickHouse), fetched per request.
pub type RegistryFn = Arc<dyn Fn() -> Arc<RegistryRows> + Send + Sync>;

/// What the UI serves from.
#[derive(Clone)]
pub struct UiState {
    pub source: Source,
    pub registry: RegistryFn,
    /// Bearer token every request must present, if any.
    pub token: Option<Arc<str>>,
}

/// Binds `addr` and returns the server future (run it with `tokio::spawn`) and the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: UiState,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = std::io::Result<()>>,
    ),
    UiError,
> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| UiError::Bind { addr, err })?;
    let bound = listener
        .local_addr()
        .map_err(|err| UiError::Bind { addr, err })?;
    let app = http::router(state);
    Ok((bound, async move { axum::serve(listener, app).await }))
}

/// Starts the UI of `observer run` when `--ui` is given: reads ClickHouse through `clickhouse` (the sink's client),
/// else the returned memory store, which the caller feeds with every batch of events.
pub async fn start(
    args: &UiArgs,
    clickhouse: Option<::clickhouse::Client>,
    live: Arc<crate::registry::LiveRegistry>,
) -> Result<Option<Arc<memory::MemoryStore>>, UiError> {
    let Some(addr) = args.addr else {
        return Ok(None);
    };
    let token = args.check(addr)?;
    let (source, store) = match clickhouse {
        Some(c) => (
            Source::ClickHouse(clickhouse::ClickHouseSource::new(c)),
            None,
        ),
        None => {
            let m = Arc::new(memory::MemoryStore::new());
            (Source::Memory(m.clone()), Some(m))
        }
    };
    let registry: RegistryFn = Arc::new(move || {
        let snap = live.snapshot();
        Arc::new(crate::sink::clickhouse::registry_rows::from_registry(
            &snap.registry,
            snap.loaded_at.0.max(0) as u64,
            snap.loaded_at,
        ))
    });
    let state = UiState {
        source,
        registry,
        token: token.map(Arc::from),
    };
    let (bound, server) = serve(addr, state).await?;
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::warn!(error = %e, "the UI server stopped");
        }
    });
    tracing::info!(
        "web UI on http://{bound}/ (data from {})",
        if store.is_some() {
            "the agent's last hour"
        } else {
            "ClickHouse"
        }
    );
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_a_token() {
        let args = UiArgs {
            addr: None,
            ui_token_file: None,
        };
        assert!(args
            .check("127.0.0.1:1".parse().unwrap())
            .unwrap()
            .is_none());
        assert!(args.check("[::1]:1".parse().unwrap()).is_ok());
        let err = args.check("0.0.0.0:1".parse().unwrap()).unwrap_err();
        assert!(err.to_string().contains("--ui-token-file"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "short\n").unwrap();
        let with = UiArgs {
            addr: None,
            ui_token_file: Some(path.clone()),
        };
        assert!(with.check("0.0.0.0:1".parse().unwrap()).is_err());
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        assert_eq!(
            with.check("0.0.0.0:1".parse().unwrap()).unwrap().as_deref(),
            Some("0123456789abcdef0123")
        );
    }
}
