//! Downloading the images of a URL list (`tessera shard --urls`), as img2dataset does.
//!
//! Each worker thread downloads one URL at a time on the remote runtime
//! ([`crate::remote::store::runtime`]), so the number of downloads in flight is the
//! number of workers (`--workers`, hundreds are fine: they mostly wait). On top:
//! - a per-host limit ([`FetchOptions::per_host`]): at most that many downloads from one
//!   host at once, the others wait their turn;
//! - a timeout per attempt, redirects followed (at most 10), retries with doubling waits on
//!   timeouts, connection failures, 429 and 5xx (counted in [`crate::remote::stats`]);
//! - the opt-out headers honoured like img2dataset: an `X-Robots-Tag` whose directives
//!   (for all robots, or for `tessera`/`img2dataset`) include `noai`, `noimageai`,
//!   `noindex` or `noimageindex` skips the image;
//! - a size cap: a body larger than [`FetchOptions::max_bytes`] is abandoned.
//!
//! Every URL ends in exactly one outcome: its bytes, or a [`Reject`] with its reason
//! (`http_status`, `timeout`, `network`, `opted_out`, `too_large`); decoding, dedup and
//! the manifest then treat it like a local file.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::reject::{Reject, RejectReason};

/// The user agent sent with every download (and the robot name opt-outs may address).
pub const USER_AGENT: &str = "tessera/0.1 (+img2dataset-compatible; honours X-Robots-Tag noai)";

/// Opt-out directives that skip an image (img2dataset's list).
const DISALLOWED: &[&str] = &["noai", "noimageai", "noindex", "noimageindex"];

/// How URL-list inputs are downloaded.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchOptions {
    /// Limit for one attempt, connection to last byte (default 10 s).
    pub timeout: Duration,
    /// Attempts after the first on a transient failure (default 2).
    pub retries: u32,
    /// Downloads from one host at once at most (default 16).
    pub per_host: usize,
    /// Largest body accepted, in bytes (default 32 MiB); larger is `too_large`.
    pub max_bytes: u64,
    /// Skip images whose `X-Robots-Tag` opts out of AI use (default true).
    pub honour_opt_out: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retries: 2,
            per_host: 16,
            max_bytes: 32 << 20,
            honour_opt_out: true,
        }
    }
}

/// One client for every download (connection pooling across workers).
fn client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::limited(10))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|e| panic!("cannot build the HTTP client: {e}"))
    })
}

/// Downloads in flight per host, with a condition variable to wait for a slot.
#[derive(Debug, Default)]
struct Hosts {
    busy: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

fn hosts() -> &'static Hosts {
    static HOSTS: OnceLock<Hosts> = OnceLock::new();
    HOSTS.get_or_init(Hosts::default)
}

/// A slot for one download from `host`; dropping it frees the slot.
struct HostSlot {
    host: String,
}

impl HostSlot {
    fn acquire(host: &str, limit: usize) -> HostSlot {
        let hosts = hosts();
        let mut busy = hosts.busy.lock().unwrap_or_else(|p| p.into_inner());
        while busy.get(host).copied().unwrap_or(0) >= limit.max(1) {
            busy = hosts.freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy.entry(host.to_string()).or_default() += 1;
        HostSlot {
            host: host.to_string(),
        }
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let hosts = hosts();
        let mut busy = hosts.busy.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = busy.get_mut(&self.host) {
            *n = n.saturating_sub(1);
        }
        hosts.freed.notify_all();
    }
}

/// What one attempt ended with.
enum Attempt {
    Done(Vec<u8>),
    /// Worth another attempt (timeout, connection failure, 429, 5xx).
    Transient(Reject),
    /// Final (404, opted out, too large, bad URL).
    Final(Reject),
}

/// Download `url` into `data` (cleared first), or say why not (see the module docs).
pub fn download(url: &str, options: &FetchOptions, data: &mut Vec<u8>) -> Result<(), Reject> {
    let parsed = url::Url::parse(url)
        .map_err(|e| Reject::new(RejectReason::Network, format!("invalid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Reject::new(
            RejectReason::Network,
            format!("unsupported URL scheme `{}`", parsed.scheme()),
        ));
    }
    let host = parsed.host_str().unwrap_or_default().to_string();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let outcome = {
            let _slot = HostSlot::acquire(&host, options.per_host);
            crate::remote::store::block_on(fetch_once(url, options))
        };
        match outcome {
            Attempt::Done(bytes) => {
                *data = bytes;
                return Ok(());
            }
            Attempt::Final(reject) => return Err(reject),
            Attempt::Transient(reject) if attempt > options.retries => return Err(reject),
            Attempt::Transient(_) => {
                crate::remote::count_retry();
                let wait = Duration::from_millis(100).saturating_mul(1 << (attempt - 1).min(6));
                std::thread::sleep(wait);
            }
        }
    }
}

