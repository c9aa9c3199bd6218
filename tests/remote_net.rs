//! Real servers on 127.0.0.1 for the remote tests (issue 12), started by the tests.
//!
//! - [`HttpServer`]: a small HTTP/1.1 file server with `Range` support (206 +
//!   `Content-Range`), `HEAD`, and per-path behaviours: redirects, fixed statuses,
//!   `X-Robots-Tag` headers, slow bodies and bodies cut short. One request per connection
//!   (`Connection: close`), so a proxy in front sees one connection per request.
//! - [`FaultProxy`]: a TCP proxy that injects faults by connection number: a reset in the
//!   middle of the body, a 503 burst, a stall longer than the client's stall timeout.
//! - [`S3Server`]: the `s3s-fs` S3-compatible server (installed by `scripts/test.sh`).
//!
//! Nothing here talks to any address but 127.0.0.1, and every loop is bounded.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the HTTP server does for one path (default: serve the file under its root).
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// `302` to another path.
    Redirect(String),
    /// This status with an empty body.
    Status(u16),
    /// Serve the file with extra response headers.
    Headers(Vec<(String, String)>),
    /// Serve the file, sleeping this long before the body.
    Slow(Duration),
    /// Announce the full length but end the body at this byte of the file, then close.
    Truncate(usize),
}

/// A file server with range support (see the module docs).
pub struct HttpServer {
    pub port: u16,
    pub requests: Arc<AtomicU64>,
    routes: Arc<Mutex<HashMap<String, Behaviour>>>,
    stop: Arc<AtomicBool>,
}

impl HttpServer {
    /// Serve the files under `root`.
    pub fn start(root: &Path) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let server = HttpServer {
            port,
            requests: Arc::new(AtomicU64::new(0)),
            routes: Arc::new(Mutex::new(HashMap::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (root, routes, requests, stop) = (
            root.to_path_buf(),
            Arc::clone(&server.routes),
            Arc::clone(&server.requests),
            Arc::clone(&server.stop),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                requests.fetch_add(1, Ordering::Relaxed);
                let (root, routes) = (root.clone(), Arc::clone(&routes));
                std::thread::spawn(move || {
                    let _ = serve(conn, &root, &routes);
                });
            }
        });
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Set what happens for `path` (`/a/b.jpg`).
    pub fn route(&self, path: &str, behaviour: Behaviour) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_string(), behaviour);
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    conn: TcpStream,
    root: &Path,
    routes: &Mutex<HashMap<String, Behaviour>>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut range: Option<(u64, Option<u64>)> = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            let spec = value.trim().trim_start_matches("bytes=");
            if let Some((a, b)) = spec.split_once('-') {
                range = Some((a.parse().unwrap_or(0), b.parse().ok()));
            }
        }
    }
    let path = target.split('?').next().unwrap_or("/").to_string();
    let behaviour = routes.lock().unwrap().get(&path).cloned();
    let mut out = conn;
    let simple = |out: &mut TcpStream, status: &str, extra: &str| {
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n"
        )
    };
    let mut headers = String::new();
    let mut slow = None;
    let mut truncate = None;
    match behaviour {
        Some(Behaviour::Redirect(to)) => {
            return simple(&mut out, "302 Found", &format!("Location: {to}\r\n"));
        }
        Some(Behaviour::Status(code)) => {
            return simple(&mut out, &format!("{code} Status"), "");
        }
        Some(Behaviour::Headers(list)) => {
            for (k, v) in list {
                headers.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        Some(Behaviour::Slow(d)) => slow = Some(d),
        Some(Behaviour::Truncate(n)) => truncate = Some(n),
        None => {}
    }
    let relative = percent_decode(path.trim_start_matches('/'));
    let file = root.join(&relative);
    let Ok(body) = std::fs::read(&file).map_err(|_| ()).and_then(|b| {
        if relative.contains("..") {
            Err(())
        } else {
            Ok(b)
        }
    }) else {
        return simple(&mut out, "404 Not Found", "");
    };
    let total = body.len() as u64;
    let (status, start, end) = match range {
        Some((start, _)) if start >= total && total > 0 => {
            return simple(
                &mut out,
                "416 Range Not Satisfiable",
                &format!("Content-Range: bytes */{total}\r\n"),
            );
        }
        Some((start, end)) => {
            let end = end.map_or(total, |e| (e + 1).min(total));
            ("206 Partial Content", start, end)
        }
        None => ("200 OK", 0, total),
    };
    if status.starts_with("206") {
        headers.push_str(&format!(
            "Content-Range: bytes {start}-{}/{total}\r\n",
            end.saturating_sub(1)
        ));
    }
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nETag: \"{total}\"\r\nAccept-Ranges: bytes\r\nConnection: close\r\n{headers}\r\n",
        end - start
    )?;
    if method == "HEAD" {
        return out.flush();
    }
    if let Some(d) = slow {
        std::thread::sleep(d);
    }
    // A truncated file ends at byte `n` whatever the range asked (and the length said).
    let (from, to) = match truncate {
        Some(n) => ((start as usize).min(n), (end as usize).min(n)),
        None => (start as usize, end as usize),
    };
    let slice = &body[from..to.max(from)];
    out.write_all(slice)?;
    out.flush()?;
    out.shutdown(Shutdown::Both)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The fault a proxied connection gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Forward this many response bytes, then close both sides (a reset mid-body).
    ResetAfter(usize),
    /// Answer `503` without contacting the server.
    Unavailable,
    /// Forward this many response bytes, then go silent for the duration, then close.
    Stall(usize, Duration),
}

