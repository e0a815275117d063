//! The HTTP endpoint: `/healthz`, `/readyz`, `/metrics`.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use axum::{
    Router, extract::State as Extract, http::StatusCode, http::header, response::IntoResponse,
    routing::get,
};

use crate::{metrics::Metrics, state::State};

#[derive(Clone)]
struct App {
    state: Arc<State>,
    metrics: Arc<Metrics>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 only once the programs are attached, the policies are in force and the start-up proof
/// passed.
async fn readyz(Extract(app): Extract<App>) -> (StatusCode, &'static str) {
    if app.state.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_page(Extract(app): Extract<App>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || app.metrics.render())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

/// Binds now, so a taken port fails start-up, and serves in the background.
pub async fn serve(addr: SocketAddr, state: Arc<State>, metrics: Arc<Metrics>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding the metrics address {addr}; pick another with --metrics-addr")
    })?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(App { state, metrics });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}
