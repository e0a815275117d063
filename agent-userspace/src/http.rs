//! The HTTP endpoint: `/healthz`, `/readyz`, `/metrics`.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

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

/// Alive, and what the operator should know: 503 while the kernel state isn't the daemon's
/// (see `health`); a note when the address was taken before it could be bound.
async fn healthz(Extract(app): Extract<App>) -> (StatusCode, String) {
    let mut body = match app.state.enforcement_problem.get() {
        Some(p) => format!("unhealthy: {p}\n"),
        None => "ok\n".to_string(),
    };
    let failed = app.state.listener_failures.load(Ordering::Relaxed);
    if failed > 0 {
        body += &format!(
            "the HTTP address could not be bound {failed} time(s) before it was (see the log)\n"
        );
    }
    let code = if app.state.enforcement_problem.get().is_some() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, body)
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

/// Serves in the background. A taken address doesn't stop the daemon, which enforces either
/// way: it is logged, shown by `actgate status`, and bound as soon as it is free.
pub fn serve(addr: SocketAddr, state: Arc<State>, metrics: Arc<Metrics>) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(App {
            state: state.clone(),
            metrics,
        });
    tokio::spawn(async move {
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    let problem = format!(
                        "binding the metrics address {addr}: {e}; retrying every {}s \
                         (choose another with --metrics-addr)",
                        RETRY.as_secs()
                    );
                    if state.listener_problem.get().is_none() {
                        tracing::error!("{problem}; enforcement goes on without /metrics");
                    }
                    state.listener_failures.fetch_add(1, Ordering::Relaxed);
                    state.listener_problem.set(Some(problem));
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        if state.listener_problem.get().is_some() {
            tracing::info!(%addr, "the metrics address is bound at last");
            state.listener_problem.set(None);
        }
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
}

/// How often a taken address is tried again.
const RETRY: Duration = Duration::from_secs(2);
