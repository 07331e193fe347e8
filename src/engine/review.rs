//! Review: a user's decision about a pair of stored images, which
//! overrides the model's verdict everywhere (see `verdict`), listed and
//! revocable, durable once acknowledged.

use super::{blocking, insert::check_id, insert::now_ms, Engine};
use crate::error::{shorten, Error, Result};
use crate::store::{Decision, Review};

impl Engine {
    /// Records `decision` about `a` and `b` (`None` revokes any); both must
    /// be stored. Durable once this returns. Returns the decision it
    /// replaced.
    pub async fn review(
        &self,
        a: String,
        b: String,
        decision: Option<Decision>,
    ) -> Result<Option<Decision>> {
        self.check_ready()?;
        for (name, id) in [("a", &a), ("b", &b)] {
            if id.is_empty() {
                return Err(Error::InvalidArgument(format!("review: {name} is empty")));
            }
            check_id(id)?;
        }
        if a == b {
            return Err(Error::InvalidArgument(format!(
                "review: a and b are the same image ('{}')",
                shorten(&a)
            )));
        }
        let shared = self.shared.clone();
        blocking(move || {
            // The `writes` lock, as every write takes it: a snapshot sees a
            // decision whole or not at all.
            let _slot = shared.write_slot()?;
            let previous = shared.store.review_set(&a, &b, decision, now_ms())?;
            shared.store.flush()?;
            Ok(previous)
        })
        .await
    }

    /// Every decision (each pair once), or those naming `id`.
    pub async fn reviews(&self, id: Option<String>) -> Result<Vec<Review>> {
        let shared = self.shared.clone();
        blocking(move || shared.store.reviews(id.as_deref())).await
    }
}
