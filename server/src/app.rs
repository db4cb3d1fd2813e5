//! Wiring: storage, services, health, reflection, and serving until shutdown.

use std::future::Future;
use std::time::Duration;

use jobq_proto::pb::admin_service_server::AdminServiceServer;
use jobq_proto::pb::job_queue_service_server::JobQueueServiceServer;
use jobq_proto::pb::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use crate::auth::{AuthLayer, Authenticator};
use crate::config::{AuthMode, Config, ConfigError};
use crate::grpc::admin::AdminApi;
use crate::grpc::jobs::{JobQueueApi, Watching};
use crate::grpc::worker::WorkerApi;
use crate::handoff::Handoff;
use crate::protocol::CallLimitsLayer;
use crate::storage::{Storage, StorageError};
use crate::telemetry::RpcLogLayer;
use crate::watch::{self as change_feed, ChangeFeed, StreamSlots};
use crate::{health, reaper};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The database could not be created, reached or migrated.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The reflection service could not load the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Serving failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The configuration cannot be served as it is.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A jobq server whose database is ready (created and migrated).
#[derive(Debug)]
pub struct App {
    config: Config,
    storage: Storage,
    handoff: Handoff,
}

impl App {
    /// Creates the database if it is missing, connects and applies migrations.
    pub async fn prepare(config: Config) -> Result<Self, AppError> {
        let plans: Vec<_> = config.plans.names().collect();
        tracing::info!(?plans, "plans loaded");
        let storage = Storage::open(&config.database_url, config.db_max_connections).await?;
        Ok(Self {
            config,
            storage,
            handoff: Handoff::new(),
        })
    }

    /// Applies the migrations and returns (`jobq-server migrate`).
    pub async fn migrate(database_url: &str) -> Result<(), AppError> {
        let storage = Storage::open(database_url, 1).await?;
        storage.close().await;
        Ok(())
    }

    /// Serves gRPC on `listener` until `shutdown` completes, then stops accepting,
    /// lets in-flight calls finish for the configured grace period, and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AppError> {
        let Self {
            config,
            storage,
            handoff,
        } = self;
        if let Ok(address) = listener.local_addr() {
            config.check_listen(address)?;
        }
        let authenticator = match config.auth {
            AuthMode::Required => Authenticator::keys(storage.clone()),
            AuthMode::Disabled => {
                tracing::warn!(
                    "AUTHENTICATION IS DISABLED (--auth disabled): every caller may do \
                     anything. For local debugging only; this server listens on loopback only."
                );
                Authenticator::Disabled
            }
        };
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health::set_all(&health_reporter, ServingStatus::NotServing).await;

        let reflection_v1 = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;

        let (stop_tx, stop_rx) = watch::channel(false);
        let feed = ChangeFeed::new();
        let listener_task = tokio::spawn(change_feed::listen(
            storage.clone(),
            config.database_url.clone(),
            feed.clone(),
            stop_rx.clone(),
        ));
        let watching = Watching {
            feed: feed.clone(),
            slots: StreamSlots::new(
                config.max_streams_per_user,
                config.max_streams_per_key,
                config.max_streams,
            ),
            stop: stop_rx.clone(),
        };
        let reaper_task = tokio::spawn(reaper::run(
            storage.clone(),
            config.reaper_interval,
            config.max_attempts,
            stop_rx.clone(),
        ));
        let worker_api = WorkerApi::new(
            storage.clone(),
            feed.clone(),
            handoff.clone(),
            config.worker_limits,
            config.claim_poll_interval,
            stop_rx.clone(),
        );
        let probe = tokio::spawn(health::probe(
            storage.clone(),
            health_reporter.clone(),
            config.health_interval,
            feed.listening(),
            stop_rx.clone(),
        ));

        let mut stopping = stop_rx.clone();
        let mut server = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        if let Some(tls) = &config.tls {
            let mut tls_config =
                ServerTlsConfig::new().identity(Identity::from_pem(&tls.certificate, &tls.key));
            if let Some(ca) = &tls.client_ca {
                tls_config = tls_config.client_ca_root(Certificate::from_pem(ca));
            }
            server = server.tls_config(tls_config)?;
        }
        let max_message = config.max_message_bytes;
        let router = server
            .layer(RpcLogLayer)
            // Sheds calls beyond max_concurrent_calls, cuts a call past
            // rpc_timeout, and gives tonic's own refusals their right codes.
            .layer(CallLimitsLayer::new(
                config.rpc_timeout,
                config.max_concurrent_calls,
            ))
            .layer(AuthLayer::new(authenticator))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                JobQueueServiceServer::new(JobQueueApi::new(
                    storage.clone(),
                    config.plans.clone(),
                    watching,
                    handoff,
                ))
                .max_decoding_message_size(max_message),
            )
            .add_service(
                WorkerServiceServer::new(worker_api).max_decoding_message_size(max_message),
            )
            .add_service(
                AdminServiceServer::new(AdminApi::new(storage.clone(), config.plans.clone()))
                    .max_decoding_message_size(max_message),
            );
        match listener.local_addr() {
            Ok(address) => tracing::info!(listen = %address, "serving"),
            Err(_) => tracing::info!("serving"),
        }
        // TCP_NODELAY: without it, small answers wait for the peer's delayed ACK
        // (about 40 ms each on Linux).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let serving = router.serve_with_incoming_shutdown(incoming, async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        });
        tokio::pin!(serving);

        let result = tokio::select! {
            result = &mut serving => result,
            () = shutdown => {
                tracing::info!(grace_ms = config.shutdown_grace.as_millis(), "shutting down");
                // Health first, so balancers stop sending; then stop accepting.
                health::set_all(&health_reporter, ServingStatus::NotServing).await;
                let _ = stop_tx.send(true);
                drain(&mut serving, config.shutdown_grace).await
            }
        };
        let _ = stop_tx.send(true);
        let _ = probe.await;
        let _ = listener_task.await;
        let _ = reaper_task.await;
        // A call cut off by the grace period may still hold a connection: do not
        // wait for it forever.
        if tokio::time::timeout(Duration::from_secs(2), storage.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections still in use at exit");
        }
        tracing::info!("stopped");
        Ok(result?)
    }

    /// The storage this server uses.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The server's parked claims (see [`crate::handoff`]).
    pub fn handoff(&self) -> &Handoff {
        &self.handoff
    }
}

async fn drain<F>(
    serving: &mut std::pin::Pin<&mut F>,
    grace: Duration,
) -> Result<(), tonic::transport::Error>
where
    F: Future<Output = Result<(), tonic::transport::Error>>,
{
    match tokio::time::timeout(grace, serving.as_mut()).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!("grace period over with calls still open: closing them");
            Ok(())
        }
    }
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(jobq_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}
