//! The end-to-end harness: a real jobq server on 127.0.0.1:0 over its own fresh
//! Postgres database, reached over real gRPC.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jobq_client::JobQueueClient;
use jobq_proto::pb;
use jobq_proto::pb::job_queue_service_client::JobQueueServiceClient;
use jobq_server::config::AuthMode;
use jobq_server::handoff::Handoff;
use jobq_server::plans::Plans;
use jobq_server::{App, Config};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor, PgPool};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use uuid::Uuid;

/// The server every test database is created on; `JOBQ_TEST_DATABASE_URL` names
/// another (any database on it: tests only use it to create and drop their own).
pub fn admin_url() -> String {
    std::env::var("JOBQ_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database of one test, named `jobq_test_<uuid>`, dropped by [`TestServer::stop`].
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// A name and URL for a database that does not exist yet.
    pub fn new() -> Self {
        let name = format!("jobq_test_{}", Uuid::new_v4().simple());
        let options = PgConnectOptions::from_str(&admin_url())
            .expect("admin URL parses")
            .database(&name);
        let url = options.to_url_lossy().to_string();
        Self { name, url }
    }

    /// Creates the database (for tests that prepare it before the server starts).
    pub async fn create(&self) {
        admin_pool()
            .await
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE \"{}\"",
                self.name
            )))
            .await
            .expect("create test database");
    }

    /// A direct pool to the database, for preparing and checking rows.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.url)
            .await
            .expect("connect to test database")
    }

    /// Drops the database, closing whatever is still connected.
    pub async fn drop_database(&self) {
        admin_pool()
            .await
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            )))
            .await
            .expect("drop test database");
    }
}

