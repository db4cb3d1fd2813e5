//! Connecting: the builder, the shared channel, and the per-call policy (key,
//! deadline, retries) every typed call goes through.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status};

use crate::{AdminClient, Error, JobQueueClient, WorkerClient};

/// Default deadline of a unary call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default limit on establishing the connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How calls that are safe to repeat are retried.
///
/// A call is retried only when it failed with `UNAVAILABLE` (the server or its
/// database could not be reached, or the server is stopping), `ABORTED` (a
/// concurrent change; nothing was written) or a broken connection (reported as
/// [`Error::Unavailable`]), and only when repeating it cannot do
/// the work twice: reads, `SubmitJob` (which always carries a `request_id`, see
/// [`crate::SubmitJob`]), `RetryJob`, `CancelJob`, the plan calls, `Heartbeat`,
/// `CompleteJob` and `FailJob` (the lease makes a second report a no-op).
/// `ClaimJobs` is never retried by the client: a lost answer would leave claimed
/// jobs unseen, so the caller decides (the [`crate::Worker`] runner just claims
/// again; the lost jobs' leases expire and they are queued again).
///
/// Delays grow from `initial_backoff`, doubling up to `max_backoff`, each with
/// random jitter (between half and all of the nominal delay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (1 disables retries).
    pub max_attempts: u32,
    /// Nominal delay before the first retry.
    pub initial_backoff: Duration,
    /// Largest nominal delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 4 attempts, 100 ms doubling up to 2 s.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries: every call is made once.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The jittered delay before retry number `retry` (1 for the first retry).
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let nominal = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(retry.saturating_sub(1)))
            .min(self.max_backoff);
        jitter(nominal)
    }
}

/// Between half and all of `nominal`, at random, so that many clients that lost
/// the same server do not come back in step.
pub(crate) fn jitter(nominal: Duration) -> Duration {
    // A fresh RandomState is randomly keyed: its hash of nothing is a random
    // number, which is all jitter needs (no dependency on a RNG crate).
    let random = RandomState::new().hash_one(());
    let half = nominal / 2;
    let spread = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(if spread == 0 { 0 } else { random % spread })
}

/// Whether a call may be repeated after a failure that might have reached the
/// server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotence {
    /// Repeating it cannot do its work twice.
    Safe,
    /// Never repeat it automatically.
    Unsafe,
}

/// What every call of one connection shares.
#[derive(Debug, Clone)]
struct CallPolicy {
    authorization: Option<AsciiMetadataValue>,
    timeout: Duration,
    retry: RetryPolicy,
}

/// One channel and its call policy, shared by every client type made from it.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    channel: Channel,
    policy: Arc<CallPolicy>,
}

impl Connection {
    /// A connection over `channel` with the default policy and no key.
    pub(crate) fn plain(channel: Channel) -> Self {
        Self {
            channel,
            policy: Arc::new(CallPolicy {
                authorization: None,
                timeout: DEFAULT_TIMEOUT,
                retry: RetryPolicy::default(),
            }),
        }
    }

    /// The same channel, with `timeout` as the deadline of each unary call.
    pub(crate) fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            channel: self.channel.clone(),
            policy: Arc::new(CallPolicy {
                timeout,
                ..(*self.policy).clone()
            }),
        }
    }

    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `message` as a request carrying the key and, unless `deadline` is `None`,
    /// the deadline (sent as `grpc-timeout`, so the server stops working on it too).
    pub(crate) fn request<T>(&self, message: T, deadline: Option<Duration>) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.policy.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        if let Some(deadline) = deadline {
            request.set_timeout(deadline);
        }
        request
    }

    /// Makes a unary call under the connection's deadline (plus `extra`, for calls
    /// that may legitimately wait on the server, like a long-polling claim),
    /// retrying it per the policy when `idempotence` allows.
    pub(crate) async fn unary<T, R, F, Fut>(
        &self,
        idempotence: Idempotence,
        extra: Duration,
        message: T,
        mut send: F,
    ) -> Result<R, Error>
    where
        T: Clone,
        F: FnMut(Channel, Request<T>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let deadline = self.policy.timeout.saturating_add(extra);
        let attempts = match idempotence {
            Idempotence::Safe => self.policy.retry.max_attempts.max(1),
            Idempotence::Unsafe => 1,
        };
        let mut attempt = 1;
        loop {
            let request = self.request(message.clone(), Some(deadline));
            // The server honours grpc-timeout; the local timer also covers a
            // server that never answers.
            let outcome = match tokio::time::timeout(deadline, send(self.channel(), request)).await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "no answer within {deadline:?}"
                ))),
            };
            match outcome {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if attempt < attempts && retryable(&status) => {
                    tokio::time::sleep(self.policy.retry.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(status) => return Err(status.into()),
            }
        }
    }
}

