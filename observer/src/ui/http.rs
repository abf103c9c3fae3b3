//! The UI's HTTP surface: the page shell and assets, the JSON endpoints under `/api`, the time range parameters
//! and the bearer-token check.
//!
//! Endpoints (all GET, JSON; `from`/`to` Unix seconds or `range=15m|1h|6h|24h|7d` back from now, optional `step`):
//! `/api/meta`, `/api/overview`, `/api/apis/{api_id}`, `/api/apps/{app_id}`, `/api/access`,
//! `/api/insights?team=&kind=`, `/api/tail?limit=&q=`; the origin sections' `/api/apps/{app_id}/downstream` and
//! `/api/apis/{api_id}/composition` (`super::origin`).
use std::collections::HashMap;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::model::{Range, Tail};
use super::pages::{self, Ctx};
use super::{assets, UiError, UiState};

/// Steps the UI buckets by, seconds; the smallest giving at most [`MAX_BUCKETS`] buckets is used.
const STEPS: &[i64] = &[
    10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21_600, 43_200, 86_400,
];
const MAX_BUCKETS: i64 = 120;
/// The longest range a page may ask for.
const MAX_RANGE_S: i64 = 31 * 86_400;
const COOKIE: &str = "observer_ui_token";

type Params = HashMap<String, String>;

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match self {
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::BAD_GATEWAY,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

pub fn router(state: UiState) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{file}", get(assets::file))
        .route("/api/meta", get(meta))
        .route("/api/overview", get(overview))
        .route("/api/apis/{id}", get(api_page))
        .route("/api/apps/{id}", get(app_page))
        .route("/api/apps/{id}/downstream", get(downstream))
        .route("/api/apis/{id}/composition", get(composition))
        .route("/api/access", get(access))
        .route("/api/insights", get(insights))
        .route("/api/tail", get(tail))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `15m`, `1h`, `7d`... as seconds.
fn parse_span(s: &str) -> Option<i64> {
    let d = crate::units::parse_duration(s).ok()?.as_secs() as i64;
    (d > 0).then_some(d)
}

fn int(p: &Params, name: &str) -> Result<Option<i64>, UiError> {
    p.get(name)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse().map_err(|_| {
                UiError::BadRequest(format!("{name}={v:?} is not a number of seconds"))
            })
        })
        .transpose()
}

/// The range of a request at `now`: `from`/`to` (Unix seconds), or `range` back from `to` (default 1h).
pub fn parse_range(p: &Params, now: i64) -> Result<Range, UiError> {
    let to = int(p, "to")?.unwrap_or(now);
    let from = match (int(p, "from")?, p.get("range").filter(|r| !r.is_empty())) {
        (Some(f), _) => f,
        (None, Some(r)) => {
            to - parse_span(r).ok_or_else(|| {
                UiError::BadRequest(format!(
                    "range={r:?}: expected a duration such as 15m, 1h, 7d"
                ))
            })?
        }
        (None, None) => to - 3600,
    };
    if to <= from || to - from > MAX_RANGE_S {
        return Err(UiError::BadRequest(format!(
            "from={from} to={to}: the range must be positive and at most 31 days"
        )));
    }
    let step = match int(p, "step")? {
        Some(s) if s >= 1 && (to - from) / s <= 2000 => s,
        Some(s) => {
            return Err(UiError::BadRequest(format!(
                "step={s}: must be at least 1 and give at most 2000 buckets"
            )))
        }
        None => *STEPS
            .iter()
            .find(|s| (to - from + *s - 1) / *s <= MAX_BUCKETS)
            .unwrap_or(&86_400),
    };
    // Buckets start on multiples of the step, so a refresh does not shift them.
    let from = from - from.rem_euclid(step);
    Ok(Range { from, to, step })
}

/// Builds the context (range, registry) of a request and runs `page` against it.
async fn with_ctx<T: Serialize>(
    state: &UiState,
    p: &Params,
    page: impl AsyncFnOnce(&Ctx<'_>) -> Result<T, UiError>,
) -> Result<Json<T>, UiError> {
    let range = parse_range(p, now_s())?;
    let registry = (state.registry)();
    let ctx = Ctx {
        source: &state.source,
        registry: &registry,
        range,
    };
    page(&ctx).await.map(Json)
}

fn param<'a>(p: &'a Params, name: &str) -> &'a str {
    p.get(name).map_or("", String::as_str)
}

async fn meta(State(s): State<UiState>, Query(p): Query<Params>) -> Result<Response, UiError> {
    Ok(with_ctx(&s, &p, async |c| Ok(pages::meta(c)))
        .await?
        .into_response())
}

