//! Snapshot and restore: a consistent copy of a live database, as a tar
//! file, and a fresh data folder made from one.
//!
//! A snapshot holds the store's records with their seqs, its metadata (the
//! model and Siamese identity, the fitted PCA), the graph (once PCA + HNSW
//! serve) and a manifest. It is taken under the `writes` lock (see
//! `Shared::writes`): writes wait while the records and the graph are
//! copied to files beside the database, reads go on; the file is then
//! streamed to the client without any lock. So the snapshot holds exactly
//! the writes acknowledged before it began (and those that were waiting for
//! it, none half-done), and a graph that matches them: the restored daemon
//! loads it instead of rebuilding.
//!
//! The tar holds `MANIFEST.json`, `meta/KEY` per metadata entry, `records`
//! (each record as its 8-byte seq, a 4-byte length, both little-endian, and
//! the store's own record encoding), `thumbnails` (likewise: seq, length,
//! JPEG), `keypoints` (likewise: seq, length, encoded keypoints; absent
//! from snapshots made before keypoints were kept), `regions` (likewise,
//! the head map's parts; absent from snapshots made before they were
//! kept), `reviews.json` (the review decisions) and `index/FILE` for the
//! saved graph.

use std::{
    fs::File,
    io::{BufReader, BufWriter, Read, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{blocking, Engine, META_MODEL, META_SIAMESE};
use crate::error::{Error, Result};
use crate::store::{self, Attachment, Decision, Review, SledStore, Store};

/// A review decision as `reviews.json` holds it.
#[derive(Serialize, Deserialize)]
struct SavedReview {
    a: String,
    b: String,
    duplicate: bool,
    decided_at_ms: i64,
}

/// Version of the snapshot layout.
const FORMAT: u32 = 1;
const MANIFEST: &str = "MANIFEST.json";
const RECORDS: &str = "records";
const THUMBNAILS: &str = "thumbnails";
const KEYPOINTS: &str = "keypoints";
const REGIONS: &str = "regions";
const REVIEWS: &str = "reviews.json";
const META_DIR: &str = "meta/";
const INDEX_DIR: &str = "index/";
/// Largest record a restore accepts (a real one is a few KB).
const MAX_RECORD: usize = 64 << 20;

/// What a snapshot holds, written first in the tar.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub records: u64,
    pub model: String,
    /// The Siamese weights' fingerprint, when the database has one.
    pub siamese: Option<String>,
    /// Above every seq the database had handed out: the restored one starts
    /// its new seqs here (the graph may know deleted seqs above the last
    /// record's).
    pub seq_floor: u64,
    /// Whether the graph is included.
    pub graph: bool,
    pub created_unix_ms: i64,
}

impl Engine {
    /// Writes a snapshot of the database to `out` (a tar file); returns its
    /// manifest. Writes wait while the records are copied; reads go on.
    pub async fn snapshot_to(&self, out: PathBuf) -> Result<Manifest> {
        let shared = self.shared.clone();
        blocking(move || {
            let _writes = shared.writes.write().unwrap_or_else(|e| e.into_inner());
            shared.store.flush()?;
            let graph_dir = tempfile::tempdir_in(&shared.config.data_dir)
                .map_err(Error::file("make a folder in", &shared.config.data_dir))?;
            let graph = shared.save_index_into(&shared.current_index(), graph_dir.path())?;
            write_snapshot(&*shared.store, &out, graph.then_some(graph_dir.path()))
        })
        .await
    }
}

fn text(bytes: Option<Vec<u8>>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn write_snapshot(store: &dyn Store, out: &Path, graph: Option<&Path>) -> Result<Manifest> {
    let io = |doing| Error::file(doing, out);
    let file = File::create(out).map_err(io("create the snapshot"))?;
    let mut tar = tar::Builder::new(BufWriter::new(file));
    let manifest = Manifest {
        format: FORMAT,
        records: store.len() as u64,
        model: text(store.meta_get(META_MODEL)?).unwrap_or_default(),
        siamese: text(store.meta_get(META_SIAMESE)?),
        seq_floor: store.next_seq()?,
        graph: graph.is_some(),
        created_unix_ms: super::insert::now_ms(),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Internal(format!("snapshot manifest: {e}")))?;
    append(&mut tar, MANIFEST, &json).map_err(io("write the snapshot"))?;
    for (key, value) in store.meta_all()? {
        append(&mut tar, &format!("{META_DIR}{key}"), &value).map_err(io("write the snapshot"))?;
    }
    let records = store
        .scan_after(0)
        .map(|r| r.map(|r| (r.seq, store::encode_record(&r))));
    let count = append_spooled(&mut tar, RECORDS, records, out)?;
    if count != manifest.records {
        return Err(Error::Internal(format!(
            "the store changed during a snapshot ({} records counted, {count} read)",
            manifest.records
        )));
    }
    append_spooled(
        &mut tar,
        THUMBNAILS,
        store.attachments(Attachment::Thumbnail),
        out,
    )?;
    append_spooled(
        &mut tar,
        KEYPOINTS,
        store.attachments(Attachment::Keypoints),
        out,
    )?;
    append_spooled(
        &mut tar,
        REGIONS,
        store.attachments(Attachment::Regions),
        out,
    )?;
    let reviews: Vec<SavedReview> = store
        .reviews(None)?
        .into_iter()
        .map(|r| SavedReview {
            duplicate: r.decision == Decision::Duplicate,
            a: r.a,
            b: r.b,
            decided_at_ms: r.decided_at_ms,
        })
        .collect();
    let json = serde_json::to_vec(&reviews)
        .map_err(|e| Error::Internal(format!("snapshot reviews: {e}")))?;
    append(&mut tar, REVIEWS, &json).map_err(io("write the snapshot"))?;
    if let Some(dir) = graph {
        let files = std::fs::read_dir(dir).map_err(Error::file("list the saved graph", dir))?;
        for file in files {
            let path = file
                .map_err(Error::file("list the saved graph", dir))?
                .path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            tar.append_path_with_name(&path, format!("{INDEX_DIR}{name}"))
                .map_err(io("write the snapshot"))?;
        }
    }
    let mut file = tar
        .into_inner()
        .map_err(io("write the snapshot"))?
        .into_inner()
        .map_err(|e| io("write the snapshot")(e.into_error()))?;
    file.flush()
        .and_then(|()| file.sync_all())
        .map_err(io("write the snapshot"))?;
    Ok(manifest)
}

/// Appends `(seq, bytes)` items as one entry (each as an 8-byte seq and a
/// 4-byte length, little-endian, then the bytes), through a temporary file
/// beside `out` so the tar header can carry the entry's length. Returns how
/// many items it wrote.
fn append_spooled<W: Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    items: impl Iterator<Item = Result<(u64, Vec<u8>)>>,
    out: &Path,
) -> Result<u64> {
    let io = |doing| Error::file(doing, out);
    let mut spool = tempfile::tempfile_in(out.parent().unwrap_or(Path::new(".")))
        .map_err(io("spool the snapshot beside"))?;
    let mut count = 0u64;
    {
        let mut w = BufWriter::new(&mut spool);
        for item in items {
            let (seq, bytes) = item?;
            w.write_all(&seq.to_le_bytes())
                .and_then(|()| w.write_all(&(bytes.len() as u32).to_le_bytes()))
                .and_then(|()| w.write_all(&bytes))
                .map_err(io("spool the snapshot beside"))?;
            count += 1;
        }
        w.flush().map_err(io("spool the snapshot beside"))?;
    }
    let len = std::io::Seek::stream_position(&mut spool).map_err(io("spool the snapshot"))?;
    std::io::Seek::rewind(&mut spool).map_err(io("spool the snapshot"))?;
    let mut header = tar::Header::new_gnu();
    header.set_size(len);
    header.set_mode(0o600);
    header.set_cksum();
    tar.append_data(&mut header, name, BufReader::new(spool))
        .map_err(io("write the snapshot"))?;
    Ok(count)
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o600);
    header.set_cksum();
    tar.append_data(&mut header, name, data)
}