pub async fn admin_pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_url())
        .await
        .expect("connect to the admin database")
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub db: TestDb,
    pub pool: PgPool,
    config: Config,
    channel: Channel,
    handoff: Handoff,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server over a database it creates itself, whose default plan has no
    /// limits (the tests of limits use [`TestServer::start_with_plans`]).
    pub async fn start() -> Self {
        Self::start_on(TestDb::new()).await
    }

    /// A server over a fresh database, judging limits by `plans`.
    pub async fn start_with_plans(plans: Plans) -> Self {
        Self::start_with(TestDb::new(), plans).await
    }

    /// A server over a fresh database with the default plan unlimited and
    /// `configure` applied to its configuration.
    pub async fn start_configured(configure: impl FnOnce(&mut Config)) -> Self {
        let db = TestDb::new();
        let mut config = Self::config(&db, unlimited_plans());
        configure(&mut config);
        Self::start_with_config(db, config).await
    }

    /// A server over `db` (created by the server if it does not exist yet), whose
    /// default plan has no limits.
    pub async fn start_on(db: TestDb) -> Self {
        Self::start_with(db, unlimited_plans()).await
    }

    /// A server over `db`, judging limits by `plans`.
    pub async fn start_with(db: TestDb, plans: Plans) -> Self {
        let config = Self::config(&db, plans);
        Self::start_with_config(db, config).await
    }

    /// A server for tests of parked claims: the claim safety poll, health
    /// pings and lease expiry a minute apart, so that no statement but the
    /// test's own claims runs meanwhile (see [`TestServer::claim_looked`]).
    pub async fn start_for_parked_claims() -> Self {
        Self::start_configured(|config| {
            config.claim_poll_interval = Duration::from_secs(60);
            config.health_interval = Duration::from_secs(60);
            config.reaper_interval = Duration::from_secs(60);
        })
        .await
    }

    /// Waits until exactly `parked` ClaimJobs calls wait in the server, each
    /// after a claim that found nothing, for a submission to hand them its jobs
    /// (see `jobq_server::handoff`).
    pub async fn claims_parked(&self, parked: usize) {
        let mut count = self.handoff.parked();
        tokio::time::timeout(Duration::from_secs(10), count.wait_for(|n| *n == parked))
            .await
            .unwrap_or_else(|_| panic!("parked claims did not reach {parked} within 10 s"))
            .expect("the server is running");
    }

    /// Waits until the server has finished a claim statement that started after
    /// `after` (any, for `None`), and returns when that one started (as text,
    /// for the next call). A claim that found nothing has then looked at the
    /// queue and parked. Read from `pg_stat_activity`, where each backend shows
    /// its last statement and whether it has finished; the server's other
    /// periodic statements should be far apart (see
    /// [`TestServer::start_for_parked_claims`]) so that none replaces it first.
    pub async fn claim_looked(&self, after: Option<&str>) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let looked: Option<String> = sqlx::query_scalar(
                "SELECT max(query_start)::text FROM pg_stat_activity
                 WHERE datname = $1 AND application_name = 'jobq-server' AND state = 'idle'
                   AND query = $3
                   AND ($2::timestamptz IS NULL OR query_start > $2::timestamptz)",
            )
            .bind(&self.db.name)
            .bind(after)
            .bind(jobq_server::storage::leases::CLAIM)
            .fetch_one(&self.pool)
            .await
            .expect("pg_stat_activity");
            if let Some(looked) = looked {
                return looked;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no claim looked at the queue within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The tests' configuration: quick health checks and lease expiry.
    fn config(db: &TestDb, plans: Plans) -> Config {
        Config {
            health_interval: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(5),
            plans: Arc::new(plans),
            reaper_interval: Duration::from_millis(200),
            // The auth tests turn it on; the rest test other things on loopback.
            auth: AuthMode::Disabled,
            ..Config::new(db.url.clone())
        }
    }

    /// A server over `db` with `config`.
    pub async fn start_with_config(db: TestDb, config: Config) -> Self {
        Self::start_at(db, config, "127.0.0.1:0".parse().expect("an address")).await
    }

    /// Stops this server (keeping its database) and starts another with the same
    /// configuration on the same address, as an operator's restart would.
    pub async fn restart(mut self) -> Self {
        self.shut_down().await;
        self.pool.close().await;
        Self::start_at(self.db.clone(), self.config.clone(), self.addr).await
    }

    async fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task ended cleanly");
        }
    }

    async fn start_at(db: TestDb, config: Config, addr: SocketAddr) -> Self {
        // JOBQ_TEST_LOG=debug (any filter) shows the server's logs while debugging a test.
        if let Ok(filter) = std::env::var("JOBQ_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let app = App::prepare(config.clone()).await.expect("server starts");
        let handoff = app.handoff().clone();
        let listener = TcpListener::bind(addr)
            .await
            .expect("bind the server's address");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("server ran");
        });
        let channel = harness_endpoint(&config, addr)
            .connect()
            .await
            .expect("connect to the test server");
        let pool = db.pool().await;
        Self {
            addr,
            db,
            pool,
            config,
            channel,
            handoff,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:<port>`, or `https://` when the server serves TLS.
    pub fn url(&self) -> String {
        server_url(&self.config, self.addr)
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The generated client, for checking raw statuses and details.
    pub fn raw(&self) -> JobQueueServiceClient<Channel> {
        JobQueueServiceClient::new(self.channel())
    }

    /// The job SubmitJob answered for `user`'s photo `n` (see [`submission`]).
    pub async fn submit(&self, user: Uuid, n: u64) -> pb::Job {
        self.raw()
            .submit_job(submission(user, n))
            .await
            .expect("submitted")
            .into_inner()
            .job
            .expect("the answer carries the job")
    }

    /// The generated client on a connection of its own.
    pub async fn raw_on_new_connection(&self) -> JobQueueServiceClient<Channel> {
        let channel = harness_endpoint(&self.config, self.addr)
            .connect()
            .await
            .expect("connect");
        JobQueueServiceClient::new(channel)
    }

    /// The published client crate.
    pub fn client(&self) -> JobQueueClient {
        JobQueueClient::from_channel(self.channel())
    }

    /// Rows in the job table.
    pub async fn job_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM menu_extraction_jobs")
            .fetch_one(&self.pool)
            .await
            .expect("count jobs")
    }

    /// Shuts the server down, waits for it, and drops its database.
    pub async fn stop(mut self) {
        self.shut_down().await;
        self.pool.close().await;
        self.db.drop_database().await;
    }
}

