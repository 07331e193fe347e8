//! Full feature vectors as 8-bit codes, for re-ranking, kept in a file.
//!
//! The graph searches PCA projections, which lose recall, so the engine
//! re-ranks several times more candidates than it returns on the full
//! features. Reading those from the store cost one sled lookup each (a
//! read from disk with a checksum and a page rebuilt once the store
//! outgrows sled's cache), so the index keeps every point's full features
//! as 8-bit codes (one byte per dimension plus a scale: 1.28 KB per
//! 1280-d vector, a quarter of the f32 size) and ranks candidates on them;
//! the engine then reads only the few best from the store.
//!
//! At a million images the codes are 1.3 GB, two thirds of what the daemon
//! held in RAM, and read and written whole at every start and clean stop.
//! So the codes live in a file of fixed-size records, appended as points
//! are added and read with one positioned read per candidate (the page
//! cache keeps the hot ones; a query re-ranks tens to a few hundred). Only
//! the seq-to-record table stays in memory (about 30 bytes per point). A
//! saved index does not copy the file: [`Codes::dump`] syncs it and links
//! it beside the graph with a small table of which record holds which seq
//! ([`SLOTS_FILE`], checksummed), and [`Codes::load`] opens it again and
//! cuts it back to the records that table covers (a crash may leave more).
//!
//! A file can be damaged where no checksum of the whole is practical (it is
//! read a record at a time), so every record carries its seq and a CRC-32:
//! a damaged record is never used (the candidate keeps its graph score,
//! and [`Codes::damaged`] tells the engine to rebuild).
//!
//! A code is `round(x / scale)` with `scale = max |x| / 127`, so each
//! dimension is off by at most `scale / 2`; on unit vectors the cosine is
//! off by about 1e-3, far less than separates the candidates kept for
//! exact scoring from those dropped. Benchmarks and tests that drive the
//! index alone keep the records in memory ([`Codes::new`]), in the same
//! format.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{Read, Write},
    os::unix::{fs::FileExt, io::AsRawFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use rand::Rng;

use super::sums::{self, FileSum, FileSums};
use crate::error::{Error, Result};
use crate::vector::dot_i8;

/// The saved table of which record holds which seq.
pub const SLOTS_FILE: &str = "rerank.slots";
/// First bytes of a [`SLOTS_FILE`].
const SLOTS_MAGIC: &[u8; 8] = b"LKSLOTS1";
/// Widest vector a saved file may hold (ours are 1280 or 1408 wide).
const MAX_DIM: usize = 1 << 16;
/// Bytes of a record besides its code: seq, scale, CRC-32.
const RECORD_EXTRA: usize = 8 + 4 + 4;

/// Where the records are.
enum Records {
    Memory(Vec<u8>),
    File { file: File, path: PathBuf },
}

impl Records {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Records::Memory(all) => {
                let at = offset as usize;
                if all.len() < at + bytes.len() {
                    all.resize(at + bytes.len(), 0);
                }
                all[at..at + bytes.len()].copy_from_slice(bytes);
                Ok(())
            }
            Records::File { file, .. } => file.write_all_at(bytes, offset),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Records::Memory(all) => {
                let at = offset as usize;
                let found = all.get(at..at + buf.len()).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the records")
                })?;
                buf.copy_from_slice(found);
                Ok(())
            }
            Records::File { file, .. } => file.read_exact_at(buf, offset),
        }
    }

    /// Reads `buf` at `offset` only if that needs no wait on the disk (the
    /// pages are in the page cache); false otherwise, `buf` then unfilled.
    fn read_cached(&self, offset: u64, buf: &mut [u8]) -> bool {
        match self {
            Records::Memory(_) => self.read_at(offset, buf).is_ok(),
            Records::File { file, .. } => {
                let iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                };
                // SAFETY: `iov` describes `buf`, writable for its whole
                // length for the duration of the call; the fd is open.
                let n = unsafe {
                    libc::preadv2(
                        file.as_raw_fd(),
                        &iov,
                        1,
                        offset as libc::off_t,
                        libc::RWF_NOWAIT,
                    )
                };
                n == buf.len() as isize
            }
        }
    }

    /// Asks the kernel to start reading `len` bytes at `offset` (and not to
    /// wait for them), so that many records' reads overlap.
    fn prefetch(&self, offset: u64, len: usize) {
        if let Records::File { file, .. } = self {
            // SAFETY: a hint on an open fd; no memory is passed.
            unsafe {
                libc::posix_fadvise(
                    file.as_raw_fd(),
                    offset as libc::off_t,
                    len as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                );
            }
        }
    }
}

