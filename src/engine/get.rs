//! Get and List: a stored record by id, or every stored record (or an
//! even sample of them) as a stream, with thumbnails and projected features
//! on request.

use tokio::sync::mpsc;

use super::{blocking, Engine};
use crate::error::{Error, Result};
use crate::store::{Attachment, Record};

/// What a List sends.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListOptions {
    /// At most this many records, spread evenly over the store in seq
    /// order; 0 for all.
    pub sample: usize,
    pub thumbnails: bool,
    /// Also each record's features projected by the index's PCA (the full
    /// features while none is fitted).
    pub projected: bool,
}

/// One record of a List.
#[derive(Debug, Clone)]
pub struct Listed {
    pub record: Record,
    pub thumbnail: Option<Vec<u8>>,
    pub projected: Option<Vec<f32>>,
}

impl Engine {
    /// The stored record with this id.
    pub async fn get(&self, id: String) -> Result<Record> {
        super::insert::check_id(&id)?;
        let shared = self.shared.clone();
        blocking(move || shared.store.get(&id)?.ok_or(Error::NotFound(id))).await
    }

    /// The thumbnail stored with the record of this seq, if any.
    pub async fn thumbnail(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        let shared = self.shared.clone();
        blocking(move || shared.store.attachment(Attachment::Thumbnail, seq)).await
    }

    /// Streams the stored records (see [`ListOptions`]) to `out`, in seq
    /// order; stops when the receiver is dropped.
    pub async fn list(
        &self,
        options: ListOptions,
        out: mpsc::Sender<Result<Listed>>,
    ) -> Result<()> {
        self.check_ready()?;
        let shared = self.shared.clone();
        blocking(move || {
            let index = shared.current_index();
            let total = shared.store.len().max(1);
            let wanted = |i: usize| {
                options.sample == 0
                    || options.sample >= total
                    || (i + 1) * options.sample / total > i * options.sample / total
            };
            for (i, record) in shared.store.scan_after(0).enumerate() {
                if !wanted(i) {
                    continue;
                }
                let record = match record {
                    Err(e) => match shared.skip_damaged(e) {
                        Ok(()) => continue,
                        Err(e) => Err(e),
                    },
                    ok => ok,
                };
                let item = record.and_then(|record| {
                    let thumbnail = match options.thumbnails {
                        true => shared.store.attachment(Attachment::Thumbnail, record.seq)?,
                        false => None,
                    };
                    let projected = options.projected.then(|| match index.projection() {
                        Some(p) => p.project(&record.features),
                        None => record.features.clone(),
                    });
                    Ok(Listed {
                        record,
                        thumbnail,
                        projected,
                    })
                });
                if out.blocking_send(item).is_err() {
                    break;
                }
            }
            Ok(())
        })
        .await
    }
}
