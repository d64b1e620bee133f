//! HTTPS serving: rustls in front of the axum router, and bearer-token
//! authentication (health and version are public, as upstream's
//! system:public-info-viewer makes them; `health.rs` shows failure
//! reasons only to a caller with a token).
use std::{collections::HashSet, sync::Arc};

use anyhow::Context as _;
use axum::{
    Router,
    extract::Request,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{
    discovery,
    handlers::{self as api, Shared},
    http::{
        health,
        status::{ApiError, Reason},
    },
    openapi,
};

pub fn router(api: Shared, tokens: HashSet<String>) -> Router {
    let tokens = Arc::new(tokens);
    let health = Router::new()
        .route("/livez", get(health::serve))
        .route("/livez/{check}", get(health::serve))
        .route("/readyz", get(health::serve))
        .route("/readyz/{check}", get(health::serve))
        .route("/healthz", get(health::serve))
        .route("/healthz/{check}", get(health::serve))
        .with_state(Arc::new(health::Health {
            api: api.clone(),
            tokens: tokens.clone(),
        }));
    let authed = Router::new()
        .route("/api", any(api::dispatch))
        .route("/api/{*rest}", any(api::dispatch))
        .route("/apis", any(api::dispatch))
        .route("/apis/{*rest}", any(api::dispatch))
        .route("/metrics", get(api::metrics))
        .route("/openapi/v2", get(openapi::v2))
        .route("/openapi/v3", get(openapi::v3_root))
        .route("/openapi/v3/{*rest}", get(openapi::v3_group_version))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let tokens = tokens.clone();
            async move { authenticate(&tokens, req, next).await }
        }))
        .with_state(api);
    Router::new()
        .route("/version", get(discovery::version))
        // The official Python client's VersionApi asks with the slash.
        .route("/version/", get(discovery::version))
        .merge(health)
        .merge(authed)
        // Bodies up to the API's own limit reach it (it answers larger
        // ones with a Status); axum's default would cut at 2 MiB.
        .layer(axum::extract::DefaultBodyLimit::max(
            api::MAX_BODY_BYTES + 1,
        ))
}

/// Whether the request carries one of `tokens` as its bearer token.
pub fn authenticated(tokens: &HashSet<String>, headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| tokens.contains(t.trim()))
}

async fn authenticate(tokens: &HashSet<String>, req: Request, next: Next) -> Response {
    if authenticated(tokens, req.headers()) {
        next.run(req).await
    } else {
        ApiError::new(Reason::Unauthorized, "Unauthorized").into_response()
    }
}

/// The serving certificate chain and its key, PEM-encoded: the server
/// crate owns the PKI, this crate only presents it.
pub struct ServingCert<'a> {
    pub cert_pem: &'a str,
    pub key_pem: &'a str,
}

fn tls(pki: &ServingCert<'_>) -> anyhow::Result<TlsAcceptor> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs = CertificateDer::pem_slice_iter(pki.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).context("serving key")?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts TLS connections on `listener` forever, one task per connection.
pub async fn serve(
    listener: TcpListener,
    pki: &ServingCert<'_>,
    app: Router,
) -> anyhow::Result<()> {
    let acceptor = tls(pki)?;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                continue;
            }
        };
        // Watch events are small writes that must leave at once; with
        // Nagle they wait for the client's delayed ACK (up to 40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, "TCP_NODELAY: {e}");
        }
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, "TLS handshake: {e}");
                    return;
                }
            };
            let svc = TowerToHyperService::new(app);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}
