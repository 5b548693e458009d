//! Physical-limit baseline for the cache-hit scenario: the least work an
//! HTTP/1 server built like the agent (hyper 1 + hyper-util, tokio
//! multi-thread runtime, keep-alive, `TCP_NODELAY`) can do per request:
//! answer every request with the same pre-built `200`,
//! `Content-Type: application/json` and a body read once from a file (a real
//! credential body fetched from the agent). No routing, no token handling,
//! no cache, no metrics. The agent's cache-hit throughput and latency are
//! reported as ratios to this server's, measured with the same wrk runs.
//!
//! Usage: `baseline --listen 127.0.0.1:PORT --body-file PATH`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Response body (a credential JSON document).
    #[arg(long)]
    body_file: PathBuf,
    /// Configure hyper like the agent's `serve.rs` (timer, 5 s header read
    /// timeout, 16 KiB header limits): separates the cost of that
    /// configuration from the agent's own per-request work.
    #[arg(long)]
    hardened: bool,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let body = Bytes::from(std::fs::read(&args.body_file)?);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(args.listen, body, args.hardened))
}

async fn serve(listen: SocketAddr, body: Bytes, hardened: bool) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    let mut builder = http1::Builder::new();
    builder.keep_alive(true);
    if hardened {
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(std::time::Duration::from_secs(5))
            .max_buf_size(16 * 1024)
            .max_header_size(16 * 1024);
    }
    let builder = std::sync::Arc::new(builder);
    let content_type = HeaderValue::from_static("application/json");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let content_type = content_type.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                let mut resp = Response::new(Full::new(body.clone()));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, content_type.clone());
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
