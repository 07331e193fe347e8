//! The command-line client: `lookalike insert | query | compare | get |
//! delete | stats | groups | review | reviews | report | snapshot`, each
//! calls to a running daemon; with the `lab` feature also `eval`, which
//! measures a private daemon of its own, and `train-siamese`.

#[cfg(feature = "lab")]
mod eval;
mod groups;
mod report;
#[cfg(feature = "lab")]
mod siamese;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use lookalike::api::auth::Secret;
use lookalike::api::proto::{
    image_ref::Source, lookalike_client::LookalikeClient, CompareRequest, CompareResponse,
    DeleteRequest, GetRequest, ImageRef, InsertRequest, QueryRequest, StatsRequest,
};
use tonic::{
    metadata::MetadataValue, service::interceptor::InterceptedService, transport::Channel,
};

/// Where the daemon is: taken by every subcommand that calls one.
#[derive(Args, Debug)]
pub struct ClientArgs {
    /// Address of the daemon.
    #[arg(
        long,
        env = "LOOKALIKE_SERVER",
        default_value = "http://127.0.0.1:50051",
        help_heading = "Connection"
    )]
    server: String,
    /// API key to send (`authorization: Bearer KEY`), when the daemon
    /// requires one.
    #[arg(
        long,
        env = "LOOKALIKE_API_KEY",
        hide_env_values = true,
        help_heading = "Connection"
    )]
    api_key: Option<Secret>,
    /// PEM CA certificate to verify a daemon that serves TLS (implies TLS:
    /// an http:// address is taken as https://).
    #[arg(long, env = "LOOKALIKE_CA", help_heading = "Connection")]
    ca: Option<PathBuf>,
    /// PEM client certificate, for a daemon that requires mutual TLS.
    #[arg(
        long,
        env = "LOOKALIKE_CLIENT_CERT",
        requires = "client_key",
        help_heading = "Connection"
    )]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "LOOKALIKE_CLIENT_KEY",
        requires = "client_cert",
        help_heading = "Connection"
    )]
    client_key: Option<PathBuf>,
}

