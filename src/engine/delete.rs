//! Delete: remove a stored image, durably, and tombstone it in the index
//! under the index slot's read lock (see `Shared::index`).

use super::{blocking, Engine};
use crate::error::{Error, Result};

impl Engine {
    /// Removes a stored image; durable once this returns.
    pub async fn delete(&self, id: String) -> Result<()> {
        self.check_ready()?;
        super::insert::check_id(&id)?;
        let shared = self.shared.clone();
        blocking(move || {
            {
                let index = shared.write_slot()?;
                let seq = shared
                    .store
                    .delete(&id)?
                    .ok_or_else(|| Error::NotFound(id.clone()))?;
                shared.store.flush()?;
                index.remove(seq);
                shared.forget_damaged(seq);
            }
            shared.maintenance.notify_one();
            Ok(())
        })
        .await
    }
}
