//! The metrics HTTP server: a thread of its own with a single-threaded tokio
//! runtime. It never touches Python, so a scrape never waits for the GIL.
//!
//! Hostile clients are bounded: a cap on concurrent connections (the oldest
//! connection still waiting for a request head is evicted to admit a new
//! one), deadlines for the TLS handshake, the request head and the whole
//! connection, a cap on the request head's size, and bcrypt on a small
//! blocking pool with a bounded queue. The serving thread itself only
//! accepts, parses and writes: rendering and bcrypt run on blocking threads.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::convert::Infallible;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::write::GzEncoder;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT, ACCEPT_ENCODING, ALLOW, AUTHORIZATION, CONTENT_ENCODING,
    CONTENT_TYPE, RETRY_AFTER, VARY, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::exposition::negotiate::{self, Format};
use crate::exposition::{openmetrics, protobuf, text};
use crate::scrape::source::ScrapeSource;
use crate::server::basic_auth::{BasicAuth, Check};
use crate::server::web_config::WebConfig;

pub mod basic_auth;
mod connections;
pub mod inherited;
pub mod web_config;

use connections::{Connection, Connections};

const MAX_CONNECTIONS: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Hyper's smallest read buffer: also the cap on a request head.
const MAX_REQUEST_HEAD_BYTES: usize = 8192;
/// bcrypt checks waiting or running; beyond it a request is answered 503 at
/// once, so a wrong-password flood cannot hold every connection slot.
const MAX_PENDING_VERIFICATIONS: usize = 16;
/// How long a scrape waits for the one before it to finish rendering: a
/// stuck render makes later scrapes fail visibly rather than hang.
const RENDER_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed `accept()` (e.g. out of file descriptors), doubling
/// while it keeps failing: the listener stays readable, retrying at once
/// would spin.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(100);

const INDEX_HTML: &str = "<!doctype html>\n<html><head><title>Gunicorn exporter</title></head>\
<body><h1>Gunicorn exporter</h1><p><a href=\"metrics\">Metrics</a></p></body></html>\n";

/// A running server.
pub struct MetricsServer {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    /// The listening socket's descriptor (handed to a new master on USR2).
    pub listener_fd: std::os::fd::RawFd,
}

/// What every connection shares.
struct Shared {
    tls: Option<TlsAcceptor>,
    auth: Arc<BasicAuth>,
    source: Arc<ScrapeSource>,
    /// Verifications admitted (waiting or running).
    verifications_admitted: Arc<Semaphore>,
    /// Verifications running: a small share of the cores.
    verifications_running: Arc<Semaphore>,
    /// One render at a time: they serialize on the aggregator anyway, and
    /// waiting here holds no thread.
    renders: Arc<Semaphore>,
    /// The last body rendered in each format (and gzip), with when its
    /// render began: scrapes that waited for a render share its body.
    bodies: parking_lot::Mutex<Bodies>,
}

/// The last body of each (format, gzip), shared by every response that
/// serves it (one copy however many slow clients read it).
#[derive(Default)]
struct Bodies([Option<(Instant, Bytes)>; 6]);

impl Bodies {
    fn slot(format: Format, gzip: bool) -> usize {
        let format = match format {
            Format::Text => 0,
            Format::OpenMetrics => 1,
            Format::Protobuf => 2,
        };
        format * 2 + gzip as usize
    }

    /// The body of a render that began at or after `since`: the values of
    /// the directory at least as new as a scrape that arrived then.
    fn since(&self, format: Format, gzip: bool, since: Instant) -> Option<Bytes> {
        let (began, body) = self.0[Self::slot(format, gzip)].as_ref()?;
        (*began >= since).then(|| body.clone())
    }

    fn keep(&mut self, format: Format, gzip: bool, began: Instant, body: Bytes) {
        self.0[Self::slot(format, gzip)] = Some((began, body));
    }
}

/// Binds now (so that a taken port is an error at start-up) and serves on a new thread.
pub fn start(
    addr: SocketAddr,
    web: WebConfig,
    source: Arc<ScrapeSource>,
) -> io::Result<MetricsServer> {
    start_with_listener(TcpListener::bind(addr)?, web, source)
}

