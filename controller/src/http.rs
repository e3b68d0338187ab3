//! `/metrics`, `/healthz`, `/readyz` and `/flows` on one small HTTP server (its own thread; a
//! `/flows?follow=true` reader gets a thread of its own).

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
            if let Some(query) = flows_query(req.url()).map(str::to_string) {
                serve_flows(req, &query, &shared);
                continue;
            }
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

/// The query string of a `/flows` request.
fn flows_query(url: &str) -> Option<&str> {
    match url.split_once('?') {
        Some(("/flows", q)) => Some(q),
        None if url == "/flows" => Some(""),
        _ => None,
    }
}

/// `GET /flows`: the buffered records that match, as JSON lines; with `follow=true` the
/// connection stays open (chunked) and new records follow as they are merged.
fn serve_flows(req: tiny_http::Request, query: &str, shared: &Arc<Shared>) {
    let ndjson = tiny_http::Header::from_bytes("Content-Type", "application/x-ndjson").expect("valid header");
    let q = match crate::flows::parse_query(query) {
        Ok(q) => q,
        Err(e) => {
            let _ = req.respond(tiny_http::Response::from_string(format!("{e}\n")).with_status_code(400));
            return;
        }
    };
    let mut body = String::new();
    for r in shared.flows.recent(&q.filter, q.limit) {
        if let Ok(line) = serde_json::to_string(&*r) {
            body.push_str(&line);
            body.push('\n');
        }
    }
    if !q.follow {
        let _ = req.respond(tiny_http::Response::from_string(body).with_header(ndjson));
        return;
    }
    let rx = shared.flows.follow(q.filter);
    // The connection is this thread's from here: the header, the buffered records, then each
    // new record as one chunk, flushed at once, until the reader goes away.
    std::thread::spawn(move || {
        let mut w = req.into_writer();
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";
        if w.write_all(head.as_bytes()).is_err() || chunk(&mut w, body.as_bytes()).is_err() {
            return;
        }
        while let Ok(r) = rx.recv() {
            let Ok(mut line) = serde_json::to_vec(&*r) else {
                continue;
            };
            line.push(b'\n');
            if chunk(&mut w, &line).is_err() {
                return;
            }
        }
        let _ = chunk(&mut w, b"").and_then(|()| w.write_all(b"0\r\n\r\n"));
    });
}

/// One HTTP/1.1 chunk (nothing for no data), flushed.
fn chunk(w: &mut impl std::io::Write, data: &[u8]) -> std::io::Result<()> {
    if !data.is_empty() {
        write!(w, "{:x}\r\n", data.len())?;
        w.write_all(data)?;
        w.write_all(b"\r\n")?;
    }
    w.flush()
}