/// Makes a new database in `data_dir` from a snapshot file. Refuses a
/// `data_dir` that exists and is not empty. The daemon builds the graph
/// at its first start there.
pub fn restore(snapshot: &Path, data_dir: &Path) -> Result<Manifest> {
    if let Ok(mut entries) = std::fs::read_dir(data_dir) {
        if entries.next().is_some() {
            return Err(Error::InvalidArgument(format!(
                "'{}' is not empty: restore into a new or empty folder",
                data_dir.display()
            )));
        }
    }
    std::fs::create_dir_all(data_dir).map_err(Error::file("create the data folder", data_dir))?;
    let bad = |what: String| Error::InvalidArgument(format!("'{}': {what}", snapshot.display()));
    let file = File::open(snapshot).map_err(Error::file("open the snapshot", snapshot))?;
    let mut archive = tar::Archive::new(BufReader::new(file));
    let store = SledStore::open(&data_dir.join("sled"))?;
    let mut manifest: Option<Manifest> = None;
    let (mut restored, mut max_seq) = (0u64, 0u64);
    let mut reviews: Vec<SavedReview> = Vec::new();
    let read_err = Error::file("read the snapshot", snapshot);
    let entries = archive.entries().map_err(read_err)?;
    for entry in entries {
        let mut entry = entry.map_err(Error::file("read the snapshot", snapshot))?;
        let name = entry
            .path()
            .map_err(Error::file("read the snapshot", snapshot))?
            .to_string_lossy()
            .into_owned();
        if name == MANIFEST {
            let m: Manifest = serde_json::from_reader(&mut entry)
                .map_err(|e| bad(format!("its manifest does not parse: {e}")))?;
            if m.format != FORMAT {
                return Err(bad(format!(
                    "snapshot format {} (this lookalike reads {FORMAT})",
                    m.format
                )));
            }
            manifest = Some(m);
        } else if manifest.is_none() {
            return Err(bad("not a lookalike snapshot (no manifest first)".into()));
        } else if let Some(file) = name.strip_prefix(INDEX_DIR) {
            if file.is_empty() || file.contains('/') || file.starts_with('.') {
                return Err(bad(format!("unexpected entry '{name}'")));
            }
            let target = data_dir.join(super::maintenance::INDEX_DIR);
            std::fs::create_dir_all(&target)
                .map_err(Error::file("create the index folder", &target))?;
            let path = target.join(file);
            let mut out =
                File::create(&path).map_err(Error::file("restore the graph to", &path))?;
            std::io::copy(&mut entry, &mut out)
                .map_err(Error::file("restore the graph to", &path))?;
        } else if let Some(key) = name.strip_prefix(META_DIR) {
            let mut value = Vec::new();
            entry
                .read_to_end(&mut value)
                .map_err(Error::file("read the snapshot", snapshot))?;
            store.meta_put(key, &value)?;
        } else if name == RECORDS {
            (restored, max_seq) = restore_items(&mut entry, &bad, |seq, bytes| {
                let mut record = store::decode_record(bytes)?;
                record.seq = seq;
                store.restore_record(&record)
            })?;
        } else if let Some(kind) = attachment_named(&name) {
            restore_items(&mut entry, &bad, |seq, bytes| {
                store.restore_attachment(kind, seq, bytes)
            })?;
        } else if name == REVIEWS {
            reviews = serde_json::from_reader(&mut entry)
                .map_err(|e| bad(format!("its review decisions do not parse: {e}")))?;
        }
    }
    let manifest = manifest.ok_or_else(|| bad("no manifest".into()))?;
    if restored != manifest.records {
        return Err(bad(format!(
            "{restored} records, the manifest says {}",
            manifest.records
        )));
    }
    for r in reviews {
        let decision = match r.duplicate {
            true => Decision::Duplicate,
            false => Decision::NotDuplicate,
        };
        store.restore_review(&Review {
            a: r.a,
            b: r.b,
            decision,
            decided_at_ms: r.decided_at_ms,
        })?;
    }
    store.start_seqs_after(manifest.seq_floor.max(max_seq))?;
    store.flush()?;
    Ok(manifest)
}

