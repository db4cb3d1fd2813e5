//! Authentication and authorization: API keys, the caller's [`Principal`], and the
//! tower layer that admits each call.
//!
//! A key reads `jobq_<id>_<secret>`: `id` is the key's UUID (32 hex digits) and
//! `secret` 32 random bytes in unpadded base64url. The database holds the id and
//! the SHA-256 of the secret; the layer looks the key up by id and compares the
//! digests in constant time. The layer decides by service (role); the handlers
//! decide by user (a `user` key acts only for its bound user).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::Status;
use tower::{Layer, Service};
use uuid::Uuid;

use crate::error::{Error, FieldViolation};
use crate::group_commit::{GroupCommit, SPARE_AFTER};
use crate::job::UserId;
use crate::storage::keys::{ApiKeyRecord, KeyCheck};
use crate::storage::{Storage, StorageError};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// JobQueueService for any user, and watching all users.
    Service,
    /// JobQueueService for its bound user only.
    User,
    /// WorkerService only.
    Worker,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Service => "service",
            Self::User => "user",
            Self::Worker => "worker",
        }
    }

    /// Reads a stored or typed name.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Admin, Self::Service, Self::User, Self::Worker]
            .into_iter()
            .find(|role| role.as_str() == name)
    }

    /// Whether this role may call `target`.
    fn may_call(self, service: Target) -> bool {
        matches!(
            (self, service),
            (Self::Admin, _)
                | (Self::Service | Self::User, Target::JobQueue)
                | (Self::Worker, Target::Worker)
        )
    }
}

/// The services the layer tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    JobQueue,
    Worker,
    Admin,
    /// Health and reflection: no key needed.
    Public,
    /// A path no service serves: any valid key may learn it is UNIMPLEMENTED.
    Unknown,
}

fn service_of(path: &str) -> Target {
    let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match service {
        "jobq.v1.JobQueueService" => Target::JobQueue,
        "jobq.v1.WorkerService" => Target::Worker,
        "jobq.v1.AdminService" => Target::Admin,
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => Target::Public,
        _ => Target::Unknown,
    }
}

/// Who is calling: put in each admitted request's extensions by [`AuthLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    /// The key used; `None` when authentication is disabled.
    pub key_id: Option<Uuid>,
    /// What it may do.
    pub role: Role,
    /// The user a `user` key is bound to.
    pub user_id: Option<UserId>,
}

impl Principal {
    /// The caller when authentication is disabled: may do everything.
    pub const LOCAL: Self = Self {
        key_id: None,
        role: Role::Admin,
        user_id: None,
    };

    /// Checks that this caller may act for `user` (a request naming that user).
    ///
    /// # Errors
    /// `PERMISSION_DENIED` for a `user` key bound to another user.
    pub fn may_act_for(&self, user: UserId) -> Result<(), Error> {
        match (self.role, self.user_id) {
            (Role::User, Some(bound)) if bound != user => Err(Error::PermissionDenied(format!(
                "this API key acts only for user {}, not {}",
                bound.0, user.0
            ))),
            _ => Ok(()),
        }
    }

