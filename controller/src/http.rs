//! `/metrics`, `/healthz` and `/readyz` on one small HTTP server (its own thread).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::agent::Shared;

/// Serves until the process exits. `/readyz` answers 200 once the first complete ruleset is in
/// the kernel; `/healthz` answers 200 while the process runs.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<std::thread::JoinHandle<()>> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    Ok(std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let (code, body, ctype) = match req.url() {
                "/metrics" => (
                    200,
                    shared.metrics.encode(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
                "/healthz" => (200, "ok\n".to_string(), "text/plain"),
                "/readyz" if shared.ready.load(Ordering::Acquire) => (200, "ok\n".to_string(), "text/plain"),
                "/readyz" => (503, "first sync not done\n".to_string(), "text/plain"),
                _ => (404, "not found\n".to_string(), "text/plain"),
            };
            let header = tiny_http::Header::from_bytes("Content-Type", ctype).expect("valid header");
            let _ = req.respond(
                tiny_http::Response::from_string(body)
                    .with_status_code(code)
                    .with_header(header),
            );
        }
    }))
}
