//! The decode memory budget: one bound on the memory every decode in flight
//! may use together.
//!
//! A pixel limit alone bounds one request, not many: a 12 KB PNG may declare
//! tens of megapixels, and sixteen of them at once once took the daemon past
//! 6 GB. Each request image is first probed (its header only, see
//! [`super::cost`]) for what decoding it will allocate at most; it then
//! takes that many MiB from the budget before it decodes and gives them back
//! when done. A request whose image alone needs more than the whole budget
//! is refused (RESOURCE_EXHAUSTED); others wait their turn, in arrival
//! order, for at most [`WAIT`], then are refused as busy. A client that
//! leaves while waiting gives up its place.

use std::{sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Longest a decode waits for room in the budget.
pub const WAIT: Duration = Duration::from_secs(30);

const MIB: u64 = 1 << 20;

/// Shared by every request; see the module documentation.
#[derive(Debug, Clone)]
pub struct DecodeBudget {
    permits: Arc<Semaphore>,
    mib: u32,
    wait: Duration,
}

/// Room taken in the budget; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl DecodeBudget {
    pub fn new(mib: u32) -> Self {
        Self::waiting(mib, WAIT)
    }

    /// A budget whose decodes wait at most `wait` for room.
    pub fn waiting(mib: u32, wait: Duration) -> Self {
        DecodeBudget {
            permits: Arc::new(Semaphore::new(mib as usize)),
            mib,
            wait,
        }
    }

    /// The budget, in MiB.
    pub fn mib(&self) -> u32 {
        self.mib
    }

    /// Takes room for a decode of `bytes` (its estimated peak; see
    /// [`super::cost`]) described as `what`, waiting up to [`WAIT`] (or the
    /// budget's own wait).
    pub async fn reserve(&self, bytes: u64, what: &str) -> Result<Reservation> {
        let need = bytes.div_ceil(MIB).max(1);
        if need > u64::from(self.mib) {
            return Err(Error::TooLarge(format!(
                "decoding {what} needs about {need} MiB, over the decode memory budget of {} MiB \
                 (--decode-memory-mib)",
                self.mib
            )));
        }
        let acquire = self.permits.clone().acquire_many_owned(need as u32);
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => Ok(Reservation { _permit: permit }),
            Ok(Err(_closed)) => Err(Error::Unavailable("shutting down".into())),
            Err(_elapsed) => Err(Error::Busy(format!(
                "decoding {what} needs about {need} MiB and the decode memory budget \
                 ({} MiB) stayed full for {:.0} s; retry later",
                self.mib,
                self.wait.as_secs_f64()
            ))),
        }
    }

    /// MiB not taken right now.
    pub fn available_mib(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn over_the_whole_budget_is_refused_and_room_comes_back_on_drop() {
        let budget = DecodeBudget::new(100);
        let err = budget.reserve(101 * MIB, "it").await.unwrap_err();
        assert!(
            matches!(&err, Error::TooLarge(m) if m.contains("101 MiB")),
            "{err}"
        );
        let a = budget.reserve(60 * MIB, "a").await.unwrap();
        assert_eq!(budget.available_mib(), 40);
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.reserve(50 * MIB, "b").await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        waiting.await.unwrap().unwrap();
        assert_eq!(budget.available_mib(), 100);
    }

    #[tokio::test]
    async fn a_full_budget_turns_into_busy_after_the_wait() {
        let budget = DecodeBudget::waiting(10, Duration::from_millis(50));
        let _all = budget.reserve(10 * MIB, "a").await.unwrap();
        let err = budget.reserve(MIB, "b").await.unwrap_err();
        assert!(
            matches!(&err, Error::Busy(m) if m.contains("retry")),
            "{err}"
        );
    }
}