/// Adds the API key, if any, to every call.
#[derive(Clone)]
pub struct ApiKey(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for ApiKey {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client of the daemon that sends the API key.
type Client = LookalikeClient<InterceptedService<Channel, ApiKey>>;

/// Largest message the client sends or accepts; the server has its own limit.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Store images: files, or folders walked recursively. Each image's id is
    /// its path as given (or a content hash with --hash-ids).
    Insert {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Let the server name images by content hash.
        #[arg(long)]
        hash_ids: bool,
        /// Replace images whose id is already stored.
        #[arg(long)]
        upsert: bool,
        #[command(flatten)]
        connection: ClientArgs,
    },
    /// The stored images most similar to an image file (or a stored id).
    Query {
        /// Image file to search with.
        file: Option<PathBuf>,
        /// Search with a stored image instead of a file.
        #[arg(long, conflicts_with = "file")]
        id: Option<String>,
        /// How many matches to list.
        #[arg(short, long, default_value_t = 10)]
        k: u32,
        /// Leave out matches below this cosine similarity, in [-1, 1]
        /// (default: no floor).
        #[arg(long, allow_hyphen_values = true)]
        min_similarity: Option<f32>,
        #[command(flatten)]
        connection: ClientArgs,
    },
    /// How alike two images are (files or, with --ids, stored ids).
    Compare {
        a: String,
        b: String,
        /// Treat A and B as stored ids rather than files.
        #[arg(long)]
        ids: bool,
        /// Siamese distance at or below which the pair is a duplicate
        /// (default: the server's threshold).
        #[arg(long)]
        max_distance: Option<f32>,
        #[command(flatten)]
        connection: ClientArgs,
    },
    /// Show a stored image's record.
    Get {
        id: String,
        /// Write its stored thumbnail (JPEG) to this file.
        #[arg(long)]
        thumbnail_out: Option<PathBuf>,
        #[command(flatten)]
        connection: ClientArgs,
    },
    /// Every set of stored images that are copies of each other, with the
    /// copy to keep (the most pixels, then the least compressed, then the
    /// earliest).
    Groups(groups::GroupsArgs),
    /// Record that two stored images are (or are not) duplicates; it
    /// overrides the model everywhere until cleared or either is deleted.
    Review(groups::ReviewArgs),
    /// List the review decisions.
    Reviews(groups::ReviewsArgs),
    /// Write one static HTML page (opens offline) with the duplicate groups
    /// as thumbnails and a map of the whole collection.
    Report(report::ReportArgs),
    /// Remove a stored image.
    Delete {
        id: String,
        #[command(flatten)]
        connection: ClientArgs,
    },
    /// Counts and state of the database.
    Stats {
        #[command(flatten)]
        connection: ClientArgs,
    },
    /// Save a consistent copy of the database (records, metadata, graph) to
    /// a tar file while the daemon keeps serving; writes wait while it is
    /// taken.
    Snapshot {
        /// The file to write (replaced if it exists).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        connection: ClientArgs,
    },
    /// Make a new data folder from a snapshot (no daemon needed); then
    /// start `lookalike serve --data-dir DIR` on it.
    Restore {
        /// The snapshot tar file.
        file: PathBuf,
        /// The folder to create; refused if it exists and is not empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Verify a data folder offline (stop the daemon first): read every
    /// record and id back and list what is damaged; exits 1 if anything is.
    Check {
        /// The daemon's data folder.
        #[arg(long, default_value = lookalike::config::defaults::DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Exits 0 if the daemon's health is SERVING, 1 otherwise (for
    /// container health checks and scripts).
    Health {
        #[command(flatten)]
        connection: ClientArgs,
    },
    /// Measure search quality on your photos (starts its own daemon).
    #[cfg(feature = "lab")]
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Train the Siamese duplicate-verdict network on photos (in-process).
    #[cfg(feature = "lab")]
    TrainSiamese(siamese::TrainArgs),
}

pub async fn run(command: Command) -> Result<()> {
    match command {
        #[cfg(feature = "lab")]
        Command::Eval(e) => eval::run(e).await,
        #[cfg(feature = "lab")]
        Command::TrainSiamese(t) => tokio::task::spawn_blocking(move || siamese::train(t)).await?,
        Command::Health { connection } => health(connection).await,
        Command::Check { data_dir } => check(data_dir).await,
        Command::Restore { file, data_dir } => {
            let manifest = tokio::task::spawn_blocking(move || {
                lookalike::engine::restore(&file, &data_dir)
                    .map(|m| (m, data_dir))
                    .map_err(|e| anyhow::anyhow!(e.chain()))
            })
            .await??;
            let (m, dir) = manifest;
            println!(
                "restored {} images ({}) into {}; start `lookalike serve --data-dir {}`",
                m.records,
                m.model,
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        remote => run_remote(remote).await,
    }
}

fn print_comparison(c: &CompareResponse) {
    let verdict = if c.duplicate { "yes" } else { "no" };
    let tier = groups::tier_name(c.tier).unwrap_or("unrelated (below the similar floor)");
    println!("tier        {tier}");
    if let Some(d) = groups::decision_name(c.review) {
        println!("review      {d} (a user's decision; it overrides the model)");
    }
    if let (Some(distance), Some(threshold)) = (c.distance, c.threshold) {
        println!("distance    {distance:.4}  (Siamese, 0 = identical, 2 = opposite)");
        println!(
            "duplicate   {verdict}  (distance <= {threshold:.4}, or {}+ keypoint matches spread over the picture)",
            lookalike::local::SAME_PICTURE_INLIERS
        );
    } else {
        println!(
            "duplicate   {verdict}  (similarity >= {:.3}; no Siamese distance)",
            c.similarity_threshold
        );
    }
    println!(
        "similarity  {:.4}  (cosine of CNN features, 1 = identical)",
        c.similarity
    );
    if let Some(n) = c.keypoint_matches {
        println!("keypoints   {n}  (matches one geometry explains; 0-5 for unrelated photos)");
    }
}

impl Command {
    /// Where the daemon is, for the subcommands that call one.
    fn connection(&self) -> Option<&ClientArgs> {
        match self {
            Command::Insert { connection, .. }
            | Command::Query { connection, .. }
            | Command::Compare { connection, .. }
            | Command::Get { connection, .. }
            | Command::Delete { connection, .. }
            | Command::Stats { connection }
            | Command::Snapshot { connection, .. }
            | Command::Health { connection } => Some(connection),
            Command::Groups(a) => Some(&a.connection),
            Command::Review(a) => Some(&a.connection),
            Command::Reviews(a) => Some(&a.connection),
            Command::Report(a) => Some(&a.connection),
            Command::Restore { .. } | Command::Check { .. } => None,
            #[cfg(feature = "lab")]
            Command::Eval(_) | Command::TrainSiamese(_) => None,
        }
    }
}

/// `lookalike check`: prints what `SledStore::check` found; an error
/// (exit 1) when anything is damaged.
async fn check(data_dir: PathBuf) -> Result<()> {
    let sled = data_dir.join("sled");
    if !sled.is_dir() {
        bail!(
            "{} holds no lookalike database (no sled folder); give the daemon's --data-dir",
            data_dir.display()
        );
    }
    let report = tokio::task::spawn_blocking(move || {
        let store = lookalike::store::SledStore::open(&sled)?;
        store.check()
    })
    .await?
    .map_err(|e| anyhow::anyhow!(e.chain()))?;
    println!("records  {}", report.records);
    println!("ids      {}", report.ids);
    for (seq, why) in &report.damaged {
        println!("damaged  seq {seq}: {why}");
    }
    for id in &report.orphan_ids {
        println!("orphan   id {id:?}: its record is missing");
    }
    for id in &report.mismatched_ids {
        println!("mismatch id {id:?}: its record names another id");
    }
    if let Some(why) = &report.unreadable {
        println!("unreadable: sled could not read further ({why}); the rest is unchecked");
    }
    if report.is_clean() {
        println!("ok: every record and id reads back");
        Ok(())
    } else {
        bail!(
            "{} damaged records, {} ids without a record, {} ids pointing at another id{}",
            report.damaged.len(),
            report.orphan_ids.len(),
            report.mismatched_ids.len(),
            if report.unreadable.is_some() {
                ", and an unreadable rest"
            } else {
                ""
            }
        )
    }
}

/// Connects to the daemon at `args.server`.
async fn connect(args: &ClientArgs) -> Result<Client> {
    let channel = connect_channel(args).await?;
    let key = match &args.api_key {
        Some(key) => Some(
            format!("Bearer {}", key.expose())
                .parse()
                .context("the API key cannot be sent as metadata")?,
        ),
        None => None,
    };
    Ok(LookalikeClient::with_interceptor(channel, ApiKey(key))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// A connection to the daemon at `args.server`, over TLS when asked.
async fn connect_channel(args: &ClientArgs) -> Result<Channel> {
    let tls = args.ca.is_some() || args.client_cert.is_some();
    let url = match args.server.strip_prefix("http://") {
        Some(rest) if tls => format!("https://{rest}"),
        _ => args.server.clone(),
    };
    let mut endpoint = Channel::from_shared(url)
        .with_context(|| format!("bad server address '{}'", args.server))?;
    if tls {
        let read =
            |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &args.ca {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            config = config.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        endpoint = endpoint.tls_config(config).context("TLS settings")?;
    }
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to lookalike at {}", args.server))
}

/// The subcommands that talk to a running daemon.
async fn run_remote(command: Command) -> Result<()> {
    let Some(connection) = command.connection() else {
        unreachable!("only the subcommands that call a daemon get here");
    };
    let mut client = connect(connection).await?;
    match command {
        Command::Insert {
            paths,
            hash_ids,
            upsert,
            ..
        } => insert(&mut client, &paths, hash_ids, upsert).await,
        Command::Query {
            file,
            id,
            k,
            min_similarity,
            ..
        } => {
            let image = match (file, id) {
                (Some(file), None) => file_ref(&file)?,
                (None, Some(id)) => id_ref(id),
                _ => bail!("give an image FILE or --id ID"),
            };
            let resp = client
                .query(QueryRequest {
                    image: Some(image),
                    k,
                    min_similarity,
                    omit_metadata: false,
                })
                .await?
                .into_inner();
            if resp.matches.is_empty() {
                println!("no matches");
            }
            for m in resp.matches {
                let tier = groups::tier_name(m.tier).unwrap_or("-");
                let reviewed = match groups::decision_name(m.review) {
                    Some(d) => format!("  (reviewed: {d})"),
                    None => String::new(),
                };
                let keypoints = m.keypoint_matches.map_or("-".into(), |n| n.to_string());
                println!(
                    "{:.4}  {keypoints:>4}  {tier:14}  {}{reviewed}",
                    m.similarity, m.id
                );
            }
            Ok(())
        }
        Command::Compare {
            a,
            b,
            ids,
            max_distance,
            ..
        } => {
            let side = |s: String| {
                if ids {
                    Ok(id_ref(s))
                } else {
                    file_ref(Path::new(&s))
                }
            };
            let resp = client
                .compare(CompareRequest {
                    a: Some(side(a)?),
                    b: Some(side(b)?),
                    max_distance,
                })
                .await?
                .into_inner();
            print_comparison(&resp);
            Ok(())
        }
        Command::Groups(args) => groups::groups(&mut client, args).await,
        Command::Review(args) => groups::review(&mut client, args).await,
        Command::Reviews(args) => groups::reviews(&mut client, args).await,
        Command::Report(args) => report::report(&mut client, args).await,
        Command::Get {
            id, thumbnail_out, ..
        } => {
            let r = client
                .get(GetRequest {
                    id,
                    include_features: false,
                    include_thumbnail: thumbnail_out.is_some(),
                })
                .await?
                .into_inner();
            println!("id           {}", r.id);
            println!("inserted_at  {} (unix ms)", r.inserted_at_unix_ms);
            if r.width > 0 {
                println!(
                    "image        {}x{} px, {} bytes",
                    r.width, r.height, r.file_bytes
                );
            }
            if let Some(path) = thumbnail_out {
                if r.thumbnail.is_empty() {
                    bail!("no thumbnail is stored for {}", r.id);
                }
                std::fs::write(&path, &r.thumbnail)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!(
                    "thumbnail    {} ({} bytes)",
                    path.display(),
                    r.thumbnail.len()
                );
            }
            let mut meta: Vec<_> = r.metadata.into_iter().collect();
            meta.sort();
            for (k, v) in meta {
                println!("metadata     {k} = {v}");
            }
            Ok(())
        }
        Command::Delete { id, .. } => {
            client.delete(DeleteRequest { id: id.clone() }).await?;
            println!("deleted {id}");
            Ok(())
        }
        #[cfg(feature = "lab")]
        Command::Eval(_) | Command::TrainSiamese(_) => unreachable!("handled in run"),
        Command::Health { .. } | Command::Restore { .. } | Command::Check { .. } => {
            unreachable!("handled in run")
        }
        Command::Snapshot { out, .. } => snapshot(&mut client, &out).await,
        Command::Stats { .. } => {
            let s = client.stats(StatsRequest {}).await?.into_inner();
            println!("images          {}", s.count);
            println!("model           {} ({} dimensions)", s.model, s.dimensions);
            if s.pca_fitted {
                println!(
                    "index           HNSW over PCA-{} ({} points, {} deleted)",
                    s.pca_dimensions, s.index_size, s.index_tombstones
                );
            } else {
                println!(
                    "index           exact (PCA + HNSW from {} images)",
                    s.pca_min_images
                );
            }
            if let Some(distance) = s.duplicate_distance {
                println!("duplicates      Siamese distance <= {distance:.4}");
            } else {
                println!(
                    "duplicates      cosine >= {:.3} (no Siamese model)",
                    s.duplicate_similarity
                );
            }
            Ok(())
        }
    }
}

async fn insert(
    client: &mut Client,
    paths: &[PathBuf],
    hash_ids: bool,
    upsert: bool,
) -> Result<()> {
    let files = collect_images(paths)?;
    if files.is_empty() {
        bail!("no image files found in {paths:?}");
    }
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images  {per_sec}  eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let requests = futures_util::stream::iter(files.clone()).filter_map(move |path| async move {
        match tokio::fs::read(&path).await {
            Ok(image) => Some(InsertRequest {
                id: if hash_ids {
                    String::new()
                } else {
                    path.display().to_string()
                },
                image,
                metadata: HashMap::from([("path".to_string(), path.display().to_string())]),
                upsert,
            }),
            Err(e) => {
                eprintln!("skipping {}: {e}", path.display());
                None
            }
        }
    });
    let started = Instant::now();
    let mut responses = client.insert_stream(requests).await?.into_inner();
    let (mut stored, mut failed, mut with_duplicates) = (0u64, 0u64, 0u64);
    while let Some(resp) = responses.next().await {
        let resp = resp.context("insert stream broke")?;
        match resp.error {
            Some(err) => {
                failed += 1;
                say(&bar, format!("failed {}: {}", resp.id, err.message));
            }
            None => {
                stored += 1;
                if !resp.duplicates.is_empty() {
                    with_duplicates += 1;
                    let names: Vec<String> = resp
                        .duplicates
                        .iter()
                        .map(|d| format!("{} ({:.3})", d.id, d.similarity))
                        .collect();
                    say(&bar, format!("{} duplicates {}", resp.id, names.join(", ")));
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "stored {stored}, failed {failed}, {with_duplicates} with duplicates, in {secs:.1} s ({:.1} images/s)",
        stored as f64 / secs.max(1e-9)
    );
    if failed > 0 {
        bail!("{failed} images failed");
    }
    Ok(())
}

/// Streams a snapshot into `out` (through `out.partial`, renamed when whole).
async fn snapshot(client: &mut Client, out: &Path) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let partial = out.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut chunks = client
        .snapshot(lookalike::api::proto::SnapshotRequest {})
        .await?
        .into_inner();
    let mut bytes = 0u64;
    while let Some(chunk) = chunks.message().await.context("snapshot stream broke")? {
        file.write_all(&chunk.data).await?;
        bytes += chunk.data.len() as u64;
    }
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&partial, out)
        .await
        .with_context(|| format!("cannot move the snapshot to {}", out.display()))?;
    println!("wrote {} ({bytes} bytes)", out.display());
    Ok(())
}

/// Checks the daemon's health (the whole server); fails unless SERVING.
async fn health(args: ClientArgs) -> Result<()> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let channel = connect_channel(&args).await?;
    let status = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .context("health check")?
        .into_inner()
        .status();
    println!("{}", status.as_str_name());
    if status != ServingStatus::Serving {
        bail!("lookalike at {} is not serving", args.server);
    }
    Ok(())
}

/// Prints a line above the progress bar, or plainly when there is no bar
/// (output piped: indicatif hides the bar and would drop the line).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// The image files under `paths`, folders walked recursively, sorted.
pub(crate) fn collect_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(lookalike::files::image_files(paths)?)
}

fn file_ref(path: &Path) -> Result<ImageRef> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(ImageRef {
        source: Some(Source::Data(data)),
    })
}

fn id_ref(id: String) -> ImageRef {
    ImageRef {
        source: Some(Source::Id(id)),
    }
}
