//! Configuration: the command line and its environment variables (flags win),
//! parsed and validated once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sqlx::postgres::PgConnectOptions;

use crate::convert::{MAX_LEASE, MIN_LEASE, WorkerLimits};
use crate::plans::{Plans, PlansError};

/// The database jobq uses when none is configured. It is created if missing.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/jobq";

/// `jobq-server`: runs the jobq gRPC server (the default) or applies migrations.
#[derive(Debug, Parser)]
#[command(
    name = "jobq-server",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; without one, `serve`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The settings of `serve`, accepted without the word `serve` too.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (creates the database and applies migrations first).
    Serve(ServeArgs),
    /// Create the database if needed, apply the migrations, and exit.
    Migrate(DatabaseArgs),
    /// Manage API keys, directly in the database (no server needed).
    Keys(KeysArgs),
}

/// `jobq-server keys`.
#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    /// What to do with keys.
    #[command(subcommand)]
    pub action: KeysAction,
}

/// The key subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysAction {
    /// Create a key and print it (it is shown only this once).
    Create {
        /// admin (everything), service (jobs of any user), user (jobs of --user
        /// only) or worker (the worker protocol only).
        #[arg(long, value_parser = ["admin", "service", "user", "worker"])]
        role: String,
        /// The user a `user` key acts for (a UUID); only for that role.
        #[arg(long)]
        user: Option<uuid::Uuid>,
        /// A name for people to tell keys apart (1 to 100 characters).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// List the keys (never their secrets).
    List {
        /// Also list revoked keys.
        #[arg(long)]
        include_revoked: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Revoke a key: it stops working on its next call, on every server.
    Revoke {
        /// The key's id (a UUID, as `keys list` shows it).
        id: uuid::Uuid,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// Where the database is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres connection URL; the database is created if it does not exist.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, value_parser = parse_database_url)]
    pub database_url: String,
    /// Connections the server holds open to Postgres (opened at start and kept;
    /// three eighths of them, one to six, for the claims, key checks and
    /// workers' lease writes planned once).
    #[arg(long, env = "JOBQ_DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(i64::from(crate::storage::MIN_CONNECTIONS)..=1000))]
    pub db_max_connections: u32,
}

/// The settings of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "JOBQ_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// A TOML file that overrides the built-in plans' limits and adds plans.
    #[arg(long, env = "JOBQ_PLANS")]
    pub plans: Option<PathBuf>,
    /// Log output: `pretty` for people, `json` for log collectors.
    #[arg(long, env = "JOBQ_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// How often the health check asks the database whether it answers (e.g. 5s, 500ms).
    #[arg(long, env = "JOBQ_HEALTH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Lease length of a claimed job when ClaimJobs leaves it unset (1s to 1h).
    #[arg(long, env = "JOBQ_DEFAULT_LEASE", default_value = "60s", value_parser = parse_lease)]
    pub default_lease: Duration,
    /// Claims of one job before an expired lease fails it instead of requeueing it.
    #[arg(long, env = "JOBQ_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub max_attempts: i32,
    /// How often expired leases are looked for.
    #[arg(long, env = "JOBQ_REAPER_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub reaper_interval: Duration,
    /// How often a parked ClaimJobs looks at the queue without a notification (a
    /// safety net: notifications wake it at once).
    #[arg(long, env = "JOBQ_CLAIM_POLL_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub claim_poll_interval: Duration,
    /// Largest JSON document a worker may store (result, uncertain items,
    /// superfluous text, token usage), in bytes.
    #[arg(long, env = "JOBQ_MAX_DOCUMENT_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(1024..=16_777_216))]
    pub max_document_bytes: u64,
    /// Most WatchJobs streams open at once on this server.
    #[arg(long, env = "JOBQ_MAX_STREAMS", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
    /// Most WatchJobs streams open at once for one user (all-users streams share one count).
    #[arg(long, env = "JOBQ_MAX_STREAMS_PER_USER", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_user: u32,
    /// Most WatchJobs streams open at once with one API key.
    #[arg(long, env = "JOBQ_MAX_STREAMS_PER_KEY", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_key: u32,
    /// On SIGINT/SIGTERM, how long in-flight calls get to finish before the server
    /// exits anyway.
    #[arg(long, env = "JOBQ_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// `required`: every call but health and reflection needs an API key.
    /// `disabled`: anyone may do anything, for local debugging only; refused
    /// unless the listen address is loopback.
    #[arg(long, env = "JOBQ_AUTH", value_enum, default_value_t = AuthMode::Required)]
    pub auth: AuthMode,
    /// PEM certificate chain to serve TLS with (with --tls-key).
    #[arg(long, env = "JOBQ_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "JOBQ_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: when set, clients must present a certificate signed by
    /// one of them (mutual TLS). Needs --tls-cert.
    #[arg(long, env = "JOBQ_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Largest request message accepted, in bytes (larger: RESOURCE_EXHAUSTED).
    #[arg(long, env = "JOBQ_MAX_MESSAGE_BYTES", default_value_t = 8_388_608, value_parser = clap::value_parser!(u64).range(65_536..=67_108_864))]
    pub max_message_bytes: u64,
    /// Longest a unary call may run on the server (a caller's shorter deadline
    /// wins). Must exceed ClaimJobs' longest wait, 30 s.
    #[arg(long, env = "JOBQ_RPC_TIMEOUT", default_value = "60s", value_parser = parse_rpc_timeout)]
    pub rpc_timeout: Duration,
    /// Most unary calls (and stream openings) running at once on this server;
    /// further calls are refused at once with RESOURCE_EXHAUSTED (load
    /// shedding) rather than queued. Open streams are capped separately.
    #[arg(long, env = "JOBQ_MAX_CONCURRENT_CALLS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_calls: u32,
}

impl KeysAction {
    /// Where the keys are.
    pub fn database(&self) -> &DatabaseArgs {
        match self {
            Self::Create { database, .. }
            | Self::List { database, .. }
            | Self::Revoke { database, .. } => database,
        }
    }
}

/// Whether callers must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Every call but health and reflection needs a valid API key.
    Required,
    /// No keys: local debugging only (loopback addresses only).
    Disabled,
}

