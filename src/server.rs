//! The metrics HTTP server: a thread of its own with a single-threaded tokio
//! runtime. It never touches Python, so a scrape never waits for the GIL.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::exposition::text;
use crate::scrape::ScrapeSource;

const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

const INDEX_HTML: &str = "<!doctype html>\n<html><head><title>Gunicorn exporter</title></head>\
<body><h1>Gunicorn exporter</h1><p><a href=\"metrics\">Metrics</a></p></body></html>\n";

/// A running server.
pub struct MetricsServer {
    pub local_addr: SocketAddr,
}

/// Binds now (so that a taken port is an error at start-up) and serves on a new thread.
pub fn start(addr: SocketAddr, source: Arc<ScrapeSource>) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("gpe-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(_) => return,
                };
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let source = Arc::clone(&source);
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let source = Arc::clone(&source);
                            async move { Ok::<_, Infallible>(respond(&req, &source)) }
                        });
                        let _ = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        })?;
    Ok(MetricsServer { local_addr })
}

fn respond(req: &Request<Incoming>, source: &ScrapeSource) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Response::builder()
            .status(StatusCode::METHOD_NOT_ALLOWED)
            .header(ALLOW, "GET, HEAD")
            .body(Full::new(Bytes::from_static(b"Method Not Allowed\n")))
            .unwrap();
    }
    match req.uri().path() {
        "/metrics" => Response::builder()
            .header(CONTENT_TYPE, text::CONTENT_TYPE)
            .body(Full::new(Bytes::from(source.render_text())))
            .unwrap(),
        "/" => Response::builder()
            .header(CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Full::new(Bytes::from_static(INDEX_HTML.as_bytes())))
            .unwrap(),
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"Not Found\n")))
            .unwrap(),
    }
}
