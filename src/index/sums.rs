//! Checksums of a saved index's files, taken as they are written and
//! checked as they are read.
//!
//! A saved graph is a cache of the store, so a damaged one must never be
//! used: garbage in the re-rank codes or in a vector would give silently
//! wrong answers. [`write`] records each file's length and CRC-32
//! (crc32fast, SIMD) of the bytes as they go out, and [`read`] sums the
//! bytes as the parser takes them in and refuses the result unless the
//! sum matches; the engine then rebuilds from the store. Each file is thus
//! read once at start and written once at a stop (at a million images
//! that is 1.9 GB each way that used to be read a second time).

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Length and CRC-32 of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub bytes: u64,
    pub crc32: u32,
}

/// Every file of a saved index, by name.
pub type FileSums = BTreeMap<String, FileSum>;

/// A reader or writer that sums the bytes passing through it.
struct Summing<T> {
    inner: T,
    hasher: crc32fast::Hasher,
    bytes: u64,
}

impl<T> Summing<T> {
    fn new(inner: T) -> Self {
        Summing {
            inner,
            hasher: crc32fast::Hasher::new(),
            bytes: 0,
        }
    }

    fn sum(&self) -> FileSum {
        FileSum {
            bytes: self.bytes,
            crc32: self.hasher.clone().finalize(),
        }
    }

    fn note(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
    }
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.note(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Summing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.note(&buf[..n]);
        Ok(n)
    }
}

/// Buffer between the parsers and the file: big reads and writes.
const BUFFER: usize = 1 << 20;

/// Writes `path` with `body` and syncs it; its length and CRC-32.
/// `doing` names the write in errors ("write the graph").
pub fn write(
    path: &Path,
    doing: &'static str,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<FileSum> {
    let io = |e: std::io::Error| Error::file(doing, path)(e);
    let file = File::create(path).map_err(io)?;
    let mut out = BufWriter::with_capacity(BUFFER, Summing::new(file));
    body(&mut out).map_err(io)?;
    let summing = out.into_inner().map_err(|e| io(e.into_error()))?;
    let sum = summing.sum();
    summing.inner.sync_all().map_err(io)?;
    Ok(sum)
}

/// Parses `name` in `dir` with `body` (given the reader and the file's
/// length) and returns what it made only if the file is `sums`' length and
/// CRC-32; the error says which file is damaged and how.
pub fn read<T>(
    dir: &Path,
    name: &str,
    sums: &FileSums,
    body: impl FnOnce(&mut dyn Read, u64) -> Result<T>,
) -> Result<T> {
    let path = dir.join(name);
    let want = sums.get(name).ok_or_else(|| {
        Error::Internal(format!(
            "the saved index in '{}' does not list {name} (written by an older lookalike?)",
            dir.display()
        ))
    })?;
    let io = |e: std::io::Error| Error::file("read a saved index file", &path)(e);
    let file = File::open(&path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let damaged = |got: String| {
        Error::Internal(format!(
            "saved index file '{}' is damaged: {got}, written as {} bytes with CRC-32 {:08x}",
            path.display(),
            want.bytes,
            want.crc32
        ))
    };
    if len != want.bytes {
        return Err(damaged(format!("{len} bytes")));
    }
    let mut input = BufReader::with_capacity(BUFFER, Summing::new(file));
    let parsed = body(&mut input, len).map_err(|e| damaged(format!("{e}")))?;
    // Whatever the parser left (nothing, for a well-formed file) is summed
    // too, so the sum covers the whole file.
    std::io::copy(&mut input, &mut std::io::sink()).map_err(io)?;
    let got = input.into_inner().sum();
    if got != *want {
        return Err(damaged(format!(
            "{} bytes with CRC-32 {:08x}",
            got.bytes, got.crc32
        )));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(dir: &Path, sums: &FileSums) -> Result<Vec<u8>> {
        read(dir, "a", sums, |r, _| {
            let mut bytes = Vec::new();
            r.read_to_end(&mut bytes).expect("read");
            Ok(bytes)
        })
    }

    #[test]
    fn a_changed_byte_or_length_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a");
        let sum = write(&path, "write a test file", |w| w.write_all(&[7u8; 5000])).expect("write");
        let sums = FileSums::from([("a".to_string(), sum)]);
        assert_eq!(sum.bytes, 5000);
        assert_eq!(
            read_all(dir.path(), &sums).expect("intact"),
            vec![7u8; 5000]
        );

        let mut changed = vec![7u8; 5000];
        changed[4321] = 8;
        std::fs::write(&path, &changed).unwrap();
        let err = read_all(dir.path(), &sums).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");

        // A parser that stops early still gets the tail checked.
        let err = read(dir.path(), "a", &sums, |r, _| {
            let mut head = [0u8; 10];
            r.read_exact(&mut head).expect("read");
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("damaged"), "{err}");

        std::fs::write(&path, vec![7u8; 4999]).unwrap();
        assert!(read_all(dir.path(), &sums).is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(read_all(dir.path(), &sums).is_err());
        assert!(read_all(dir.path(), &FileSums::new()).is_err(), "unlisted");
    }
}
