//! The registry facts the detectors ask about (owners, predecessors, workloads, grants, documented routes), indexed
//! by id for per-event lookups. Rebuilt whole when the registry changes.
use std::collections::HashMap;

use crate::registry::{Api, Application, AuthKind, Key, Registry};

/// Lookups over one registry version.
#[derive(Debug, Default)]
pub struct Context {
    pub registry: Registry,
    apis: HashMap<String, usize>,
    apps: HashMap<String, usize>,
    keys: HashMap<String, usize>,
}

impl Context {
    pub fn new(registry: Registry) -> Self {
        let index = |ids: Vec<&String>| {
            ids.into_iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), i))
                .collect::<HashMap<_, _>>()
        };
        Context {
            apis: index(registry.apis.iter().map(|a| &a.id).collect()),
            apps: index(registry.applications.iter().map(|a| &a.id).collect()),
            keys: index(registry.keys.iter().map(|k| &k.fingerprint).collect()),
            registry,
        }
    }

    pub fn api(&self, id: &str) -> Option<&Api> {
        self.apis.get(id).map(|&i| &self.registry.apis[i])
    }

    pub fn app(&self, id: &str) -> Option<&Application> {
        self.apps.get(id).map(|&i| &self.registry.applications[i])
    }

    pub fn key(&self, fingerprint: &str) -> Option<&Key> {
        self.keys.get(fingerprint).map(|&i| &self.registry.keys[i])
    }

    /// The API's owning team ("" when the API is not in the registry).
    pub fn api_owner(&self, api: &str) -> &str {
        self.api(api).map_or("", |a| a.owner.as_str())
    }

    pub fn app_team(&self, app: &str) -> &str {
        self.app(app).map_or("", |a| a.team.as_str())
    }

    pub fn app_name<'a>(&'a self, app: &'a str) -> &'a str {
        self.app(app).map_or(app, |a| a.name.as_str())
    }

    pub fn api_name<'a>(&'a self, api: &'a str) -> &'a str {
        self.api(api).map_or(api, |a| a.name.as_str())
    }

    /// Whether callers must present a key (a registered API whose auth is not anonymous).
    pub fn api_is_keyed(&self, api: &str) -> bool {
        self.api(api)
            .is_some_and(|a| a.auth.iter().any(|x| x.kind != AuthKind::Anonymous))
    }

    pub fn api_is_anonymous(&self, api: &str) -> bool {
        self.api(api)
            .is_some_and(|a| a.auth.iter().all(|x| x.kind == AuthKind::Anonymous))
    }

    /// Whether the registry documents routes for the API and none of them matches this request; None when the API
    /// documents no routes (nothing to compare with).
    pub fn route_undocumented(&self, api: &str, method: &str, path: &str) -> Option<bool> {
        let a = self.api(api)?;
        if a.routes.is_empty() {
            return None;
        }
        Some(!a.routes.iter().any(|r| r.matches(method, path)))
    }

    /// Applications of `team` other than `app`.
    pub fn team_apps<'a>(
        &'a self,
        team: &'a str,
        app: &'a str,
    ) -> impl Iterator<Item = &'a Application> {
        self.registry
            .applications
            .iter()
            .filter(move |a| a.team == team && a.id != app)
    }

    /// Whether any application declares `app` as its predecessor, or `app` declares one.
    pub fn in_succession(&self, app: &str) -> bool {
        self.app(app).is_some_and(|a| a.predecessor.is_some())
            || self
                .registry
                .applications
                .iter()
                .any(|a| a.predecessor.as_deref() == Some(app))
    }
}
