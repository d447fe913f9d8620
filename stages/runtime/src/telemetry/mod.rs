//! The one HTTP server of a stage process: Prometheus metrics at the path topology.yaml
//! gives, `/healthz` (the process answers), `/readyz` (joined its group / connected)
//! and, for stages that publish one, a JSON `/status`.

pub mod register;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prometheus::core::Collector;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Readiness of one stage, set by the Kafka loop (assignment received, producer
/// connected) and read by `/readyz`.
#[derive(Debug)]
pub struct Readiness {
    ready: AtomicBool,
    reason: Mutex<String>,
    status: Mutex<Option<String>>,
}

impl Readiness {
    pub fn new(initial_reason: &str) -> Arc<Self> {
        Arc::new(Self {
            ready: AtomicBool::new(false),
            reason: Mutex::new(initial_reason.into()),
            status: Mutex::new(None),
        })
    }

    /// The JSON document `/status` serves from now on.
    pub fn set_status(&self, json: String) {
        *self.status.lock().expect("status lock") = Some(json);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.reason.lock().expect("readiness lock") = reason.into();
        self.ready.store(false, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> String {
        self.reason.lock().expect("readiness lock").clone()
    }
}

/// Logs to stderr, filtered by `CODELUPE_LOG` (default: info, librdkafka warnings).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CODELUPE_LOG")
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Registries gathered as one: the loop registries of a stage running several loops
/// (their common labels tell the loops apart). It has no descriptors of its own, so a
/// registry takes one.
pub struct Nested(pub Vec<Registry>);

impl Collector for Nested {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.iter().flat_map(Registry::gather).collect()
    }
}

/// Makes the collector of the process's heap statistics, which only the binary that
/// chose the allocator can read; set once, before any stage starts.
static HEAP_COLLECTOR: OnceLock<fn() -> Box<dyn Collector>> = OnceLock::new();

/// Every registry made from now on reports the heap through a collector `make` returns.
pub fn report_heap_with(make: fn() -> Box<dyn Collector>) {
    let _ = HEAP_COLLECTOR.set(make);
}

/// A new registry with the process collector (CPU, memory, fds) and, where the binary
/// set one, its heap collector. No namespace: the contract metric names carry their
/// own prefixes.
pub fn new_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process collector registers once per registry");
    if let Some(make) = HEAP_COLLECTOR.get() {
        registry
            .register(make())
            .expect("heap collector registers once per registry");
    }
    registry
}

pub use hyper::StatusCode;

/// What a [`Router`] answers.
pub type HttpResponse = Response<Full<Bytes>>;

/// Answers one request path; what [`serve_http`] runs for every request.
pub type Router = Arc<dyn Fn(&str) -> HttpResponse + Send + Sync>;

/// Binds now (so a taken port fails the start with a clear error) and serves until
/// `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    metrics_path: String,
    registry: Registry,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let router: Router = Arc::new(move |path| route(path, &metrics_path, &registry, &readiness));
    serve_http(addr, "metrics", router, shutdown).await
}

/// What one HTTP server allows its clients: every connection is bounded in count and
/// in time, so idle or trickling clients (a slow-header attack, a leaked keep-alive)
/// cannot starve the scrapes and probes an orchestrator depends on.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: std::time::Duration,
    /// How long a connection is served before it is closed (a keep-alive client
    /// reconnects).
    pub connection_lifetime: std::time::Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: std::time::Duration::from_secs(10),
            connection_lifetime: std::time::Duration::from_secs(300),
        }
    }
}

/// The one HTTP server: binds `addr` now and answers GET requests through `router`
/// until `shutdown` is cancelled, within [`ServerLimits::default`]. `what` names it in
/// errors.
pub async fn serve_http(
    addr: SocketAddr,
    what: &str,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    serve_http_within(addr, what, router, shutdown, ServerLimits::default()).await
}

async fn serve_http_within(
    addr: SocketAddr,
    what: &str,
    router: Router,
    shutdown: CancellationToken,
    limits: ServerLimits,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))?;
    let what = what.to_string();
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    Ok(tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = connections.clone().acquire_owned() => {
                    let permit = permit.expect("the semaphore is never closed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        accepted = listener.accept() => accepted.map(|(stream, _)| (stream, permit)),
                    }
                }
            };
            let (stream, permit) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "{what} server: accept failed");
                    continue;
                }
            };
            // One task per connection, so a slow client never blocks another.
            let (router, shutdown) = (router.clone(), shutdown.clone());
            tokio::spawn(async move {
                serve_connection(stream, router, shutdown, limits).await;
                drop(permit);
            });
        }
    }))
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    shutdown: CancellationToken,
    limits: ServerLimits,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let router = router.clone();
        async move { Ok::<_, Infallible>(router(req.uri().path())) }
    });
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(limits.connection_lifetime) => {}
    }
    // A response under way is finished first, within a header timeout's time.
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.header_timeout, conn).await;
}

fn route(
    path: &str,
    metrics_path: &str,
    registry: &Registry,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    if path == metrics_path {
        let encoder = TextEncoder::new();
        let mut body = Vec::new();
        if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encoding metrics: {e}\n"),
            );
        }
        return Response::builder()
            .header("content-type", encoder.format_type())
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts");
    }
    match path {
        "/healthz" | "/health" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" | "/ready" => {
            if readiness.is_ready() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", readiness.reason()),
                )
            }
        }
        "/status" => match readiness.status.lock().expect("status lock").clone() {
            Some(json) => body("application/json", json),
            None => text(StatusCode::NOT_FOUND, "this stage has no status\n".into()),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            format!("no such path; metrics are at {metrics_path}\n"),
        ),
    }
}

/// A 200 response with this content type.
pub fn body(content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .expect("static response parts")
}

/// A plain-text response with this status.
pub fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::time::{Duration, Instant};

    async fn server(limits: ServerLimits) -> (SocketAddr, CancellationToken) {
        let router: Router = Arc::new(|_| text(StatusCode::OK, "ok\n".into()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let stop = CancellationToken::new();
        serve_http_within(addr, "test", router, stop.clone(), limits)
            .await
            .unwrap();
        (addr, stop)
    }

    /// Whether the server closes `stream` within `within` (a read returns 0 or fails).
    fn closed_within(stream: &mut std::net::TcpStream, within: Duration) -> bool {
        stream.set_read_timeout(Some(within)).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
    }

    fn get(addr: SocketAddr) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response);
        response
    }

    /// A client that starts a request and never finishes its headers is cut off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_trickling_its_headers_is_cut_off() {
        let limits = ServerLimits {
            header_timeout: Duration::from_millis(300),
            ..ServerLimits::default()
        };
        let (addr, stop) = server(limits).await;
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
            .unwrap();
        let started = Instant::now();
        assert!(
            tokio::task::spawn_blocking(move || closed_within(&mut slow, Duration::from_secs(5)))
                .await
                .unwrap(),
            "still open"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        stop.cancel();
    }

    /// Idle connections beyond the cap wait instead of piling up, and once the idle
    /// ones time out a client is served again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_capped_and_idle_ones_give_their_place_back() {
        let limits = ServerLimits {
            max_connections: 2,
            header_timeout: Duration::from_millis(500),
            connection_lifetime: Duration::from_secs(60),
        };
        let (addr, stop) = server(limits).await;
        let idle: Vec<_> = (0..4)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let response = tokio::task::spawn_blocking(move || get(addr))
            .await
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        drop(idle);
        stop.cancel();
    }
}