/// The server's TLS files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub certificate: Vec<u8>,
    /// PEM private key.
    pub key: Vec<u8>,
    /// PEM CA certificates client certificates must chain to (mutual TLS).
    pub client_ca: Option<Vec<u8>>,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The plans file.
    #[error(transparent)]
    Plans(#[from] PlansError),
    /// A TLS file could not be read.
    #[error("cannot read {flag} {}: {source}", .path.display())]
    TlsFile {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `--auth disabled` with an address other machines can reach.
    #[error(
        "--auth disabled is refused on {0}: it would let anyone who reaches that address do anything. \
         Listen on a loopback address (127.0.0.1 or ::1) to debug without keys, or keep --auth required \
         and create a key with `jobq-server keys create`"
    )]
    AuthDisabledNotLoopback(SocketAddr),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// What the server library needs to run, independent of how it was configured.
#[derive(Debug, Clone)]
pub struct Config {
    /// Postgres connection URL (the database is created if it does not exist).
    pub database_url: String,
    /// Most connections held open to Postgres.
    pub db_max_connections: u32,
    /// How often health asks the database whether it answers.
    pub health_interval: Duration,
    /// How long in-flight calls get to finish once shutdown starts.
    pub shutdown_grace: Duration,
    /// The plans limits are judged by.
    pub plans: Arc<Plans>,
    /// Bounds on what workers send and ask for.
    pub worker_limits: WorkerLimits,
    /// Claims of one job before an expired lease fails it.
    pub max_attempts: i32,
    /// How often expired leases are looked for.
    pub reaper_interval: Duration,
    /// How often a parked ClaimJobs looks without a notification.
    pub claim_poll_interval: Duration,
    /// Most WatchJobs streams open at once.
    pub max_streams: usize,
    /// Most WatchJobs streams open at once for one user.
    pub max_streams_per_user: usize,
    /// Most WatchJobs streams open at once with one API key.
    pub max_streams_per_key: usize,
    /// Whether callers must authenticate.
    pub auth: AuthMode,
    /// TLS, when served.
    pub tls: Option<TlsFiles>,
    /// Largest request message, in bytes.
    pub max_message_bytes: usize,
    /// Longest a unary call may run.
    pub rpc_timeout: Duration,
    /// Most calls running at once.
    pub max_concurrent_calls: usize,
}

