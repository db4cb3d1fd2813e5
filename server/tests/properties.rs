//! Property tests: request validation and token decoding take arbitrary input
//! (arbitrary bytes decoded as each request message, arbitrary strings as tokens)
//! and never panic; what they accept is within the documented bounds.
//!
//! `JOBQ_PROPERTY_CASES` sets the cases per property (default 2,000; CI runs the
//! default).

use jobq_proto::pb;
use jobq_server::convert::{self, PlanAssignment, WorkerLimits};
use jobq_server::job::{ClaimRequest, Completion, Failure, JobStatus, ListQuery, NewJob, UserId};
use jobq_server::page_token::PageToken;
use jobq_server::plans::Plans;
use jobq_server::resume;
use proptest::prelude::*;
use prost::Message;

fn config() -> ProptestConfig {
    let cases = std::env::var("JOBQ_PROPERTY_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        // Failures are reported with their input; no files written.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn limits() -> WorkerLimits {
    WorkerLimits {
        default_lease: std::time::Duration::from_secs(60),
        max_document_bytes: 4096,
    }
}

/// Bytes, mostly short, sometimes shaped like protobuf.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..600)
}

/// Strings with the characters hostile input likes: quotes, NUL, control and
/// non-ASCII characters, digits, hex, dashes.
fn text() -> impl Strategy<Value = String> {
    let interesting = prop_oneof![
        any::<char>(),
        prop::sample::select(vec![
            '\'', '"', ';', '-', '\0', '\n', ' ', '%', '_', '=', 'a', 'f', '0', '9', '\u{202e}',
            'é'
        ]),
    ];
    prop::collection::vec(interesting, 0..120).prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_as_a_request_are_validated_without_panicking(data in bytes()) {
        let plans = Plans::builtin();
        if let Ok(request) = pb::SubmitJobRequest::decode(data.as_slice())
            && let Ok(job) = NewJob::try_from(request)
        {
            prop_assert_eq!(job.image_sha256.len(), 64);
            prop_assert!(job.schema_version.len() <= convert::MAX_SCHEMA_VERSION_LEN);
            prop_assert!(job.prompt_version.len() <= convert::MAX_PROMPT_VERSION_LEN);
            prop_assert!(job.image_url.len() <= convert::MAX_IMAGE_URL_LEN);
        }
        if let Ok(request) = pb::ListJobsRequest::decode(data.as_slice())
            && let Ok(query) = ListQuery::try_from(request)
        {
            prop_assert!((1..=convert::MAX_PAGE_SIZE).contains(&query.page_size));
        }
        if let Ok(request) = pb::GetJobRequest::decode(data.as_slice()) {
            let _ = convert::JobRef::try_from(request);
        }
        if let Ok(request) = pb::WatchJobsRequest::decode(data.as_slice()) {
            let _ = convert::watch_request(request);
        }
        if let Ok(request) = pb::ClaimJobsRequest::decode(data.as_slice())
            && let Ok(claim) = ClaimRequest::parse(request, &limits())
        {
            prop_assert!(claim.lease >= convert::MIN_LEASE && claim.lease <= convert::MAX_LEASE);
            prop_assert!(claim.wait <= convert::MAX_WAIT);
        }
        if let Ok(request) = pb::CompleteJobRequest::decode(data.as_slice()) {
            let _ = Completion::parse(request, &limits());
        }
        if let Ok(request) = pb::CompleteJobsRequest::decode(data.as_slice()) {
            let sent = request.completions.len();
            match convert::completions(request, &limits()) {
                Ok(completions) => {
                    prop_assert_eq!(completions.len(), sent);
                    prop_assert!((1..=convert::MAX_COMPLETIONS).contains(&sent));
                }
                Err(jobq_server::error::Error::InvalidArgument(violations)) => {
                    prop_assert!(!violations.is_empty());
                    for violation in violations {
                        prop_assert!(violation.field.starts_with("completions"), "{}", violation.field);
                    }
                }
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }
        if let Ok(request) = pb::FailJobRequest::decode(data.as_slice()) {
            let _ = Failure::try_from(request);
        }
        if let Ok(request) = pb::SetUserPlanRequest::decode(data.as_slice()) {
            let _ = PlanAssignment::parse(request, &plans);
        }
        if let Ok(request) = pb::HeartbeatRequest::decode(data.as_slice()) {
            let _ = convert::heartbeat(request);
        }
    }

    #[test]
    fn any_text_in_the_string_fields_is_validated_without_panicking(
        user in text(), url in text(), hash in text(), version in text(), token in text()
    ) {
        let _ = NewJob::try_from(pb::SubmitJobRequest {
            user_id: user.clone(),
            image_url: url,
            image_sha256: hash,
            schema_version: version.clone(),
            prompt_version: version,
            force: false,
            request_id: token.clone(),
        });
        let _ = ListQuery::try_from(pb::ListJobsRequest {
            user_id: user.clone(),
            page_size: 10,
            page_token: token.clone(),
            status: 0,
        });
        let _ = convert::watch_request(pb::WatchJobsRequest {
            user_id: user,
            job_ids: vec![token.clone()],
            resume_token: token,
        });
    }

    #[test]
    fn any_string_as_a_token_is_refused_or_decoded_without_panicking(token in text(), raw in bytes()) {
        let user = UserId(uuid::Uuid::nil());
        let _ = PageToken::decode(&token, user, None);
        let _ = PageToken::decode(&token, user, Some(JobStatus::Failed));
        let _ = resume::decode(&token);
        // Valid base64 of arbitrary bytes gets past the first check, and is
        // refused by the token's own check.
        use base64::Engine;
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        prop_assert!(PageToken::decode(&encoded, user, None).is_err());
        let _ = resume::decode(&encoded);
    }
}