/// What [`Codes::dot`] found for a seq.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scored {
    /// The approximate dot product.
    Dot(f32),
    /// Not held (never added, or removed).
    Absent,
    /// Held, but its record is damaged or cannot be read.
    Unreadable,
}

/// Quantised full features, by seq.
pub struct Codes {
    dim: usize,
    /// seq to record; a removed seq's record stays in the file until the
    /// next rebuild, which starts a new file.
    slots: HashMap<u64, u32>,
    /// Records in `records` (live or not): the next one goes after them.
    written: u32,
    records: Records,
    /// Records whose write failed (a full disk), kept here until a dump
    /// writes them.
    unwritten: HashMap<u64, Vec<u8>>,
    /// Set when a record read back was damaged or unreadable.
    damaged: AtomicBool,
    /// Whether the file outlives this: loaded from a saved index or saved
    /// since. A rebuild's file that was never saved is removed with it.
    keep: bool,
}

impl Drop for Codes {
    fn drop(&mut self) {
        if let (false, Records::File { path, .. }) = (self.keep, &self.records) {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove an unused re-rank codes file");
            }
        }
    }
}

impl Codes {
    /// Empty, in memory, with room for `capacity` vectors of width `dim`.
    pub fn new(dim: usize, capacity: usize) -> Self {
        let bytes = capacity.saturating_mul(dim + RECORD_EXTRA);
        Self::over(dim, Records::Memory(Vec::with_capacity(bytes)), capacity)
    }

