//! Hostile input: SQL meta-characters, NUL bytes, megabyte strings, invalid
//! UTF-8, out-of-range numbers, unknown enum values, oversize and malformed
//! messages, forged tokens. Each gets a clean refusal with the right code, the
//! server keeps serving, and nothing in the database changes.

mod common;

use common::{TestServer, sha, submission};
use jobq_proto::pb;
use jobq_proto::pb::admin_service_client::AdminServiceClient;
use jobq_proto::pb::job_queue_service_client::JobQueueServiceClient;
use jobq_proto::pb::worker_service_client::WorkerServiceClient;
use jobq_server::auth::{self, Role};
use jobq_server::config::AuthMode;
use jobq_server::storage::Storage;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use uuid::Uuid;

const MB: usize = 1 << 20;

/// Everything a hostile call could change, in one comparable value.
async fn database_state(server: &TestServer) -> String {
    sqlx::query_scalar(
        "SELECT concat_ws(' | ',
            (SELECT count(*) || ' jobs, versions to ' || coalesce(max(version), 0)
               || ', changed ' || coalesce(max(updated_at)::text, '-') FROM menu_extraction_jobs),
            (SELECT count(*) || ' keys, ' || count(revoked_at) || ' revoked, last used '
               || coalesce(max(last_used_at)::text, '-') FROM api_keys),
            (SELECT count(*) || ' plans, changed ' || coalesce(max(updated_at)::text, '-') FROM user_plans))",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap()
}

/// Calls of one service with the admin key on every request.
struct Caller {
    channel: Channel,
    key: String,
}

impl Caller {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.key).parse().unwrap(),
        );
        request
    }
    fn jobs(&self) -> JobQueueServiceClient<Channel> {
        JobQueueServiceClient::new(self.channel.clone()).max_encoding_message_size(64 * MB)
    }
    fn worker(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.channel.clone()).max_encoding_message_size(64 * MB)
    }
    fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }
}

fn refused<T: std::fmt::Debug>(answer: Result<tonic::Response<T>, Status>) -> Status {
    match answer {
        Ok(response) => panic!("accepted: {response:?}"),
        Err(status) => status,
    }
}

fn duration(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

/// A `google.protobuf.Struct` nested `depth` levels deep.
fn nested(depth: usize) -> prost_types::Struct {
    use prost_types::value::Kind;
    let mut value = prost_types::Value {
        kind: Some(Kind::StringValue("bottom".into())),
    };
    for _ in 0..depth {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("a".to_owned(), value);
        value = prost_types::Value {
            kind: Some(Kind::StructValue(prost_types::Struct { fields })),
        };
    }
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("menu".to_owned(), value);
    prost_types::Struct { fields }
}

/// SubmitJobRequest's wire shape with `bytes` where the schema has `string`, so
/// that a test can send strings that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawSubmit {
    #[prost(bytes = "vec", tag = "1")]
    user_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    image_url: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    image_sha256: Vec<u8>,
}