async fn overview(State(s): State<UiState>, Query(p): Query<Params>) -> Result<Response, UiError> {
    Ok(with_ctx(&s, &p, pages::overview).await?.into_response())
}

async fn api_page(
    State(s): State<UiState>,
    Path(id): Path<String>,
    Query(p): Query<Params>,
) -> Result<Response, UiError> {
    Ok(with_ctx(&s, &p, async |c| pages::api_page(c, &id).await)
        .await?
        .into_response())
}

async fn app_page(
    State(s): State<UiState>,
    Path(id): Path<String>,
    Query(p): Query<Params>,
) -> Result<Response, UiError> {
    Ok(with_ctx(&s, &p, async |c| pages::app_page(c, &id).await)
        .await?
        .into_response())
}

async fn downstream(
    State(s): State<UiState>,
    Path(id): Path<String>,
    Query(p): Query<Params>,
) -> Result<Response, UiError> {
    Ok(
        with_ctx(&s, &p, async |c| super::origin::downstream(c, &id).await)
            .await?
            .into_response(),
    )
}

async fn composition(
    State(s): State<UiState>,
    Path(id): Path<String>,
    Query(p): Query<Params>,
) -> Result<Response, UiError> {
    Ok(
        with_ctx(&s, &p, async |c| super::origin::composition(c, &id).await)
            .await?
            .into_response(),
    )
}

async fn access(State(s): State<UiState>, Query(p): Query<Params>) -> Result<Response, UiError> {
    Ok(with_ctx(&s, &p, pages::access).await?.into_response())
}

async fn insights(State(s): State<UiState>, Query(p): Query<Params>) -> Result<Response, UiError> {
    let (team, kind) = (param(&p, "team"), param(&p, "kind"));
    Ok(
        with_ctx(&s, &p, async |c| pages::insights(c, team, kind).await)
            .await?
            .into_response(),
    )
}

async fn tail(State(s): State<UiState>, Query(p): Query<Params>) -> Result<Response, UiError> {
    let range = parse_range(&p, now_s())?;
    let limit = int(&p, "limit")?.unwrap_or(200).clamp(1, 2000) as usize;
    let rows = s
        .source
        .tail(range.from, range.to, limit, param(&p, "q"))
        .await?;
    Ok(Json(Tail {
        source: s.source.name(),
        rows,
    })
    .into_response())
}

/// Equal in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn presented(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .next();
    let param = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    bearer.or(cookie).or(param).map(str::to_string)
}

/// With a token configured, every request presents it; `?token=` on a page sets a cookie for the rest.
async fn auth(State(s): State<UiState>, req: Request, next: Next) -> Response {
    let Some(want) = s.token.clone() else {
        return next.run(req).await;
    };
    let from_query = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("token=")));
    match presented(req.headers(), req.uri().query()) {
        Some(t) if same(&t, &want) => {
            let mut resp = next.run(req).await;
            if from_query {
                if let Ok(v) = format!("{COOKIE}={want}; HttpOnly; SameSite=Strict; Path=/").parse()
                {
                    resp.headers_mut().insert(header::SET_COOKIE, v);
                }
            }
            resp
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "observer UI: this address needs the bearer token of --ui-token-file\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> Params {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ranges_parse_and_pick_a_step() {
        let now = 1_760_004_000;
        let r = parse_range(&params(&[]), now).unwrap();
        assert_eq!(
            (r.to - 3600 - r.from, r.step),
            (0, 30),
            "1 h in 30 s buckets"
        );
        let r = parse_range(&params(&[("range", "15m")]), now).unwrap();
        assert_eq!(r.step, 10);
        let r = parse_range(&params(&[("range", "7d")]), now).unwrap();
        assert_eq!(r.step, 7200);
        assert_eq!(r.from % 7200, 0, "aligned to the step");
        let r = parse_range(
            &params(&[("from", "1000"), ("to", "2000"), ("step", "100")]),
            now,
        )
        .unwrap();
        assert_eq!((r.from, r.to, r.step), (1000, 2000, 100));
        for bad in [
            params(&[("range", "soon")]),
            params(&[("from", "2000"), ("to", "1000")]),
            params(&[("from", "x")]),
            params(&[("range", "1h"), ("step", "1")]),
            params(&[("range", "90d")]),
        ] {
            assert!(parse_range(&bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_come_from_header_cookie_or_query() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h, Some("a=1&token=abc")).as_deref(), Some("abc"));
        h.insert(header::COOKIE, "x=1; observer_ui_token=ck".parse().unwrap());
        assert_eq!(presented(&h, None).as_deref(), Some("ck"));
        h.insert(header::AUTHORIZATION, "Bearer hd".parse().unwrap());
        assert_eq!(presented(&h, None).as_deref(), Some("hd"));
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
