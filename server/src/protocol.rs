//! Gives the right gRPC code to the refusals tonic makes before a handler runs.
//!
//! tonic answers a request it cannot decode (not protobuf, a string that is not
//! UTF-8, nesting past the decoder's recursion limit) with INTERNAL, following the
//! gRPC status code guide, and one over the size limit with OUT_OF_RANGE. Both
//! are the caller's doing, and in jobq's contract bad input is INVALID_ARGUMENT
//! and INTERNAL means a bug here, so this layer rewrites them to INVALID_ARGUMENT
//! and RESOURCE_EXHAUSTED (the guide's code for a request larger than the server
//! accepts), keeping tonic's explanation.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::HeaderValue;
use tonic::Code;
use tower::{Layer, Service};

/// See the module documentation.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestStatusLayer;

impl<S> Layer<S> for RequestStatusLayer {
    type Service = RequestStatus<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestStatus { inner }
    }
}

/// The service [`RequestStatusLayer`] makes.
#[derive(Debug, Clone)]
pub struct RequestStatus<S> {
    inner: S,
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

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestStatus<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            // These refusals come before any message, so their status is in the
            // headers (a trailers-only response).
            let headers = response.headers();
            let code = headers
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(Code::from);
            let message = headers
                .get("grpc-message")
                .and_then(|v| v.to_str().ok())
                .map(percent_decode)
                .unwrap_or_default();
            if let Some(code) = code.and_then(|code| corrected(code, &message)) {
                response
                    .headers_mut()
                    .insert("grpc-status", HeaderValue::from(code as i32));
            }
            Ok(response)
        })
    }
}

/// grpc-message is percent-encoded; enough of it is decoded here to compare
/// prefixes (tonic encodes spaces and punctuation).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => match std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    out.push(b'%');
                    i += 1;
                }
            },
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

    #[test]
    fn grpc_messages_are_read_back() {
        assert_eq!(
            percent_decode("failed%20to%20decode%20Protobuf%20message%3A%20x"),
            "failed to decode Protobuf message: x"
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
