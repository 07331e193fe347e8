//! Batching of concurrent forward passes: the CNN and, over its tapped
//! maps, the Siamese head, run together for every request in a batch.
//!
//! It lives in the engine, above both networks, so that [`crate::embed`]
//! and [`crate::siamese`] stay independent of each other (the Siamese head
//! reads the CNN's shapes; the CNN knows nothing of the head).
//!
//! A forward pass over 16 images costs far less than 16 passes over one
//! (the matrix multiplies get wide enough to use the cores well). Requests
//! decode and preprocess on tokio's blocking pool, in parallel, then hand
//! their input to one worker thread, which takes whatever has queued up,
//! waiting at most `budget` for more once a first input is there, and runs
//! them as one batch. A lone request pays at most `budget` extra latency.
//! The same pass taps the CNN's head map: the worker pools it over nine
//! parts ([`crate::embed::regions`]) and, with a Siamese network, runs that
//! network over it, batched too.

use std::{
    sync::{mpsc, Arc},
    thread,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use crate::embed::regions;
use crate::embed::Embedder;
use crate::error::{Error, Result};
use crate::siamese::Siamese;

/// Largest batch the worker runs at once.
const MAX_BATCH: usize = 16;

/// One image's descriptors.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// L2-normalised CNN features.
    pub features: Vec<f32>,
    /// The Siamese embedding; `None` without a Siamese network.
    pub siamese: Option<Vec<f32>>,
    /// The head map's parts ([`crate::embed::regions::encode`]), from the
    /// same pass.
    pub regions: Vec<u8>,
}

struct Job {
    input: Vec<f32>,
    reply: oneshot::Sender<Result<Embedded>>,
}

/// Handle to the batching worker; the worker stops when the last handle drops.
#[derive(Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the worker over `embedder` (and `siamese`, when given).
    pub fn start(
        embedder: Arc<Embedder>,
        siamese: Option<Arc<Siamese>>,
        budget: Duration,
    ) -> Result<Self> {
        let (queue, jobs) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("lookalike-batcher".into())
            .spawn(move || run(&embedder, siamese.as_deref(), &jobs, budget))
            .map_err(|e| Error::Model(format!("cannot start the embedding worker: {e}")))?;
        Ok(Batcher { queue })
    }

    /// Embeds one preprocessed input (see [`Embedder::input`]).
    pub async fn embed(&self, input: Vec<f32>) -> Result<Embedded> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { input, reply })
            .map_err(|_| Error::Internal("the embedding worker has stopped".into()))?;
        answer
            .await
            .map_err(|_| Error::Internal("the embedding worker dropped a request".into()))?
    }
}

fn run(
    embedder: &Embedder,
    siamese: Option<&Siamese>,
    jobs: &mpsc::Receiver<Job>,
    budget: Duration,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + budget;
        while batch.len() < MAX_BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            match jobs.recv_timeout(left) {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (inputs, replies): (Vec<Vec<f32>>, Vec<_>) =
            batch.into_iter().map(|j| (j.input, j.reply)).unzip();
        metrics::histogram!("lookalike_embed_batch_size").record(inputs.len() as f64);
        let started = Instant::now();
        let described = describe(embedder, siamese, &inputs);
        metrics::histogram!("lookalike_embed_forward_seconds")
            .record(started.elapsed().as_secs_f64());
        match described {
            Ok(described) => {
                for (reply, d) in replies.into_iter().zip(described) {
                    // The requester may have gone (cancelled call): nothing to do.
                    let _ = reply.send(Ok(d));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(Error::Model(message.clone())));
                }
            }
        }
    }
}

fn describe(
    embedder: &Embedder,
    siamese: Option<&Siamese>,
    inputs: &[Vec<f32>],
) -> Result<Vec<Embedded>> {
    let embedded = embedder.embed_inputs_with_taps(inputs);
    let shape = embedder.tap_shape();
    let taps: Vec<&[f32]> = embedded.iter().map(|e| e.tap.as_slice()).collect();
    let vectors = match siamese {
        Some(siamese) => siamese
            .embed_taps(&taps, shape)?
            .into_iter()
            .map(Some)
            .collect(),
        None => vec![None; taps.len()],
    };
    Ok(embedded
        .into_iter()
        .zip(vectors)
        .map(|(e, siamese)| Embedded {
            regions: regions::encode(&regions::regional_vectors(&e.tap, shape)),
            features: e.features,
            siamese,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::ModelKind;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_get_their_own_answers() {
        let embedder =
            Arc::new(Embedder::load(ModelKind::EfficientNetLite0, None, 2).expect("load"));
        let batcher =
            Batcher::start(embedder.clone(), None, Duration::from_millis(5)).expect("start");
        let images: Vec<image::RgbImage> = (0..6u8)
            .map(|i| {
                image::RgbImage::from_fn(64, 48, move |x, y| {
                    image::Rgb([
                        (x as u8).wrapping_mul(i),
                        (y as u8).wrapping_mul(3),
                        40u8.wrapping_mul(i),
                    ])
                })
            })
            .collect();
        let want = embedder.embed(&images).expect("direct");
        let calls = images.iter().map(|img| batcher.embed(embedder.input(img)));
        let got = futures_util::future::try_join_all(calls)
            .await
            .expect("batched");
        for (w, g) in want.iter().zip(&got) {
            let cos: f32 = w.iter().zip(&g.features).map(|(a, b)| a * b).sum();
            assert!(cos > 0.9999, "cosine {cos}");
        }
    }
}
