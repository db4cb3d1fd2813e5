//! Limits on calls, and the right gRPC code for refusals made before a handler
//! runs.
//!
//! The layer sheds load: beyond `--max-concurrent-calls` calls at once (unary
//! calls until their answer, streams until their first headers) a call is
//! refused at once with RESOURCE_EXHAUSTED instead of queueing.
//!
//! tonic answers a request it cannot decode (not protobuf, a string that is not
//! UTF-8, nesting past the decoder's recursion limit) with INTERNAL, following the
//! gRPC status code guide, and one over the size limit with OUT_OF_RANGE. Both
//! are the caller's doing, and in jobq's contract bad input is INVALID_ARGUMENT
//! and INTERNAL means a bug here, so this layer rewrites them to INVALID_ARGUMENT
//! and RESOURCE_EXHAUSTED (the guide's code for a request larger than the server
//! accepts), keeping tonic's explanation.
//!
//! It also cuts a call that runs past the server's own limit (`--rpc-timeout`)
//! with DEADLINE_EXCEEDED. (tonic's `Server::timeout` would answer CANCELLED
//! "Timeout expired" instead; the caller's own deadline, sent as `grpc-timeout`,
//! is still tonic's to enforce, and the caller sees its own DEADLINE_EXCEEDED.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::Semaphore;
use tonic::Code;
use tower::{Layer, Service};

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct CallLimitsLayer {
    rpc_timeout: Duration,
    admission: Arc<Semaphore>,
    max_calls: usize,
}

impl CallLimitsLayer {
    /// Cuts calls still unanswered after `rpc_timeout`, and admits at most
    /// `max_calls` at once.
    pub fn new(rpc_timeout: Duration, max_calls: usize) -> Self {
        Self {
            rpc_timeout,
            admission: Arc::new(Semaphore::new(max_calls)),
            max_calls,
        }
    }
}

impl<S> Layer<S> for CallLimitsLayer {
    type Service = CallLimits<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallLimits {
            inner,
            limits: self.clone(),
        }
    }
}

/// The service [`CallLimitsLayer`] makes.
#[derive(Debug, Clone)]
pub struct CallLimits<S> {
    inner: S,
    limits: CallLimitsLayer,
}

/// tonic's message for a request it could not decode.
const UNDECODABLE: &str = "failed to decode Protobuf message";
/// tonic's message for a request over the size limit.
const TOO_LARGE: &str = "Error, decoded message length too large";

/// The code a refusal should carry, when tonic gave it another.
fn corrected(code: Code, message: &str) -> Option<Code> {
    match code {
        Code::Internal if message.starts_with(UNDECODABLE) => Some(Code::InvalidArgument),
        Code::OutOfRange if message.starts_with(TOO_LARGE) => Some(Code::ResourceExhausted),
        _ => None,
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CallLimits<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        // Taken before the call starts, held until its answer (or a stream's
        // first headers): a full server refuses at once instead of queueing.
        let Ok(permit) = self.limits.admission.clone().try_acquire_owned() else {
            let refusal = tonic::Status::resource_exhausted(format!(
                "the server is at its limit of {} calls at once (--max-concurrent-calls); retry shortly",
                self.limits.max_calls
            ));
            return Box::pin(async move { Ok(refusal.into_http()) });
        };
        let response = self.inner.call(request);
        let limit = self.limits.rpc_timeout;
        Box::pin(async move {
            let _permit = permit;
            // The response future ends with the answer of a unary call, and with
            // the first headers of a stream (whose messages then flow freely).
            let Ok(response) = tokio::time::timeout(limit, response).await else {
                return Ok(tonic::Status::deadline_exceeded(format!(
                    "the call ran past the server's limit of {limit:?} (--rpc-timeout)"
                ))
                .into_http());
            };
            let mut response = response?;
            // These refusals come before any message, so their status is in the
            // headers (a trailers-only response).
            let correction = tonic::Status::from_header_map(response.headers())
                .and_then(|status| corrected(status.code(), status.message()));
            if let Some(code) = correction {
                response
                    .headers_mut()
                    .insert("grpc-status", HeaderValue::from(code as i32));
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decoding_refusals_are_recoded() {
        assert_eq!(
            corrected(
                Code::Internal,
                "failed to decode Protobuf message: invalid wire type"
            ),
            Some(Code::InvalidArgument)
        );
        assert_eq!(
            corrected(
                Code::OutOfRange,
                "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes"
            ),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(corrected(Code::Internal, "internal error"), None);
        assert_eq!(corrected(Code::OutOfRange, "page out of range"), None);
    }
}