    /// Empty, in a new file in `dir` (made if missing).
    pub fn create_in(dir: &Path, dim: usize, capacity: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(Error::file("make the index folder", dir))?;
        let name = format!("rerank-{:016x}.codes", rand::rng().random::<u64>());
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Error::file("create the re-rank codes file", &path))?;
        Ok(Self::over(dim, Records::File { file, path }, capacity))
    }

    fn over(dim: usize, records: Records, capacity: usize) -> Self {
        Codes {
            dim,
            slots: HashMap::with_capacity(capacity),
            written: 0,
            records,
            unwritten: HashMap::new(),
            damaged: AtomicBool::new(false),
            keep: false,
        }
    }

    fn record_len(&self) -> u64 {
        (self.dim + RECORD_EXTRA) as u64
    }

    /// Adds (or replaces) `seq`'s features. A vector of another width is
    /// ignored: it cannot be compared with the rest.
    pub fn insert(&mut self, seq: u64, features: &[f32]) {
        if features.len() != self.dim {
            return;
        }
        let max = features.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let scale = if max.is_finite() && max > 0.0 {
            max / 127.0
        } else {
            0.0
        };
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let code = features.iter().map(|x| (x * inv).round() as i8 as u8);
        self.place(seq, encode(seq, scale, code));
    }

    /// Writes `record` after the others; one that cannot be written (a
    /// full disk) is held in memory until the next dump.
    fn place(&mut self, seq: u64, record: Vec<u8>) {
        let offset = self.written as u64 * self.record_len();
        match self.records.write_at(offset, &record) {
            Ok(()) => {
                self.slots.insert(seq, self.written);
                self.unwritten.remove(&seq);
                self.written += 1;
            }
            Err(e) => {
                tracing::warn!(seq, error = %e, "cannot write a re-rank code; holding it in memory");
                self.slots.remove(&seq);
                self.unwritten.insert(seq, record);
            }
        }
    }

    pub fn remove(&mut self, seq: u64) {
        self.slots.remove(&seq);
        self.unwritten.remove(&seq);
    }

    /// Every held seq, in no order.
    pub fn seqs(&self) -> Vec<u64> {
        self.slots
            .keys()
            .chain(self.unwritten.keys())
            .copied()
            .collect()
    }

    /// Whether `seq`'s features are held (added and not removed).
    pub fn contains(&self, seq: u64) -> bool {
        self.slots.contains_key(&seq) || self.unwritten.contains_key(&seq)
    }

    /// Whether a record read back was damaged or unreadable since this
    /// was made: the index should be rebuilt.
    pub fn damaged(&self) -> bool {
        self.damaged.load(Ordering::Relaxed)
    }

    /// Approximate dot products of `query` (full width) with each of
    /// `seqs`' features. Records in the page cache are read at once; the
    /// kernel is asked for all the others before the first is waited for,
    /// so that a query's reads from disk overlap.
    pub fn dot_many(&self, query: &[f32], seqs: &[u64]) -> Vec<Scored> {
        let mut scored = vec![Scored::Absent; seqs.len()];
        if query.len() != self.dim {
            return scored;
        }
        let len = self.record_len();
        let mut buf = vec![0u8; len as usize];
        let mut missed = Vec::new();
        for (i, &seq) in seqs.iter().enumerate() {
            if let Some(&slot) = self.slots.get(&seq) {
                let offset = slot as u64 * len;
                if self.records.read_cached(offset, &mut buf) {
                    scored[i] = self.score(query, seq, &buf);
                } else {
                    self.records.prefetch(offset, buf.len());
                    missed.push((i, seq, offset));
                }
            } else if let Some(record) = self.unwritten.get(&seq) {
                scored[i] = self.score(query, seq, record);
            }
        }
        for (i, seq, offset) in missed {
            scored[i] = match self.records.read_at(offset, &mut buf) {
                Ok(()) => self.score(query, seq, &buf),
                Err(e) => self.unreadable(seq, &e.to_string()),
            };
        }
        scored
    }

    fn score(&self, query: &[f32], seq: u64, record: &[u8]) -> Scored {
        match decode(record) {
            Some((held, scale, code)) if held == seq => {
                // SAFETY: i8 and u8 have the same size and alignment, and
                // every byte is a valid i8; the bytes were i8 codes.
                let code = unsafe { std::slice::from_raw_parts(code.as_ptr().cast(), code.len()) };
                Scored::Dot(dot_i8(query, code) * scale)
            }
            _ => self.unreadable(seq, "its checksum or seq does not match"),
        }
    }

    fn unreadable(&self, seq: u64, why: &str) -> Scored {
        if !self.damaged.swap(true, Ordering::Relaxed) {
            let file = match &self.records {
                Records::File { path, .. } => path.display().to_string(),
                Records::Memory(_) => "memory".into(),
            };
            tracing::error!(
                seq,
                file,
                why,
                "a re-rank code is damaged; the candidate keeps its graph score, and the index \
                 is rebuilt from the store"
            );
        }
        Scored::Unreadable
    }

    /// Makes the records durable and saves them in `dir`: the file itself
    /// is linked there (or copied, where a link cannot be made; written
    /// out when in memory), with the [`SLOTS_FILE`] table, whose checksum
    /// this returns. No insert may run meanwhile (the caller holds the
    /// lock).
    pub fn dump(&mut self, dir: &Path) -> Result<FileSum> {
        // Records a full disk kept out of the file, if it has room now.
        let pending: Vec<(u64, Vec<u8>)> = self.unwritten.drain().collect();
        for (seq, record) in pending {
            self.place(seq, record);
        }
        if !self.unwritten.is_empty() {
            return Err(Error::Storage(format!(
                "{} re-rank codes could not be written (is the disk full?)",
                self.unwritten.len()
            )));
        }
        let len = self.written as u64 * self.record_len();
        self.keep = true;
        let name = match &self.records {
            Records::File { file, path } => {
                file.sync_data()
                    .map_err(Error::file("sync the re-rank codes", path))?;
                let name = path.file_name().unwrap_or_default().to_owned();
                let target = dir.join(&name);
                if target != *path {
                    // Another name for this file there would be truncated
                    // by a copy.
                    let _ = std::fs::remove_file(&target);
                    if std::fs::hard_link(path, &target).is_err() {
                        copy_prefix(file, &target, len)?;
                    }
                }
                name.to_string_lossy().into_owned()
            }
            Records::Memory(all) => {
                let name = "rerank-memory.codes".to_string();
                let target = dir.join(&name);
                std::fs::write(&target, &all[..len as usize])
                    .map_err(Error::file("write the re-rank codes", &target))?;
                name
            }
        };
        sums::write(&dir.join(SLOTS_FILE), "write the re-rank table", |out| {
            out.write_all(SLOTS_MAGIC)?;
            out.write_all(&(self.dim as u32).to_le_bytes())?;
            out.write_all(&(self.written as u64).to_le_bytes())?;
            out.write_all(&(name.len() as u16).to_le_bytes())?;
            out.write_all(name.as_bytes())?;
            out.write_all(&(self.slots.len() as u64).to_le_bytes())?;
            for (&seq, &slot) in &self.slots {
                out.write_all(&seq.to_le_bytes())?;
                out.write_all(&slot.to_le_bytes())?;
            }
            Ok(())
        })
    }

    /// Opens the codes [`Codes::dump`] saved in `dir` (its table must
    /// match `sums`), cut back to the records the table covers, and goes on
    /// appending to that file. Other codes files in `dir` (a rebuild's
    /// that was never saved) are removed.
    pub fn load(dir: &Path, sums: &FileSums) -> Result<Self> {
        let table = sums::read(dir, SLOTS_FILE, sums, read_table)?;
        let path = dir.join(&table.name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(Error::file("open the re-rank codes", &path))?;
        let want = table.written * (table.dim + RECORD_EXTRA) as u64;
        let len = file
            .metadata()
            .map_err(Error::file("open the re-rank codes", &path))?
            .len();
        if len < want {
            return Err(Error::Storage(format!(
                "re-rank codes file '{}' is damaged: {len} bytes, its table needs {want}",
                path.display()
            )));
        }
        if len > want {
            // Added after the save (then a crash): the caller adds them again.
            file.set_len(want)
                .map_err(Error::file("cut back the re-rank codes", &path))?;
        }
        remove_others(dir, &table.name);
        Ok(Codes {
            dim: table.dim,
            slots: table.slots,
            written: table.written as u32,
            records: Records::File { file, path },
            unwritten: HashMap::new(),
            damaged: AtomicBool::new(false),
            keep: true,
        })
    }

    /// Reads a codes file an older lookalike saved whole (`len` bytes:
    /// magic, width, count, then per vector its seq, scale and code) into
    /// a new file in `dir`.
    pub fn import(input: &mut dyn Read, len: u64, dir: &Path) -> Result<Self> {
        let bad = |what: &str| Error::Storage(format!("saved re-rank codes: {what}"));
        let io = |e: std::io::Error| bad(&e.to_string());
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic).map_err(io)?;
        if &magic != OLD_MAGIC {
            return Err(bad("not a codes file"));
        }
        let dim = u32::from_le_bytes(read_array(input).map_err(io)?) as usize;
        let count = u64::from_le_bytes(read_array(input).map_err(io)?);
        let expected = (12 + dim as u64)
            .checked_mul(count)
            .and_then(|body| body.checked_add(8 + 4 + 8));
        if dim == 0 || dim > MAX_DIM || count > u32::MAX as u64 || expected != Some(len) {
            return Err(bad(&format!(
                "header says {count} vectors of width {dim}, which does not fit {len} bytes"
            )));
        }
        let mut codes = Codes::create_in(dir, dim, count as usize)?;
        let record = 12 + dim;
        let per_chunk = (READ_CHUNK / record).max(1);
        let mut chunk = vec![0u8; per_chunk * record];
        let mut left = count as usize;
        while left > 0 {
            let n = per_chunk.min(left);
            let chunk = &mut chunk[..n * record];
            input.read_exact(chunk).map_err(io)?;
            for r in chunk.chunks_exact(record) {
                let seq = u64::from_le_bytes(r[..8].try_into().expect("8 bytes"));
                let scale = f32::from_le_bytes(r[8..12].try_into().expect("4 bytes"));
                if codes.contains(seq) {
                    return Err(bad(&format!("seq {seq} is listed twice")));
                }
                codes.place(seq, encode(seq, scale, r[12..].iter().copied()));
            }
            left -= n;
        }
        // An earlier conversion's file (a crash since).
        if let Records::File { path, .. } = &codes.records {
            remove_others(dir, &path.file_name().unwrap_or_default().to_string_lossy());
        }
        Ok(codes)
    }
}

