//! Plans, monthly quotas and hourly rate limits, enforced inside SubmitJob under a
//! per-user lock: N concurrent callers at a limit of L create exactly L jobs.

mod common;

use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use common::{TestServer, all_at_once, error_info, insert_job_at, submission, warm_clients};
use jobq_proto::pb;
use jobq_proto::pb::admin_service_client::AdminServiceClient;
use jobq_server::plans::Plans;
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

fn time_of(t: Option<prost_types::Timestamp>) -> DateTime<Utc> {
    let t = t.expect("a timestamp");
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap()).unwrap()
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn next_month(at: DateTime<Utc>) -> DateTime<Utc> {
    let (year, month) = if at.month() == 12 {
        (at.year() + 1, 1)
    } else {
        (at.year(), at.month() + 1)
    };
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).unwrap()
}

fn month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .unwrap()
}

async fn set_plan(server: &TestServer, user: Uuid, plan: &str) {
    AdminServiceClient::new(server.channel())
        .set_user_plan(pb::SetUserPlanRequest {
            user_id: user.to_string(),
            plan: plan.into(),
        })
        .await
        .expect("set the user's plan");
}

async fn jobs_of(server: &TestServer, user: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM menu_extraction_jobs WHERE user_id = $1")
        .bind(user)
        .fetch_one(&server.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forty_concurrent_submissions_of_a_free_user_create_exactly_five() {
    let server = TestServer::start_with_plans(Plans::builtin()).await;
    let user = Uuid::new_v4();
    let clients = warm_clients(&server, 40).await;
    let answers = all_at_once(clients, move |i, mut client| async move {
        client.submit_job(submission(user, i as u64)).await
    })
    .await;

    let created: Vec<_> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|r| r.get_ref().job.clone().unwrap())
        .collect();
    assert_eq!(created.len(), 5);
    assert!(
        created
            .iter()
            .all(|job| job.status() == pb::JobStatus::Queued)
    );
    assert_eq!(jobs_of(&server, user).await, 5);

    let resets_at = next_month(time_of(created[0].created_at));
    let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert_eq!(refused.len(), 35);
    for status in refused {
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let (reason, metadata) = error_info(status);
        assert_eq!(reason, "QUOTA_EXCEEDED");
        assert_eq!(
            (metadata["used"].as_str(), metadata["limit"].as_str()),
            ("5", "5")
        );
        assert_eq!(metadata["resets_at"], rfc3339(resets_at));
        assert_eq!(metadata["plan"], "free");
        let quota = status.get_error_details();
        let violation = &quota.quota_failure().expect("QuotaFailure").violations[0];
        assert_eq!(violation.subject, format!("user:{user}"));
    }

    let quota = server
        .raw()
        .check_quota(pb::CheckQuotaRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (quota.plan.as_str(), quota.allowed, quota.reason.as_str()),
        ("free", false, "QUOTA_EXCEEDED")
    );
    let monthly = quota.monthly.unwrap();
    assert_eq!((monthly.used, monthly.limit), (5, 5));
    assert_eq!(time_of(monthly.resets_at), resets_at);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_five_concurrent_premium_submissions_hit_the_hourly_limit_at_ten() {
    let server = TestServer::start_with_plans(Plans::builtin()).await;
    let user = Uuid::new_v4();
    set_plan(&server, user, "premium").await;

    // Older submissions: 61 minutes ago (outside the hour) and last month.
    let now = Utc::now();
    for n in 0..5 {
        insert_job_at(&server.pool, user, now - chrono::Duration::minutes(61), n).await;
    }
    for n in 5..8 {
        insert_job_at(
            &server.pool,
            user,
            month_start(now) - chrono::Duration::days(1),
            n,
        )
        .await;
    }
    let counted_this_month_before = if now - chrono::Duration::minutes(61) >= month_start(now) {
        5
    } else {
        0
    };

    let clients = warm_clients(&server, 25).await;
    let answers = all_at_once(clients, move |i, mut client| async move {
        client.submit_job(submission(user, i as u64)).await
    })
    .await;
    let created: Vec<_> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|r| r.get_ref().job.clone().unwrap())
        .collect();
    assert_eq!(created.len(), 10);

    let quota = server
        .raw()
        .check_quota(pb::CheckQuotaRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (quota.plan.as_str(), quota.allowed, quota.reason.as_str()),
        ("premium", false, "RATE_LIMIT_EXCEEDED")
    );
    let hourly = quota.hourly.unwrap();
    assert_eq!((hourly.used, hourly.limit), (10, 10));
    let oldest = created
        .iter()
        .map(|job| time_of(job.created_at))
        .min()
        .unwrap();
    let slot = time_of(hourly.resets_at);
    assert_eq!(
        slot,
        oldest + chrono::Duration::minutes(60),
        "the oldest counted submission leaves the window"
    );
    let monthly = quota.monthly.unwrap();
    assert_eq!(
        (monthly.used, monthly.limit),
        (10 + counted_this_month_before, 50)
    );

    let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert_eq!(refused.len(), 15);
    for status in refused {
        assert_eq!(status.code(), Code::ResourceExhausted);
        let (reason, metadata) = error_info(status);
        assert_eq!(reason, "RATE_LIMIT_EXCEEDED");
        assert_eq!(
            (metadata["used"].as_str(), metadata["limit"].as_str()),
            ("10", "10")
        );
        assert_eq!(
            metadata["resets_at"],
            rfc3339(slot),
            "the refusal and CheckQuota name the same instant"
        );
        let delay = status
            .get_error_details()
            .retry_info()
            .expect("RetryInfo")
            .retry_delay
            .expect("a delay");
        // The delay was measured from the refusal, moments before CheckQuota ran.
        let until_slot = (slot - Utc::now()).to_std().unwrap();
        assert!(
            delay >= until_slot && delay <= until_slot + Duration::from_secs(10),
            "{delay:?} vs {until_slot:?}"
        );
        assert!(delay > Duration::from_secs(59 * 60) && delay <= Duration::from_secs(3600));
    }
    assert_eq!(jobs_of(&server, user).await, 8 + 10);
    server.stop().await;
}

#[tokio::test]
async fn last_months_jobs_do_not_count_toward_this_month() {
    let server = TestServer::start_with_plans(Plans::builtin()).await;
    let user = Uuid::new_v4();
    let now = Utc::now();
    for n in 0..5 {
        insert_job_at(
            &server.pool,
            user,
            month_start(now) - chrono::Duration::hours(2 + n as i64),
            n,
        )
        .await;
    }
    let mut client = server.raw();
    let quota = client
        .check_quota(pb::CheckQuotaRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(quota.allowed);
    assert_eq!(quota.monthly.unwrap().used, 0);
    for n in 0..5 {
        client
            .submit_job(submission(user, n))
            .await
            .expect("within this month's quota");
    }
    let error = client.submit_job(submission(user, 5)).await.unwrap_err();
    assert_eq!(error_info(&error).0, "QUOTA_EXCEEDED");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enterprise_passes_two_hundred_in_an_hour_when_its_hourly_limit_allows() {
    let plans = Plans::parse("[plans.enterprise]\nhourly_jobs = 250\n").unwrap();
    let server = TestServer::start_with_plans(plans).await;
    let user = Uuid::new_v4();
    set_plan(&server, user, "enterprise").await;

    let clients = warm_clients(&server, 20).await;
    let answers = all_at_once(clients, move |i, mut client| async move {
        let mut made = 0;
        for n in 0..10 {
            client
                .submit_job(submission(user, (i * 10 + n) as u64))
                .await
                .expect("enterprise submission");
            made += 1;
        }
        made
    })
    .await;
    assert_eq!(answers.iter().sum::<i32>(), 200);
    assert_eq!(jobs_of(&server, user).await, 200);

    let quota = server
        .raw()
        .check_quota(pb::CheckQuotaRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(quota.allowed);
    let (monthly, hourly) = (quota.monthly.unwrap(), quota.hourly.unwrap());
    assert_eq!((monthly.used, monthly.limit), (200, -1));
    assert_eq!((hourly.used, hourly.limit), (200, 250));
    server.stop().await;
}

#[tokio::test]
async fn deduplicated_submissions_at_a_full_quota_still_return_the_job() {
    let server = TestServer::start_with_plans(Plans::builtin()).await;
    let mut client = server.raw();
    let user = Uuid::new_v4();
    let mut first = None;
    for n in 0..5 {
        let job = client
            .submit_job(submission(user, n))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        first.get_or_insert(job);
    }
    let again = client
        .submit_job(submission(user, 0))
        .await
        .expect("a duplicate costs nothing")
        .into_inner();
    assert!(again.deduplicated);
    assert_eq!(again.job.unwrap().id, first.unwrap().id);

    // force makes a new job, so it is counted and refused.
    let forced = client
        .submit_job(pb::SubmitJobRequest {
            force: true,
            ..submission(user, 0)
        })
        .await
        .unwrap_err();
    assert_eq!(error_info(&forced).0, "QUOTA_EXCEEDED");
    assert_eq!(jobs_of(&server, user).await, 5);
    server.stop().await;
}

#[tokio::test]
async fn check_quota_predicts_every_submission() {
    let plans = Plans::parse(
        "[plans.free]\nmonthly_jobs = 4\nhourly_jobs = 2\n[plans.team]\nmonthly_jobs = 3\n",
    )
    .unwrap();
    let server = TestServer::start_with_plans(plans).await;
    let mut client = server.raw();
    let user = Uuid::new_v4();

    // free here: 2 an hour, then the hour is full.
    for n in 0..4 {
        let quota = client
            .check_quota(pb::CheckQuotaRequest {
                user_id: user.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        let answer = client.submit_job(submission(user, n)).await;
        assert_eq!(quota.allowed, answer.is_ok(), "call {n}");
        if let Err(status) = answer {
            assert_eq!(error_info(&status).0, quota.reason);
            assert_eq!(quota.reason, "RATE_LIMIT_EXCEEDED");
        }
    }
    assert_eq!(jobs_of(&server, user).await, 2);

    // A plan from the file: 3 a month, 10 an hour by default.
    set_plan(&server, user, "team").await;
    let mut admin = AdminServiceClient::new(server.channel());
    let plan = admin
        .get_user_plan(pb::GetUserPlanRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.plan, "team");
    for n in 10..13 {
        let quota = client
            .check_quota(pb::CheckQuotaRequest {
                user_id: user.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        let answer = client.submit_job(submission(user, n)).await;
        assert_eq!(quota.allowed, answer.is_ok(), "call {n}");
        if let Err(status) = answer {
            assert_eq!(
                (error_info(&status).0.as_str(), quota.reason.as_str()),
                ("QUOTA_EXCEEDED", "QUOTA_EXCEEDED")
            );
        }
    }
    let quota = client
        .check_quota(pb::CheckQuotaRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            quota.plan.as_str(),
            quota.monthly.unwrap().limit,
            quota.hourly.unwrap().limit
        ),
        ("team", 3, 10)
    );
    assert_eq!(jobs_of(&server, user).await, 3);
    server.stop().await;
}

#[tokio::test]
async fn plans_are_managed_by_admin_service() {
    let server = TestServer::start_with_plans(Plans::builtin()).await;
    let mut admin = AdminServiceClient::new(server.channel());
    let user = Uuid::new_v4();
    let plan = admin
        .get_user_plan(pb::GetUserPlanRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.plan, "free", "a user without a plan is on free");

    let set = admin
        .set_user_plan(pb::SetUserPlanRequest {
            user_id: user.to_string(),
            plan: "premium".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (set.user_id, set.plan.as_str()),
        (user.to_string(), "premium")
    );
    let plan = admin
        .get_user_plan(pb::GetUserPlanRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.plan, "premium");

    for (user_id, plan_name, fields) in [
        (user.to_string(), "platinum", vec!["plan"]),
        (user.to_string(), "", vec!["plan"]),
        ("nobody".to_owned(), "premium", vec!["user_id"]),
        ("nobody".to_owned(), "gold", vec!["user_id", "plan"]),
    ] {
        let status = admin
            .set_user_plan(pb::SetUserPlanRequest {
                user_id,
                plan: plan_name.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let named: Vec<_> = status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|v| v.field.clone())
            .collect();
        assert_eq!(named, fields, "{plan_name}");
    }
    let unknown = admin
        .set_user_plan(pb::SetUserPlanRequest {
            user_id: user.to_string(),
            plan: "platinum".into(),
        })
        .await
        .unwrap_err();
    assert!(
        unknown.message().contains("enterprise, free, premium"),
        "{}",
        unknown.message()
    );
    let plan = admin
        .get_user_plan(pb::GetUserPlanRequest {
            user_id: user.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.plan, "premium", "a refused change changes nothing");

    let bad = server
        .raw()
        .check_quota(pb::CheckQuotaRequest {
            user_id: "42".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    server.stop().await;
}
