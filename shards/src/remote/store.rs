//! One `object_store` client per bucket or host, its runtime, and retries.
//!
//! Clients are built from the standard environment the way each store's own tools read
//! it (`AmazonS3Builder::from_env`, ...): `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL` (an S3-compatible server), `GOOGLE_SERVICE_ACCOUNT`,
//! `AZURE_STORAGE_ACCOUNT_NAME`, ... `object_store`'s own retries are switched off: every
//! request goes through [`retrying`], so each fault is counted once, and plain `http://`
//! is allowed (an endpoint given as `http://` is a deliberate local server).
//!
//! All requests run on one small multi-thread runtime owned by this module (the clients'
//! pooled connections belong to it), whoever the caller is: a blocking reader thread, the
//! CLI, or a task on another runtime.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::http::HttpBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::RemoteOptions;
use crate::ShardError;

/// A remote object: its client, its key in the store, and the URL that names it.
#[derive(Debug, Clone)]
pub struct ObjectUrl {
    /// The client for the object's bucket or host.
    pub store: Arc<dyn ObjectStore>,
    /// The object's key (`prefix/train-000000.tar`).
    pub key: ObjectPath,
    /// The URL as the user wrote it (used in every message).
    pub url: String,
}

impl ObjectUrl {
    /// Parse `url` and find (or build) the client for its bucket or host.
    pub fn parse(url: &str) -> Result<ObjectUrl, ShardError> {
        let parsed = url::Url::parse(url).map_err(|e| ShardError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let scheme = parsed.scheme().to_ascii_lowercase();
        if !super::SCHEMES.contains(&scheme.as_str()) {
            return Err(ShardError::UnsupportedUrl {
                url: url.to_string(),
            });
        }
        let host = parsed.host_str().unwrap_or_default();
        if host.is_empty() {
            return Err(ShardError::BadUrl {
                url: url.to_string(),
                reason: "no bucket or host after `://`".into(),
            });
        }
        let root = match parsed.port() {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        };
        let raw_key = parsed.path().trim_start_matches('/');
        let key = ObjectPath::from_url_path(raw_key).map_err(|e| ShardError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let store = client_for(&scheme, &root, url)?;
        Ok(ObjectUrl {
            store,
            key,
            url: url.to_string(),
        })
    }

    /// The same store, another key (`s3://b/p/x.tar` → `s3://b/p/x.tar.idx`).
    pub fn sibling(&self, url: String, key: ObjectPath) -> ObjectUrl {
        ObjectUrl {
            store: Arc::clone(&self.store),
            key,
            url,
        }
    }
}

/// The runtime every remote request runs on (two worker threads: requests are I/O).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tessera-remote")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the remote I/O runtime: {e}"))
    })
}

/// Run `future` to completion on the remote runtime from synchronous code, also when
/// the caller is itself inside a runtime (then on a scoped helper thread, since a
/// runtime thread must not block).
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| runtime().block_on(future))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    } else {
        runtime().block_on(future)
    }
}

fn client_for(scheme: &str, root: &str, url: &str) -> Result<Arc<dyn ObjectStore>, ShardError> {
    static CLIENTS: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let clients = CLIENTS.get_or_init(Default::default);
    let mut clients = clients.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(store) = clients.get(root) {
        return Ok(Arc::clone(store));
    }
    let options = super::options();
    let client = client_options(&options);
    let retry = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    let built: Result<Arc<dyn ObjectStore>, object_store::Error> = match scheme {
        "s3" => AmazonS3Builder::from_env()
            .with_url(root)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map(|s| Arc::new(s) as _),
        "gs" => GoogleCloudStorageBuilder::from_env()
            .with_url(root)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map(|s| Arc::new(s) as _),
        "az" | "azure" | "abfs" | "abfss" => MicrosoftAzureBuilder::from_env()
            .with_url(root)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map(|s| Arc::new(s) as _),
        _ => HttpBuilder::new()
            .with_url(root)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .map(|s| Arc::new(s) as _),
    };
    let store = built.map_err(|source| ShardError::Remote {
        url: url.to_string(),
        action: "configuring the client",
        attempts: 1,
        hint: hint_for(&source, url),
        source,
    })?;
    clients.insert(root.to_string(), Arc::clone(&store));
    Ok(store)
}

fn client_options(options: &RemoteOptions) -> ClientOptions {
    // The whole-request timeout would cut long healthy downloads: a stall is caught by the
    // read timeout (and by `retrying`'s per-attempt timeout) instead.
    ClientOptions::new()
        .with_allow_http(true)
        .with_timeout_disabled()
        .with_read_timeout(options.stall_timeout)
        .with_connect_timeout(options.connect_timeout)
}

/// Is this error worth another attempt? Timeouts, resets, 5xx and 429 come as
/// `Generic`; a definite answer (not found, denied, precondition) does not change.
pub fn is_transient(error: &object_store::Error) -> bool {
    matches!(error, object_store::Error::Generic { .. })
}

/// Run one request with retries and exponential backoff; each attempt is bounded by the
/// stall timeout. `action` and the URL name the failure if every attempt fails.
pub async fn retrying<T, F, Fut>(
    object: &ObjectUrl,
    action: &'static str,
    mut request: F,
) -> Result<T, ShardError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let options = super::options();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        super::count_request();
        let outcome = tokio::time::timeout(options.stall_timeout, request()).await;
        let error = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
            Err(_elapsed) => object_store::Error::Generic {
                store: "tessera",
                source: format!("no answer within {:?}", options.stall_timeout).into(),
            },
        };
        if !is_transient(&error) || attempt > options.retries {
            return Err(ShardError::Remote {
                url: object.url.clone(),
                action,
                attempts: attempt,
                hint: hint_for(&error, &object.url),
                source: error,
            });
        }
        super::count_retry();
        let wait = options.backoff_for(attempt);
        tracing::debug!(
            "{}: {action}: attempt {attempt} failed ({}); retrying in {wait:?}",
            object.url,
            crate::error::Chain(&error)
        );
        tokio::time::sleep(wait).await;
    }
}

/// A short explanation for the usual mistakes, in the user's terms.
pub(crate) fn hint_for(error: &object_store::Error, url: &str) -> String {
    let text = crate::error::Chain(error).to_string();
    let bucket = url
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
        .unwrap_or_default();
    if text.contains("NoSuchBucket") {
        return format!("bucket `{bucket}` does not exist");
    }
    match error {
        object_store::Error::NotFound { .. } => "no such object".into(),
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => format!(
            "access to `{bucket}` denied: check the credentials in the environment \
             (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, \
             AZURE_STORAGE_ACCOUNT_KEY)"
        ),
        object_store::Error::Precondition { .. } => {
            "the object changed while it was being read".into()
        }
        object_store::Error::Generic { .. }
            if text.contains("InvalidAccessKeyId") || text.contains("SignatureDoesNotMatch") =>
        {
            format!("access to `{bucket}` denied: check the credentials in the environment")
        }
        object_store::Error::Generic { .. } => "the store did not answer usefully".into(),
        _ => "the store refused the request".into(),
    }
}