/// The file name of the codes an older lookalike saved whole.
pub const OLD_CODES_FILE: &str = "rerank.codes";
/// First bytes of an [`OLD_CODES_FILE`].
const OLD_MAGIC: &[u8; 8] = b"LKCODES1";

/// A record: seq, scale, code bytes, then the CRC-32 of all three.
fn encode(seq: u64, scale: f32, code: impl Iterator<Item = u8>) -> Vec<u8> {
    let mut record = Vec::with_capacity(64);
    record.extend_from_slice(&seq.to_le_bytes());
    record.extend_from_slice(&scale.to_le_bytes());
    record.extend(code);
    let crc = crc32fast::hash(&record);
    record.extend_from_slice(&crc.to_le_bytes());
    record
}

/// A record's seq, scale and code bytes, if its CRC-32 matches.
fn decode(record: &[u8]) -> Option<(u64, f32, &[u8])> {
    let (body, crc) = record.split_at_checked(record.len().checked_sub(4)?)?;
    if crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let (seq, rest) = body.split_at_checked(8)?;
    let (scale, code) = rest.split_at_checked(4)?;
    Some((
        u64::from_le_bytes(seq.try_into().ok()?),
        f32::from_le_bytes(scale.try_into().ok()?),
        code,
    ))
}

/// What a [`SLOTS_FILE`] holds.
struct Table {
    dim: usize,
    written: u64,
    name: String,
    slots: HashMap<u64, u32>,
}

