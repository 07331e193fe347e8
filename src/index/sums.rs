//! Checksums of a saved index's files.
//!
//! A saved graph is a cache of the store, so a damaged one must never be
//! used: garbage in the re-rank codes or in a vector would give silently
//! wrong answers. [`Index::dump`] records each file's length and CRC-32
//! (crc32fast, SIMD), and [`Index::load_graph`] refuses files that do not
//! match before reading them; the engine then rebuilds from the store.
//!
//! [`Index::dump`]: super::Index::dump
//! [`Index::load_graph`]: super::Index::load_graph

use std::{collections::BTreeMap, io::Read, path::Path};

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

/// The sums of `names` in `dir`.
pub fn of_files(dir: &Path, names: &[&str]) -> Result<FileSums> {
    names
        .iter()
        .map(|name| Ok((name.to_string(), of_file(&dir.join(name))?)))
        .collect()
}

/// Checks that every file in `sums` is in `dir` with its length and CRC;
/// the error names the first file that is not.
pub fn verify(dir: &Path, sums: &FileSums) -> Result<()> {
    for (name, want) in sums {
        let path = dir.join(name);
        let got = of_file(&path)?;
        if got != *want {
            return Err(Error::Internal(format!(
                "saved index file '{}' is damaged: {} bytes with CRC-32 {:08x}, \
                 written as {} bytes with CRC-32 {:08x}",
                path.display(),
                got.bytes,
                got.crc32,
                want.bytes,
                want.crc32
            )));
        }
    }
    Ok(())
}

fn of_file(path: &Path) -> Result<FileSum> {
    let mut file =
        std::fs::File::open(path).map_err(Error::file("open a saved index file", path))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(Error::file("read a saved index file", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok(FileSum {
        bytes,
        crc32: hasher.finalize(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_byte_or_length_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), vec![7u8; 5000]).unwrap();
        let sums = of_files(dir.path(), &["a"]).expect("sums");
        verify(dir.path(), &sums).expect("intact");

        let mut changed = vec![7u8; 5000];
        changed[4321] = 8;
        std::fs::write(dir.path().join("a"), &changed).unwrap();
        let err = verify(dir.path(), &sums).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");

        std::fs::write(dir.path().join("a"), vec![7u8; 4999]).unwrap();
        assert!(verify(dir.path(), &sums).is_err());
        std::fs::remove_file(dir.path().join("a")).unwrap();
        assert!(verify(dir.path(), &sums).is_err());
    }
}
