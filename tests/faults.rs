//! Faults an operator meets, through the real daemon:
//! - a saved index that is truncated, overwritten with garbage or from an
//!   older lookalike is never used (it could give silently wrong answers);
//!   the daemon logs why, rebuilds from the store
//!   and gives the same answers as before;
//! - after kill -9 the graph saved at the last clean stop is caught up
//!   with the store (deletes since leave it, inserts since join it), not
//!   rebuilt;
//! - damaged records in the store are quarantined: logged, counted in
//!   Stats, skipped by every query and rebuild (never failing a query for
//!   another image), DATA_LOSS on Get, removable by Delete, and listed by
//!   `lookalike check` offline;
//! - a full disk refuses writes with RESOURCE_EXHAUSTED while reads go on,
//!   an insert reported as failed is never stored, and writes resume by
//!   themselves once space is back, with nothing acknowledged lost.

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::{by_id, data, index_matches_store, photos, read, Client, Daemon, LoggedServe};
use lookalike::api::proto::{
    lookalike_client::LookalikeClient, DeleteRequest, GetRequest, InsertRequest, QueryRequest,
    StatsRequest,
};
use lookalike::lab::augment;

/// A graph from 60 images on: fitted once (the 80 images stored stay under
/// the refit at 120; a refit racing a stop would leave a stale saved graph,
/// which is right but not what is tested here).
const GRAPH: [&str; 2] = ["--pca-min-images", "60"];

/// A daemon on `data_dir` (graph from 20 images, log at info) and a client.
async fn start(data_dir: &Path) -> (LoggedServe, Client) {
    let serve = LoggedServe::start("127.0.0.1:0", data_dir, &GRAPH, "info");
    let client = connect(&serve.addr).await;
    (serve, client)
}

async fn connect(addr: &str) -> Client {
    LookalikeClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// The best match for each id, by query-by-id, once the index is loaded.
/// (Lower ranks may differ between a graph and its rebuild: HNSW builds
/// in parallel are not deterministic.)
async fn answers(c: &mut Client, ids: &[String]) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut out = Vec::new();
    for id in ids {
        loop {
            let r = c
                .query(QueryRequest {
                    image: by_id(id),
                    k: 1,
                    min_similarity: None,
                    omit_metadata: true,
                })
                .await;
            match r {
                Ok(r) => {
                    let best = r.into_inner().matches.into_iter().next().expect("a match");
                    out.push(best.id);
                    break;
                }
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    assert!(std::time::Instant::now() < deadline, "never ready: {s:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => panic!("query {id}: {s:?}"),
            }
        }
    }
    out
}

/// Whether two runs' best matches agree for at least 95 % of the ids: the
/// graph searched after a restart (a flat copy of it) or a rebuild may
/// rank a near tie the other way; a wrong graph or wrong codes would not
/// come close. (Whether a damaged file was used is told by the log.)
fn agree(a: &[String], b: &[String]) -> bool {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    a.len() == b.len() && same * 20 >= a.len() * 19
}

/// Overwrites `len` bytes in the middle of `path` with a fixed pattern
/// (same length: only a checksum can tell).
fn scribble(path: &Path, len: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    let len = len.min(bytes.len() / 2);
    let start = bytes.len() / 2 - len / 2;
    for (i, b) in bytes[start..start + len].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ 0xA5;
    }
    std::fs::write(path, bytes).expect("write");
}

/// The saved index's re-rank codes file.
fn codes_file(index: &Path) -> PathBuf {
    let names = std::fs::read_dir(index).expect("list the saved index");
    names
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "codes"))
        .expect("a codes file")
}

fn truncate_half(path: &Path) {
    let bytes = std::fs::read(path).expect("read");
    std::fs::write(path, &bytes[..bytes.len() / 2]).expect("write");
}

