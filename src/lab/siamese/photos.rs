//! The photos a Siamese model is trained and validated on.
//!
//! Each photo has an identity (copies of one photo share it and are never
//! used as a negative pair), a class (its folder: two photos of one class
//! are "similar, not duplicate") and a split. The split comes from a
//! `splits.tsv` (`path`, `split`, `group`, as `scripts/fetch-datasets.sh`
//! writes it, grouping copies of one photo across folders) when one is
//! given, or else from a hash of the file's bytes (about a quarter `val`).

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use image::RgbImage;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::decode;
use crate::error::{Error, Result};

/// Longest side photos are kept at in memory: views are cut from this, and
/// the network input is 224 px, so more only costs time.
const WORKING_SIDE: u32 = 640;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// One photo, decoded and scaled to at most [`WORKING_SIDE`].
#[derive(Debug, Clone)]
pub struct Photo {
    pub path: PathBuf,
    pub identity: String,
    pub class: String,
    pub split: Split,
    pub image: RgbImage,
}

/// Every photo under `dirs` (recursively), one per identity, in path order.
/// `splits`: a `splits.tsv` whose paths are relative to its own folder.
pub fn load(dirs: &[PathBuf], splits: Option<&Path>) -> Result<Vec<Photo>> {
    let table = splits.map(read_splits).transpose()?;
    let mut files = crate::files::image_files(dirs)?;
    files.sort();
    files.dedup();
    let photos: Vec<Option<Photo>> = files
        .par_iter()
        .map(|path| load_one(path, table.as_ref()))
        .collect::<Result<_>>()?;
    let mut seen = HashSet::new();
    Ok(photos
        .into_iter()
        .flatten()
        .filter(|p| seen.insert(p.identity.clone()))
        .collect())
}

/// `(split, group)` by canonical path.
type SplitTable = BTreeMap<PathBuf, (Split, String)>;

fn read_splits(path: &Path) -> Result<SplitTable> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidArgument(format!("cannot read '{}': {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut table = SplitTable::new();
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [file, split, group, ..] = cols[..] else {
            continue;
        };
        let split = match split {
            "train" => Split::Train,
            "val" => Split::Val,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "{}: unknown split '{other}'",
                    path.display()
                )))
            }
        };
        if let Ok(canonical) = base.join(file).canonicalize() {
            table.insert(canonical, (split, group.to_string()));
        }
    }
    Ok(table)
}

/// The photo at `path`; `None` when a splits table is given and does not
/// list it.
fn load_one(path: &Path, table: Option<&SplitTable>) -> Result<Option<Photo>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::InvalidArgument(format!("cannot read '{}': {e}", path.display())))?;
    let (split, identity) = match table {
        Some(t) => {
            let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
            match t.get(&canonical) {
                Some((split, group)) => (*split, group.clone()),
                None => return Ok(None),
            }
        }
        None => hash_split(&bytes),
    };
    let image = decode::decode(&bytes, 1 << 28)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
    let class = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Some(Photo {
        path: path.to_path_buf(),
        identity,
        class,
        split,
        image: shrink(image),
    }))
}

/// Split and identity from the file's hash: about one photo in four is `val`.
fn hash_split(bytes: &[u8]) -> (Split, String) {
    let digest = Sha256::digest(bytes);
    let split = if digest[0] % 4 == 0 {
        Split::Val
    } else {
        Split::Train
    };
    let identity = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    (split, identity)
}

fn shrink(image: RgbImage) -> RgbImage {
    let (w, h) = image.dimensions();
    let long = w.max(h);
    if long <= WORKING_SIDE {
        return image;
    }
    let scale = WORKING_SIDE as f32 / long as f32;
    let (nw, nh) = (
        ((w as f32 * scale).round() as u32).max(1),
        ((h as f32 * scale).round() as u32).max(1),
    );
    image::imageops::resize(&image, nw, nh, image::imageops::FilterType::Triangle)
}