async fn fetch_once(url: &str, options: &FetchOptions) -> Attempt {
    crate::remote::count_request();
    let work = async {
        let response = match client().get(url).send().await {
            Ok(response) => response,
            Err(e) => return transport_error(&e),
        };
        let status = response.status();
        if !status.is_success() {
            let reject = Reject::new(
                RejectReason::HttpStatus,
                format!("HTTP {}", status.as_u16()),
            );
            return if status.is_server_error() || status.as_u16() == 429 {
                Attempt::Transient(reject)
            } else {
                Attempt::Final(reject)
            };
        }
        if options.honour_opt_out
            && let Some(directive) = opted_out(response.headers())
        {
            return Attempt::Final(Reject::new(
                RejectReason::OptedOut,
                format!("X-Robots-Tag: {directive}"),
            ));
        }
        if response
            .content_length()
            .is_some_and(|n| n > options.max_bytes)
        {
            return Attempt::Final(too_large(options));
        }
        let mut response = response;
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    crate::remote::count_bytes(chunk.len() as u64);
                    if (body.len() + chunk.len()) as u64 > options.max_bytes {
                        return Attempt::Final(too_large(options));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Attempt::Done(body),
                Err(e) => return transport_error(&e),
            }
        }
    };
    match tokio::time::timeout(options.timeout, work).await {
        Ok(attempt) => attempt,
        Err(_) => Attempt::Transient(Reject::new(
            RejectReason::Timeout,
            format!("no complete answer within {:?}", options.timeout),
        )),
    }
}

fn too_large(options: &FetchOptions) -> Reject {
    Reject::new(
        RejectReason::TooLarge,
        format!("larger than {} bytes", options.max_bytes),
    )
}

fn transport_error(e: &reqwest::Error) -> Attempt {
    let detail = crate::error::Chain(e).to_string();
    if e.is_timeout() {
        Attempt::Transient(Reject::new(RejectReason::Timeout, detail))
    } else if e.is_redirect() || e.is_builder() {
        Attempt::Final(Reject::new(RejectReason::Network, detail))
    } else {
        Attempt::Transient(Reject::new(RejectReason::Network, detail))
    }
}

/// The opt-out directive of the response, if any (img2dataset's rule): each
/// `X-Robots-Tag` value is either `directives` (for every robot) or `robot: directives`,
/// which counts when the robot is `*`, `tessera` or `img2dataset`.
fn opted_out(headers: &reqwest::header::HeaderMap) -> Option<String> {
    for value in headers.get_all("x-robots-tag") {
        let Ok(value) = value.to_str() else { continue };
        let value = value.to_ascii_lowercase();
        let directives = match value.split_once(':') {
            Some((robot, rest)) => {
                let robot = robot.trim();
                if !matches!(robot, "*" | "tessera" | "img2dataset") {
                    continue;
                }
                rest.to_string()
            }
            None => value.clone(),
        };
        if let Some(hit) = directives
            .split(',')
            .map(str::trim)
            .find(|d| DISALLOWED.contains(d))
        {
            return Some(hit.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn tags(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append("x-robots-tag", HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn opt_outs_follow_img2dataset() {
        assert_eq!(opted_out(&tags(&["noai"])), Some("noai".into()));
        assert_eq!(
            opted_out(&tags(&["nofollow, NoImageAI"])),
            Some("noimageai".into())
        );
        assert_eq!(opted_out(&tags(&["otherbot: noai"])), None);
        assert_eq!(
            opted_out(&tags(&["img2dataset: noindex"])),
            Some("noindex".into())
        );
        assert_eq!(
            opted_out(&tags(&["nofollow", "*: noimageindex"])),
            Some("noimageindex".into())
        );
        assert_eq!(opted_out(&tags(&["nofollow"])), None);
        assert_eq!(opted_out(&HeaderMap::new()), None);
    }
}