impl Config {
    /// A configuration with the defaults of `jobq-server serve` for `database_url`.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            db_max_connections: 16,
            health_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            plans: Arc::new(Plans::builtin()),
            worker_limits: WorkerLimits {
                default_lease: Duration::from_secs(60),
                max_document_bytes: 1_048_576,
            },
            max_attempts: 3,
            reaper_interval: Duration::from_secs(1),
            claim_poll_interval: Duration::from_secs(10),
            max_streams: 20_000,
            max_streams_per_user: 50,
            max_streams_per_key: 10_000,
            auth: AuthMode::Required,
            tls: None,
            max_message_bytes: 8_388_608,
            rpc_timeout: Duration::from_secs(60),
            max_concurrent_calls: 1024,
        }
    }

    /// Checks that serving on `address` is safe with this configuration.
    ///
    /// # Errors
    /// [`ConfigError::AuthDisabledNotLoopback`].
    pub fn check_listen(&self, address: SocketAddr) -> Result<(), ConfigError> {
        if self.auth == AuthMode::Disabled && !address.ip().is_loopback() {
            return Err(ConfigError::AuthDisabledNotLoopback(address));
        }
        Ok(())
    }

    /// The configuration `args` describe, with the plans file and TLS files (if
    /// any) read and checked, and the listen address checked against `--auth`.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let plans = match &args.plans {
            Some(path) => Plans::load(path)?,
            None => Plans::builtin(),
        };
        let read = |flag: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|source| ConfigError::TlsFile {
                flag,
                path: path.clone(),
                source,
            })
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                certificate: read("--tls-cert", cert)?,
                key: read("--tls-key", key)?,
                client_ca: args
                    .tls_client_ca
                    .as_ref()
                    .map(|ca| read("--tls-client-ca", ca))
                    .transpose()?,
            }),
            _ => None,
        };
        let config = Self {
            database_url: args.database.database_url.clone(),
            db_max_connections: args.database.db_max_connections,
            health_interval: args.health_interval,
            shutdown_grace: args.shutdown_grace,
            plans: Arc::new(plans),
            worker_limits: WorkerLimits {
                default_lease: args.default_lease,
                max_document_bytes: usize::try_from(args.max_document_bytes).unwrap_or(usize::MAX),
            },
            max_attempts: args.max_attempts,
            reaper_interval: args.reaper_interval,
            claim_poll_interval: args.claim_poll_interval,
            max_streams: args.max_streams as usize,
            max_streams_per_user: args.max_streams_per_user as usize,
            max_streams_per_key: args.max_streams_per_key as usize,
            auth: args.auth,
            tls,
            max_message_bytes: usize::try_from(args.max_message_bytes).unwrap_or(usize::MAX),
            rpc_timeout: args.rpc_timeout,
            max_concurrent_calls: args.max_concurrent_calls as usize,
        };
        config.check_listen(args.listen)?;
        Ok(config)
    }
}

fn parse_database_url(url: &str) -> Result<String, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("must be a postgres:// or postgresql:// URL".to_owned());
    }
    PgConnectOptions::from_str(url)
        .map(|_| url.to_owned())
        .map_err(|e| format!("not a Postgres connection URL: {e}"))
}

fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = parse_duration(text)?;
    if !(MIN_LEASE..=MAX_LEASE).contains(&lease) {
        return Err(format!("must be between {MIN_LEASE:?} and {MAX_LEASE:?}"));
    }
    Ok(lease)
}

fn parse_rpc_timeout(text: &str) -> Result<Duration, String> {
    let timeout = parse_duration(text)?;
    if timeout <= crate::convert::MAX_WAIT {
        return Err(format!(
            "must be longer than ClaimJobs' longest wait ({:?})",
            crate::convert::MAX_WAIT
        ));
    }
    Ok(timeout)
}

/// Parses `250ms`, `5s`, `2m` or `1h` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. 500ms, 5s, 2m or 1h"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => return Err(format!("`{unit}` is not a unit: use ms, s, m or h")),
    };
    if duration.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn the_server_holds_two_database_connections_at_least() {
        let parse = |n: &str| Cli::try_parse_from(["jobq-server", "--db-max-connections", n]);
        let error = parse("1").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("--db-max-connections"), "{error}");
        assert!(error.contains("2..=1000"), "{error}");
        assert_eq!(parse("2").unwrap().serve.database.db_max_connections, 2);
        assert!(parse("1001").is_err());
    }

    #[test]
    fn flags_win_over_defaults_and_bad_urls_are_refused() {
        let cli = Cli::try_parse_from(["jobq-server", "--listen", "127.0.0.1:7000"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen, "127.0.0.1:7000".parse().unwrap());

        let cli = Cli::try_parse_from([
            "jobq-server",
            "migrate",
            "--database-url",
            "postgres://u@h/db",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Some(Command::Migrate(ref db)) if db.database_url == "postgres://u@h/db")
        );

        assert!(Cli::try_parse_from(["jobq-server", "--database-url", "mysql://x"]).is_err());
        assert!(Cli::try_parse_from(["jobq-server", "--log-format", "xml"]).is_err());
    }
}