/// Makes one unary call of a generated client (`Client::method`) through a
/// [`Connection`]'s policy; `wait = d` adds time a call may spend waiting on the
/// server (a long-polling claim) to its deadline.
macro_rules! unary {
    ($connection:expr, $idempotence:expr, $client:ident :: $method:ident, $message:expr) => {
        unary!(
            $connection,
            $idempotence,
            $client::$method,
            $message,
            wait = std::time::Duration::ZERO
        )
    };
    ($connection:expr, $idempotence:expr, $client:ident :: $method:ident, $message:expr, wait = $wait:expr) => {
        $connection
            .unary(
                $idempotence,
                $wait,
                $message,
                |channel, request| async move { $client::new(channel).$method(request).await },
            )
            .await
    };
}
pub(crate) use unary;

/// Failures after which nothing was done, or after which a safe call may be made
/// again.
fn retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Aborted)
        || crate::error::transport_failure(status)
}

/// Configures a connection to a jobq server: see [`JobQueueClient::builder`].
///
/// ```no_run
/// # async fn example() -> Result<(), jobq_client::Error> {
/// use std::time::Duration;
/// let client = jobq_client::JobQueueClient::builder("https://jobq.internal:50051")
///     .api_key(std::env::var("JOBQ_API_KEY").unwrap_or_default())
///     .timeout(Duration::from_secs(10))
///     .connect_timeout(Duration::from_secs(3))
///     .build()
///     .await?;
/// // The same connection, for the other services:
/// let worker = client.worker();
/// let admin = client.admin();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    api_key: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    ca_certificate: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    tls_domain: Option<String>,
}

impl ClientBuilder {
    pub(crate) fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            retry: RetryPolicy::default(),
            ca_certificate: None,
            identity: None,
            tls_domain: None,
        }
    }

    /// The API key, sent on every call as `authorization: Bearer <key>`. An empty
    /// key sends none.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.api_key = (!key.is_empty()).then_some(key);
        self
    }

    /// Deadline of each unary call attempt (default 30 s). A long-polling claim
    /// gets its wait on top. Streams have none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Limit on establishing the connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How safe calls are retried (default [`RetryPolicy::default`]).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Trusts this CA (PEM) for an `https` URL, in addition to the system's roots.
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM) to a server that asks for
    /// one (mutual TLS).
    pub fn identity(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// The name to verify the server's certificate against, when it is not the
    /// URL's host.
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.tls_domain = Some(domain.into());
        self
    }

    /// Connects now.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for a URL that is not `http://` or `https://`
    /// host:port, or an API key that cannot be sent as a header;
    /// [`Error::Connect`] when the server cannot be reached in time.
    pub async fn build(self) -> Result<JobQueueClient, Error> {
        let (endpoint, policy) = self.prepare()?;
        let channel = endpoint.connect().await?;
        Ok(JobQueueClient::from_connection(Connection {
            channel,
            policy,
        }))
    }

    /// A client that connects on its first call (and again whenever the
    /// connection is lost), for processes that must start while the server is down.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] as for [`ClientBuilder::build`].
    pub fn build_lazy(self) -> Result<JobQueueClient, Error> {
        let (endpoint, policy) = self.prepare()?;
        let channel = endpoint.connect_lazy();
        Ok(JobQueueClient::from_connection(Connection {
            channel,
            policy,
        }))
    }

    fn prepare(self) -> Result<(Endpoint, Arc<CallPolicy>), Error> {
        let Self {
            url,
            api_key,
            timeout,
            connect_timeout,
            retry,
            ca_certificate,
            identity,
            tls_domain,
        } = self;
        let https = url.starts_with("https://");
        if !https && !url.starts_with("http://") {
            return Err(Error::InvalidUrl(format!(
                "`{url}` must start with http:// or https://"
            )));
        }
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::InvalidUrl(format!("`{url}`: {e}")))?
            .connect_timeout(connect_timeout)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .user_agent(concat!("jobq-client/", env!("CARGO_PKG_VERSION")))
            .map_err(|e| Error::InvalidUrl(e.to_string()))?;
        if https {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(pem) = ca_certificate {
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some((certificate, key)) = identity {
                tls = tls.identity(Identity::from_pem(certificate, key));
            }
            if let Some(domain) = tls_domain {
                tls = tls.domain_name(domain);
            }
            endpoint = endpoint.tls_config(tls)?;
        } else if ca_certificate.is_some() || identity.is_some() {
            return Err(Error::InvalidUrl(format!(
                "`{url}` is plaintext: a CA or client certificate needs an https:// URL"
            )));
        }
        let authorization = api_key
            .map(|key| {
                MetadataValue::try_from(format!("Bearer {key}"))
                    .map_err(|_| Error::InvalidUrl("the API key is not printable ASCII".into()))
            })
            .transpose()?;
        Ok((
            endpoint,
            Arc::new(CallPolicy {
                authorization,
                timeout,
                retry,
            }),
        ))
    }
}

