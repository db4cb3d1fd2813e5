//! `jobq-server`: parses the command line and runs the server or a subcommand.

use std::process::ExitCode;

use clap::Parser;
use jobq_server::auth::{self, Role};
use jobq_server::config::{Cli, Command, KeysAction, KeysArgs, LogFormat};
use jobq_server::job::UserId;
use jobq_server::storage::Storage;
use jobq_server::storage::keys::ApiKeyRecord;
use jobq_server::{App, Config, telemetry};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Migrate(database)) => {
            telemetry::init(LogFormat::Pretty);
            App::migrate(&database.database_url)
                .await
                .map_err(|e| e.to_string())
        }
        Some(Command::Keys(args)) => keys(args).await,
        Some(Command::Serve(args)) => serve(&args).await,
        None => serve(&cli.serve).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "jobq-server failed");
            eprintln!("jobq-server: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: &jobq_server::config::ServeArgs) -> Result<(), String> {
    telemetry::init(args.log_format);
    let config = Config::load(args).map_err(|e| e.to_string())?;
    let app = App::prepare(config).await.map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    app.serve(listener, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// `jobq-server keys ...`: straight to the database, so the first admin key can
/// be made before any server runs.
async fn keys(args: KeysArgs) -> Result<(), String> {
    let storage = Storage::open(&args.action.database().database_url, 2)
        .await
        .map_err(|e| e.to_string())?;
    let result = match args.action {
        KeysAction::Create {
            role, user, name, ..
        } => {
            auth::create_key(&storage, &name, Role::parse(&role), user.map(UserId))
                .await
                .map(|(record, text)| {
                    // The key alone on stdout, for scripts; the rest on stderr.
                    println!("{text}");
                    eprintln!(
                        "created {} key {} ({}): store it now, it is not shown again",
                        record.role, record.id, record.name
                    );
                })
                .map_err(|e| e.to_string())
        }
        KeysAction::List {
            include_revoked, ..
        } => storage
            .list_keys(include_revoked)
            .await
            .map(|keys| print_keys(&keys))
            .map_err(|e| e.to_string()),
        KeysAction::Revoke { id, .. } => match storage.revoke_key(id).await {
            Ok(Some(record)) => {
                println!(
                    "revoked key {} ({}, {})",
                    record.id, record.role, record.name
                );
                Ok(())
            }
            Ok(None) => Err(format!("no key {id}")),
            Err(e) => Err(e.to_string()),
        },
    };
    storage.close().await;
    result
}

fn print_keys(keys: &[ApiKeyRecord]) {
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
        at.map_or_else(
            || "-".to_owned(),
            |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
    };
    println!(
        "{:<36}  {:<7}  {:<36}  {:<20}  {:<20}  {:<20}  NAME",
        "ID", "ROLE", "USER", "CREATED", "LAST USED", "REVOKED"
    );
    for key in keys {
        println!(
            "{:<36}  {:<7}  {:<36}  {:<20}  {:<20}  {:<20}  {}",
            key.id,
            key.role,
            key.user_id
                .map_or_else(|| "-".to_owned(), |u| u.0.to_string()),
            time(Some(key.created_at)),
            time(key.last_used_at),
            time(key.revoked_at),
            key.name
        );
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