/// Reads the `(seq, bytes)` items of an entry written by
/// [`append_spooled`] into `restore`; returns their count and highest seq.
/// The attachment a tar entry holds, by its name.
fn attachment_named(name: &str) -> Option<Attachment> {
    match name {
        THUMBNAILS => Some(Attachment::Thumbnail),
        KEYPOINTS => Some(Attachment::Keypoints),
        REGIONS => Some(Attachment::Regions),
        _ => None,
    }
}

fn restore_items(
    entry: &mut impl Read,
    bad: &dyn Fn(String) -> Error,
    mut restore: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<(u64, u64)> {
    let mut reader = BufReader::new(entry);
    let (mut count, mut max_seq) = (0u64, 0u64);
    loop {
        let mut seq = [0u8; 8];
        match reader.read_exact(&mut seq) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok((count, max_seq)),
            Err(e) => return Err(bad(format!("cannot read its records: {e}"))),
        }
        let mut len = [0u8; 4];
        reader
            .read_exact(&mut len)
            .map_err(|e| bad(format!("record {count} is cut short: {e}")))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_RECORD {
            return Err(bad(format!("record {count} claims {len} bytes")));
        }
        let mut bytes = vec![0u8; len];
        reader
            .read_exact(&mut bytes)
            .map_err(|e| bad(format!("record {count} is cut short: {e}")))?;
        let seq = u64::from_le_bytes(seq);
        max_seq = max_seq.max(seq);
        restore(seq, &bytes)?;
        count += 1;
    }
}
