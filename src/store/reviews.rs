//! Review decisions: what a user said about a pair of stored images
//! ("these are duplicates", "these are not"), which overrides the model's
//! verdict everywhere (Insert's duplicates, Query, Compare, Groups) until
//! revoked or until either image is deleted.
//!
//! Decisions are about ids, so they survive an upsert of either image. Each
//! pair is kept under both orders of its ids, so that every decision naming
//! one id is a prefix scan away (a delete drops them in its transaction).
//! A key is the first id's length (u32, big-endian), the first id, then the
//! second id; the value a decision byte and the time (i64, little-endian).

use crate::error::{Error, Result};

/// What a user decided about a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Duplicate,
    NotDuplicate,
}

/// One stored decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    /// The pair, `a` < `b`.
    pub a: String,
    pub b: String,
    pub decision: Decision,
    /// When it was made, milliseconds since the Unix epoch.
    pub decided_at_ms: i64,
}

/// The key of the pair under `first`'s prefix.
pub(super) fn key(first: &str, second: &str) -> Vec<u8> {
    let mut key = prefix(first);
    key.extend_from_slice(second.as_bytes());
    key
}

/// The prefix of every key whose first id is `id`.
pub(super) fn prefix(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + id.len());
    key.extend_from_slice(&(id.len() as u32).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// The two ids of a key.
pub(super) fn split(key: &[u8]) -> Result<(String, String)> {
    let bad = || Error::Storage("a review key is corrupt".into());
    let len = u32::from_be_bytes(
        key.get(..4)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let rest = &key[4..];
    let len = len as usize;
    if len > rest.len() {
        return Err(bad());
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| bad());
    Ok((text(&rest[..len])?, text(&rest[len..])?))
}

pub(super) fn value(decision: Decision, at_ms: i64) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[0] = match decision {
        Decision::Duplicate => 1,
        Decision::NotDuplicate => 2,
    };
    v[1..].copy_from_slice(&at_ms.to_le_bytes());
    v
}

pub(super) fn parse_value(bytes: &[u8]) -> Result<(Decision, i64)> {
    let bad = || Error::Storage("a review decision is corrupt".into());
    let decision = match bytes.first() {
        Some(1) => Decision::Duplicate,
        Some(2) => Decision::NotDuplicate,
        _ => return Err(bad()),
    };
    let at = bytes.get(1..9).ok_or_else(bad)?;
    Ok((
        decision,
        i64::from_le_bytes(at.try_into().map_err(|_| bad())?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_and_prefixes_do_not_overlap() {
        let k = key("ab", "c\0d");
        assert_eq!(split(&k).expect("split"), ("ab".into(), "c\0d".into()));
        // "a" + "bc" and "ab" + "c" are different keys, and neither lies
        // under the other's prefix.
        assert_ne!(key("a", "bc"), key("ab", "c"));
        assert!(!key("ab", "c").starts_with(&prefix("a")));
        assert!(split(&[0, 0, 0, 9, b'x']).is_err());
        let (d, t) = parse_value(&value(Decision::NotDuplicate, -5)).expect("parse");
        assert_eq!((d, t), (Decision::NotDuplicate, -5));
        assert!(parse_value(&[3, 0]).is_err());
    }
}
