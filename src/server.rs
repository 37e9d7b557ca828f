//! The metrics HTTP server: a thread of its own with a single-threaded tokio
//! runtime. It never touches Python, so a scrape never waits for the GIL.
//!
//! Hostile clients are bounded: a cap on concurrent connections, deadlines
//! for the TLS handshake, the request head and the whole connection, and a
//! cap on the request head's size.

use std::convert::Infallible;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use flate2::write::GzEncoder;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, ACCEPT, ACCEPT_ENCODING, ALLOW, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE,
    VARY, WWW_AUTHENTICATE,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::basic_auth::BasicAuth;
use crate::exposition::negotiate::{self, Format};
use crate::exposition::{openmetrics, text};
use crate::scrape::ScrapeSource;
use crate::web_config::WebConfig;

const MAX_CONNECTIONS: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Hyper's smallest read buffer: also the cap on a request head.
const MAX_REQUEST_HEAD_BYTES: usize = 8192;

const INDEX_HTML: &str = "<!doctype html>\n<html><head><title>Gunicorn exporter</title></head>\
<body><h1>Gunicorn exporter</h1><p><a href=\"metrics\">Metrics</a></p></body></html>\n";

/// A running server.
pub struct MetricsServer {
    pub local_addr: SocketAddr,
}

/// Binds now (so that a taken port is an error at start-up) and serves on a new thread.
pub fn start(
    addr: SocketAddr,
    web: WebConfig,
    source: Arc<ScrapeSource>,
) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tls = web.tls.map(TlsAcceptor::from);
    let auth = Arc::new(BasicAuth::new(web.users));
    std::thread::Builder::new()
        .name("gpe-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    // Over the cap, a connection is closed at once rather than queued.
                    let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                        continue;
                    };
                    let (tls, auth, source) = (tls.clone(), Arc::clone(&auth), Arc::clone(&source));
                    tokio::spawn(async move {
                        let _permit = permit;
                        match tls {
                            Some(acceptor) => {
                                if let Ok(Ok(stream)) =
                                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                                        .await
                                {
                                    serve(stream, auth, source).await;
                                }
                            }
                            None => serve(stream, auth, source).await,
                        }
                    });
                }
            })
        })?;
    Ok(MetricsServer { local_addr })
}

async fn serve<S>(stream: S, auth: Arc<BasicAuth>, source: Arc<ScrapeSource>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let (auth, source) = (Arc::clone(&auth), Arc::clone(&source));
        async move { Ok::<_, Infallible>(respond(&req, &auth, &source)) }
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

fn header(req: &Request<Incoming>, name: hyper::header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn respond(
    req: &Request<Incoming>,
    auth: &BasicAuth,
    source: &ScrapeSource,
) -> Response<Full<Bytes>> {
    if auth.required() && !auth.allows(req.headers().get(AUTHORIZATION).map(|v| v.as_bytes())) {
        let mut resp = plain(StatusCode::UNAUTHORIZED, "Unauthorized\n");
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"gunicorn\""),
        );
        return resp;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/metrics" => metrics(req, source),
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

fn metrics(req: &Request<Incoming>, source: &ScrapeSource) -> Response<Full<Bytes>> {
    let format = negotiate::format(header(req, ACCEPT));
    let body = source.render(format);
    let content_type = match format {
        Format::Text => text::CONTENT_TYPE,
        Format::OpenMetrics => openmetrics::CONTENT_TYPE,
    };
    let gzip = negotiate::gzip(header(req, ACCEPT_ENCODING));
    let body = if gzip {
        let mut encoder = GzEncoder::new(
            Vec::with_capacity(body.len() / 8),
            flate2::Compression::fast(),
        );
        encoder
            .write_all(body.as_bytes())
            .and_then(|_| encoder.finish())
            .unwrap_or_default()
    } else {
        body.into_bytes()
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(VARY, HeaderValue::from_static("Accept, Accept-Encoding"));
    if gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    resp
}
