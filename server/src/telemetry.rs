//! Logging: the subscriber, and a tower layer that gives every RPC one span and
//! one line with its method, gRPC code and latency.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber: `RUST_LOG` filters (default `info`, without
/// the notices Postgres sends while migrations run).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Wraps every RPC in a `rpc` span and logs its outcome.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLogLayer;

impl<S> Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcLog { inner }
    }
}

/// The service [`RpcLogLayer`] makes.
#[derive(Debug, Clone)]
pub struct RpcLog<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RpcLog<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let span = tracing::info_span!("rpc", method = %request.uri().path());
        let started = Instant::now();
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let response = response.await;
                let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
                match &response {
                    Ok(response) => log_code(code_of(response), latency_ms),
                    Err(error) => tracing::error!(%error, latency_ms, "rpc failed in transport"),
                }
                response
            }
            .instrument(span),
        )
    }
}

/// The gRPC code of a response as its headers tell it. An error is sent in the
/// headers (trailers-only); a response whose headers carry no code is under way
/// (for a stream, its final code comes later in the trailers).
fn code_of<B>(response: &http::Response<B>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from)
}

fn log_code(code: Code, latency_ms: f64) {
    let name = format!("{code:?}");
    match code {
        Code::Internal | Code::Unknown | Code::DataLoss => {
            tracing::error!(code = %name, latency_ms, "rpc")
        }
        Code::Unavailable | Code::DeadlineExceeded => {
            tracing::warn!(code = %name, latency_ms, "rpc")
        }
        _ => tracing::info!(code = %name, latency_ms, "rpc"),
    }
}
