//! Authentication and authorization end to end: every RPC against every kind of
//! caller, with the exact code each gets; revocation on the next call; what the
//! database keeps of a key.

mod common;

use common::{TestServer, submission};
use jobq_proto::pb;
use jobq_proto::pb::admin_service_client::AdminServiceClient;
use jobq_proto::pb::job_queue_service_client::JobQueueServiceClient;
use jobq_proto::pb::worker_service_client::WorkerServiceClient;
use jobq_server::auth::{self, Role};
use jobq_server::config::AuthMode;
use jobq_server::storage::Storage;
use tonic::transport::Channel;
use tonic::{Code, Request};
use uuid::Uuid;

/// A server that requires keys, and an admin key made the way an operator makes
/// the first one (`jobq-server keys create`, straight to the database).
async fn server_with_admin_key() -> (TestServer, String) {
    let server = TestServer::start_configured(|config| config.auth = AuthMode::Required).await;
    let storage = Storage::open(&server.db.url, 1).await.unwrap();
    let (_, key) = auth::create_key(&storage, "bootstrap", Some(Role::Admin), None)
        .await
        .unwrap();
    storage.close().await;
    (server, key)
}

/// `message` with `authorization` set to exactly `header` (if any).
fn with_auth<T>(message: T, header: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(header) = header {
        request
            .metadata_mut()
            .insert("authorization", header.parse().expect("ASCII header"));
    }
    request
}