fn read_table(input: &mut dyn Read, len: u64) -> Result<Table> {
    let bad = |what: &str| Error::Storage(format!("saved re-rank table: {what}"));
    let io = |e: std::io::Error| bad(&e.to_string());
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(io)?;
    if &magic != SLOTS_MAGIC {
        return Err(bad("not a re-rank table"));
    }
    let dim = u32::from_le_bytes(read_array(input).map_err(io)?) as usize;
    let written = u64::from_le_bytes(read_array(input).map_err(io)?);
    let name_len = u16::from_le_bytes(read_array(input).map_err(io)?) as usize;
    let mut name = vec![0u8; name_len];
    input.read_exact(&mut name).map_err(io)?;
    let name = String::from_utf8(name).map_err(|_| bad("the file name is not UTF-8"))?;
    let count = u64::from_le_bytes(read_array(input).map_err(io)?);
    let expected = count
        .checked_mul(12)
        .and_then(|body| body.checked_add((8 + 4 + 8 + 2 + name_len + 8) as u64));
    let plain_name = Path::new(&name).file_name() == Some(std::ffi::OsStr::new(&name))
        && name.ends_with(".codes");
    if dim == 0
        || dim > MAX_DIM
        || written > u32::MAX as u64
        || count > written
        || expected != Some(len)
        || !plain_name
    {
        return Err(bad(&format!(
            "header says {count} of {written} records of width {dim} in '{name}', which does \
             not fit {len} bytes"
        )));
    }
    let mut slots = HashMap::with_capacity(count as usize);
    let mut chunk = vec![0u8; 12 * 65536];
    let mut left = count as usize;
    while left > 0 {
        let n = left.min(65536);
        let chunk = &mut chunk[..n * 12];
        input.read_exact(chunk).map_err(io)?;
        for pair in chunk.chunks_exact(12) {
            let seq = u64::from_le_bytes(pair[..8].try_into().expect("8 bytes"));
            let slot = u32::from_le_bytes(pair[8..].try_into().expect("4 bytes"));
            if slot as u64 >= written {
                return Err(bad(&format!("seq {seq} is in record {slot} of {written}")));
            }
            if slots.insert(seq, slot).is_some() {
                return Err(bad(&format!("seq {seq} is listed twice")));
            }
        }
        left -= n;
    }
    Ok(Table {
        dim,
        written,
        name,
        slots,
    })
}