/// Stores every committed photo and a grey copy of each; waits for the
/// graph; returns the ids (photo, its copy, next photo, ...).
async fn store_photos_and_grey_copies(c: &mut Client) -> Vec<String> {
    let mut ids = Vec::new();
    for (name, path) in photos() {
        let bytes = read(&path);
        let grey = image::load_from_memory(&bytes).expect("decode").to_rgb8();
        let grey = augment::encode_jpeg(&augment::greyscale(&grey), 85).expect("jpeg");
        for (id, image) in [(name.clone(), bytes), (format!("{name}-grey"), grey)] {
            c.insert(InsertRequest {
                id: id.clone(),
                image,
                ..Default::default()
            })
            .await
            .expect("insert");
            ids.push(id);
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let s = c.stats(StatsRequest {}).await.expect("stats").into_inner();
        if s.pca_fitted && s.index_size as usize == ids.len() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no graph: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ids
}

/// A daemon on `dir` stores the photos and their grey copies, answers for
/// each, and stops cleanly (saving its graph); the ids and those answers.
async fn stored_then_stopped(dir: &Path) -> (Vec<String>, Vec<String>) {
    let (serve, mut c) = start(dir).await;
    let ids = store_photos_and_grey_copies(&mut c).await;
    let before = answers(&mut c, &ids).await;
    // Nearly every photo's best match is its grey copy and the other way
    // round (the answers compared later mean something).
    let partners = ids
        .chunks(2)
        .zip(before.chunks(2))
        .filter(|(id, best)| id[0] == best[1] && id[1] == best[0])
        .count();
    assert!(partners * 10 >= ids.len() / 2 * 9, "{before:?}");
    serve.stop();
    (ids, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_saved_index_is_rebuilt_never_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ids, before) = stored_then_stopped(dir.path()).await;
    let index = dir.path().join("index");

    // An intact saved graph is used as it is.
    let (serve, mut c) = start(dir.path()).await;
    let after = answers(&mut c, &ids).await;
    assert!(agree(&after, &before), "{after:?}\n{before:?}");
    let log = serve.stop();
    assert!(
        !log.contains("rebuilding"),
        "an intact graph was rebuilt:\n{log}"
    );

    // Garbage in the re-rank codes, which are read a record at a time, is
    // found as they are read: those records are never scored, the answers
    // stay right, and the index is rebuilt (or, if the stop comes first,
    // not saved), so the next start is sound.
    scribble(&codes_file(&index), 64 << 10);
    let (serve, mut c) = start(dir.path()).await;
    let after = answers(&mut c, &ids).await;
    let log = serve.stop();
    assert!(
        agree(&after, &before),
        "different answers with damaged codes"
    );
    assert!(log.contains("a re-rank code is damaged"), "{log}");
    let (serve, mut c) = start(dir.path()).await;
    let after = answers(&mut c, &ids).await;
    let log = serve.stop();
    assert!(
        agree(&after, &before),
        "different answers after damaged codes"
    );
    assert!(!log.contains("damaged"), "damaged codes were saved:\n{log}");

    type Damage = fn(&Path);
    let damages: [(&str, Damage, &str); 5] = [
        (
            "garbage in the re-rank table",
            |d| scribble(&d.join("rerank.slots"), 64 << 10),
            "damaged",
        ),
        (
            "a truncated graph",
            |d| truncate_half(&d.join("graph.flat")),
            "damaged",
        ),
        (
            "garbage in the graph's vectors",
            |d| scribble(&d.join("graph.flat"), 64 << 10),
            "damaged",
        ),
        (
            "a stamp without checksums (an older lookalike)",
            |d| {
                let path = d.join("stamp.json");
                let mut stamp: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
                stamp.as_object_mut().expect("object").remove("files");
                std::fs::write(&path, stamp.to_string()).expect("write");
            },
            "older lookalike",
        ),
        (
            "an unreadable stamp",
            |d| std::fs::write(d.join("stamp.json"), b"\x00garbage").expect("write"),
            "stamp",
        ),
    ];
    for (what, damage, reason) in damages {
        assert!(
            index.join("stamp.json").exists(),
            "no saved index to damage"
        );
        damage(&index);
        let (serve, mut c) = start(dir.path()).await;
        let after = answers(&mut c, &ids).await;
        let log = serve.stop();
        assert!(agree(&after, &before), "different answers after {what}");
        assert!(
            log.contains("rebuilding from the store") && log.contains(reason),
            "{what}: the log does not say why the graph was rebuilt:\n{log}"
        );
    }
}

/// kill -9 after deletes and inserts: the next start takes the graph saved
/// at the last clean stop, drops what was deleted since and adds what was
/// stored since (the log says so, and no rebuild), and answers as a
/// rebuild would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill9_the_saved_graph_is_caught_up_not_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ids, before) = stored_then_stopped(dir.path()).await;

    // Writes after the start that loads the saved graph, then a crash.
    let (serve, mut c) = start(dir.path()).await;
    answers(&mut c, &ids[..1]).await; // loaded
    let deleted = [ids[0].clone(), ids[5].clone()];
    for id in &deleted {
        c.delete(DeleteRequest { id: id.clone() })
            .await
            .expect("delete");
    }
    let (photo, _) = photos().into_iter().nth(3).expect("a fourth photo");
    assert_eq!(photo, ids[6], "photos and ids out of step");
    let photo_bytes = read(&photos()[3].1);
    let rgb = image::load_from_memory(&photo_bytes)
        .expect("decode")
        .to_rgb8();
    let late = augment::encode_jpeg(&augment::rotate(&rgb, 8.0), 85).expect("jpeg");
    insert(&mut c, "late-rotated-copy", late)
        .await
        .expect("insert");
    let stored = ids.len() - deleted.len() + 1;
    index_matches_store(&mut c, stored, Duration::from_secs(60), || {}).await;
    let log = serve.kill9();
    assert!(!log.contains("rebuilding"), "{log}");

    let (serve, mut c) = start(dir.path()).await;
    let kept: Vec<String> = ids
        .iter()
        .filter(|id| !deleted.contains(id))
        .cloned()
        .collect();
    let after = answers(&mut c, &kept).await;
    for id in &after {
        assert!(
            !deleted.contains(id),
            "a deleted image is still found: {after:?}"
        );
    }
    // Each kept image's best match is as before, but for the partners of
    // the deleted ones and the photo the new copy is closest to.
    let expected: Vec<(&String, &String)> = ids
        .iter()
        .zip(&before)
        .filter(|(id, best)| !deleted.contains(id) && !deleted.contains(best))
        .collect();
    let same = expected
        .iter()
        .filter(|(id, best)| {
            let at = kept.iter().position(|k| k == *id).expect("kept");
            after[at] == **best || after[at] == "late-rotated-copy"
        })
        .count();
    assert!(same * 20 >= expected.len() * 19, "{after:?}\n{before:?}");
    let late_best = answers(&mut c, &["late-rotated-copy".to_string()]).await;
    assert!(
        late_best[0] == ids[6] || late_best[0] == ids[7],
        "the copy stored since the save is not found with its photo: {late_best:?}"
    );
    index_matches_store(&mut c, stored, Duration::from_secs(60), || {}).await;
    let log = serve.stop();
    assert!(
        log.contains("catching it up") && log.contains("removed_since=2"),
        "the saved graph was not caught up:\n{log}"
    );
    assert!(!log.contains("rebuilding"), "rebuilt after kill -9:\n{log}");
}

/// Cuts the stored records of `ids` in half, straight in sled (the daemon
/// stopped), as a bad disk sector would leave them.
fn damage_records(data_dir: &Path, ids: &[&str]) {
    let db = sled::open(data_dir.join("sled")).expect("open sled");
    let (records, id_tree) = (
        db.open_tree("records").expect("records"),
        db.open_tree("ids").expect("ids"),
    );
    for id in ids {
        let seq = id_tree
            .get(id.as_bytes())
            .expect("read id")
            .expect("stored id");
        let value = records.get(&seq).expect("read record").expect("a record");
        records
            .insert(&seq, &value[..value.len() / 2])
            .expect("write");
    }
    db.flush().expect("flush");
}

fn check(data_dir: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lookalike"))
        .args(["check", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run lookalike check")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_records_are_quarantined_never_fail_other_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (serve, mut c) = start(dir.path()).await;
    let ids = store_photos_and_grey_copies(&mut c).await;
    serve.stop();
    let clean = check(dir.path());
    assert!(clean.status.success(), "{clean:?}");

    let damaged = ["animal-cow", "coffee-grey", "tool-pliers"];
    damage_records(dir.path(), &damaged);
    let found = check(dir.path());
    let out = String::from_utf8_lossy(&found.stdout);
    assert!(!found.status.success(), "check missed the damage: {out}");
    assert_eq!(out.matches("damaged  seq").count(), 3, "{out}");

    // Twice: with the saved graph (damage found as records are read), and
    // with the graph rebuilt from the store (found at start).
    for rebuilt in [false, true] {
        if rebuilt {
            std::fs::remove_dir_all(dir.path().join("index")).expect("drop the saved graph");
        }
        let (serve, mut c) = start(dir.path()).await;
        let healthy: Vec<String> = ids
            .iter()
            .filter(|id| !damaged.contains(&id.as_str()))
            .cloned()
            .collect();
        // Every query for another image answers, and never with a damaged one.
        let best = answers(&mut c, &healthy).await;
        assert!(
            best.iter().all(|id| !damaged.contains(&id.as_str())),
            "{best:?}"
        );
        let s = c.stats(StatsRequest {}).await.expect("stats").into_inner();
        assert_eq!(s.damaged_records, 3, "rebuilt {rebuilt}: {s:?}");
        let get = c
            .get(GetRequest {
                id: damaged[0].into(),
                ..Default::default()
            })
            .await
            .expect_err("a damaged record");
        assert_eq!(get.code(), tonic::Code::DataLoss, "{get:?}");
        assert!(get.message().contains("damaged"), "{get:?}");
        let log = serve.stop();
        assert!(log.contains("damaged record quarantined"), "{log}");
    }

    // Deleting (or re-inserting) a damaged id clears it.
    let (serve, mut c) = start(dir.path()).await;
    answers(&mut c, &ids[..1]).await; // once the index is loaded
    for id in damaged {
        c.delete(DeleteRequest { id: id.into() })
            .await
            .expect("delete a damaged record");
    }
    serve.stop();
    let after = check(dir.path());
    assert!(after.status.success(), "{after:?}");
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    /// `None` (after saying so) where this process may not mount.
    fn mount(mib: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("NOT RUN: cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)");
            return None;
        }
        Some(SmallDisk(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    /// Fills the disk with one file until it is full; that file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![7u8; 64 << 10];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&chunk[..512]).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

async fn insert(c: &mut Client, id: &str, image: Vec<u8>) -> Result<(), tonic::Status> {
    c.insert(InsertRequest {
        id: id.into(),
        image,
        ..Default::default()
    })
    .await
    .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself() {
    let Some(disk) = SmallDisk::mount(48) else {
        return;
    };
    let data_dir = disk.path().join("data");
    let daemon = Daemon::start(&data_dir, &[]).await;
    let mut c = daemon.client().await;
    let photos: Vec<(String, Vec<u8>)> = photos()
        .into_iter()
        .map(|(name, path)| (name, read(&path)))
        .collect();
    assert!(photos.len() >= 12, "too few test photos");
    let (first, rest) = photos.split_at(photos.len() / 2);
    let mut acked = Vec::new();
    for (id, image) in first {
        insert(&mut c, id, image.clone()).await.expect("insert");
        acked.push(id.clone());
    }

    // Full: every write is RESOURCE_EXHAUSTED and says why.
    let filler = disk.fill();
    let mut refused = Vec::new();
    for (id, image) in rest {
        match insert(&mut c, id, image.clone()).await {
            Ok(()) => acked.push(id.clone()),
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                assert!(
                    s.message().contains("No space left") || s.message().contains("is full"),
                    "{s:?}"
                );
                refused.push(id.clone());
            }
        }
    }
    assert!(
        refused.len() + 1 >= rest.len(),
        "a full disk took more than one insert: {refused:?}"
    );
    let delete = c
        .delete(DeleteRequest {
            id: acked[0].clone(),
        })
        .await;
    assert_eq!(
        delete.expect_err("delete on a full disk").code(),
        tonic::Code::ResourceExhausted
    );
    // Reads go on; what was refused is not served.
    for id in &acked {
        c.get(GetRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("get");
        let r = c
            .query(QueryRequest {
                image: by_id(id),
                k: 3,
                min_similarity: None,
                omit_metadata: true,
            })
            .await
            .expect("query by id")
            .into_inner();
        assert!(r.matches.iter().all(|m| !refused.contains(&m.id)), "{r:?}");
    }
    let (probe, bytes) = &rest[0];
    let r = c
        .query(QueryRequest {
            image: data(bytes.clone()),
            k: 3,
            min_similarity: None,
            omit_metadata: true,
        })
        .await
        .expect("query by image")
        .into_inner();
    assert!(
        r.matches.iter().all(|m| !refused.contains(&m.id)),
        "{probe}: {r:?}"
    );
    for id in &refused {
        let got = c
            .get(GetRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await;
        assert_eq!(
            got.expect_err("refused insert").code(),
            tonic::Code::NotFound
        );
    }

    // Space back: writes resume by themselves, within seconds.
    std::fs::remove_file(&filler).expect("remove filler");
    let (id, image) = rest
        .iter()
        .find(|(id, _)| refused.contains(id))
        .expect("a refused insert");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match insert(&mut c, id, image.clone()).await {
            Ok(()) => break,
            Err(s) => {
                assert!(
                    matches!(
                        s.code(),
                        tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                    ),
                    "{s:?}"
                );
                assert!(
                    std::time::Instant::now() < deadline,
                    "never recovered: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    acked.push(id.clone());
    // The other refused inserts were never stored: storing them works.
    for (id, image) in rest {
        if refused.contains(id) && !acked.contains(id) {
            insert(&mut c, id, image.clone())
                .await
                .expect("insert after recovery");
            acked.push(id.clone());
        }
    }
    let gone = acked.remove(0);
    c.delete(DeleteRequest { id: gone.clone() })
        .await
        .expect("delete after recovery");
    // The index is rebuilt from the reopened store: it holds exactly what
    // the store does (no refused insert).
    index_matches_store(&mut c, acked.len(), Duration::from_secs(60), || {}).await;

    // Nothing acknowledged is lost, even on kill -9.
    daemon.kill9();
    let daemon = Daemon::start(&data_dir, &[]).await;
    let mut c = daemon.client().await;
    for id in &acked {
        c.get(GetRequest {
            id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("{id} lost: {s:?}"));
    }
    let got = c
        .get(GetRequest {
            id: gone,
            ..Default::default()
        })
        .await;
    assert_eq!(got.expect_err("deleted").code(), tonic::Code::NotFound);
    let stats = c.stats(StatsRequest {}).await.expect("stats").into_inner();
    assert_eq!(stats.count as usize, acked.len(), "{stats:?}");
    daemon.stop();
}