/// Submits `user`'s photo `n` with the authorization header `header`;
/// returns the job's id.
async fn submit_as(channel: &Channel, header: &str, user: Uuid, n: u64) -> String {
    JobQueueServiceClient::new(channel.clone())
        .submit_job(with_auth(submission(user, n), Some(header)))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

async fn create_key(
    channel: &Channel,
    admin_key: &str,
    role: pb::ApiKeyRole,
    user: Option<Uuid>,
) -> (String, String) {
    let response = AdminServiceClient::new(channel.clone())
        .create_api_key(with_auth(
            pb::CreateApiKeyRequest {
                name: format!("{role:?} key"),
                role: role.into(),
                user_id: user.map(|u| u.to_string()).unwrap_or_default(),
            },
            Some(&bearer(admin_key)),
        ))
        .await
        .unwrap()
        .into_inner();
    (response.api_key.unwrap().id, response.secret)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    Jobs,
    Worker,
    Admin,
}

#[derive(Debug, Clone, Copy)]
enum Rpc {
    SubmitJob,
    GetJob,
    ListJobs,
    RetryJob,
    CheckQuota,
    CancelJob,
    WatchJobs,
    ClaimJobs,
    Heartbeat,
    CompleteJob,
    FailJob,
    SetUserPlan,
    GetUserPlan,
    CreateApiKey,
    ListApiKeys,
    RevokeApiKey,
}

const RPCS: [Rpc; 16] = [
    Rpc::SubmitJob,
    Rpc::GetJob,
    Rpc::ListJobs,
    Rpc::RetryJob,
    Rpc::CheckQuota,
    Rpc::CancelJob,
    Rpc::WatchJobs,
    Rpc::ClaimJobs,
    Rpc::Heartbeat,
    Rpc::CompleteJob,
    Rpc::FailJob,
    Rpc::SetUserPlan,
    Rpc::GetUserPlan,
    Rpc::CreateApiKey,
    Rpc::ListApiKeys,
    Rpc::RevokeApiKey,
];

impl Rpc {
    fn service(self) -> Service {
        match self {
            Self::SubmitJob
            | Self::GetJob
            | Self::ListJobs
            | Self::RetryJob
            | Self::CheckQuota
            | Self::CancelJob
            | Self::WatchJobs => Service::Jobs,
            Self::ClaimJobs | Self::Heartbeat | Self::CompleteJob | Self::FailJob => {
                Service::Worker
            }
            _ => Service::Admin,
        }
    }
}

/// What the right caller's calls act on: jobs of `user` in each state a call
/// needs, leases of two claimed jobs, a key to revoke.
struct World {
    channel: Channel,
    queued: String,
    failed: String,
    to_cancel: String,
    lease_to_renew_and_complete: (String, String),
    lease_to_fail: (String, String),
    key_to_revoke: String,
}

impl World {
    /// Makes one call of `rpc` with `header`, naming `user`; returns its code.
    async fn call(&self, rpc: Rpc, header: Option<&str>, user: Uuid) -> Code {
        let mut jobs = JobQueueServiceClient::new(self.channel.clone());
        let mut worker = WorkerServiceClient::new(self.channel.clone());
        let mut admin = AdminServiceClient::new(self.channel.clone());
        let user_id = user.to_string();
        let code = |result: Result<(), tonic::Status>| result.err().map_or(Code::Ok, |s| s.code());
        match rpc {
            Rpc::SubmitJob => code(
                jobs.submit_job(with_auth(submission(user, 900), header))
                    .await
                    .map(drop),
            ),
            Rpc::GetJob => code(
                jobs.get_job(with_auth(
                    pb::GetJobRequest {
                        job_id: self.queued.clone(),
                        user_id,
                    },
                    header,
                ))
                .await
                .map(drop),
            ),
            Rpc::ListJobs => code(
                jobs.list_jobs(with_auth(
                    pb::ListJobsRequest {
                        user_id,
                        ..Default::default()
                    },
                    header,
                ))
                .await
                .map(drop),
            ),
            Rpc::RetryJob => code(
                jobs.retry_job(with_auth(
                    pb::RetryJobRequest {
                        job_id: self.failed.clone(),
                        user_id,
                    },
                    header,
                ))
                .await
                .map(drop),
            ),
            Rpc::CheckQuota => code(
                jobs.check_quota(with_auth(pb::CheckQuotaRequest { user_id }, header))
                    .await
                    .map(drop),
            ),
            Rpc::CancelJob => code(
                jobs.cancel_job(with_auth(
                    pb::CancelJobRequest {
                        job_id: self.to_cancel.clone(),
                        user_id,
                    },
                    header,
                ))
                .await
                .map(drop),
            ),
            Rpc::WatchJobs => code(
                jobs.watch_jobs(with_auth(
                    pb::WatchJobsRequest {
                        user_id,
                        ..Default::default()
                    },
                    header,
                ))
                .await
                .map(drop),
            ),
            Rpc::ClaimJobs => code(
                worker
                    .claim_jobs(with_auth(
                        pb::ClaimJobsRequest {
                            worker_id: "matrix".into(),
                            max_jobs: 1,
                            ..Default::default()
                        },
                        header,
                    ))
                    .await
                    .map(drop),
            ),
            Rpc::Heartbeat => code(
                worker
                    .heartbeat(with_auth(
                        pb::HeartbeatRequest {
                            job_id: self.lease_to_renew_and_complete.0.clone(),
                            lease_id: self.lease_to_renew_and_complete.1.clone(),
                            extend_by: None,
                        },
                        header,
                    ))
                    .await
                    .map(drop),
            ),
            Rpc::CompleteJob => code(
                worker
                    .complete_job(with_auth(
                        pb::CompleteJobRequest {
                            job_id: self.lease_to_renew_and_complete.0.clone(),
                            lease_id: self.lease_to_renew_and_complete.1.clone(),
                            ..Default::default()
                        },
                        header,
                    ))
                    .await
                    .map(drop),
            ),
            Rpc::FailJob => code(
                worker
                    .fail_job(with_auth(
                        pb::FailJobRequest {
                            job_id: self.lease_to_fail.0.clone(),
                            lease_id: self.lease_to_fail.1.clone(),
                            error_message: "unreadable photo".into(),
                        },
                        header,
                    ))
                    .await
                    .map(drop),
            ),
            Rpc::SetUserPlan => code(
                admin
                    .set_user_plan(with_auth(
                        pb::SetUserPlanRequest {
                            user_id,
                            plan: "premium".into(),
                        },
                        header,
                    ))
                    .await
                    .map(drop),
            ),
            Rpc::GetUserPlan => code(
                admin
                    .get_user_plan(with_auth(pb::GetUserPlanRequest { user_id }, header))
                    .await
                    .map(drop),
            ),
            Rpc::CreateApiKey => code(
                admin
                    .create_api_key(with_auth(
                        pb::CreateApiKeyRequest {
                            name: "made in the matrix".into(),
                            role: pb::ApiKeyRole::Worker.into(),
                            user_id: String::new(),
                        },
                        header,
                    ))
                    .await
                    .map(drop),
            ),
            Rpc::ListApiKeys => code(
                admin
                    .list_api_keys(with_auth(pb::ListApiKeysRequest::default(), header))
                    .await
                    .map(drop),
            ),
            Rpc::RevokeApiKey => code(
                admin
                    .revoke_api_key(with_auth(
                        pb::RevokeApiKeyRequest {
                            id: self.key_to_revoke.clone(),
                        },
                        header,
                    ))
                    .await
                    .map(drop),
            ),
        }
    }
}

#[tokio::test]
async fn every_rpc_against_every_kind_of_caller() {
    let (server, admin_key) = server_with_admin_key().await;
    let channel = server.channel();
    let admin = bearer(&admin_key);
    let user = Uuid::new_v4();
    let other_user = Uuid::new_v4();
    let (_, service_key) = create_key(&channel, &admin_key, pb::ApiKeyRole::Service, None).await;
    let (_, user_key) = create_key(&channel, &admin_key, pb::ApiKeyRole::User, Some(user)).await;
    let (_, worker_key) = create_key(&channel, &admin_key, pb::ApiKeyRole::Worker, None).await;
    let (revoked_id, revoked_key) =
        create_key(&channel, &admin_key, pb::ApiKeyRole::Admin, None).await;
    AdminServiceClient::new(channel.clone())
        .revoke_api_key(with_auth(
            pb::RevokeApiKeyRequest { id: revoked_id },
            Some(&admin),
        ))
        .await
        .unwrap();
    let (key_to_revoke, _) = create_key(&channel, &admin_key, pb::ApiKeyRole::Worker, None).await;

    // The jobs the right callers act on, made with the service key.
    let service = bearer(&service_key);
    let submit = |n: u64| submit_as(&channel, &service, user, n);
    let claimed_first = [submit(1).await, submit(2).await, submit(3).await];
    let queued = submit(4).await;
    let to_cancel = submit(5).await;
    let mut worker = WorkerServiceClient::new(channel.clone());
    let claims = worker
        .claim_jobs(with_auth(
            pb::ClaimJobsRequest {
                worker_id: "setup".into(),
                max_jobs: 3,
                lease_duration: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 0,
                }),
                wait: None,
            },
            Some(&bearer(&worker_key)),
        ))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let lease = |i: usize| {
        (
            claims[i].job.as_ref().unwrap().id.clone(),
            claims[i].lease_id.clone(),
        )
    };
    assert_eq!(
        claims
            .iter()
            .map(|c| c.job.as_ref().unwrap().id.clone())
            .collect::<Vec<_>>(),
        claimed_first
    );
    // The third claimed job fails now: RetryJob's subject.
    worker
        .fail_job(with_auth(
            pb::FailJobRequest {
                job_id: lease(2).0,
                lease_id: lease(2).1,
                error_message: "blurry".into(),
            },
            Some(&bearer(&worker_key)),
        ))
        .await
        .unwrap();
    let world = World {
        channel: channel.clone(),
        queued: queued.clone(),
        failed: lease(2).0,
        to_cancel,
        lease_to_renew_and_complete: lease(0),
        lease_to_fail: lease(1),
        key_to_revoke,
    };

    let callers: [(&str, Option<String>, Uuid); 5] = [
        ("no key", None, user),
        ("malformed header", Some(format!("Basic {admin_key}")), user),
        ("revoked key", Some(bearer(&revoked_key)), user),
        (
            "user key for another user",
            Some(bearer(&user_key)),
            other_user,
        ),
        (
            "garbage key",
            Some(bearer(
                "jobq_0123456789abcdef0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            )),
            user,
        ),
    ];
    let mut table = Vec::new();
    for rpc in RPCS {
        for (caller, header, acting_for) in &callers {
            let got = world.call(rpc, header.as_deref(), *acting_for).await;
            let expected = match *caller {
                "user key for another user" => Code::PermissionDenied,
                _ => Code::Unauthenticated,
            };
            table.push((rpc, *caller, got, expected));
        }
        let wrong_role = match rpc.service() {
            Service::Jobs => &worker_key,
            Service::Worker => &service_key,
            Service::Admin => &user_key,
        };
        let got = world.call(rpc, Some(&bearer(wrong_role)), user).await;
        table.push((rpc, "wrong role", got, Code::PermissionDenied));
    }
    // The right callers last, in the order the world was built for (Heartbeat
    // before CompleteJob under the same lease).
    for rpc in RPCS {
        let right = match rpc.service() {
            Service::Jobs => &user_key,
            Service::Worker => &worker_key,
            Service::Admin => &admin_key,
        };
        let got = world.call(rpc, Some(&bearer(right)), user).await;
        table.push((rpc, "right key", got, Code::Ok));
    }
    let wrong: Vec<_> = table
        .iter()
        .filter(|(_, _, got, expected)| got != expected)
        .collect();
    assert!(wrong.is_empty(), "calls with the wrong code: {wrong:#?}");
    assert_eq!(table.len(), 16 * 7);

    // A service key may act for any user and watch everyone; a user key may not.
    assert_eq!(
        world
            .call(Rpc::CheckQuota, Some(&service), other_user)
            .await,
        Code::Ok
    );
    let all_users = |key: &str| {
        let mut jobs = JobQueueServiceClient::new(channel.clone());
        let request = with_auth(pb::WatchJobsRequest::default(), Some(&bearer(key)));
        async move {
            jobs.watch_jobs(request)
                .await
                .err()
                .map_or(Code::Ok, |s| s.code())
        }
    };
    assert_eq!(all_users(&service_key).await, Code::Ok);
    assert_eq!(all_users(&user_key).await, Code::PermissionDenied);
    // Another user's job stays NOT_FOUND for a user key acting for itself.
    let theirs = JobQueueServiceClient::new(channel.clone())
        .submit_job(with_auth(submission(other_user, 1), Some(&service)))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    let status = JobQueueServiceClient::new(channel.clone())
        .get_job(with_auth(
            pb::GetJobRequest {
                job_id: theirs,
                user_id: user.to_string(),
            },
            Some(&bearer(&user_key)),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    // Health needs no key.
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    server.stop().await;
}

#[tokio::test]
async fn a_revoked_key_stops_working_on_its_next_call() {
    let (server, admin_key) = server_with_admin_key().await;
    let channel = server.channel();
    let (id, key) = create_key(&channel, &admin_key, pb::ApiKeyRole::Service, None).await;
    let mut jobs = JobQueueServiceClient::new(channel.clone());
    let quota = |key: &str| {
        with_auth(
            pb::CheckQuotaRequest {
                user_id: Uuid::new_v4().to_string(),
            },
            Some(&bearer(key)),
        )
    };
    jobs.check_quota(quota(&key)).await.unwrap();

    let revoked = AdminServiceClient::new(channel.clone())
        .revoke_api_key(with_auth(
            pb::RevokeApiKeyRequest { id: id.clone() },
            Some(&bearer(&admin_key)),
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    let status = jobs.check_quota(quota(&key)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("revoked"), "{}", status.message());

    // Listing: revoked keys only when asked; never a secret.
    let mut admin = AdminServiceClient::new(channel.clone());
    let listed = |include_revoked| {
        with_auth(
            pb::ListApiKeysRequest { include_revoked },
            Some(&bearer(&admin_key)),
        )
    };
    let live = admin
        .list_api_keys(listed(false))
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    assert!(live.iter().all(|k| k.id != id));
    let all = admin
        .list_api_keys(listed(true))
        .await
        .unwrap()
        .into_inner()
        .api_keys;
    let record = all
        .iter()
        .find(|k| k.id == id)
        .expect("the revoked key is listed");
    assert!(record.last_used_at.is_some(), "its use was recorded");
    // Revoking again keeps the first revocation; an unknown id is NOT_FOUND.
    let again = admin
        .revoke_api_key(with_auth(
            pb::RevokeApiKeyRequest { id: id.clone() },
            Some(&bearer(&admin_key)),
        ))
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert_eq!(again.revoked_at, revoked.revoked_at);
    let missing = admin
        .revoke_api_key(with_auth(
            pb::RevokeApiKeyRequest {
                id: Uuid::new_v4().to_string(),
            },
            Some(&bearer(&admin_key)),
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn the_database_holds_the_keys_digest_not_the_key() {
    use sha2::{Digest, Sha256};

    let (server, admin_key) = server_with_admin_key().await;
    let (id, key) = create_key(
        &server.channel(),
        &admin_key,
        pb::ApiKeyRole::User,
        Some(Uuid::new_v4()),
    )
    .await;
    // jobq_<32 hex digits of id>_<secret>; the secret's alphabet has `_` too.
    let secret = &key["jobq_".len() + 32 + 1..];
    assert_eq!(key[5..37], id.replace('-', ""));
    assert!(key.len() >= 5 + 32 + 1 + 43, "{key}");
    let (digest, row): (Vec<u8>, String) = sqlx::query_as(
        "SELECT digest, row_to_json(api_keys)::text FROM api_keys WHERE id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(digest, Sha256::digest(secret.as_bytes()).to_vec());
    assert!(!row.contains(secret), "the secret is stored: {row}");
    // Nothing anywhere in the table holds the secret's text.
    let anywhere: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_keys WHERE row_to_json(api_keys)::text LIKE '%' || $1 || '%'",
    )
    .bind(secret)
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(anywhere, 0);

    // Bad key requests name the field and write nothing.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    let mut admin = AdminServiceClient::new(server.channel());
    for (request, field) in [
        (
            pb::CreateApiKeyRequest {
                name: String::new(),
                role: pb::ApiKeyRole::Admin.into(),
                user_id: String::new(),
            },
            "name",
        ),
        (
            pb::CreateApiKeyRequest {
                name: "x".repeat(101),
                role: pb::ApiKeyRole::Admin.into(),
                user_id: String::new(),
            },
            "name",
        ),
        (
            pb::CreateApiKeyRequest {
                name: "k".into(),
                role: 0,
                user_id: String::new(),
            },
            "role",
        ),
        (
            pb::CreateApiKeyRequest {
                name: "k".into(),
                role: 99,
                user_id: String::new(),
            },
            "role",
        ),
        (
            pb::CreateApiKeyRequest {
                name: "k".into(),
                role: pb::ApiKeyRole::User.into(),
                user_id: String::new(),
            },
            "user_id",
        ),
        (
            pb::CreateApiKeyRequest {
                name: "k".into(),
                role: pb::ApiKeyRole::Worker.into(),
                user_id: Uuid::new_v4().to_string(),
            },
            "user_id",
        ),
        (
            pb::CreateApiKeyRequest {
                name: "k".into(),
                role: pb::ApiKeyRole::User.into(),
                user_id: "me".into(),
            },
            "user_id",
        ),
    ] {
        let status = admin
            .create_api_key(with_auth(request, Some(&bearer(&admin_key))))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(before, after);
    server.stop().await;
}

#[tokio::test]
async fn one_call_records_a_keys_use_and_the_others_do_not_wait_for_it() {
    use futures::StreamExt;
    let (server, admin_key) = server_with_admin_key().await;
    let channel = server.channel();
    let (id, key) = create_key(&channel, &admin_key, pb::ApiKeyRole::Service, None).await;
    let quota = || {
        let mut jobs = JobQueueServiceClient::new(channel.clone());
        let request = with_auth(
            pb::CheckQuotaRequest {
                user_id: Uuid::new_v4().to_string(),
            },
            Some(&bearer(&key)),
        );
        async move { jobs.check_quota(request).await }
    };
    // Another writer holds the key's row (an admin revoking another key, say):
    // recording the key's use has to wait for it.
    let mut holder = server.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM api_keys WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut *holder)
        .await
        .unwrap();
    // The key has never been used, and every call reads it so: one of them
    // records its use and waits for the row; the others go through meanwhile.
    let mut calls: futures::stream::FuturesUnordered<_> =
        (0..6).map(|_| tokio::spawn(quota())).collect();
    for _ in 0..5 {
        tokio::time::timeout(std::time::Duration::from_secs(10), calls.next())
            .await
            .expect("a call waited for another call's record of the key's use")
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let recorder = calls.next();
    tokio::pin!(recorder);
    assert!(
        futures::poll!(recorder.as_mut()).is_pending(),
        "the call recording the key's use waits for the row"
    );
    holder.rollback().await.unwrap();
    recorder.await.unwrap().unwrap().unwrap();
    let used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM api_keys WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&server.pool)
            .await
            .unwrap();
    assert!(used.is_some(), "one call recorded the key's use");
    server.stop().await;
}

/// At its fewest connections (two: one for the claims and key checks that are
/// planned once, one for everything else), the server still checks every
/// call's key and runs a job from submission to completion, with calls at once
/// sharing each connection.
#[tokio::test]
async fn at_its_fewest_connections_the_server_checks_keys_and_runs_jobs_through() {
    let server = TestServer::start_configured(|config| {
        config.auth = AuthMode::Required;
        config.db_max_connections = jobq_server::storage::MIN_CONNECTIONS;
    })
    .await;
    let storage = Storage::open(&server.db.url, 2).await.unwrap();
    let (_, admin_key) = auth::create_key(&storage, "bootstrap", Some(Role::Admin), None)
        .await
        .unwrap();
    storage.close().await;
    let channel = server.channel();
    let (_, service_key) = create_key(&channel, &admin_key, pb::ApiKeyRole::Service, None).await;
    let (_, worker_key) = create_key(&channel, &admin_key, pb::ApiKeyRole::Worker, None).await;
    let (service, worker_auth) = (bearer(&service_key), bearer(&worker_key));

    // Submissions and a parked claim at once: the claim's key check and its
    // claim statement share the one connection planned once.
    let user = Uuid::new_v4();
    let mut worker = WorkerServiceClient::new(channel.clone());
    let claim = worker.claim_jobs(with_auth(
        pb::ClaimJobsRequest {
            worker_id: "fewest".into(),
            max_jobs: 3,
            lease_duration: None,
            wait: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
        },
        Some(&worker_auth),
    ));
    let submitted =
        futures::future::join_all((1..=3).map(|n| submit_as(&channel, &service, user, n)));
    let (claimed, mut submitted) = tokio::join!(claim, submitted);
    let mut claimed = claimed.unwrap().into_inner().jobs;
    // What the parked claim did not get, a second claim does.
    if claimed.len() < submitted.len() {
        let more = WorkerServiceClient::new(channel.clone())
            .claim_jobs(with_auth(
                pb::ClaimJobsRequest {
                    worker_id: "fewest".into(),
                    max_jobs: 3,
                    ..Default::default()
                },
                Some(&worker_auth),
            ))
            .await
            .unwrap()
            .into_inner()
            .jobs;
        claimed.extend(more);
    }
    let mut ids: Vec<String> = claimed
        .iter()
        .map(|c| c.job.as_ref().unwrap().id.clone())
        .collect();
    ids.sort();
    submitted.sort();
    assert_eq!(ids, submitted);

    for c in &claimed {
        let done = worker
            .complete_job(with_auth(
                pb::CompleteJobRequest {
                    job_id: c.job.as_ref().unwrap().id.clone(),
                    lease_id: c.lease_id.clone(),
                    ..Default::default()
                },
                Some(&worker_auth),
            ))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(done.status(), pb::JobStatus::Completed);
    }
    // And a call without a valid key is still refused.
    let refused = worker
        .claim_jobs(with_auth(
            pb::ClaimJobsRequest {
                worker_id: "fewest".into(),
                max_jobs: 1,
                ..Default::default()
            },
            Some(&bearer(&service_key)),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    server.stop().await;
}
