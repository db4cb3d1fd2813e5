//! ListJobs page tokens: opaque to clients, bound to the listing they continue.
//!
//! A token is base64url (no padding) of
//! `[format 1][user id 16][status filter 1][created_at µs 8][job id 16][check 8]`,
//! where `check` is the first 8 bytes of SHA-256 over a domain string and the rest.
//! The check rejects tokens that were altered or truncated; the user id and status
//! filter reject a token used for another listing. The check is not a secret MAC,
//! and need not be: the token only says where to resume, and the query is always
//! restricted to the requesting user's jobs, so a crafted token can reveal nothing
//! a plain request could not.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::job::{JobId, JobStatus, ListCursor, UserId};

const FORMAT: u8 = 1;
const DOMAIN: &[u8] = b"jobq.v1.ListJobs.page_token";
const BODY_LEN: usize = 1 + 16 + 1 + 8 + 16;
const CHECK_LEN: usize = 8;

/// Encodes and decodes page tokens.
pub struct PageToken;

impl PageToken {
    /// The token that continues `user_id`'s listing (with `status`) after `cursor`.
    pub fn encode(user_id: UserId, status: Option<JobStatus>, cursor: ListCursor) -> String {
        let mut bytes = Vec::with_capacity(BODY_LEN + CHECK_LEN);
        bytes.push(FORMAT);
        bytes.extend_from_slice(user_id.0.as_bytes());
        bytes.push(status_code(status));
        bytes.extend_from_slice(&cursor.created_at.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(cursor.id.0.as_bytes());
        let check = check(&bytes);
        bytes.extend_from_slice(&check);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The cursor in `token`, if it is an unaltered token of this listing.
    pub fn decode(
        token: &str,
        user_id: UserId,
        status: Option<JobStatus>,
    ) -> Result<ListCursor, String> {
        const NOT_OURS: &str = "is not a page token jobq issued (altered or truncated)";
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| NOT_OURS.to_owned())?;
        if bytes.len() != BODY_LEN + CHECK_LEN || bytes[0] != FORMAT {
            return Err(NOT_OURS.to_owned());
        }
        let (body, given) = bytes.split_at(BODY_LEN);
        if check(body) != given {
            return Err(NOT_OURS.to_owned());
        }
        let field = |at: usize, len: usize| &body[at..at + len];
        let token_user = Uuid::from_slice(field(1, 16)).map_err(|_| NOT_OURS.to_owned())?;
        if token_user != user_id.0 {
            return Err("belongs to another user's listing".to_owned());
        }
        if body[17] != status_code(status) {
            return Err("belongs to a listing with another status filter".to_owned());
        }
        let micros = i64::from_be_bytes(field(18, 8).try_into().map_err(|_| NOT_OURS.to_owned())?);
        let created_at =
            DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(|| NOT_OURS.to_owned())?;
        let id = Uuid::from_slice(field(26, 16)).map_err(|_| NOT_OURS.to_owned())?;
        Ok(ListCursor {
            created_at,
            id: JobId(id),
        })
    }
}

fn status_code(status: Option<JobStatus>) -> u8 {
    match status {
        None => 0,
        Some(JobStatus::Queued) => 1,
        Some(JobStatus::Processing) => 2,
        Some(JobStatus::Completed) => 3,
        Some(JobStatus::Failed) => 4,
        Some(JobStatus::Cancelled) => 5,
    }
}

fn check(body: &[u8]) -> [u8; CHECK_LEN] {
    let digest = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(body)
        .finalize();
    let mut check = [0; CHECK_LEN];
    check.copy_from_slice(&digest[..CHECK_LEN]);
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor() -> ListCursor {
        ListCursor {
            created_at: DateTime::from_timestamp_micros(1_790_000_000_123_456).unwrap(),
            id: JobId(Uuid::now_v7()),
        }
    }

    #[test]
    fn round_trips_for_its_own_listing_only() {
        let user = UserId(Uuid::new_v4());
        let cursor = cursor();
        let token = PageToken::encode(user, Some(JobStatus::Failed), cursor);
        assert_eq!(
            PageToken::decode(&token, user, Some(JobStatus::Failed)),
            Ok(cursor)
        );
        assert!(PageToken::decode(&token, user, None).is_err());
        assert!(
            PageToken::decode(&token, UserId(Uuid::new_v4()), Some(JobStatus::Failed)).is_err()
        );
    }

    #[test]
    fn any_altered_character_is_refused() {
        let user = UserId(Uuid::new_v4());
        let token = PageToken::encode(user, None, cursor());
        for i in 0..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(bytes).unwrap();
            assert!(
                PageToken::decode(&altered, user, None).is_err(),
                "position {i}"
            );
        }
        assert!(PageToken::decode(&token[..token.len() - 1], user, None).is_err());
        assert!(PageToken::decode("", user, None).is_err());
        assert!(PageToken::decode("!!!", user, None).is_err());
    }
}