/// Serves on a listener bound elsewhere (e.g. handed over by an old master).
pub fn start_with_listener(
    listener: TcpListener,
    web: WebConfig,
    source: Arc<ScrapeSource>,
) -> io::Result<MetricsServer> {
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let listener_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bcrypt_threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get() / 2)
        .clamp(1, 4);
    let shared = Arc::new(Shared {
        tls: web.tls.map(TlsAcceptor::from),
        auth: Arc::new(BasicAuth::new(web.users)),
        source,
        verifications_admitted: Arc::new(Semaphore::new(MAX_PENDING_VERIFICATIONS)),
        verifications_running: Arc::new(Semaphore::new(bcrypt_threads)),
        renders: Arc::new(Semaphore::new(1)),
        bodies: parking_lot::Mutex::new(Bodies::default()),
    });
    inherited::remember_port(local_addr.port());
    std::thread::Builder::new()
        .name("gpe-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                accept_loop(listener, shared).await;
            })
        })?;
    Ok(MetricsServer {
        local_addr,
        listener_fd,
    })
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let connections = Arc::new(Connections::new(MAX_CONNECTIONS));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                failing = false;
                stream
            }
            Err(e) => {
                if !failing {
                    eprintln!(
                        "gunicorn-prometheus-exporter: the metrics server cannot accept \
                         connections ({e}); retrying"
                    );
                    failing = true;
                }
                // Out of descriptors: free one held by a client that has sent nothing.
                let evicted = is_out_of_descriptors(&e) && connections.evict_oldest_idle();
                tokio::time::sleep(backoff).await;
                backoff = if evicted {
                    ACCEPT_BACKOFF_MIN
                } else {
                    (backoff * 2).min(ACCEPT_BACKOFF_MAX)
                };
                continue;
            }
        };
        // Over the cap with nobody idle to evict: closed at once, not queued.
        let Some(connection) = connections.admit() else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let evicted = connection.evicted();
            tokio::select! {
                _ = evicted => {}
                _ = handle(stream, &shared, &connection) => {}
            }
        });
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

async fn handle(stream: tokio::net::TcpStream, shared: &Arc<Shared>, connection: &Connection) {
    match &shared.tls {
        Some(acceptor) => {
            if let Ok(Ok(stream)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                serve(stream, shared, connection).await;
            }
        }
        None => serve(stream, shared, connection).await,
    }
}

