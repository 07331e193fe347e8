//! The `lookalike.v1.Lookalike` service: protobuf in, engine call, protobuf out.

use std::{collections::BTreeMap, pin::Pin, time::Instant};

use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::proto::{self, image_ref::Source, lookalike_server::Lookalike};
use super::status::{code, to_status};
use crate::engine::{
    Engine, GroupEvent, GroupOptions, ImageSource, ListOptions, Listed, Match, NewImage, Prepared,
    Tier,
};
use crate::error::Error;
use crate::store::Decision;
use crate::telemetry;

/// Images of one InsertStream embedded concurrently while earlier ones commit.
const STREAM_PIPELINE: usize = 4;
/// Most items of one InsertStream stored by one group commit (one flush).
const MAX_COMMIT_GROUP: usize = 32;
/// Responses an InsertStream buffers for a slow reader before it stops
/// reading requests (backpressure).
const STREAM_BUFFER: usize = 16;

/// The gRPC service, a thin layer over [`Engine`].
#[derive(Clone)]
pub struct Service {
    engine: Engine,
    /// Turns true when the daemon starts to stop: open InsertStreams end
    /// (UNAVAILABLE) instead of reading more items.
    stopping: watch::Receiver<bool>,
}

impl Service {
    pub fn new(engine: Engine, stopping: watch::Receiver<bool>) -> Self {
        Service { engine, stopping }
    }
}

/// One call being served: counted, timed and logged (at debug level) when
/// it finishes. Never the image bytes or the metadata, never a key.
struct Call {
    method: &'static str,
    id: String,
    started: Instant,
}

impl Call {
    fn start(method: &'static str, id: String) -> Call {
        Call {
            method,
            id,
            started: Instant::now(),
        }
    }

    /// Records the call now if `result` is an error (the call ends there);
    /// a success is recorded later, when its stream ends.
    fn finish_if_err<T>(&self, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result {
            self.record(status.code());
        }
        result
    }

    fn finish<T>(self, result: Result<T, Status>) -> Result<T, Status> {
        self.record(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
        result
    }

    fn record(&self, code: Code) {
        let elapsed = self.started.elapsed();
        telemetry::record_call(self.method, code, elapsed);
        tracing::debug!(
            method = self.method,
            id = %self.id,
            code = ?code,
            elapsed_ms = elapsed.as_secs_f64() * 1e3,
            "call"
        );
    }
}

/// What an InsertStream answers once the daemon is stopping.
fn stopping_status() -> Status {
    Status::unavailable(
        "lookalike is shutting down: items of this stream not yet answered were not stored; \
         send them again to another instance or after the restart",
    )
}

type InsertResponseStream =
    Pin<Box<dyn Stream<Item = Result<proto::InsertResponse, Status>> + Send>>;
type SnapshotChunkStream = Pin<Box<dyn Stream<Item = Result<proto::SnapshotChunk, Status>> + Send>>;
type GroupsResponseStream =
    Pin<Box<dyn Stream<Item = Result<proto::GroupsResponse, Status>> + Send>>;
type GetResponseStream = Pin<Box<dyn Stream<Item = Result<proto::GetResponse, Status>> + Send>>;

/// Bytes per snapshot chunk.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Sends a snapshot file in chunks; the file is removed when done.
async fn stream_file(
    spool: tempfile::NamedTempFile,
    tx: &mpsc::Sender<Result<proto::SnapshotChunk, Status>>,
) -> Code {
    use tokio::io::AsyncReadExt;
    let mut file = match tokio::fs::File::open(spool.path()).await {
        Ok(f) => f,
        Err(e) => {
            let _ = tx
                .send(Err(Status::internal(format!(
                    "cannot reopen the snapshot: {e}"
                ))))
                .await;
            return Code::Internal;
        }
    };
    loop {
        let mut data = vec![0u8; SNAPSHOT_CHUNK];
        let n = match file.read(&mut data).await {
            Ok(0) => return Code::Ok,
            Ok(n) => n,
            Err(e) => {
                let _ = tx
                    .send(Err(Status::internal(format!(
                        "cannot read the snapshot: {e}"
                    ))))
                    .await;
                return Code::Internal;
            }
        };
        data.truncate(n);
        if tx.send(Ok(proto::SnapshotChunk { data })).await.is_err() {
            return Code::Cancelled;
        }
    }
}

#[tonic::async_trait]
impl Lookalike for Service {
    async fn insert(
        &self,
        request: Request<proto::InsertRequest>,
    ) -> Result<Response<proto::InsertResponse>, Status> {
        let call = Call::start("Insert", request.get_ref().id.clone());
        let result: Result<Response<proto::InsertResponse>, Status> = async {
            let outcome = self
                .engine
                .insert(new_image(request.into_inner()))
                .await
                .map_err(to_status)?;
            Ok(Response::new(proto::InsertResponse {
                id: outcome.id,
                duplicates: outcome.duplicates.into_iter().map(to_match).collect(),
                error: None,
                replaced: outcome.replaced,
            }))
        }
        .await;
        call.finish(result)
    }

