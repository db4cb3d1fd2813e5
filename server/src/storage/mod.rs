//! Every SQL statement jobq runs, the embedded migrations, and database creation.
//!
//! Queries are built at run time (`sqlx::query_as` with `bind`), so building jobq
//! needs no live database; the end-to-end tests cover each statement.

/// The columns of [`Job`], in one place for every statement that returns jobs.
/// The claim function `jobq_claim` (migrations 0010 and 0013) returns them too, and
/// lists them itself in SQL: a column added here must be added there.
macro_rules! job_columns {
    () => {
        "id, user_id, image_url, image_hash, status, schema_version, prompt_version, \
         result, error_message, processing_time, retry_count, retry_of_job_id, attempt, \
         token_usage, confidence, uncertain_items, superfluous_text, created_at, \
         updated_at, started_at, completed_at, version, cancel_requested"
    };
}

/// The bookkeeping columns of a write that always changes a job, set by the
/// statement itself: a new version, the time, and the transaction, exactly as
/// the version trigger would set them (migration 0009 runs the trigger only
/// for writes that leave `version` alone, and so skips it for these).
/// `jobq_claim` (migrations 0010 and 0013) writes the same three in SQL.
macro_rules! touched {
    () => {
        "version = nextval('menu_extraction_jobs_version_seq'), updated_at = now(), \
         changed_xid = pg_current_xact_id()"
    };
}

/// The clock and the stored plans of the users whose submission locks the
/// transaction holds (see [`usage::begin_locked`]): a one-row query named
/// `head` over `$1` (the users' ids), with columns `now`, `plan_users` and
/// `plans`. Read in a statement after the locks, so `now` is after every lock
/// was granted: the instant every limit is judged at, and the `created_at` of
/// the jobs inserted under them.
macro_rules! submission_head {
    () => {
        "head AS MATERIALIZED (
             SELECT clock_timestamp() AS now, p.plan_users, p.plans
             FROM (SELECT array_agg(user_id) AS plan_users, array_agg(plan) AS plans
                   FROM user_plans WHERE user_id = ANY($1::uuid[])) AS p
         )"
    };
}

pub mod changes;
pub mod jobs;
pub mod keys;
pub mod leases;
pub mod submit;
pub mod usage;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

/// The migrations in `server/migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A database error, classified once so that callers never see its text.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database could not be reached (connection refused or lost, pool exhausted).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The transaction lost a serialization or deadlock conflict; retrying may succeed.
    #[error("serialization failure: {0}")]
    SerializationFailure(#[source] sqlx::Error),
    /// A unique constraint refused a row.
    #[error("unique violation on {constraint}")]
    UniqueViolation {
        /// The constraint's name.
        constraint: String,
        /// The error itself.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Anything else: a bug in a statement, or a database in a state jobq does not know.
    #[error("database error: {0}")]
    Other(#[source] sqlx::Error),
}

impl StorageError {
    /// The same error again, for each of several calls that shared the
    /// statement that failed: same class and text, without the source.
    pub fn shared(&self) -> Self {
        let again = || sqlx::Error::Protocol(self.to_string());
        match self {
            Self::Unavailable(_) => Self::Unavailable(again()),
            Self::SerializationFailure(_) => Self::SerializationFailure(again()),
            Self::UniqueViolation { constraint, .. } => Self::UniqueViolation {
                constraint: constraint.clone(),
                source: again(),
            },
            Self::Migrate(_) | Self::Other(_) => Self::Other(again()),
        }
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error),
            sqlx::Error::Database(db) => match db.code().as_deref() {
                // serialization_failure, deadlock_detected
                Some("40001" | "40P01") => Self::SerializationFailure(error),
                Some("23505") => Self::UniqueViolation {
                    constraint: db.constraint().unwrap_or_default().to_owned(),
                    source: error,
                },
                // Class 08 (connection exception), 57P01-57P03 (admin shutdown,
                // crash shutdown, cannot connect now), 53300 (too many connections),
                // 3D000 (database does not exist), 55000 (object not in prerequisite
                // state: what a database that does not accept connections answers).
                Some(code)
                    if code.starts_with("08")
                        || matches!(
                            code,
                            "57P01" | "57P02" | "57P03" | "53300" | "3D000" | "55000"
                        ) =>
                {
                    Self::Unavailable(error)
                }
                _ => Self::Other(error),
            },
            _ => Self::Other(error),
        }
    }
}

/// How the server's connections plan, set when each connects.
///
/// - Every statement is planned for the values it runs with
///   (`plan_cache_mode`, see [`Storage::open`]); a submission transaction sets
///   its own (see [`usage::SUBMISSION_PLANNING`]), and so does the claim
///   function (see [`leases::CLAIM`]). The few statements that have one plan
///   whatever the statistics run on connections of their own that plan them
///   once (see [`PLANNED_ONCE_SETTINGS`]).
/// - No bitmap scans. jobq's reads that may match many rows are ordered and
///   limited (claims, ListJobs pages, lease expiry), and must walk an index in
///   order and stop; a bitmap scan reads every match first and then sorts
///   them. Postgres picks one when its statistics say few rows match, which is
///   what they say of the queue until the next ANALYZE after a backlog builds
///   (see [`leases::CLAIM`]). The other reads (by key, a user's counts, a
///   watch's catch-up by transaction) read the same rows by an index scan.
#[doc(hidden)]
pub const PLANNER_SETTINGS: [(&str, &str); 2] = [
    ("plan_cache_mode", "force_custom_plan"),
    ("enable_bitmapscan", "off"),
];