    /// Checks that this caller may watch every user's jobs.
    ///
    /// # Errors
    /// `PERMISSION_DENIED` for a `user` key.
    pub fn may_watch_all(&self) -> Result<(), Error> {
        if self.role == Role::User {
            return Err(Error::PermissionDenied(
                "a user key may watch only its own user's jobs: set user_id".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The principal of a request that went through the layer (the handlers' view).
pub fn principal<T>(request: &tonic::Request<T>) -> Principal {
    // Every request the services see went through the layer, which always sets
    // one; a request built by hand (a unit test) is the local caller.
    request
        .extensions()
        .get::<Principal>()
        .copied()
        .unwrap_or(Principal::LOCAL)
}

/// A new key's parts: its text (shown once), id and digest.
#[derive(Debug)]
pub struct NewKey {
    /// The key's id.
    pub id: Uuid,
    /// `jobq_<id>_<secret>`: what the caller sends.
    pub text: String,
    /// SHA-256 of the secret: what the database keeps.
    pub digest: [u8; 32],
}

impl NewKey {
    /// A fresh key: a random id and 256 random bits of secret from the
    /// operating system's generator.
    ///
    /// # Errors
    /// The operating system cannot provide randomness.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)?;
        let id = Uuid::new_v4();
        let secret = URL_SAFE_NO_PAD.encode(secret);
        Ok(Self {
            id,
            text: format!("jobq_{}_{secret}", id.simple()),
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }
}

/// Longest key name, in characters.
pub const MAX_KEY_NAME_LEN: usize = 100;

/// Creates a key named `name` with `role` (bound to `user_id` for a `user` key),
/// and returns its record and its text, which is shown only this once. Shared by
/// `jobq-server keys create` and `AdminService.CreateApiKey`.
///
/// # Errors
/// `INVALID_ARGUMENT` naming `name`, `role` or `user_id`; storage errors.
pub async fn create_key(
    storage: &Storage,
    name: &str,
    role: Option<Role>,
    user_id: Option<UserId>,
) -> Result<(ApiKeyRecord, String), Error> {
    let mut violations = Vec::new();
    let mut bad = |field: &str, description: String| {
        violations.push(FieldViolation {
            field: field.to_owned(),
            description,
        });
    };
    let length = name.chars().count();
    if length == 0 || length > MAX_KEY_NAME_LEN {
        bad(
            "name",
            format!("must be 1 to {MAX_KEY_NAME_LEN} characters, got {length}"),
        );
    } else if name.chars().any(char::is_control) {
        bad("name", "must not contain control characters".to_owned());
    }
    match (role, user_id) {
        (None, _) => bad("role", "must be admin, service, user or worker".to_owned()),
        (Some(Role::User), None) => {
            bad("user_id", "is required for a user key (a UUID)".to_owned())
        }
        (Some(role), Some(_)) if role != Role::User => bad(
            "user_id",
            format!(
                "must be empty for a {} key: only user keys are bound to a user",
                role.as_str()
            ),
        ),
        _ => {}
    }
    let Some(role) = role.filter(|_| violations.is_empty()) else {
        return Err(Error::InvalidArgument(violations));
    };
    let key = NewKey::generate()
        .map_err(|e| Error::Internal(format!("no randomness for a new key: {e}")))?;
    let record = storage.create_key(&key, name, role, user_id).await?;
    tracing::info!(key_id = %key.id, role = role.as_str(), name, "API key created");
    Ok((record, key.text))
}

/// A key's text split into its id and the digest of its secret; `None` when it
/// is not shaped like a jobq key.
fn parse_key(text: &str) -> Option<(Uuid, [u8; 32])> {
    let rest = text.strip_prefix("jobq_")?;
    let (id, secret) = (rest.get(..32)?, rest.get(32..)?.strip_prefix('_')?);
    if secret.len() != 43
        || !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let id = Uuid::try_parse(id).ok()?;
    Some((id, Sha256::digest(secret.as_bytes()).into()))
}

/// How a request's key is checked.
#[derive(Debug, Clone)]
pub enum Authenticator {
    /// `--auth disabled`: every caller is [`Principal::LOCAL`].
    Disabled,
    /// Keys looked up in the database.
    Keys {
        /// Where keys are stored.
        storage: Storage,
        /// Concurrent lookups, shared.
        lookups: GroupCommit<Uuid, Result<Option<KeyCheck>, StorageError>>,
        /// When this process last set out to record each key's use.
        recorded: Arc<Mutex<HashMap<Uuid, Instant>>>,
    },
}

/// How often a key's `last_used_at` is written (the lookup says when it is
/// stale by the same measure).
const RECORD_USE_EVERY: Duration = Duration::from_secs(60);

/// Most keys looked up in one statement.
const LOOKUP_BATCH: usize = 256;

/// Most key lookups at once (each holds one pooled connection): one, and more
/// while the next has waited [`SPARE_AFTER`] for a slot.
const LOOKUPS_IN_FLIGHT: usize = 4;

impl Authenticator {
    /// Checks keys stored in `storage`. Every call's key is read from the
    /// database after the call arrived (concurrent calls share the statement),
    /// so a revoked key stops working on its next call on every server. Must be
    /// called within a Tokio runtime.
    pub fn keys(storage: Storage) -> Self {
        let lookups = GroupCommit::spawn(LOOKUP_BATCH, LOOKUPS_IN_FLIGHT, SPARE_AFTER, {
            let storage = storage.clone();
            move |ids: Vec<Uuid>| {
                let storage = storage.clone();
                async move { storage.keys_for_auth(&ids).await }
            }
        });
        Self::Keys {
            storage,
            lookups,
            recorded: Arc::default(),
        }
    }

    /// Whether this call is the one to record key `id`'s use: the first in
    /// this process to find it stale, and then none for a minute. Calls that
    /// arrive together all find it stale; without this they each wrote it, one
    /// after another on the key's row lock, and the first calls of a busy key
    /// every minute waited for all of those writes (issue 8's submit benchmark:
    /// its first answers took up to 135 ms).
    fn first_to_record(recorded: &Mutex<HashMap<Uuid, Instant>>, id: Uuid) -> bool {
        let mut recorded = recorded.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if recorded
            .get(&id)
            .is_some_and(|at| now.duration_since(*at) < RECORD_USE_EVERY)
        {
            return false;
        }
        if recorded.len() >= 1024 {
            recorded.retain(|_, at| now.duration_since(*at) < RECORD_USE_EVERY);
        }
        recorded.insert(id, now);
        true
    }

    /// Who sent `headers`, or why they may not call.
    async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, Error> {
        let (storage, lookups, recorded) = match self {
            Self::Disabled => return Ok(Principal::LOCAL),
            Self::Keys {
                storage,
                lookups,
                recorded,
            } => (storage, lookups, recorded),
        };
        let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
        let value = match (values.next(), values.next()) {
            (None, _) => {
                return Err(Error::Unauthenticated(
                    "missing API key: send the header `authorization: Bearer <key>`".to_owned(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(Error::Unauthenticated(
                    "more than one authorization header".to_owned(),
                ));
            }
            (Some(value), None) => value,
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Error::Unauthenticated(
                    "malformed authorization header: expected `Bearer <key>`".to_owned(),
                )
            })?;
        let unknown = || Error::Unauthenticated("unknown API key".to_owned());
        let (id, digest) = parse_key(key.trim()).ok_or_else(unknown)?;
        let stored = lookups.call(id).await??.ok_or_else(unknown)?;
        if !bool::from(stored.digest.as_slice().ct_eq(&digest)) {
            return Err(unknown());
        }
        if stored.revoked {
            return Err(Error::Unauthenticated(format!("API key {id} was revoked")));
        }
        // Recorded at most once a minute per key, by one call, which waits for
        // the write (so its use is on record when it returns); the others do
        // not wait for it. A failure to record it does not refuse the call.
        if stored.stale_last_use
            && Self::first_to_record(recorded, id)
            && let Err(error) = storage.touch_key(id).await
        {
            tracing::warn!(%error, key_id = %id, "could not record the key's use");
        }
        Ok(Principal {
            key_id: Some(id),
            role: stored.role,
            user_id: stored.user_id,
        })
    }
}

/// Admits each call: health and reflection freely; anything else with a valid key
/// whose role may call the service. Sets the request's [`Principal`].
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer checking keys with `authenticator`.
    pub fn new(authenticator: Authenticator) -> Self {
        Self {
            authenticator: Arc::new(authenticator),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let service = service_of(request.uri().path());
        if service == Target::Public {
            return Box::pin(self.inner.call(request));
        }
        // The service that was polled ready serves this call; its clone serves
        // the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = self.authenticator.clone();
        Box::pin(async move {
            let principal = match authenticator.authenticate(request.headers()).await {
                Ok(principal) => principal,
                Err(error) => return Ok(Status::from(error).into_http()),
            };
            if !(service == Target::Unknown || principal.role.may_call(service)) {
                let error = Error::PermissionDenied(format!(
                    "a {} key may not call {}",
                    principal.role.as_str(),
                    request.uri().path()
                ));
                return Ok(Status::from(error).into_http());
            }
            request.extensions_mut().insert(principal);
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_parses_back_to_its_id_and_digest() {
        let key = NewKey::generate().unwrap();
        assert!(key.text.starts_with("jobq_"));
        assert_eq!(parse_key(&key.text), Some((key.id, key.digest)));
        let other = NewKey::generate().unwrap();
        assert_ne!(key.digest, other.digest);
        assert_ne!(key.text, other.text);
    }

    #[test]
    fn text_not_shaped_like_a_key_is_refused_before_any_lookup() {
        let key = NewKey::generate().unwrap().text;
        for bad in [
            "",
            "jobq_",
            "Bearer x",
            &key[..key.len() - 1],
            &format!("{key}x"),
            &key.replace("jobq_", "jobx_"),
            &format!("jobq_{}_{}", "z".repeat(32), &key[38..]),
            &format!("{}!{}", &key[..40], &key[41..]),
            "jobq_é",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn roles_reach_their_services_only() {
        use Target::*;
        for (role, allowed) in [
            (Role::Admin, [true, true, true]),
            (Role::Service, [true, false, false]),
            (Role::User, [true, false, false]),
            (Role::Worker, [false, true, false]),
        ] {
            assert_eq!(
                [JobQueue, Worker, Admin].map(|s| role.may_call(s)),
                allowed,
                "{role:?}"
            );
        }
        assert_eq!(service_of("/jobq.v1.JobQueueService/SubmitJob"), JobQueue);
        assert_eq!(service_of("/grpc.health.v1.Health/Check"), Public);
        assert_eq!(service_of("/jobq.v1.JobQueueServiceX/SubmitJob"), Unknown);
        assert_eq!(service_of("/"), Unknown);
    }

    #[test]
    fn a_user_key_acts_for_its_user_only() {
        let me = UserId(Uuid::new_v4());
        let principal = Principal {
            key_id: Some(Uuid::new_v4()),
            role: Role::User,
            user_id: Some(me),
        };
        assert!(principal.may_act_for(me).is_ok());
        assert!(matches!(
            principal.may_act_for(UserId(Uuid::new_v4())),
            Err(Error::PermissionDenied(_))
        ));
        assert!(principal.may_watch_all().is_err());
        assert!(Principal::LOCAL.may_watch_all().is_ok());
    }
}