/// A TCP proxy injecting [`Fault`]s by connection number (see the module docs).
pub struct FaultProxy {
    pub port: u16,
    /// Connections that met a fault, by kind: resets, 503s, stalls.
    pub resets: Arc<AtomicU64>,
    pub unavailable: Arc<AtomicU64>,
    pub stalls: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Proxy to `127.0.0.1:upstream`; connection `n` gets `schedule(n)`.
    pub fn start(upstream: u16, schedule: impl Fn(u64) -> Fault + Send + 'static) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let proxy = FaultProxy {
            port: listener.local_addr().unwrap().port(),
            resets: Arc::new(AtomicU64::new(0)),
            unavailable: Arc::new(AtomicU64::new(0)),
            stalls: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (resets, unavailable, stalls, stop) = (
            Arc::clone(&proxy.resets),
            Arc::clone(&proxy.unavailable),
            Arc::clone(&proxy.stalls),
            Arc::clone(&proxy.stop),
        );
        std::thread::spawn(move || {
            for (n, conn) in (0u64..).zip(listener.incoming()) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let fault = schedule(n);
                let counters = (
                    Arc::clone(&resets),
                    Arc::clone(&unavailable),
                    Arc::clone(&stalls),
                );
                std::thread::spawn(move || {
                    let _ = relay(client, upstream, fault, counters);
                });
            }
        });
        proxy
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Faults injected so far.
    pub fn faults(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
            + self.unavailable.load(Ordering::Relaxed)
            + self.stalls.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

type Counters = (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>);

fn relay(
    mut client: TcpStream,
    upstream: u16,
    fault: Fault,
    (resets, unavailable, stalls): Counters,
) -> std::io::Result<()> {
    if fault == Fault::Unavailable {
        // Read the request head so the client sees an answer, not a reset.
        let mut reader = BufReader::new(client.try_clone()?);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 && line != "\r\n" {
            line.clear();
        }
        unavailable.fetch_add(1, Ordering::Relaxed);
        client.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return client.shutdown(Shutdown::Both);
    }
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    let (mut client_read, mut server_write) = (client.try_clone()?, server.try_clone()?);
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let mut server_read = server;
    let limit = match fault {
        Fault::ResetAfter(n) | Fault::Stall(n, _) => Some(n),
        _ => None,
    };
    let mut sent = 0usize;
    let mut buf = vec![0u8; 16 << 10];
    let started = Instant::now();
    loop {
        let n = server_read.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let take = match limit {
            Some(limit) => n.min(limit - sent),
            None => n,
        };
        client.write_all(&buf[..take])?;
        sent += take;
        if limit == Some(sent) {
            // Cut only when the response really had more to send.
            match fault {
                Fault::ResetAfter(_) => {
                    resets.fetch_add(1, Ordering::Relaxed);
                }
                Fault::Stall(_, d) => {
                    stalls.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(d);
                }
                _ => {}
            }
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server_read.shutdown(Shutdown::Both);
    let _ = up.join();
    Ok(())
}

/// The `s3s-fs` S3-compatible server on a temporary directory.
pub struct S3Server {
    pub port: u16,
    pub root: tempfile::TempDir,
    child: Child,
}

/// Access key and secret the test server accepts.
pub const S3_KEY: &str = "tessera-test";
pub const S3_SECRET: &str = "tessera-test-secret";

/// Where `scripts/test.sh` installs `s3s-fs` (`TESSERA_S3S_FS` overrides).
pub fn s3s_fs() -> Option<PathBuf> {
    let candidate = std::env::var_os("TESSERA_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/s3s-fs/bin/s3s-fs")
        });
    if candidate.is_file() {
        return Some(candidate);
    }
    if std::env::var("TESSERA_REQUIRE_S3").as_deref() == Ok("1") {
        panic!(
            "TESSERA_REQUIRE_S3=1 but no s3s-fs at {}: run scripts/test.sh",
            candidate.display()
        );
    }
    eprintln!(
        "skipping: no s3s-fs at {} (scripts/test.sh installs it)",
        candidate.display()
    );
    None
}

impl S3Server {
    /// Start the server with the given buckets (`None` when s3s-fs is not installed and
    /// not required).
    pub fn start(buckets: &[&str]) -> Option<S3Server> {
        let program = s3s_fs()?;
        let root = tempfile::tempdir().unwrap();
        for bucket in buckets {
            std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(program)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let server = S3Server { port, root, child };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "s3s-fs did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    /// The environment `tessera` needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", S3_KEY.to_string()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET.to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
