//! Statements on `api_keys`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Storage, StorageError};
use crate::auth::{NewKey, Role};
use crate::job::UserId;

/// An API key's record (never its secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRecord {
    /// The key's id.
    pub id: Uuid,
    /// Its name.
    pub name: String,
    /// Its role, as stored.
    pub role: String,
    /// The user a `user` key is bound to.
    pub user_id: Option<UserId>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last use, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What authenticating a key needs.
#[derive(Debug, Clone)]
pub struct KeyCheck {
    /// SHA-256 of the secret.
    pub digest: Vec<u8>,
    /// Its role.
    pub role: Role,
    /// Its bound user.
    pub user_id: Option<UserId>,
    /// Whether it was revoked.
    pub revoked: bool,
    /// Whether its recorded last use is more than a minute old.
    pub stale_last_use: bool,
}

/// The keys' lookup of [`Storage::keys_for_auth`], `$1` the key ids: run on
/// the connections that plan once (see [`super::PLANNED_ONCE_SETTINGS`]),
/// where the primary key, `api_keys`' only index, is its one plan.
#[doc(hidden)]
pub const KEY_LOOKUP: &str = "SELECT id, digest, role, user_id, revoked_at IS NOT NULL AS revoked,
        (last_used_at IS NULL OR last_used_at < now() - interval '1 minute') AS stale_last_use
 FROM api_keys WHERE id = ANY($1)";

impl Storage {
    /// Stores `key` (its digest) with `name`, `role` and `user_id`.
    pub async fn create_key(
        &self,
        key: &NewKey,
        name: &str,
        role: Role,
        user_id: Option<UserId>,
    ) -> Result<ApiKeyRecord, StorageError> {
        let record = sqlx::query_as::<_, ApiKeyRecord>(
            "INSERT INTO api_keys (id, name, role, user_id, digest)
             VALUES ($1, $2, $3, $4, $5)
             RETURNING id, name, role, user_id, created_at, last_used_at, revoked_at",
        )
        .bind(key.id)
        .bind(name)
        .bind(role.as_str())
        .bind(user_id)
        .bind(key.digest.as_slice())
        .fetch_one(&self.pool)
        .await?;
        Ok(record)
    }

    /// Every key, oldest first; revoked ones only if `include_revoked`.
    pub async fn list_keys(
        &self,
        include_revoked: bool,
    ) -> Result<Vec<ApiKeyRecord>, StorageError> {
        let keys = sqlx::query_as::<_, ApiKeyRecord>(
            "SELECT id, name, role, user_id, created_at, last_used_at, revoked_at
             FROM api_keys WHERE $1 OR revoked_at IS NULL
             ORDER BY created_at, id",
        )
        .bind(include_revoked)
        .fetch_all(&self.pool)
        .await?;
        Ok(keys)
    }

    /// Revokes key `id` (again: a no-op keeping the first revocation time);
    /// `None` when there is no such key.
    pub async fn revoke_key(&self, id: Uuid) -> Result<Option<ApiKeyRecord>, StorageError> {
        let key = sqlx::query_as::<_, ApiKeyRecord>(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
             WHERE id = $1
             RETURNING id, name, role, user_id, created_at, last_used_at, revoked_at",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(key)
    }

    /// What authenticating each key of `ids` needs (`None` for an unknown key),
    /// in one statement: concurrent calls share it (see
    /// [`crate::group_commit`]), and each still reads the key after it arrived,
    /// so a revocation committed before a call always refuses it.
    pub async fn keys_for_auth(&self, ids: &[Uuid]) -> Vec<Result<Option<KeyCheck>, StorageError>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            id: Uuid,
            digest: Vec<u8>,
            role: String,
            user_id: Option<UserId>,
            revoked: bool,
            stale_last_use: bool,
        }
        let rows = sqlx::query_as::<_, Row>(KEY_LOOKUP)
            .bind(ids)
            .fetch_all(&self.planned_once)
            .await;
        let rows: HashMap<Uuid, Row> = match rows {
            Ok(rows) => rows.into_iter().map(|row| (row.id, row)).collect(),
            Err(error) => {
                let error = StorageError::from(error);
                return ids.iter().map(|_| Err(error.shared())).collect();
            }
        };
        ids.iter()
            .map(|id| {
                let Some(row) = rows.get(id) else {
                    return Ok(None);
                };
                let role = Role::parse(&row.role).ok_or_else(|| {
                    StorageError::Other(sqlx::Error::Protocol(format!(
                        "api_keys row {id} has an unknown role {}",
                        row.role
                    )))
                })?;
                Ok(Some(KeyCheck {
                    digest: row.digest.clone(),
                    role,
                    user_id: row.user_id,
                    revoked: row.revoked,
                    stale_last_use: row.stale_last_use,
                }))
            })
            .collect()
    }

    /// Records that key `id` was used now (at most once a minute).
    pub async fn touch_key(&self, id: Uuid) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = now()
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