async fn serve<S>(stream: S, shared: &Arc<Shared>, connection: &Connection)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (shared, idle) = (Arc::clone(shared), connection.idle_flag());
    let service = service_fn(move |req: Request<Incoming>| {
        let (shared, idle) = (Arc::clone(&shared), Arc::clone(&idle));
        async move {
            // A complete request head: this connection is no longer evictable
            // until its answer is out and it waits for the next head.
            idle.set(false);
            let resp = respond(req.method(), req.uri().path(), req.headers(), &shared).await;
            idle.set(true);
            Ok::<_, Infallible>(resp)
        }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn header(headers: &HeaderMap, name: hyper::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

enum Verdict {
    Allowed,
    Denied,
    /// Too many checks queued: answer without checking.
    Busy,
}

/// Cheap checks on the serving thread; bcrypt on the blocking pool.
async fn authorize(shared: &Shared, authorization: Option<&[u8]>) -> Verdict {
    let credential = match shared.auth.check(authorization) {
        Check::Allowed => return Verdict::Allowed,
        Check::Denied => return Verdict::Denied,
        Check::Verify(credential) => credential,
    };
    let Ok(admitted) = Arc::clone(&shared.verifications_admitted).try_acquire_owned() else {
        return Verdict::Busy;
    };
    let Ok(running) = Arc::clone(&shared.verifications_running)
        .acquire_owned()
        .await
    else {
        return Verdict::Busy;
    };
    let auth = Arc::clone(&shared.auth);
    // The permits travel with the check: a client that hangs up does not free
    // a slot while its bcrypt still runs.
    let verified = tokio::task::spawn_blocking(move || {
        let _permits = (admitted, running);
        auth.verify(credential)
    })
    .await;
    if verified.unwrap_or(false) {
        Verdict::Allowed
    } else {
        Verdict::Denied
    }
}

async fn respond(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    shared: &Shared,
) -> Response<Full<Bytes>> {
    if shared.auth.required() {
        let authorization = headers.get(AUTHORIZATION).map(|v| v.as_bytes());
        match authorize(shared, authorization).await {
            Verdict::Allowed => {}
            Verdict::Denied => {
                let mut resp = plain(StatusCode::UNAUTHORIZED, "Unauthorized\n");
                resp.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"gunicorn\""),
                );
                return resp;
            }
            Verdict::Busy => {
                let mut resp = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Too many password checks at once: retry\n",
                );
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                return resp;
            }
        }
    }
    if method != Method::GET && method != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/metrics" => metrics(headers, shared).await,
        "/" => {
            let mut resp = Response::new(Full::new(Bytes::from_static(INDEX_HTML.as_bytes())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        _ => plain(StatusCode::NOT_FOUND, "Not Found\n"),
    }
}

async fn metrics(headers: &HeaderMap, shared: &Shared) -> Response<Full<Bytes>> {
    let format = negotiate::format(header(headers, ACCEPT));
    let gzip = negotiate::gzip(header(headers, ACCEPT_ENCODING));
    let arrived = Instant::now();
    let permit = Arc::clone(&shared.renders).acquire_owned();
    let Ok(Ok(permit)) = tokio::time::timeout(RENDER_WAIT_TIMEOUT, permit).await else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "An earlier scrape is still rendering\n",
        );
    };
    // Scrapes that arrived while another rendered share the body of the
    // render that followed: slow clients hold one copy, not one each.
    if let Some(body) = shared.bodies.lock().since(format, gzip, arrived) {
        return metrics_response(Ok(body), format, gzip);
    }
    let source = Arc::clone(&shared.source);
    let began = Instant::now();
    let body = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let body = source.render(format);
        if gzip {
            compress(&body)
        } else {
            Ok(body)
        }
    })
    .await
    .unwrap_or_else(|_| Err(io::Error::other("the scrape panicked")))
    .map(Bytes::from);
    if let Ok(body) = &body {
        shared.bodies.lock().keep(format, gzip, began, body.clone());
    }
    metrics_response(body, format, gzip)
}

fn compress(body: &[u8]) -> io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(body.len() / 8),
        flate2::Compression::fast(),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

/// 200 with the body, or 500 saying why there is none: never an empty 200.
fn metrics_response(body: io::Result<Bytes>, format: Format, gzip: bool) -> Response<Full<Bytes>> {
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            let mut resp = Response::new(Full::new(Bytes::from(format!(
                "The metrics could not be rendered: {e}\n"
            ))));
            *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return resp;
        }
    };
    let content_type = match format {
        Format::Text => text::CONTENT_TYPE,
        Format::OpenMetrics => openmetrics::CONTENT_TYPE,
        Format::Protobuf => protobuf::CONTENT_TYPE,
    };
    let mut resp = Response::new(Full::new(body));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
    if gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_render_or_compression_is_a_500_with_a_reason() {
        let resp = metrics_response(Err(io::Error::other("deflate failed")), Format::Text, true);
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(resp.headers().get(CONTENT_ENCODING).is_none());
        let body = resp.into_body();
        let bytes = futures_body(body);
        assert_eq!(bytes, "The metrics could not be rendered: deflate failed\n");
        let ok = metrics_response(compress(b"x 1.0\n").map(Bytes::from), Format::Text, true);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[CONTENT_ENCODING], "gzip");
    }

    fn futures_body(body: Full<Bytes>) -> String {
        use http_body_util::BodyExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let collected = runtime.block_on(body.collect()).unwrap().to_bytes();
        String::from_utf8(collected.to_vec()).unwrap()
    }

    #[test]
    fn out_of_descriptor_errors_are_recognised() {
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }
}