fn server_url(config: &Config, addr: SocketAddr) -> String {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// The harness's own way in: plaintext, or TLS trusting the test CA (with the
/// test client certificate when the server asks for one).
fn harness_endpoint(config: &Config, addr: SocketAddr) -> tonic::transport::Endpoint {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let endpoint = Channel::from_shared(server_url(config, addr)).expect("valid URL");
    let Some(tls) = &config.tls else {
        return endpoint;
    };
    let mut client =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(test_tls_file("ca.pem")));
    if tls.client_ca.is_some() {
        client = client.identity(Identity::from_pem(
            test_tls_file("client.pem"),
            test_tls_file("client.key"),
        ));
    }
    endpoint.tls_config(client).expect("TLS configuration")
}

/// A file of tests/tls (test-only certificates and keys).
pub fn test_tls_file(name: &str) -> Vec<u8> {
    // This module is compiled into the root package's tests and, by path, into
    // the server's and client's: the files are beside it either way.
    let package = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = [package.join("tests/tls"), package.join("../tests/tls")]
        .into_iter()
        .find(|dir| dir.is_dir())
        .expect("tests/tls is in the workspace")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The built-in plans, but the default plan (free) has no limits.
pub fn unlimited_plans() -> Plans {
    Plans::parse("[plans.free]\nmonthly_jobs = -1\nhourly_jobs = -1\n").expect("valid plans")
}

/// A distinct SHA-256 hex for test photo `n`.
pub fn sha(n: u64) -> String {
    jobq_client::sha256_hex(n.to_be_bytes())
}

/// A valid submission for `user`, photo `n`.
pub fn submission(user: Uuid, n: u64) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        user_id: user.to_string(),
        image_url: format!("https://storage.example/menus/{n}.jpg"),
        image_sha256: sha(n),
        ..Default::default()
    }
}

/// The `ErrorInfo` of a refusal: its reason and metadata (panics without one).
pub fn error_info(status: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    use tonic_types::StatusExt;
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "jobq");
    (info.reason.clone(), info.metadata.clone())
}

/// Inserts a job for `user` directly, as if submitted at `created_at`.
pub async fn insert_job_at(
    pool: &PgPool,
    user: Uuid,
    created_at: chrono::DateTime<chrono::Utc>,
    n: u64,
) {
    sqlx::query(
        "INSERT INTO menu_extraction_jobs (user_id, image_url, image_hash, status, created_at)
         VALUES ($1, $2, $3, 'completed', $4)",
    )
    .bind(user)
    .bind(format!("https://storage.example/old/{n}.jpg"))
    .bind(sha(1_000_000 + n))
    .bind(created_at)
    .execute(pool)
    .await
    .expect("insert a past job");
}

/// Sets a job's status (and retry count) directly, as a worker or an old system would have.
pub async fn set_status(pool: &PgPool, job_id: &str, status: &str, retry_count: i32) {
    sqlx::query(
        "UPDATE menu_extraction_jobs SET status = $1, retry_count = $2 WHERE id = $3::uuid",
    )
    .bind(status)
    .bind(retry_count)
    .bind(job_id)
    .execute(pool)
    .await
    .expect("set a job's status");
}

/// Clients on connections of their own, after one call each has warmed the
/// server's database pool (so that the calls that follow really overlap).
pub async fn warm_clients(server: &TestServer, n: usize) -> Vec<JobQueueServiceClient<Channel>> {
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(server.raw_on_new_connection().await);
    }
    let warm_up = clients.iter().map(|client| {
        let mut client = client.clone();
        async move {
            client
                .check_quota(pb::CheckQuotaRequest {
                    user_id: Uuid::new_v4().to_string(),
                })
                .await
        }
    });
    for answer in futures::future::join_all(warm_up).await {
        answer.expect("warm-up call");
    }
    clients
}