/// Copies the first `len` bytes of `file` to a new file at `target`.
fn copy_prefix(file: &File, target: &Path, len: u64) -> Result<()> {
    let io = |e: std::io::Error| Error::file("copy the re-rank codes", target)(e);
    let mut out = File::create(target).map_err(io)?;
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(READ_CHUNK as u64) as usize;
        file.read_exact_at(&mut chunk[..n], at).map_err(io)?;
        out.write_all(&chunk[..n]).map_err(io)?;
        at += n as u64;
    }
    out.sync_all().map_err(io)
}

/// Removes the codes files in `dir` other than `keep`.
fn remove_others(dir: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != keep && name.starts_with("rerank-") && name.ends_with(".codes") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(
                    file = name,
                    "removed a re-rank codes file no saved index uses"
                ),
                Err(e) => {
                    tracing::warn!(file = name, error = %e, "cannot remove an unused re-rank codes file")
                }
            }
        }
    }
}

/// Bytes read or copied at once.
const READ_CHUNK: usize = 1 << 20;

fn read_array<const N: usize>(input: &mut dyn Read) -> std::io::Result<[u8; N]> {
    let mut a = [0u8; N];
    input.read_exact(&mut a)?;
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|_| rng.random_range(-0.2..1.0)).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn exact(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn dot(codes: &Codes, query: &[f32], seq: u64) -> Scored {
        codes.dot_many(query, &[seq])[0]
    }

    #[test]
    fn approximate_dot_is_within_a_thousandth_on_unit_vectors() {
        let mut rng = StdRng::seed_from_u64(9);
        let dim = 1283; // not a multiple of the 16 lanes
        let points: Vec<Vec<f32>> = (0..50).map(|_| unit(&mut rng, dim)).collect();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut in_memory = Codes::new(dim, 0);
        let mut in_file = Codes::create_in(dir.path(), dim, 0).expect("create");
        for (seq, p) in points.iter().enumerate() {
            in_memory.insert(seq as u64, p);
            in_file.insert(seq as u64, p);
        }
        let query = unit(&mut rng, dim);
        for (seq, p) in points.iter().enumerate() {
            let Scored::Dot(got) = dot(&in_file, &query, seq as u64) else {
                panic!("seq {seq} not held");
            };
            assert!((got - exact(&query, p)).abs() < 1e-3, "seq {seq}");
            assert_eq!(dot(&in_memory, &query, seq as u64), Scored::Dot(got));
        }
        assert_eq!(dot(&in_file, &query[1..], 0), Scored::Absent, "wrong width");
        assert_eq!(dot(&in_file, &query, 99), Scored::Absent, "never held");
        assert!(!in_file.damaged());
    }

    /// Five points, one all zeros, one of the wrong width, one removed.
    fn some_codes(codes: &mut Codes, rng: &mut StdRng) {
        for seq in 1..=5 {
            codes.insert(seq, &unit(rng, 64));
        }
        codes.insert(6, &[0.0; 64]); // all zeros: scale 0, dot 0
        codes.insert(7, &[1.0; 3]); // wrong width: ignored
        codes.insert(2, &unit(rng, 64)); // replaced
        codes.remove(3);
    }

    #[test]
    fn a_dump_loads_back_cut_to_what_it_covered() {
        let mut rng = StdRng::seed_from_u64(2);
        let (live, saved) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut codes = Codes::create_in(live.path(), 64, 4).expect("create");
        some_codes(&mut codes, &mut rng);
        let sum = codes.dump(saved.path()).expect("dump");
        let sums = FileSums::from([(SLOTS_FILE.to_string(), sum)]);
        // Added after the save, into the same file (a crash follows).
        codes.insert(8, &unit(&mut rng, 64));
        let back = Codes::load(saved.path(), &sums).expect("load");
        let query = unit(&mut rng, 64);
        for seq in 1..=7 {
            assert_eq!(
                dot(&back, &query, seq),
                dot(&codes, &query, seq),
                "seq {seq}"
            );
        }
        assert_eq!(dot(&back, &query, 3), Scored::Absent);
        assert_eq!(dot(&back, &query, 6), Scored::Dot(0.0));
        assert_eq!(dot(&back, &query, 7), Scored::Absent);
        assert_eq!(
            dot(&back, &query, 8),
            Scored::Absent,
            "added after the save"
        );
        let mut seqs = back.seqs();
        seqs.sort();
        assert_eq!(seqs, [1, 2, 4, 5, 6]);
        assert!(!back.damaged());

        // In memory, the same records.
        let mut memory = Codes::new(64, 0);
        some_codes(&mut memory, &mut StdRng::seed_from_u64(2));
        let elsewhere = tempfile::tempdir().unwrap();
        let sum = memory.dump(elsewhere.path()).expect("dump");
        let sums = FileSums::from([(SLOTS_FILE.to_string(), sum)]);
        let back = Codes::load(elsewhere.path(), &sums).expect("load");
        for seq in 1..=7 {
            assert_eq!(
                dot(&back, &query, seq),
                dot(&memory, &query, seq),
                "seq {seq}"
            );
        }
    }

    #[test]
    fn a_damaged_record_is_never_scored() {
        let mut rng = StdRng::seed_from_u64(4);
        let dir = tempfile::tempdir().unwrap();
        let mut codes = Codes::create_in(dir.path(), 64, 4).expect("create");
        some_codes(&mut codes, &mut rng);
        let Records::File { path, .. } = &codes.records else {
            panic!("in a file");
        };
        let mut bytes = std::fs::read(path).unwrap();
        let record = 64 + RECORD_EXTRA;
        bytes[3 * record + 30] ^= 0x10; // the fourth record: seq 4's
        std::fs::write(path, bytes).unwrap();
        let query = unit(&mut rng, 64);
        assert!(matches!(dot(&codes, &query, 1), Scored::Dot(_)));
        assert!(!codes.damaged());
        assert_eq!(dot(&codes, &query, 4), Scored::Unreadable);
        assert!(codes.damaged());
    }

    #[test]
    fn damaged_tables_are_refused() {
        let mut rng = StdRng::seed_from_u64(5);
        let dir = tempfile::tempdir().unwrap();
        let mut codes = Codes::new(64, 4);
        some_codes(&mut codes, &mut rng);
        codes.dump(dir.path()).expect("dump");
        let table = std::fs::read(dir.path().join(SLOTS_FILE)).unwrap();
        let parse = |b: &[u8]| read_table(&mut &b[..], b.len() as u64);
        assert_eq!(parse(&table).expect("intact").slots.len(), 5);
        let padded = [table.as_slice(), &[0]].concat();
        let mut renamed = table.clone();
        renamed[22..25].copy_from_slice(b"../"); // the name, now a path
        for bad in [
            &table[..table.len() - 1],
            &padded[..],
            &renamed[..],
            b"LKSLOTS2",
        ] {
            assert!(parse(bad).is_err());
        }
    }

    #[test]
    fn codes_an_older_lookalike_saved_whole_are_imported() {
        let mut rng = StdRng::seed_from_u64(6);
        let points: Vec<Vec<f32>> = (0..3).map(|_| unit(&mut rng, 64)).collect();
        let mut memory = Codes::new(64, 0);
        let mut old = OLD_MAGIC.to_vec();
        old.extend_from_slice(&64u32.to_le_bytes());
        old.extend_from_slice(&3u64.to_le_bytes());
        for (seq, p) in points.iter().enumerate() {
            memory.insert(seq as u64, p);
            let mut bytes = vec![0u8; 64 + RECORD_EXTRA];
            memory
                .records
                .read_at(seq as u64 * bytes.len() as u64, &mut bytes)
                .unwrap();
            old.extend_from_slice(&bytes[..12 + 64]); // seq, scale, code
        }
        let dir = tempfile::tempdir().unwrap();
        let imported = Codes::import(&mut &old[..], old.len() as u64, dir.path()).expect("import");
        let query = unit(&mut rng, 64);
        for seq in 0..3 {
            assert_eq!(dot(&imported, &query, seq), dot(&memory, &query, seq));
        }
        let short = &old[..old.len() - 1];
        assert!(Codes::import(&mut &short[..], short.len() as u64, dir.path()).is_err());
    }
}
