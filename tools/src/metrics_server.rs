//! The `--metrics-addr` endpoint: a small synchronous HTTP server (`tiny_http`) that answers from a [`View`]
//! of the run, on a thread of its own.
//!
//! - `/metrics`: the Prometheus text format (`catchup_engine::exposition`, `docs/metrics.md`).
//! - `/healthz`: 200 while the process runs the replay, 503 once a failure stopped it.
//! - `/readyz`: 503 with the lag in the body until the run has caught up once, then 200 for good (it flips
//!   once: a probe that saw the consumer ready never sees it unready again).
//! - `/status`: the `--json` summary document of the run so far.
//! - anything else: 404; a method other than GET or HEAD: 405.
//!
//! Each request is answered from atomics and snapshots the engine's handle keeps (never a shard's state);
//! between requests the server thread sleeps in the server's queue (no polling), so scrapes cost the run
//! nothing between them.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use catchup_engine::Progress;
use catchup_engine::exposition::CONTENT_TYPE;

/// How long the server pauses after the listener reported an error (say, out of file descriptors) before
/// it waits for the next request.
const AFTER_ERROR: Duration = Duration::from_millis(50);

/// What the endpoint answers from: the run as it stands now.
pub trait View: Sync {
    /// Where the run stands (for `/readyz` and `/healthz`).
    fn progress(&self) -> Progress;
    /// The `/metrics` text.
    fn metrics(&self) -> String;
    /// The `/status` document.
    fn status(&self) -> serde_json::Value;
    /// Why the run failed, once it has (the error, or a note that it stopped after a failure).
    fn failure(&self) -> Option<String> {
        self.progress().failed.then(|| "the replay stopped after a failure (the process reports it)".to_string())
    }
}