/// Runs `call` on every client at the same instant; returns the answers in order.
pub async fn all_at_once<T, F, Fut>(clients: Vec<JobQueueServiceClient<Channel>>, call: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize, JobQueueServiceClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let barrier = barrier.clone();
            let call = call(i, client);
            tokio::spawn(async move {
                barrier.wait().await;
                call.await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task"));
    }
    answers
}

/// A WatchJobs stream and what it has shown so far.
pub struct Watcher {
    stream: tonic::Streaming<pb::WatchJobsResponse>,
    /// Each job's latest state seen.
    pub view: std::collections::HashMap<String, pb::Job>,
    /// Each job's versions, in the order they arrived.
    pub versions: std::collections::HashMap<String, Vec<i64>>,
    /// Every event, in order.
    pub events: Vec<pb::WatchJobsResponse>,
    /// The last non-empty resume token.
    pub token: String,
}

impl Watcher {
    /// Opens a stream with `request`.
    pub async fn open(
        client: &mut JobQueueServiceClient<Channel>,
        request: pb::WatchJobsRequest,
    ) -> Self {
        let stream = client
            .watch_jobs(request)
            .await
            .expect("the stream opens")
            .into_inner();
        Self {
            stream,
            view: Default::default(),
            versions: Default::default(),
            events: Vec::new(),
            token: String::new(),
        }
    }

    /// A stream of `user`'s jobs on `server`, on a client of its own.
    pub async fn of_user(server: &TestServer, user: Uuid) -> Self {
        let request = pb::WatchJobsRequest {
            user_id: user.to_string(),
            ..Default::default()
        };
        Self::open(&mut server.raw(), request).await
    }

    /// The next event (panics after 30 s without one: a stuck stream is a failure).
    pub async fn next(&mut self) -> pb::WatchJobsResponse {
        let message = tokio::time::timeout(Duration::from_secs(30), self.stream.message())
            .await
            .expect("an event within 30 s")
            .expect("the stream is healthy")
            .expect("the stream is open");
        let job = message.job.clone().expect("events carry a job");
        let versions = self.versions.entry(job.id.clone()).or_default();
        if let Some(last) = versions.last() {
            assert!(
                job.version > *last,
                "versions of {} must increase: {last} then {}",
                job.id,
                job.version
            );
        }
        versions.push(job.version);
        self.view.insert(job.id.clone(), job);
        if !message.resume_token.is_empty() {
            self.token = message.resume_token.clone();
        }
        self.events.push(message.clone());
        message
    }

    /// Reads until `done` holds for the view.
    pub async fn until(
        &mut self,
        done: impl Fn(&std::collections::HashMap<String, pb::Job>) -> bool,
    ) {
        while !done(&self.view) {
            self.next().await;
        }
    }

    /// Reads until every job of `table` (id -> version) is seen at its version.
    pub async fn until_matches(&mut self, table: &std::collections::HashMap<String, i64>) {
        self.until(|view| {
            table
                .iter()
                .all(|(id, version)| view.get(id).is_some_and(|job| job.version == *version))
        })
        .await;
    }

    /// The next status the stream ends with.
    pub async fn end(&mut self) -> tonic::Status {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), self.stream.message())
                .await
                .expect("an end within 30 s")
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    }
}

/// Every job's version in the table (optionally one user's).
pub async fn table_versions(
    pool: &PgPool,
    user: Option<Uuid>,
) -> std::collections::HashMap<String, i64> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT id, version FROM menu_extraction_jobs WHERE $1::uuid IS NULL OR user_id = $1",
    )
    .bind(user)
    .fetch_all(pool)
    .await
    .expect("read versions");
    rows.into_iter()
        .map(|(id, version)| (id.to_string(), version))
        .collect()
}