/// How the connections for statements planned once plan: a generic plan, made
/// at a statement's first execution on the connection and kept, with
/// sequential and bitmap scans off. Only statements that have a single plan
/// whatever the statistics say run there, so a plan made while a table was
/// empty is still the plan for a million rows:
///
/// - the claim, `SELECT ... FROM jobq_claim(...)`: a function scan, nothing to
///   choose (the function plans its own statements once, see
///   [`leases::CLAIM`]);
/// - the API-key lookup by `id = ANY($1)`: `api_keys` has one index, its
///   primary key, and with sequential scans off it is the only way in;
/// - a worker's writes under its leases, each by job id (`id = ANY($1)` or
///   `id = $1`, with `status = 'processing'`): completions, failures,
///   heartbeats, the reading of why a lease was refused, and claims given
///   back. Since migration 0014 the primary key is the jobs table's only
///   index holding an id that such a statement can use (before it, a generic
///   plan made on the empty, analyzed table read the user's jobs index whole,
///   which held the id as its third column).
///
/// Planned at each execution, these cost more than they ran: in issue 8's
/// steady benchmark (`pg_stat_statements`, 30 s), 19,054 key lookups spent
/// 880 ms planning and 206 ms running, 13,009 claims 238 ms planning, and
/// 8,186 completions 1.2 s planning.
#[doc(hidden)]
pub const PLANNED_ONCE_SETTINGS: [(&str, &str); 3] = [
    ("plan_cache_mode", "force_generic_plan"),
    ("enable_seqscan", "off"),
    ("enable_bitmapscan", "off"),
];

/// The fewest connections the server can hold (`--db-max-connections`): one
/// for the statements planned once, and one for every other.
pub const MIN_CONNECTIONS: u32 = 2;

/// Connections for the statements planned once (see
/// [`PLANNED_ONCE_SETTINGS`]) out of `max_connections` in all: three eighths,
/// at least one and at most six (two claim statements at a time, two
/// completion statements, key lookups, and a worker's single writes).
fn planned_once_share(max_connections: u32) -> u32 {
    (max_connections.saturating_mul(3) / 8).clamp(1, 6)
}

/// The connection pools and every query over them.
#[derive(Debug, Clone)]
pub struct Storage {
    /// Every statement but those planned once.
    pool: PgPool,
    /// The statements planned once (see [`PLANNED_ONCE_SETTINGS`]).
    planned_once: PgPool,
}

impl Storage {
    /// Creates the database if it does not exist, connects, and applies the
    /// migrations (several servers starting at once take turns on a lock).
    /// Holds `max_connections` in all, at least [`MIN_CONNECTIONS`].
    pub async fn open(database_url: &str, max_connections: u32) -> Result<Self, StorageError> {
        create_database_if_missing(database_url).await?;
        let total = max_connections.max(MIN_CONNECTIONS);
        let once = planned_once_share(total);
        // On the main pool every statement is planned for the values it runs
        // with. A plan cached for every value (Postgres's generic plan) is
        // made from the table's statistics at the time: made while the table
        // was small, a claim's generic plan was a sequential scan, kept until
        // the next ANALYZE while the table grew. Statements are still parsed
        // only once per connection. A submission transaction and the claim
        // function (migration 0010) set their own planning, with statements
        // written so that no statistics can make their plans bad (see
        // usage::SUBMISSION_PLANNING and leases::CLAIM).
        let url = PgConnectOptions::from_str(database_url)?.application_name("jobq-server");
        let pool = fixed_pool(url.clone().options(PLANNER_SETTINGS), total - once).await?;
        MIGRATOR.run(&pool).await?;
        // The statements that have one plan whatever the statistics run on a
        // pool of their own that plans each once (PLANNED_ONCE_SETTINGS). It
        // connects after the migrations, so what those plans rely on (the
        // claim function, migration 0014's indexes) exists when they are made.
        let planned_once = fixed_pool(url.options(PLANNED_ONCE_SETTINGS), once).await?;
        Ok(Self { pool, planned_once })
    }

    /// Asks the database whether it answers.
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection; later queries fail as unavailable.
    pub async fn close(&self) {
        self.pool.close().await;
        self.planned_once.close().await;
    }
}

/// A pool of `size` connections with `options`, every one opened at start and
/// kept: a connection opened under load (TCP, TLS, startup, then each statement
/// prepared and planned anew) held the calls behind it for ~100 ms, issue 8's
/// submit p99.
async fn fixed_pool(options: PgConnectOptions, size: u32) -> Result<PgPool, StorageError> {
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .min_connections(size)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?)
}

async fn create_database_if_missing(database_url: &str) -> Result<(), StorageError> {
    if Postgres::database_exists(database_url).await? {
        return Ok(());
    }
    match Postgres::create_database(database_url).await {
        Ok(()) => {
            tracing::info!("created the database");
            Ok(())
        }
        // Another server created it between the check and the CREATE.
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04" | "23505")) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_eighths_of_the_connections_one_to_six_are_planned_once() {
        let split = |n| (planned_once_share(n), n - planned_once_share(n));
        assert_eq!(split(MIN_CONNECTIONS), (1, 1));
        assert_eq!(split(4), (1, 3));
        assert_eq!(split(8), (3, 5));
        assert_eq!(split(16), (6, 10));
        assert_eq!(split(1000), (6, 994));
        assert_eq!(planned_once_share(u32::MAX), 6);
    }
}
