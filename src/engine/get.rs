//! Get: a stored record by id.

use super::{blocking, Engine};
use crate::error::{Error, Result};
use crate::store::Record;

impl Engine {
    /// The stored record with this id.
    pub async fn get(&self, id: String) -> Result<Record> {
        let shared = self.shared.clone();
        blocking(move || shared.store.get(&id)?.ok_or(Error::NotFound(id))).await
    }
}