/// The ways into one connection.
impl JobQueueClient {
    /// The admin calls, over this client's connection and key.
    pub fn admin(&self) -> AdminClient {
        AdminClient::from_connection(self.connection().clone())
    }

    /// The worker calls, over this client's connection and key.
    pub fn worker(&self) -> WorkerClient {
        WorkerClient::from_connection(self.connection().clone())
    }

    /// This client with another deadline for each unary call, over the same
    /// connection: for one call that must answer sooner (or may take longer).
    ///
    /// ```no_run
    /// # async fn example(client: jobq_client::JobQueueClient, user: uuid::Uuid, job: uuid::Uuid) -> Result<(), jobq_client::Error> {
    /// use std::time::Duration;
    /// let job = client.with_timeout(Duration::from_millis(500)).get_job(user, job).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self::from_connection(self.connection().with_timeout(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_below_nominal() {
        let policy = RetryPolicy::default();
        for (retry, nominal) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (5, 1600),
            (6, 2000),
            (30, 2000),
        ] {
            let nominal = Duration::from_millis(nominal);
            let delays: Vec<_> = (0..50).map(|_| policy.backoff(retry)).collect();
            assert!(
                delays.iter().all(|d| *d >= nominal / 2 && *d <= nominal),
                "{delays:?}"
            );
            // Jittered: fifty draws are not all the same.
            assert!(delays.iter().any(|d| *d != delays[0]), "{delays:?}");
        }
    }

    #[test]
    fn retries_only_what_did_nothing_or_is_safe() {
        assert!(retryable(&Status::unavailable("down")));
        assert!(retryable(&Status::aborted("concurrent change")));
        for code in [
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Internal,
        ] {
            assert!(!retryable(&Status::new(code, "")));
        }
    }

    #[tokio::test]
    async fn sends_the_key_and_deadline_on_every_request() {
        let (endpoint, policy) = ClientBuilder::new("http://127.0.0.1:1")
            .api_key("k3y")
            .timeout(Duration::from_secs(7))
            .prepare()
            .unwrap();
        let connection = Connection {
            channel: endpoint.connect_lazy(),
            policy,
        };
        let request = connection.request((), Some(Duration::from_secs(7)));
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer k3y"
        );
        assert_eq!(request.metadata().get("grpc-timeout").unwrap(), "7000000u");
    }

    #[test]
    fn refuses_urls_it_cannot_use() {
        for url in ["127.0.0.1:50051", "ftp://x", ""] {
            assert!(
                matches!(ClientBuilder::new(url).prepare(), Err(Error::InvalidUrl(_))),
                "{url}"
            );
        }
        assert!(matches!(
            ClientBuilder::new("http://x:1")
                .ca_certificate("pem")
                .prepare(),
            Err(Error::InvalidUrl(_))
        ));
        assert!(
            ClientBuilder::new("https://jobq.internal:443")
                .prepare()
                .is_ok()
        );
    }
}
