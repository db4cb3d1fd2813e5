//! `jobq-server`: parses the command line and runs the server or a subcommand.

use std::process::ExitCode;

use clap::Parser;
use jobq_server::config::{Cli, Command, LogFormat};
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
