//! A minimal HTTP/1.1 client over one keep-alive TCP connection: exactly the
//! request bytes the benchmark asks for (the same ones wrk sends), responses
//! framed by `Content-Length`. No pooling, no redirects, no chunked bodies
//! (neither the agent nor the emulator sends them).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the client saw.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

/// The request wrk and the Rust clients send to the credential endpoint.
pub fn credential_request(token: &str) -> Vec<u8> {
    format!("GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n\r\n")
        .into_bytes()
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
            closed: false,
        })
    }

    /// True once the server said `Connection: close` (or closed).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Sends `raw` (one complete request) and reads one response.
    pub async fn roundtrip(&mut self, raw: &[u8]) -> io::Result<Response> {
        self.stream.write_all(raw).await?;
        self.read_response().await
    }

    /// `GET /v1/credentials` with the token as the raw `Authorization` header.
    pub async fn credentials(&mut self, token: &str) -> io::Result<Response> {
        self.roundtrip(&credential_request(token)).await
    }

    /// Any request (control API, probes, metrics).
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<Response> {
        let mut raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        )
        .into_bytes();
        if !body.is_empty() {
            raw.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(body);
        self.roundtrip(&raw).await
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            self.closed = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response head too large",
                ));
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "response head not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status line"))?;
        let mut length = 0usize;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length")
                })?;
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                self.closed = true;
            }
        }
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Ok(Response { status, body })
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection.
pub async fn once(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> io::Result<Response> {
    let fut = async {
        let mut c = Conn::connect(addr).await?;
        c.request(method, path, body).await
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
}
