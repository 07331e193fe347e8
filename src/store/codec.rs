//! Binary encoding of a [`Record`] value in the store.
//!
//! Features are the bulk of a record (1280 floats), so a compact fixed
//! layout beats a text format: version byte, id, insert time, features as
//! little-endian f32, the Siamese embedding likewise (version 2 on; version
//! 1 records, written before it existed, read back with none), then
//! metadata pairs, then (version 3 on) the image's facts behind a presence
//! byte; every length a u32.

use std::collections::BTreeMap;

use super::{ImageFacts, Record};
use crate::error::{Error, Result};

const VERSION: u8 = 3;
/// Records without a Siamese embedding.
const VERSION_1: u8 = 1;
/// Records without image facts.
const VERSION_2: u8 = 2;
/// Bytes of encoded [`ImageFacts`].
const FACTS_BYTES: usize = 4 + 4 + 8 + 16 + 16;

pub fn encode(record: &Record) -> Vec<u8> {
    let meta_len: usize = record
        .metadata
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len())
        .sum();
    // No Siamese embedding is written as an empty one.
    let siamese = record.siamese.as_deref().unwrap_or(&[]);
    let floats = record.features.len() + siamese.len();
    let mut out = Vec::with_capacity(22 + FACTS_BYTES + record.id.len() + 4 * floats + meta_len);
    out.push(VERSION);
    put_bytes(&mut out, record.id.as_bytes());
    out.extend_from_slice(&record.inserted_at_ms.to_le_bytes());
    put_floats(&mut out, &record.features);
    put_floats(&mut out, siamese);
    out.extend_from_slice(&(record.metadata.len() as u32).to_le_bytes());
    for (k, v) in &record.metadata {
        put_bytes(&mut out, k.as_bytes());
        put_bytes(&mut out, v.as_bytes());
    }
    match &record.facts {
        None => out.push(0),
        Some(f) => {
            out.push(1);
            out.extend_from_slice(&f.width.to_le_bytes());
            out.extend_from_slice(&f.height.to_le_bytes());
            out.extend_from_slice(&f.file_bytes.to_le_bytes());
            out.extend_from_slice(&f.file_hash);
            out.extend_from_slice(&f.pixel_hash);
        }
    }
    out
}

pub fn decode(seq: u64, bytes: &[u8]) -> Result<Record> {
    let mut r = Reader { bytes, pos: 0, seq };
    let version = r.take(1)?[0];
    if !matches!(version, VERSION | VERSION_1 | VERSION_2) {
        return Err(r.corrupt(&format!("unknown record version {version}")));
    }
    let id = r.string()?;
    let inserted_at_ms = i64::from_le_bytes(r.array()?);
    let features = r.floats()?;
    let siamese = if version == VERSION_1 {
        None
    } else {
        Some(r.floats()?).filter(|s| !s.is_empty())
    };
    let pairs = r.u32()?;
    let mut metadata = BTreeMap::new();
    for _ in 0..pairs {
        let k = r.string()?;
        metadata.insert(k, r.string()?);
    }
    let facts = match version {
        VERSION if r.take(1)?[0] == 1 => Some(ImageFacts {
            width: u32::from_le_bytes(r.array()?),
            height: u32::from_le_bytes(r.array()?),
            file_bytes: u64::from_le_bytes(r.array()?),
            file_hash: r.array()?,
            pixel_hash: r.array()?,
        }),
        _ => None,
    };
    Ok(Record {
        id,
        seq,
        features,
        siamese,
        metadata,
        inserted_at_ms,
        facts,
    })
}

fn put_floats(out: &mut Vec<u8>, values: &[f32]) {
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    seq: u64,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, what: &str) -> Error {
        Error::Damaged {
            seq: self.seq,
            what: what.to_string(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| self.corrupt("truncated"))?;
        let slice = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn floats(&mut self) -> Result<Vec<f32>> {
        let len = self.u32()? as usize;
        let bytes = len
            .checked_mul(4)
            .ok_or_else(|| self.corrupt("vector length overflows"))?;
        Ok(self
            .take(bytes)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let record = Record {
            id: "photo-1".into(),
            seq: 42,
            features: vec![0.5, -1.25, 3.0],
            siamese: Some(vec![0.25, 0.75]),
            metadata: [("camera".to_string(), "x100".to_string())].into(),
            inserted_at_ms: 1_700_000_000_000,
            facts: Some(ImageFacts {
                width: 4000,
                height: 3000,
                file_bytes: 2_345_678,
                file_hash: [7; 16],
                pixel_hash: [9; 16],
            }),
        };
        assert_eq!(decode(42, &encode(&record)).expect("decode"), record);
        let without = Record {
            siamese: None,
            facts: None,
            ..record
        };
        assert_eq!(decode(42, &encode(&without)).expect("decode"), without);
    }

    /// Databases written before the Siamese embedding still open.
    #[test]
    fn reads_version_1_records() {
        let mut v1 = vec![VERSION_1];
        put_bytes(&mut v1, b"old");
        v1.extend_from_slice(&7i64.to_le_bytes());
        put_floats(&mut v1, &[1.0, 2.0]);
        v1.extend_from_slice(&0u32.to_le_bytes());
        let record = decode(3, &v1).expect("decode v1");
        assert_eq!(
            (record.id.as_str(), record.features),
            ("old", vec![1.0, 2.0])
        );
        assert_eq!(record.siamese, None);
    }

    #[test]
    fn truncation_is_an_error_not_a_panic() {
        let record = Record {
            id: "a".into(),
            seq: 1,
            features: vec![1.0; 8],
            siamese: Some(vec![0.5; 4]),
            metadata: BTreeMap::new(),
            inserted_at_ms: 0,
            facts: Some(ImageFacts::default()),
        };
        let bytes = encode(&record);
        for cut in 0..bytes.len() {
            assert!(decode(1, &bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
