//! `/livez`, `/readyz` and `/healthz`, answered by running checks, in
//! upstream's format: `ok` when every check passes, else 500 with one
//! `[+]name ok` / `[-]name failed: reason` line per check (always listed
//! with `?verbose`); `?exclude=name` skips a check; `/readyz/<name>` runs
//! one. Liveness is the process alone (restarting the server does not
//! bring etcd back); readiness and the aggregate `/healthz` also need the
//! store, the watch cache following it, and a completed allocation
//! repair. The endpoints are public, as upstream's
//! system:public-info-viewer makes them, so a failure's reason (which may
//! name store addresses) goes only to authenticated callers; anonymous
//! ones read `reason withheld`, and the reason is logged.
use std::{collections::HashSet, sync::Arc, sync::atomic::Ordering, time::Duration};

use axum::{
    extract::{Query, State},
    http::{HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
};

use crate::handlers::Shared;

/// How long one store read or cache wait may take: a store that does not
/// answer within it is not ready.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Livez,
    Readyz,
    Healthz,
}

impl Endpoint {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "livez" => Some(Self::Livez),
            "readyz" => Some(Self::Readyz),
            "healthz" => Some(Self::Healthz),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Livez => "livez",
            Self::Readyz => "readyz",
            Self::Healthz => "healthz",
        }
    }

    /// The checks behind the endpoint, in the order they are listed.
    fn checks(self) -> &'static [&'static str] {
        match self {
            Self::Livez => &["ping", "runtime"],
            Self::Readyz | Self::Healthz => {
                &["ping", "runtime", "store", "watch-cache", "alloc-repair"]
            }
        }
    }
}

/// What the health handler needs: the server, and the tokens that may
/// read failure reasons.
pub struct Health {
    pub api: Shared,
    pub tokens: Arc<HashSet<String>>,
}

/// The store's current revision, read within [`CHECK_TIMEOUT`].
async fn store_revision(api: &Shared) -> Result<i64, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, api.store.current_revision()).await {
        Ok(Ok(rev)) => Ok(rev),
        Ok(Err(e)) => Err(format!("the store did not answer a read: {e}")),
        Err(_) => Err(format!(
            "the store did not answer a read within {}s",
            CHECK_TIMEOUT.as_secs()
        )),
    }
}

async fn run(api: &Shared, check: &str) -> Result<(), String> {
    match check {
        "ping" => Ok(()),
        // Another task gets scheduled: the runtime is not wedged.
        "runtime" => match tokio::time::timeout(CHECK_TIMEOUT, tokio::spawn(async {})).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("a spawned task failed: {e}")),
            Err(_) => Err(format!(
                "a spawned task did not run within {}s",
                CHECK_TIMEOUT.as_secs()
            )),
        },
        "store" => store_revision(api).await.map(|_| ()),
        "watch-cache" => {
            let rev = store_revision(api).await?;
            api.cache.reaches(rev, CHECK_TIMEOUT).await.map_err(|at| {
                format!(
                    "the watch cache is at revision {at}, behind the store's {rev} for over {}s",
                    CHECK_TIMEOUT.as_secs()
                )
            })
        }
        "alloc-repair" => {
            if api.repair_ran.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("the first allocation repair pass has not completed".into())
            }
        }
        other => Err(format!("no check {other:?}")),
    }
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [
            ("content-type", "text/plain; charset=utf-8"),
            ("x-content-type-options", "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// GET /livez, /readyz, /healthz and /<endpoint>/<check>.
pub async fn serve(
    State(h): State<Arc<Health>>,
    uri: Uri,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let path = uri.path().trim_matches('/');
    let (endpoint, single) = match path.split_once('/') {
        Some((e, check)) => (e, Some(check)),
        None => (path, None),
    };
    let Some(endpoint) = Endpoint::parse(endpoint) else {
        return text(StatusCode::NOT_FOUND, "404 page not found\n".into());
    };
    let reasons = crate::http::serve::authenticated(&h.tokens, &headers);
    let shown = |reason: &str| {
        if reasons {
            reason.to_string()
        } else {
            "reason withheld".to_string()
        }
    };
    if let Some(check) = single {
        if !endpoint.checks().contains(&check) {
            return text(StatusCode::NOT_FOUND, "404 page not found\n".into());
        }
        return match run(&h.api, check).await {
            Ok(()) => text(StatusCode::OK, "ok".into()),
            Err(reason) => {
                tracing::info!(check, %reason, "{} check failed", endpoint.name());
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("internal server error: {}\n", shown(&reason)),
                )
            }
        };
    }
    let verbose = q.iter().any(|(k, _)| k == "verbose");
    let excluded: HashSet<&str> = q
        .iter()
        .filter(|(k, _)| k == "exclude")
        .map(|(_, v)| v.as_str())
        .collect();
    let results = futures::future::join_all(endpoint.checks().iter().map(|check| async {
        let result = if excluded.contains(check) {
            None
        } else {
            Some(run(&h.api, check).await)
        };
        (*check, result)
    }))
    .await;
    let failed = results.iter().any(|(_, r)| matches!(r, Some(Err(_))));
    if !failed && !verbose {
        return text(StatusCode::OK, "ok".into());
    }
    let mut body = String::new();
    for (check, result) in &results {
        match result {
            None => body.push_str(&format!("[+]{check} excluded: ok\n")),
            Some(Ok(())) => body.push_str(&format!("[+]{check} ok\n")),
            Some(Err(reason)) => {
                tracing::info!(check, %reason, "{} check failed", endpoint.name());
                body.push_str(&format!("[-]{check} failed: {}\n", shown(reason)));
            }
        }
    }
    if failed {
        body.push_str(&format!("{} check failed\n", endpoint.name()));
        text(StatusCode::INTERNAL_SERVER_ERROR, body)
    } else {
        body.push_str(&format!("{} check passed\n", endpoint.name()));
        text(StatusCode::OK, body)
    }
}