    type InsertStreamStream = InsertResponseStream;
    type SnapshotStream = SnapshotChunkStream;

    async fn snapshot(
        &self,
        _request: Request<proto::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let call = Call::start("Snapshot", String::new());
        let started = async {
            let spool = tempfile::NamedTempFile::new_in(&self.engine.config().data_dir)
                .map_err(|e| Status::internal(format!("cannot make the snapshot file: {e}")))?;
            let manifest = self
                .engine
                .snapshot_to(spool.path().to_path_buf())
                .await
                .map_err(to_status)?;
            Ok::<_, Status>((spool, manifest))
        };
        let (spool, manifest) = call.finish_if_err(started.await)?;
        tracing::info!(records = manifest.records, "snapshot taken; streaming it");
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let code = stream_file(spool, &tx).await;
            call.record(code);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn insert_stream(
        &self,
        request: Request<Streaming<proto::InsertRequest>>,
    ) -> Result<Response<Self::InsertStreamStream>, Status> {
        let call = Call::start("InsertStream", String::new());
        let (self_engine, stopping) = (self.engine.clone(), self.stopping.clone());
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let code = run_insert_stream(self_engine, inbound, tx, stopping).await;
            call.record(code);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn query(
        &self,
        request: Request<proto::QueryRequest>,
    ) -> Result<Response<proto::QueryResponse>, Status> {
        let call = Call::start("Query", String::new());
        let result: Result<Response<proto::QueryResponse>, Status> = async {
            let req = request.into_inner();
            let image = image_source(req.image, "image")?;
            let matches = self
                .engine
                .query(image, req.k as usize, req.min_similarity)
                .await
                .map_err(to_status)?;
            let matches = matches
                .into_iter()
                .map(|mut m| {
                    if req.omit_metadata {
                        m.metadata.clear();
                    }
                    to_match(m)
                })
                .collect();
            Ok(Response::new(proto::QueryResponse { matches }))
        }
        .await;
        call.finish(result)
    }

    async fn compare(
        &self,
        request: Request<proto::CompareRequest>,
    ) -> Result<Response<proto::CompareResponse>, Status> {
        let call = Call::start("Compare", String::new());
        let result: Result<Response<proto::CompareResponse>, Status> = async {
            let req = request.into_inner();
            let a = image_source(req.a, "a")?;
            let b = image_source(req.b, "b")?;
            let c = self
                .engine
                .compare(a, b, req.max_distance)
                .await
                .map_err(to_status)?;
            Ok(Response::new(proto::CompareResponse {
                similarity: c.similarity,
                distance: c.distance,
                duplicate: c.duplicate,
                threshold: c.threshold,
                similarity_threshold: c.similarity_threshold,
                tier: tier(c.tier) as i32,
                review: decision(c.review) as i32,
                keypoint_matches: c.keypoint_matches,
            }))
        }
        .await;
        call.finish(result)
    }

    async fn get(
        &self,
        request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        let call = Call::start("Get", request.get_ref().id.clone());
        let result: Result<Response<proto::GetResponse>, Status> = async {
            let req = request.into_inner();
            let record = self
                .engine
                .get(non_empty_id(req.id)?)
                .await
                .map_err(to_status)?;
            let thumbnail = match req.include_thumbnail {
                true => self.engine.thumbnail(record.seq).await.map_err(to_status)?,
                false => None,
            };
            let listed = Listed {
                record,
                thumbnail,
                projected: None,
            };
            Ok(Response::new(to_get_response(
                listed,
                req.include_features,
                true,
            )))
        }
        .await;
        call.finish(result)
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let call = Call::start("Delete", request.get_ref().id.clone());
        let result: Result<Response<proto::DeleteResponse>, Status> = async {
            let id = non_empty_id(request.into_inner().id)?;
            self.engine.delete(id.clone()).await.map_err(to_status)?;
            Ok(Response::new(proto::DeleteResponse { id }))
        }
        .await;
        call.finish(result)
    }

    type GroupsStream = GroupsResponseStream;

    async fn groups(
        &self,
        request: Request<proto::GroupsRequest>,
    ) -> Result<Response<Self::GroupsStream>, Status> {
        let call = Call::start("Groups", String::new());
        let req = request.into_inner();
        let options = GroupOptions {
            neighbours: match req.neighbours {
                0 => crate::config::defaults::GROUP_NEIGHBOURS,
                n => n as usize,
            },
            max_group_size: match req.max_group_size {
                0 => crate::config::defaults::MAX_GROUP_SIZE,
                n => n as usize,
            },
            similar_floor: req.similar_floor,
            keypoints: req.keypoints,
        };
        let (events, found) = mpsc::channel::<GroupEvent>(64);
        let engine = self.engine.clone();
        let work = async move { engine.groups(options, events).await };
        let rx = forward(call, found, work, |event| {
            let item = match event {
                GroupEvent::Progress { phase, done, total } => {
                    proto::groups_response::Item::Progress(proto::Progress {
                        phase: phase.to_string(),
                        done,
                        total,
                    })
                }
                GroupEvent::Group(g) => proto::groups_response::Item::Group(to_group(g)),
            };
            Ok(proto::GroupsResponse { item: Some(item) })
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn review(
        &self,
        request: Request<proto::ReviewRequest>,
    ) -> Result<Response<proto::ReviewResponse>, Status> {
        let call = Call::start("Review", request.get_ref().a.clone());
        let result: Result<Response<proto::ReviewResponse>, Status> = async {
            let req = request.into_inner();
            let wanted = match proto::Decision::try_from(req.decision) {
                Ok(proto::Decision::Duplicate) => Some(Decision::Duplicate),
                Ok(proto::Decision::NotDuplicate) => Some(Decision::NotDuplicate),
                Ok(proto::Decision::Clear) => None,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "decision must be DECISION_DUPLICATE, DECISION_NOT_DUPLICATE or \
                         DECISION_CLEAR, got {}",
                        req.decision
                    )))
                }
            };
            let previous = self
                .engine
                .review(req.a, req.b, wanted)
                .await
                .map_err(to_status)?;
            Ok(Response::new(proto::ReviewResponse {
                previous: decision(previous) as i32,
            }))
        }
        .await;
        call.finish(result)
    }

    async fn list_reviews(
        &self,
        request: Request<proto::ListReviewsRequest>,
    ) -> Result<Response<proto::ListReviewsResponse>, Status> {
        let call = Call::start("ListReviews", request.get_ref().id.clone());
        let result: Result<Response<proto::ListReviewsResponse>, Status> = async {
            let id = Some(request.into_inner().id).filter(|id| !id.is_empty());
            let reviews = self.engine.reviews(id).await.map_err(to_status)?;
            let reviews = reviews
                .into_iter()
                .map(|r| proto::ReviewDecision {
                    a: r.a,
                    b: r.b,
                    decision: decision(Some(r.decision)) as i32,
                    decided_at_unix_ms: r.decided_at_ms,
                })
                .collect();
            Ok(Response::new(proto::ListReviewsResponse { reviews }))
        }
        .await;
        call.finish(result)
    }

    type ListStream = GetResponseStream;

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let call = Call::start("List", String::new());
        let req = request.into_inner();
        let options = ListOptions {
            sample: req.sample as usize,
            thumbnails: req.include_thumbnail,
            projected: req.include_projected,
        };
        let (items, listed) = mpsc::channel(64);
        let engine = self.engine.clone();
        let work = async move { engine.list(options, items).await };
        let metadata = req.include_metadata;
        let rx = forward(call, listed, work, move |item| {
            item.map(|l| to_get_response(l, false, metadata))
                .map_err(to_status)
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stats(
        &self,
        _request: Request<proto::StatsRequest>,
    ) -> Result<Response<proto::StatsResponse>, Status> {
        let call = Call::start("Stats", String::new());
        let result: Result<Response<proto::StatsResponse>, Status> = async {
            let s = self.engine.stats();
            Ok(Response::new(proto::StatsResponse {
                count: s.count,
                dimensions: s.dimensions,
                pca_fitted: s.pca_dimensions.is_some(),
                pca_dimensions: s.pca_dimensions.unwrap_or(0),
                index_size: s.index_size,
                index_tombstones: s.index_tombstones,
                model: s.model,
                pca_min_images: s.pca_min_images,
                duplicate_distance: s.duplicate_distance,
                duplicate_similarity: s.duplicate_similarity,
                damaged_records: s.damaged_records,
            }))
        }
        .await;
        call.finish(result)
    }
}

/// Runs `work` (which sends its items to `items`) and streams each item,
/// converted, to the client; then the call's end: OK, or `work`'s error as
/// the last message. Dropping `items`' receiver when the client leaves
/// stops `work` at its next send.
fn forward<T, R, F>(
    call: Call,
    mut items: mpsc::Receiver<T>,
    work: F,
    convert: impl Fn(T) -> Result<R, Status> + Send + 'static,
) -> mpsc::Receiver<Result<R, Status>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: std::future::Future<Output = crate::error::Result<()>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(16);
    let work = tokio::spawn(work);
    tokio::spawn(async move {
        while let Some(item) = items.recv().await {
            if tx.send(convert(item)).await.is_err() {
                call.record(Code::Cancelled);
                return;
            }
        }
        let status = match work.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(to_status(e)),
            Err(e) => Some(Status::internal(format!(
                "the {} call failed: {e}",
                call.method
            ))),
        };
        let code = status.as_ref().map_or(Code::Ok, Status::code);
        if let Some(status) = status {
            let _ = tx.send(Err(status)).await;
        }
        call.record(code);
    });
    rx
}

/// An InsertStream item once decoded and embedded: its id and the
/// prepared insert, or the stream's own error (which ends it).
type PreparedItem = Result<(String, Result<Prepared, Error>), Status>;

/// Where an item of a group commit gets its answer from.
enum Answer {
    /// Its outcome in the group commit.
    Committed(String),
    /// It failed before the commit (bad image, bad id, ...).
    Failed(String, Error),
    /// The stream failed here (e.g. a malformed message): ends it.
    Ended(Status),
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Embeds up to [`STREAM_PIPELINE`] requests at once, commits those ready
/// together in arrival order (a group commit), and answers each; a bad item
/// gets an `error`, a broken stream ends the call with its status. Once the
/// daemon is stopping, the stream commits nothing more and ends with
/// UNAVAILABLE, idle or not.
async fn run_insert_stream(
    engine: Engine,
    inbound: Streaming<proto::InsertRequest>,
    tx: mpsc::Sender<Result<proto::InsertResponse, Status>>,
    mut stopping: watch::Receiver<bool>,
) -> Code {
    // Decoding and embedding run in a task of their own, so that the next
    // images are embedded while earlier ones are being stored.
    let (ready_tx, mut ready) = mpsc::channel::<PreparedItem>(STREAM_PIPELINE);
    let mut preparer = {
        let engine = engine.clone();
        AbortOnDrop(tokio::spawn(async move {
            let prepared = inbound
                .map(|item| {
                    let engine = engine.clone();
                    async move {
                        let req = item?;
                        let id = req.id.clone();
                        Ok((id, engine.prepare(new_image(req)).await))
                    }
                })
                .buffered(STREAM_PIPELINE);
            tokio::pin!(prepared);
            while let Some(item) = prepared.next().await {
                if ready_tx.send(item).await.is_err() {
                    return;
                }
            }
        }))
    };
    loop {
        let first = tokio::select! {
            biased;
            _ = stopping.wait_for(|stop| *stop) => None,
            item = ready.recv() => Some(item),
        };
        let first = match first {
            Some(Some(item)) => Some(item),
            // Every item answered, unless the preparer died.
            Some(None) => {
                return match (&mut preparer.0).await {
                    Err(e) if e.is_panic() => {
                        tracing::error!("an InsertStream's preparer panicked");
                        let status = Status::internal(
                            "lookalike failed preparing this stream's next item; items not yet \
                             answered were not stored",
                        );
                        let _ = tx.send(Err(status)).await;
                        Code::Internal
                    }
                    _ => Code::Ok,
                };
            }
            None => None,
        };
        // Checked again after the item is ready: a stop that came while it
        // was being embedded wins, so nothing is stored after the signal.
        let Some(first) = first.filter(|_| !*stopping.borrow()) else {
            let _ = tx.send(Err(stopping_status())).await;
            return Code::Unavailable;
        };
        // Every item already embedded joins this commit (one flush for
        // all), up to a stream error, which ends the stream.
        let mut items = vec![first];
        while items.len() < MAX_COMMIT_GROUP && items.last().is_some_and(Result::is_ok) {
            match ready.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        let mut group = Vec::with_capacity(items.len());
        let answers: Vec<Answer> = items
            .into_iter()
            .map(|item| match item {
                Ok((id, Ok(prepared))) => {
                    group.push(prepared);
                    Answer::Committed(id)
                }
                Ok((id, Err(e))) => Answer::Failed(id, e),
                Err(status) => Answer::Ended(status),
            })
            .collect();
        let mut outcomes = engine.commit_group(group).await.into_iter();
        for answer in answers {
            let response = match answer {
                Answer::Committed(id) => match outcomes.next() {
                    Some(Ok(outcome)) => Ok(proto::InsertResponse {
                        id: outcome.id,
                        duplicates: outcome.duplicates.into_iter().map(to_match).collect(),
                        error: None,
                        replaced: outcome.replaced,
                    }),
                    Some(Err(e)) => Ok(item_error(id, e)),
                    None => Ok(item_error(
                        id,
                        Error::Internal("the group commit gave no outcome".into()),
                    )),
                },
                Answer::Failed(id, e) => Ok(item_error(id, e)),
                Answer::Ended(status) => Err(status),
            };
            let ended = response.as_ref().err().map(Status::code);
            if tx.send(response).await.is_err() {
                return Code::Cancelled;
            }
            if let Some(code) = ended {
                return code;
            }
        }
    }
}

fn item_error(id: String, e: Error) -> proto::InsertResponse {
    proto::InsertResponse {
        id,
        duplicates: Vec::new(),
        error: Some(proto::Error {
            code: code(&e) as i32,
            message: e.chain(),
        }),
        replaced: false,
    }
}

fn new_image(req: proto::InsertRequest) -> NewImage {
    NewImage {
        id: req.id,
        image: req.image,
        metadata: req.metadata.into_iter().collect::<BTreeMap<_, _>>(),
        upsert: req.upsert,
    }
}

fn image_source(image: Option<proto::ImageRef>, field: &str) -> Result<ImageSource, Status> {
    match image.and_then(|i| i.source) {
        Some(Source::Data(bytes)) => Ok(ImageSource::Bytes(bytes)),
        Some(Source::Id(id)) => Ok(ImageSource::Id(id)),
        None => Err(Status::invalid_argument(format!(
            "'{field}' is missing: give image bytes (data) or a stored id"
        ))),
    }
}

fn non_empty_id(id: String) -> Result<String, Status> {
    if id.is_empty() {
        Err(Status::invalid_argument("id is empty"))
    } else {
        Ok(id)
    }
}

fn to_match(m: Match) -> proto::Match {
    proto::Match {
        id: m.id,
        similarity: m.similarity,
        metadata: m.metadata.into_iter().collect(),
        distance: m.distance,
        duplicate: m.duplicate,
        tier: tier(m.tier) as i32,
        review: decision(m.review) as i32,
        keypoint_matches: m.keypoint_matches,
        score: m.score,
    }
}

fn tier(t: Option<Tier>) -> proto::Tier {
    match t {
        None => proto::Tier::Unspecified,
        Some(Tier::Exact) => proto::Tier::Exact,
        Some(Tier::NearDuplicate) => proto::Tier::NearDuplicate,
        Some(Tier::Similar) => proto::Tier::Similar,
    }
}

fn decision(d: Option<Decision>) -> proto::Decision {
    match d {
        None => proto::Decision::Unspecified,
        Some(Decision::Duplicate) => proto::Decision::Duplicate,
        Some(Decision::NotDuplicate) => proto::Decision::NotDuplicate,
    }
}

fn to_group(g: crate::engine::Group) -> proto::Group {
    let members = g
        .members
        .into_iter()
        .map(|m| {
            let f = m.facts.unwrap_or_default();
            proto::GroupMember {
                id: m.id,
                tier: tier(m.tier) as i32,
                similarity: m.similarity,
                distance: m.distance,
                review: decision(m.review) as i32,
                width: f.width,
                height: f.height,
                file_bytes: f.file_bytes,
                inserted_at_unix_ms: m.inserted_at_ms,
            }
        })
        .collect();
    proto::Group {
        members,
        keep: g.keep as u32,
        keep_reason: g.keep_reason,
    }
}

/// A record as Get and List answer it.
fn to_get_response(listed: Listed, features: bool, metadata: bool) -> proto::GetResponse {
    let Listed {
        record,
        thumbnail,
        projected,
    } = listed;
    let f = record.facts.unwrap_or_default();
    proto::GetResponse {
        id: record.id,
        metadata: match metadata {
            true => record.metadata.into_iter().collect(),
            false => Default::default(),
        },
        inserted_at_unix_ms: record.inserted_at_ms,
        features: if features {
            record.features
        } else {
            Vec::new()
        },
        siamese: record
            .siamese
            .filter(|_| features)
            .map(|values| proto::Vector { values }),
        width: f.width,
        height: f.height,
        file_bytes: f.file_bytes,
        thumbnail: thumbnail.unwrap_or_default(),
        projected: projected.map(|values| proto::Vector { values }),
    }
}
