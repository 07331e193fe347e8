//! Stats: counts and state of the database.

use super::Engine;

/// Counts and state, for Stats.
#[derive(Debug, Clone)]
pub struct Stats {
    pub count: u64,
    pub dimensions: u32,
    pub pca_dimensions: Option<u32>,
    pub index_size: u64,
    pub index_tombstones: u64,
    pub model: String,
    pub pca_min_images: u64,
    pub duplicate_distance: Option<f32>,
    pub duplicate_similarity: f32,
    /// Stored records found unreadable so far (quarantined).
    pub damaged_records: u64,
}

impl Engine {
    /// Bytes the store takes on disk.
    pub fn store_disk_bytes(&self) -> crate::error::Result<u64> {
        self.shared.store.size_on_disk()
    }

    pub fn stats(&self) -> Stats {
        let index = self.shared.current_index();
        Stats {
            count: self.shared.store.len() as u64,
            dimensions: self.shared.embedder.dim() as u32,
            pca_dimensions: index.projection().map(|p| p.out_dim() as u32),
            index_size: index.size() as u64,
            index_tombstones: index.tombstones() as u64,
            model: self.shared.embedder.kind().name().to_string(),
            pca_min_images: self.shared.config.pca_min_images as u64,
            duplicate_distance: self.shared.distance_threshold(),
            duplicate_similarity: self.shared.config.duplicate_similarity,
            damaged_records: self.shared.damaged_count() as u64,
        }
    }
}
