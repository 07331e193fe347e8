//! The one place where engine errors become gRPC statuses.

use tonic::{Code, Status};

use crate::error::Error;

/// The most specific gRPC code for an engine error.
pub fn code(error: &Error) -> Code {
    if error.is_disk_full() {
        return Code::ResourceExhausted;
    }
    match error {
        Error::InvalidArgument(_) | Error::BadImage(_) => Code::InvalidArgument,
        Error::TooLarge(_) | Error::Busy(_) => Code::ResourceExhausted,
        Error::NotFound(_) => Code::NotFound,
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::Unavailable(_) => Code::Unavailable,
        Error::ModelMismatch(_) => Code::FailedPrecondition,
        Error::Damaged { .. } => Code::DataLoss,
        // Start-up only: never sent to a client.
        Error::Bind { .. } => Code::Unavailable,
        Error::File { .. }
        | Error::Store { .. }
        | Error::Storage(_)
        | Error::Network { .. }
        | Error::Model(_)
        | Error::Pca(_)
        | Error::Internal(_) => Code::Internal,
    }
}

/// The status sent for an engine error; server-side faults are also logged.
pub fn to_status(error: Error) -> Status {
    let code = code(&error);
    let message = error.chain();
    if matches!(code, Code::Internal | Code::ResourceExhausted)
        && !matches!(error, Error::TooLarge(_) | Error::Busy(_))
    {
        tracing::error!(error = %message, "request failed");
    }
    Status::new(code, message)
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

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn a_full_disk_is_resource_exhausted_anywhere_in_the_chain() {
        let full = || io::Error::from(io::ErrorKind::StorageFull);
        let file = Error::file("write the re-rank codes", "/data/codes")(full());
        assert_eq!(code(&file), Code::ResourceExhausted);
        let store = Error::store("storing a record")(sled::Error::Io(full()));
        assert_eq!(code(&store), Code::ResourceExhausted);
        let other = Error::store("storing a record")(sled::Error::Io(io::Error::other("boom")));
        assert_eq!(code(&other), Code::Internal);
    }

    #[test]
    fn the_status_names_what_was_done_where_and_why() {
        let missing = Error::file("read the weights", "/models/w.safetensors")(io::Error::from(
            io::ErrorKind::NotFound,
        ));
        assert_eq!(code(&missing), Code::Internal);
        let status = to_status(missing);
        assert!(
            status
                .message()
                .starts_with("cannot read the weights '/models/w.safetensors': ")
                && status.message().contains("not found"),
            "{status:?}"
        );
        let bind = Error::Bind {
            addr: ([127, 0, 0, 1], 1).into(),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert_ne!(code(&bind), Code::InvalidArgument);
    }
}
