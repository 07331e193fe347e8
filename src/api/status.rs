//! The one place where engine errors become gRPC statuses.

use tonic::{Code, Status};

use crate::error::Error;

/// The most specific gRPC code for an engine error.
pub fn code(error: &Error) -> Code {
    match error {
        Error::InvalidArgument(_) | Error::BadImage(_) => Code::InvalidArgument,
        Error::TooLarge(_) => Code::ResourceExhausted,
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::Unavailable(_) => Code::Unavailable,
        Error::ModelMismatch(_) => Code::FailedPrecondition,
        Error::Storage(_) | Error::Model(_) | Error::Pca(_) | Error::Internal(_) => Code::Internal,
    }
}

/// The status sent for an engine error; server-side faults are also logged.
pub fn to_status(error: Error) -> Status {
    let code = code(&error);
    if code == Code::Internal {
        tracing::error!(error = %error, "request failed");
    }
    Status::new(code, error.to_string())
}

/// The wire value of grpc-status for OUT_OF_RANGE and RESOURCE_EXHAUSTED.
const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// tonic refuses a request over the receive limit with OUT_OF_RANGE; gRPC
/// clients expect RESOURCE_EXHAUSTED for "message too large". The service
/// itself never answers OUT_OF_RANGE, so every such trailers-only response
/// is the limit, and its code is rewritten (the message is kept).
pub fn oversize_as_resource_exhausted<B>(
    mut response: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let headers = response.headers_mut();
    if headers
        .get("grpc-status")
        .is_some_and(|v| v == OUT_OF_RANGE)
    {
        headers.insert(
            "grpc-status",
            tonic::codegen::http::HeaderValue::from_static(RESOURCE_EXHAUSTED),
        );
    }
    response
}
