//! API keys: who may call what.
//!
//! With no key configured every call is allowed (the daemon listens on
//! loopback by default). With `--api-key` and/or `--read-only-api-key`, a
//! call must carry one, as gRPC metadata `authorization: Bearer KEY` or
//! `x-api-key: KEY`:
//!
//! | method | needs |
//! |---|---|
//! | `grpc.health.v1.Health/*` | nothing (probes) |
//! | reflection | either key |
//! | `Query`, `Compare`, `Get`, `Stats`, `Groups`, `List`, `ListReviews` | either key |
//! | `Insert`, `InsertStream`, `Delete`, `Review`, `Snapshot`, anything else | the full key |
//!
//! A missing or wrong key is UNAUTHENTICATED; the read-only key on a write
//! is PERMISSION_DENIED. Keys are compared in constant time (SHA-256 of
//! each side, then a comparison that does not stop at the first difference),
//! and never logged. The check is a tower layer in front of every service,
//! so it runs before a request's body is read.

use std::{
    fmt,
    path::Path,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::{Either, Ready};
use sha2::{Digest, Sha256};
use tonic::{codegen::http, Status};
use tower::{Layer, Service};

use crate::error::{Error, Result};

/// A key as given on the command line or in a file; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The key in a file (a Kubernetes secret, say), without the trailing
    /// newline editors and `echo` add.
    pub fn from_file(path: &Path) -> Result<Secret> {
        let text = std::fs::read_to_string(path).map_err(Error::file("read the API key", path))?;
        text.trim_end_matches(['\n', '\r']).parse()
    }

    fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }

    /// The key, for a client to send.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = Error;

    fn from_str(key: &str) -> Result<Secret> {
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "an API key must not be empty".into(),
            ));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::InvalidArgument(
                "an API key must be printable ASCII without spaces (it travels in a header)".into(),
            ));
        }
        Ok(Secret(key.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What a call may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Access {
    None,
    Read,
    Write,
}

/// What a method needs.
fn required(path: &str) -> Access {
    const READS: [&str; 7] = [
        "Query",
        "Compare",
        "Get",
        "Stats",
        "Groups",
        "List",
        "ListReviews",
    ];
    if path.starts_with("/grpc.health.v1.Health/") {
        return Access::None;
    }
    if path.starts_with("/grpc.reflection.") {
        return Access::Read;
    }
    match path.strip_prefix("/lookalike.v1.Lookalike/") {
        Some(method) if READS.contains(&method) => Access::Read,
        _ => Access::Write,
    }
}

/// The configured keys, as digests.
#[derive(Clone, Default)]
pub struct Keys {
    full: Option<[u8; 32]>,
    read_only: Option<[u8; 32]>,
}

impl Keys {
    pub fn new(full: Option<&Secret>, read_only: Option<&Secret>) -> Result<Keys> {
        if let (Some(a), Some(b)) = (full, read_only) {
            if a == b {
                return Err(Error::InvalidArgument(
                    "the full and the read-only API keys must differ".into(),
                ));
            }
        }
        Ok(Keys {
            full: full.map(Secret::digest),
            read_only: read_only.map(Secret::digest),
        })
    }

    /// Whether any key is set (otherwise every call is allowed).
    pub fn enabled(&self) -> bool {
        self.full.is_some() || self.read_only.is_some()
    }

    /// What the key in `headers` allows.
    fn access(&self, headers: &http::HeaderMap) -> Access {
        let Some(given) = presented(headers) else {
            return Access::None;
        };
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        // Both comparisons always run.
        let full = self.full.is_some_and(|k| same(&k, &given));
        let read = self.read_only.is_some_and(|k| same(&k, &given));
        if full {
            Access::Write
        } else if read {
            Access::Read
        } else {
            Access::None
        }
    }

    /// `Ok` if the call may go ahead, else the status to answer with.
    fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        let needed = required(path);
        if !self.enabled() || needed == Access::None {
            return Ok(());
        }
        match self.access(headers) {
            Access::None if presented(headers).is_none() => Err(Status::unauthenticated(
                "this lookalike needs an API key: send metadata 'authorization: Bearer KEY' or 'x-api-key: KEY'",
            )),
            Access::None => Err(Status::unauthenticated("the API key is not valid")),
            have if have >= needed => Ok(()),
            _ => Err(Status::permission_denied(format!(
                "the read-only API key cannot call {path}: it needs the full key"
            ))),
        }
    }
}

/// The key a request carries, if any.
fn presented(headers: &http::HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

/// Equality that looks at every byte whatever the first difference.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The tower layer that checks keys in front of every service.
#[derive(Clone)]
pub struct AuthLayer {
    keys: Arc<Keys>,
}

impl AuthLayer {
    pub fn new(keys: Keys) -> Self {
        AuthLayer {
            keys: Arc::new(keys),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            keys: self.keys.clone(),
        }
    }
}

/// A service behind the key check.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    keys: Arc<Keys>,
}

impl<S, Req, Res> Service<http::Request<Req>> for Auth<S>
where
    S: Service<http::Request<Req>, Response = http::Response<Res>>,
    Res: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Req>) -> Self::Future {
        match self.keys.check(request.uri().path(), request.headers()) {
            Ok(()) => Either::Left(self.inner.call(request)),
            Err(status) => Either::Right(futures_util::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
        h
    }

    #[test]
    fn each_method_needs_its_access() {
        let full: Secret = "full-key".parse().expect("key");
        let read: Secret = "read-key".parse().expect("key");
        let keys = Keys::new(Some(&full), Some(&read)).expect("keys");
        let write = "/lookalike.v1.Lookalike/Delete";
        let query = "/lookalike.v1.Lookalike/Query";
        let health = "/grpc.health.v1.Health/Check";
        let none = http::HeaderMap::new();
        assert!(keys.check(health, &none).is_ok());
        let code = |path, h: &http::HeaderMap| keys.check(path, h).err().map(|s| s.code());
        assert_eq!(code(query, &none), Some(tonic::Code::Unauthenticated));
        assert_eq!(
            code(query, &headers("authorization", "Bearer nope")),
            Some(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            code(query, &headers("authorization", "Bearer read-key")),
            None
        );
        assert_eq!(code(query, &headers("x-api-key", "read-key")), None);
        assert_eq!(
            code(write, &headers("x-api-key", "read-key")),
            Some(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            code(write, &headers("authorization", "Bearer full-key")),
            None
        );
        assert_eq!(
            code(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                &none
            ),
            Some(tonic::Code::Unauthenticated)
        );
        // Unknown methods need the full key.
        assert_eq!(
            code(
                "/lookalike.v1.Lookalike/Whatever",
                &headers("x-api-key", "read-key")
            ),
            Some(tonic::Code::PermissionDenied)
        );
    }

    #[test]
    fn no_key_configured_lets_everything_through() {
        let keys = Keys::new(None, None).expect("keys");
        assert!(keys
            .check("/lookalike.v1.Lookalike/Delete", &http::HeaderMap::new())
            .is_ok());
    }

    #[test]
    fn keys_are_never_printed_and_must_be_header_safe() {
        let key: Secret = "s3cret".parse().expect("key");
        assert!(!format!("{key:?}").contains("s3cret"));
        assert!("".parse::<Secret>().is_err());
        assert!("has space".parse::<Secret>().is_err());
        assert!(Keys::new(Some(&key), Some(&key)).is_err());
    }
}