/// Parses `--metrics-addr`: `PORT` (on 127.0.0.1), `HOST:PORT` or `[IPv6]:PORT`; a host name is resolved
/// (its first address). A non-loopback address is used only as given.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let bad = |why: &str| format!("--metrics-addr `{s}`: {why} (use PORT, HOST:PORT or [IPv6]:PORT)");
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = s.parse().map_err(|_| bad("the port must be in 0..=65535"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let Some((host, port)) = s.rsplit_once(':') else { return Err(bad("no port")) };
    if host.is_empty() {
        return Err(bad("no host before the `:`"));
    }
    if port.parse::<u16>().is_err() {
        return Err(bad("the port must be a number in 0..=65535"));
    }
    let mut addrs = s.to_socket_addrs().map_err(|e| bad(&format!("cannot resolve `{host}`: {e}")))?;
    addrs.next().ok_or_else(|| bad(&format!("`{host}` has no address")))
}

/// A bound endpoint: the socket is open from [`bind`](Endpoint::bind) on (so a port in use fails before the
/// run starts) until the process exits; requests wait in the listener while nothing serves them.
pub struct Endpoint {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    /// Latched by the first `/readyz` that finds the run caught up.
    ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Binds `addr` (port 0: any free port; [`addr`](Self::addr) says which).
    pub fn bind(addr: SocketAddr) -> Result<Endpoint, String> {
        let server = tiny_http::Server::http(addr).map_err(|e| format!("--metrics-addr {addr}: cannot listen: {e}"))?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        Ok(Endpoint { server: Arc::new(server), addr, ready: Arc::new(AtomicBool::new(false)) })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers requests from `view` until `stop` is raised and [`wake`](Self::wake) called; between
    /// requests the thread sleeps in the server's queue (no polling).
    pub fn serve(&self, view: &dyn View, stop: &AtomicBool) {
        loop {
            match self.server.recv() {
                Ok(request) => answer(request, view, &self.ready),
                // Woken by `wake` (queued behind the requests that came before it, which are answered).
                // Relaxed: the flag only ends the loop; nothing is published through it.
                Err(_) if stop.load(Ordering::Relaxed) => return,
                // An error accepting a connection: the listener goes on.
                Err(_) => std::thread::sleep(AFTER_ERROR),
            }
        }
    }

    /// Wakes the thread in [`serve`](Self::serve) once, after its `stop` was raised.
    pub fn wake(&self) {
        self.server.unblock();
    }

    /// Answers from `view` on a thread of its own until the process exits (the run's final figures, while
    /// the results are written and the summary printed).
    pub fn serve_detached(self, view: impl View + Send + 'static) {
        let spawned = std::thread::Builder::new().name("catchup-metrics".into()).spawn(move || {
            let never = AtomicBool::new(false);
            self.serve(&view, &never);
        });
        // Without a thread the final figures are not served; the run itself is not affected.
        drop(spawned);
    }
}

/// One response: status, content type, body.
type Answer = (u16, &'static str, String);

const TEXT: &str = "text/plain; charset=utf-8";

/// The answer to `GET path` (without the query string).
pub fn route(path: &str, view: &dyn View, ready: &AtomicBool) -> Answer {
    match path {
        "/metrics" => (200, CONTENT_TYPE, view.metrics()),
        "/healthz" => match view.failure() {
            None => (200, TEXT, "ok\n".into()),
            Some(why) => (503, TEXT, format!("failed: {why}\n")),
        },
        "/readyz" => readiness(&view.progress(), ready),
        "/status" => {
            let mut body = serde_json::to_string_pretty(&view.status()).expect("a JSON value serialises");
            body.push('\n');
            (200, "application/json", body)
        }
        _ => (404, TEXT, format!("not found: {path} (try /metrics, /healthz, /readyz or /status)\n")),
    }
}

/// `/readyz`: 200 once the run has caught up (latched in `ready`), else 503 with the lag.
fn readiness(p: &Progress, ready: &AtomicBool) -> Answer {
    // Relaxed: the latch carries no other data; once raised it stays raised.
    if ready.load(Ordering::Relaxed) || p.caught_up {
        ready.store(true, Ordering::Relaxed);
        return (200, TEXT, "ready: caught up\n".into());
    }
    (503, TEXT, format!("not ready: lag {} events\n", p.lag_events))
}

fn answer(request: tiny_http::Request, view: &dyn View, ready: &AtomicBool) {
    let (code, content_type, body) = match request.method() {
        tiny_http::Method::Get | tiny_http::Method::Head => {
            let url = request.url();
            route(url.split(['?', '#']).next().unwrap_or(url), view, ready)
        }
        m => (405, TEXT, format!("method {m} not allowed: use GET\n")),
    };
    let header = tiny_http::Header::from_bytes("Content-Type", content_type).expect("a valid header");
    let response = tiny_http::Response::from_string(body).with_status_code(code).with_header(header);
    // A client that went away gets no answer; nothing else to do.
    let _ = request.respond(response);
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Progress);

    impl View for Fixed {
        fn progress(&self) -> Progress {
            self.0.clone()
        }
        fn metrics(&self) -> String {
            "catchup_x 1\n".into()
        }
        fn status(&self) -> serde_json::Value {
            serde_json::json!({"events": self.0.handled})
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("9464"), Ok(SocketAddr::from(([127, 0, 0, 1], 9464))));
        assert_eq!(parse_addr("0.0.0.0:80"), Ok(SocketAddr::from(([0, 0, 0, 0], 80))));
        assert_eq!(parse_addr("[::1]:9464").map(|a| a.ip().is_loopback()), Ok(true));
        assert_eq!(parse_addr("localhost:9464").map(|a| (a.ip().is_loopback(), a.port())), Ok((true, 9464)));
        for bad in ["", "99999", "host", ":80", "127.0.0.1:x", "127.0.0.1:70000", "no-such-host.invalid:80"] {
            let e = parse_addr(bad).expect_err(bad);
            assert!(e.starts_with("--metrics-addr"), "{e}");
        }
    }

    #[test]
    fn routes() {
        let ready = AtomicBool::new(false);
        let mut p = Progress { lag_events: 42, ..Progress::default() };
        let (code, _, body) = route("/readyz", &Fixed(p.clone()), &ready);
        assert_eq!((code, body.as_str()), (503, "not ready: lag 42 events\n"));
        assert_eq!(route("/healthz", &Fixed(p.clone()), &ready).0, 200);
        assert_eq!(route("/metrics", &Fixed(p.clone()), &ready), (200, CONTENT_TYPE, "catchup_x 1\n".into()));
        assert_eq!(route("/nope", &Fixed(p.clone()), &ready).0, 404);
        p.handled = 3;
        let (code, ct, body) = route("/status", &Fixed(p.clone()), &ready);
        assert_eq!((code, ct), (200, "application/json"));
        assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["events"], 3);
        p.caught_up = true;
        assert_eq!(route("/readyz", &Fixed(p.clone()), &ready).0, 200);
        // Flips once: falling behind again (live appends) does not make it unready.
        p.caught_up = false;
        p.lag_events = 9;
        assert_eq!(route("/readyz", &Fixed(p.clone()), &ready).0, 200);
        p.failed = true;
        let (code, _, body) = route("/healthz", &Fixed(p), &ready);
        assert_eq!(code, 503);
        assert!(body.starts_with("failed: "), "{body}");
    }

    #[test]
    fn a_port_in_use_is_refused_at_bind() {
        let first = Endpoint::bind(parse_addr("0").unwrap()).unwrap();
        assert!(first.addr().port() != 0 && first.addr().ip().is_loopback());
        let e = Endpoint::bind(first.addr()).expect_err("the port is taken");
        assert!(e.contains(&first.addr().to_string()) && e.contains("cannot listen"), "{e}");
    }
}