/// Sends `message` to `path` as it is, whatever the method's schema says.
async fn send_raw<M: prost::Message + Default + 'static>(
    channel: &Channel,
    key: &str,
    path: &'static str,
    message: M,
) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let answer: Result<tonic::Response<pb::SubmitJobResponse>, Status> = grpc
        .unary(
            request,
            http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    refused(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_cleanly_and_change_nothing() {
    let server = TestServer::start_configured(|config| config.auth = AuthMode::Required).await;
    let storage = Storage::open(&server.db.url, 1).await.unwrap();
    let (_, key) = auth::create_key(&storage, "hostile", Some(Role::Admin), None)
        .await
        .unwrap();
    storage.close().await;
    let caller = Caller {
        channel: server.channel(),
        key: key.clone(),
    };
    let user = Uuid::new_v4();
    // Something to aim at: a job, a claimed job's lease, a page token.
    let job = caller
        .jobs()
        .submit_job(caller.request(submission(user, 1)))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    caller
        .jobs()
        .submit_job(caller.request(submission(user, 2)))
        .await
        .unwrap();
    let claimed = caller
        .worker()
        .claim_jobs(caller.request(pb::ClaimJobsRequest {
            worker_id: "target".into(),
            max_jobs: 1,
            lease_duration: duration(600, 0),
            wait: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    let lease_id = claimed.lease_id.clone();
    let claimed_id = claimed.job.unwrap().id;
    let token = caller
        .jobs()
        .list_jobs(caller.request(pb::ListJobsRequest {
            user_id: user.to_string(),
            page_size: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(!token.is_empty());
    let before = database_state(&server).await;

    let sql = "'; DROP TABLE menu_extraction_jobs; --";
    let big = "x".repeat(MB);
    let uid = user.to_string();
    let mut cases: Vec<(&str, Code, Status)> = Vec::new();
    macro_rules! case {
        ($name:expr, $code:expr, $call:expr) => {
            cases.push(($name, $code, refused($call.await)));
        };
    }
    let submit = |f: &dyn Fn(&mut pb::SubmitJobRequest)| {
        let mut request = submission(user, 99);
        f(&mut request);
        caller.request(request)
    };
    let ia = Code::InvalidArgument;

    // SubmitJob
    case!(
        "user_id SQL",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.user_id = sql.into()))
    );
    case!(
        "user_id 1 OR 1=1",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.user_id = "1 OR 1=1".into()))
    );
    case!(
        "user_id RTL override",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.user_id = format!("\u{202e}{user}")))
    );
    case!(
        "image_url NUL",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.image_url = "https://x/\0.jpg".into()))
    );
    case!(
        "image_url newline",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.image_url = "https://x/a\nb.jpg".into()))
    );
    case!(
        "image_url 1 MB",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.image_url = format!("https://{big}")))
    );
    case!(
        "image_url SQL",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.image_url = sql.into()))
    );
    case!(
        "image_sha256 quote",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.image_sha256 = format!("'{}", &sha(1)[1..])))
    );
    case!(
        "image_sha256 NUL",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.image_sha256 = format!("{}\0", &sha(1)[1..])))
    );
    case!(
        "schema_version SQL",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.schema_version = sql.into()))
    );
    case!(
        "prompt_version 1 MB",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.prompt_version = big.clone()))
    );
    case!(
        "prompt_version control",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.prompt_version = "v1\u{7}".into()))
    );
    case!(
        "request_id SQL",
        ia,
        caller
            .jobs()
            .submit_job(submit(&|r| r.request_id = sql.into()))
    );
    // GetJob, RetryJob, CancelJob, CheckQuota
    case!(
        "job_id SQL",
        ia,
        caller.jobs().get_job(caller.request(pb::GetJobRequest {
            job_id: "' OR '1'='1".into(),
            user_id: uid.clone()
        }))
    );
    case!(
        "job_id 1 MB",
        ia,
        caller.jobs().get_job(caller.request(pb::GetJobRequest {
            job_id: big.clone(),
            user_id: uid.clone()
        }))
    );
    case!(
        "get user_id NUL",
        ia,
        caller.jobs().get_job(caller.request(pb::GetJobRequest {
            job_id: job.id.clone(),
            user_id: "\0".into()
        }))
    );
    case!(
        "retry job_id empty",
        ia,
        caller.jobs().retry_job(caller.request(pb::RetryJobRequest {
            job_id: String::new(),
            user_id: uid.clone()
        }))
    );
    case!(
        "cancel job_id trailing quote",
        ia,
        caller
            .jobs()
            .cancel_job(caller.request(pb::CancelJobRequest {
                job_id: format!("{}'", job.id),
                user_id: uid.clone()
            }))
    );
    case!(
        "quota user_id SQL",
        ia,
        caller
            .jobs()
            .check_quota(caller.request(pb::CheckQuotaRequest {
                user_id: sql.into()
            }))
    );
    // ListJobs
    let list = |f: &dyn Fn(&mut pb::ListJobsRequest)| {
        let mut request = pb::ListJobsRequest {
            user_id: uid.clone(),
            ..Default::default()
        };
        f(&mut request);
        caller.request(request)
    };
    case!(
        "page_size -1",
        ia,
        caller.jobs().list_jobs(list(&|r| r.page_size = -1))
    );
    case!(
        "page_size i32::MAX",
        ia,
        caller.jobs().list_jobs(list(&|r| r.page_size = i32::MAX))
    );
    case!(
        "page_size i32::MIN",
        ia,
        caller.jobs().list_jobs(list(&|r| r.page_size = i32::MIN))
    );
    case!(
        "status 99",
        ia,
        caller.jobs().list_jobs(list(&|r| r.status = 99))
    );
    case!(
        "status -5",
        ia,
        caller.jobs().list_jobs(list(&|r| r.status = -5))
    );
    case!(
        "page_token garbage",
        ia,
        caller
            .jobs()
            .list_jobs(list(&|r| r.page_token = "%%%not base64".into()))
    );
    case!(
        "page_token random base64",
        ia,
        caller.jobs().list_jobs(list(&|r| r.page_token =
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()))
    );
    case!(
        "page_token 1 MB",
        ia,
        caller
            .jobs()
            .list_jobs(list(&|r| r.page_token = big.clone()))
    );
    case!(
        "page_token tampered",
        ia,
        caller.jobs().list_jobs(list(&|r| {
            let mut bytes = token.clone().into_bytes();
            let last = bytes.len() - 2;
            bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
            r.page_token = String::from_utf8(bytes).unwrap();
        }))
    );
    case!(
        "page_token of another user",
        ia,
        caller.jobs().list_jobs(caller.request(pb::ListJobsRequest {
            user_id: Uuid::new_v4().to_string(),
            page_token: token.clone(),
            ..Default::default()
        }))
    );
    // WatchJobs
    let watch = |request: pb::WatchJobsRequest| {
        let mut jobs = caller.jobs();
        let request = caller.request(request);
        async move { jobs.watch_jobs(request).await.map(|r| r.map(drop)) }
    };
    case!(
        "resume_token forged",
        ia,
        watch(pb::WatchJobsRequest {
            user_id: uid.clone(),
            resume_token: "djE6Zm9yZ2Vk".into(),
            ..Default::default()
        })
    );
    case!(
        "job_ids 10,000",
        ia,
        watch(pb::WatchJobsRequest {
            user_id: uid.clone(),
            job_ids: vec![job.id.clone(); 10_000],
            ..Default::default()
        })
    );
    case!(
        "job_ids SQL",
        ia,
        watch(pb::WatchJobsRequest {
            user_id: uid.clone(),
            job_ids: vec![sql.into()],
            ..Default::default()
        })
    );
    // ClaimJobs
    let claim = |f: &dyn Fn(&mut pb::ClaimJobsRequest)| {
        let mut request = pb::ClaimJobsRequest {
            worker_id: "w".into(),
            max_jobs: 1,
            ..Default::default()
        };
        f(&mut request);
        caller.request(request)
    };
    case!(
        "worker_id empty",
        ia,
        caller
            .worker()
            .claim_jobs(claim(&|r| r.worker_id = String::new()))
    );
    case!(
        "worker_id 1 MB",
        ia,
        caller
            .worker()
            .claim_jobs(claim(&|r| r.worker_id = big.clone()))
    );
    case!(
        "max_jobs -1",
        ia,
        caller.worker().claim_jobs(claim(&|r| r.max_jobs = -1))
    );
    case!(
        "max_jobs 1,000,000",
        ia,
        caller
            .worker()
            .claim_jobs(claim(&|r| r.max_jobs = 1_000_000))
    );
    case!(
        "lease negative",
        ia,
        caller
            .worker()
            .claim_jobs(claim(&|r| r.lease_duration = duration(-5, 0)))
    );
    case!(
        "lease 10^12 s",
        ia,
        caller
            .worker()
            .claim_jobs(claim(&|r| r.lease_duration = duration(1_000_000_000_000, 0)))
    );
    case!(
        "lease nanos out of range",
        ia,
        caller
            .worker()
            .claim_jobs(claim(&|r| r.lease_duration = duration(5, 2_000_000_000)))
    );
    case!(
        "wait 10 hours",
        ia,
        caller
            .worker()
            .claim_jobs(claim(&|r| r.wait = duration(36_000, 0)))
    );
    // Heartbeat, CompleteJob, FailJob
    case!(
        "lease_id garbage",
        ia,
        caller
            .worker()
            .heartbeat(caller.request(pb::HeartbeatRequest {
                job_id: claimed_id.clone(),
                lease_id: sql.into(),
                extend_by: None
            }))
    );
    case!(
        "extend_by negative",
        ia,
        caller
            .worker()
            .heartbeat(caller.request(pb::HeartbeatRequest {
                job_id: claimed_id.clone(),
                lease_id: lease_id.clone(),
                extend_by: duration(-1, 0)
            }))
    );
    let complete = |f: &dyn Fn(&mut pb::CompleteJobRequest)| {
        let mut request = pb::CompleteJobRequest {
            job_id: claimed_id.clone(),
            lease_id: lease_id.clone(),
            ..Default::default()
        };
        f(&mut request);
        caller.request(request)
    };
    case!(
        "confidence NaN",
        ia,
        caller
            .worker()
            .complete_job(complete(&|r| r.confidence = Some(f32::NAN)))
    );
    case!(
        "confidence -1",
        ia,
        caller
            .worker()
            .complete_job(complete(&|r| r.confidence = Some(-1.0)))
    );
    case!(
        "confidence infinite",
        ia,
        caller
            .worker()
            .complete_job(complete(&|r| r.confidence = Some(f32::INFINITY)))
    );
    case!(
        "input_tokens negative",
        ia,
        caller
            .worker()
            .complete_job(complete(&|r| r.token_usage = Some(pb::TokenUsage {
                input_tokens: -1,
                ..Default::default()
            })))
    );
    case!(
        "cost NaN",
        ia,
        caller
            .worker()
            .complete_job(complete(&|r| r.token_usage = Some(pb::TokenUsage {
                cost_usd: f64::NAN,
                ..Default::default()
            })))
    );
    case!(
        "result 2 MB",
        ia,
        caller.worker().complete_job(complete(&|r| {
            let mut fields = std::collections::BTreeMap::new();
            fields.insert(
                "text".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("y".repeat(2 * MB))),
                },
            );
            r.result = Some(prost_types::Struct { fields });
        }))
    );
    case!(
        "result nested 200 deep",
        ia,
        caller
            .worker()
            .complete_job(complete(&|r| r.result = Some(nested(200))))
    );
    case!(
        "complete lease_id SQL",
        ia,
        caller
            .worker()
            .complete_job(complete(&|r| r.lease_id = sql.into()))
    );
    case!(
        "error_message 1 MB",
        ia,
        caller.worker().fail_job(caller.request(pb::FailJobRequest {
            job_id: claimed_id.clone(),
            lease_id: lease_id.clone(),
            error_message: big.clone()
        }))
    );
    case!(
        "error_message empty",
        ia,
        caller.worker().fail_job(caller.request(pb::FailJobRequest {
            job_id: claimed_id.clone(),
            lease_id: lease_id.clone(),
            error_message: String::new()
        }))
    );
    // AdminService
    case!(
        "plan SQL",
        ia,
        caller
            .admin()
            .set_user_plan(caller.request(pb::SetUserPlanRequest {
                user_id: uid.clone(),
                plan: "'; DROP TABLE user_plans; --".into()
            }))
    );
    case!(
        "plan user_id garbage",
        ia,
        caller
            .admin()
            .set_user_plan(caller.request(pb::SetUserPlanRequest {
                user_id: "me".into(),
                plan: "premium".into()
            }))
    );
    case!(
        "key name control",
        ia,
        caller
            .admin()
            .create_api_key(caller.request(pb::CreateApiKeyRequest {
                name: "a\u{0}b".into(),
                role: pb::ApiKeyRole::Admin.into(),
                user_id: String::new()
            }))
    );
    case!(
        "key role 99",
        ia,
        caller
            .admin()
            .create_api_key(caller.request(pb::CreateApiKeyRequest {
                name: "k".into(),
                role: 99,
                user_id: String::new()
            }))
    );
    case!(
        "revoke id SQL",
        ia,
        caller
            .admin()
            .revoke_api_key(caller.request(pb::RevokeApiKeyRequest {
                id: "' OR 1=1 --".into()
            }))
    );
    // The transport and the message itself
    case!(
        "message over the size limit (9 MB)",
        Code::ResourceExhausted,
        caller
            .jobs()
            .submit_job(submit(&|r| r.image_url = "x".repeat(9 * MB)))
    );
    let invalid_utf8 = |field: usize| {
        let mut raw = RawSubmit {
            user_id: uid.clone().into_bytes(),
            image_url: b"https://x/m.jpg".to_vec(),
            image_sha256: sha(5).into_bytes(),
        };
        let bad = vec![0x66, 0xff, 0xfe, 0x67];
        match field {
            1 => raw.user_id = bad,
            2 => raw.image_url = bad,
            _ => raw.image_sha256 = bad,
        }
        raw
    };
    for (name, field) in [
        ("user_id not UTF-8", 1),
        ("image_url not UTF-8", 2),
        ("image_sha256 not UTF-8", 3),
    ] {
        let status = send_raw(
            &caller.channel,
            &key,
            "/jobq.v1.JobQueueService/SubmitJob",
            invalid_utf8(field),
        )
        .await;
        cases.push((name, ia, status));
    }
    let garbage = send_raw(
        &caller.channel,
        &key,
        "/jobq.v1.WorkerService/ClaimJobs",
        RawSubmit {
            user_id: vec![0xff; 64],
            image_url: vec![],
            image_sha256: vec![],
        },
    )
    .await;
    cases.push(("a message of another type", ia, garbage));
    let with_header = |value: MetadataValue<tonic::metadata::Ascii>| {
        let mut request = Request::new(pb::CheckQuotaRequest {
            user_id: uid.clone(),
        });
        request.metadata_mut().insert("authorization", value);
        request
    };
    case!(
        "authorization not UTF-8",
        Code::Unauthenticated,
        caller.jobs().check_quota({
            let mut request = Request::new(pb::CheckQuotaRequest {
                user_id: uid.clone(),
            });
            // obs-text bytes: HTTP allows them on the wire; they are not UTF-8.
            let value =
                MetadataValue::try_from(&b"Bearer \xff\xfe"[..]).expect("HTTP accepts obs-text");
            request.metadata_mut().insert("authorization", value);
            request
        })
    );
    case!(
        "authorization 4 KB key",
        Code::Unauthenticated,
        caller.jobs().check_quota(with_header(
            format!("Bearer jobq_{}", "a".repeat(4096)).parse().unwrap()
        ))
    );
    case!(
        "authorization SQL",
        Code::Unauthenticated,
        caller
            .jobs()
            .check_quota(with_header(format!("Bearer {sql}").parse().unwrap()))
    );

    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for (name, expected, status) in &cases {
        let clean = status.code() == *expected
            && !status.message().is_empty()
            && status.message().len() < 2_000
            && !status.message().contains("SQL")
            && !status.message().to_lowercase().contains("syntax error");
        if !clean {
            wrong.push(format!(
                "{name}: expected {expected:?}, got {:?} {:?}",
                status.code(),
                status.message()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases were not refused cleanly:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    // Still serving, and nothing changed.
    let health = tonic_health::pb::health_client::HealthClient::new(server.channel())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    assert_eq!(database_state(&server).await, before);
    server.stop().await;
}

/// The call limits: a call past the server's time limit is cut with
/// DEADLINE_EXCEEDED, a call beyond the server's concurrent-call limit is shed
/// at once with RESOURCE_EXHAUSTED, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_are_cut_and_excess_calls_shed() {
    use std::time::{Duration, Instant};

    let server = TestServer::start_configured(|config| {
        config.rpc_timeout = Duration::from_millis(500);
        config.max_concurrent_calls = 1;
    })
    .await;
    let parked = || {
        let mut worker = WorkerServiceClient::new(server.channel());
        async move {
            worker
                .claim_jobs(pb::ClaimJobsRequest {
                    worker_id: "parked".into(),
                    max_jobs: 1,
                    lease_duration: None,
                    wait: duration(10, 0),
                })
                .await
        }
    };
    let quota = || {
        let mut jobs = JobQueueServiceClient::new(server.channel());
        async move {
            jobs.check_quota(pb::CheckQuotaRequest {
                user_id: Uuid::new_v4().to_string(),
            })
            .await
        }
    };
    // Nothing is queued: a claim waiting 10 s is cut at the server's 500 ms.
    let started = Instant::now();
    let status = refused(parked().await);
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("--rpc-timeout"),
        "{}",
        status.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // With room for one call, a parked claim fills the server: another call is
    // refused at once rather than queued behind it. (The claim and the probing
    // calls race for the one place; a round where the claim lost is repeated.)
    let mut shed = None;
    for _ in 0..50 {
        let claim = tokio::spawn(parked());
        let refusal = loop {
            match quota().await {
                Err(status) => break Some(status),
                Ok(_) if claim.is_finished() => break None,
                Ok(_) => {}
            }
        };
        let claim = refused(claim.await.unwrap());
        if let Some(refusal) = refusal
            && claim.code() == Code::DeadlineExceeded
        {
            shed = Some(refusal);
            break;
        }
    }
    let shed = shed.expect("a call was shed while a claim was parked");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(
        shed.message().contains("--max-concurrent-calls"),
        "{}",
        shed.message()
    );
    // Once they are done, the server serves again.
    quota().await.expect("served again");
    server.stop().await;
}
