//! Fetching official checkpoints by name, end to end against a local stand-in of the Hugging Face
//! Hub: a small HTTP server on 127.0.0.1 that answers like the Hub (`HEAD` with X-Repo-Commit,
//! X-Linked-Etag and X-Linked-Size, a redirect of LFS files to a separate storage host, error
//! codes), serving fake repos made of the reference checkpoints. No other network is used.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::fake_hub::{scratch, sha256_hex, FakeHub, Seen, COMMIT};
use crate::common::{assert_close, assert_exact_i64, load_io, model_dir};
use candle_core::Tensor;
use tokenscope::hub::{
    find_model, known_models, CacheStatus, FetchProgress, Hub, HubConfig, HubError, Phase, Release,
    RepoTarget,
};
use tokenscope::tokenizer::checkpoint::{self, CheckpointForm, LoadOptions};
use tokenscope::tokenizer::config::{all_variants, find_variant};
use tokenscope::tokenizer::Tokens;

const DV_REPO: &str = "nvidia/Cosmos-0.1-Tokenizer-DV8x16x16";

// ---------------------------------------------------------------------------------------------
// Helpers.

fn config(server: &FakeHub, cache: &Path) -> HubConfig {
    server.config(cache)
}

fn dv_server() -> FakeHub {
    let server = FakeHub::start();
    server.add_repo(
        DV_REPO,
        "DV8x16x16-tiny",
        &["encoder.jit", "decoder.jit", "config.json"],
    );
    server
}

fn no_cancel() -> AtomicBool {
    AtomicBool::new(false)
}

fn fetch(hub: &Hub, name: &str) -> Result<tokenscope::hub::FetchOutcome, HubError> {
    hub.fetch(name, &no_cancel(), &mut |_| {})
}

fn storage_gets(server: &FakeHub, file: &str) -> Vec<Seen> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.host == "storage" && r.method == "GET" && r.path.ends_with(file))
        .collect()
}

/// Loads a folder, encodes the reference input and compares with NVIDIA's outputs.
fn load_and_check_dv(folder: &Path) {
    let loaded = checkpoint::load(folder, &LoadOptions::default()).unwrap();
    // From the reference config.json when fetched, else from the repo name in the cache path.
    assert!(
        loaded.variant_name.starts_with("DV8x16x16"),
        "{}",
        loaded.variant_name
    );
    let io = load_io(&model_dir("DV8x16x16-tiny").join("io.safetensors"));
    let model = &loaded.tokenizer;
    match model.encode(&io["input"]).unwrap() {
        Tokens::Discrete { indices, .. } => assert_exact_i64("indices", &indices, &io["indices"]),
        Tokens::Continuous { .. } => panic!("DV8x16x16 gave continuous tokens"),
    }
    let tokens = model.tokens_from_tensor(&io["indices"]).unwrap();
    let reconstruction: Tensor = model.decode(&tokens).unwrap();
    assert_close("reconstruction", &reconstruction, &io["reconstruction"]);
}

fn reference_bytes(reference: &str, file: &str) -> Vec<u8> {
    std::fs::read(model_dir(reference).join(file)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The registry and the configuration.

#[test]
fn registry_lists_every_released_repo_with_its_variant() {
    let models = known_models();
    assert_eq!(models.len(), 26, "10 × 0.1, 8 × 1.0, 8 × Tokenize1");
    for release in [Release::V0_1, Release::V1_0, Release::Tokenize1] {
        let n = models.iter().filter(|m| m.release == release).count();
        assert!(n >= 8, "{release:?}: {n}");
    }
    let variant_names: HashSet<&str> = all_variants().iter().map(|v| v.name).collect();
    for model in models {
        assert!(
            variant_names.contains(model.variant),
            "{}: variant {} unknown to config.rs",
            model.repo,
            model.variant
        );
        // The loader maps the repo id to the same variant.
        let by_repo = find_variant(model.repo).unwrap_or_else(|| panic!("{}", model.repo));
        assert_eq!(by_repo.name, model.variant, "{}", model.repo);
        assert_eq!(find_model(model.repo), Some(model));
        let sizes = model.sizes;
        assert!(
            (100_000_000..300_000_000).contains(&sizes.download()),
            "{}: {}",
            model.repo,
            sizes.download()
        );
        assert_eq!(
            sizes.estimated,
            model.release != Release::V0_1,
            "{}",
            model.repo
        );
        assert!(!model.gated);
    }
    // Every repo config.rs names (old names included) is in the registry.
    for variant in all_variants() {
        for repo in variant.hf_repos {
            let model = find_model(repo).unwrap_or_else(|| panic!("{repo} not in the registry"));
            assert_eq!(model.variant, variant.name, "{repo}");
        }
    }
    // Names users type.
    let repo_of = |name: &str| find_model(name).map(|m| m.repo);
    assert_eq!(
        repo_of("CV8x8x8"),
        Some("nvidia/Cosmos-0.1-Tokenizer-CV8x8x8")
    );
    assert_eq!(
        repo_of("cv8x8x8"),
        Some("nvidia/Cosmos-0.1-Tokenizer-CV8x8x8")
    );
    assert_eq!(
        repo_of("CV8x8x8-720p"),
        Some("nvidia/Cosmos-Tokenize1-CV8x8x8-720p")
    );
    assert_eq!(
        repo_of("Cosmos-Tokenize1-DV8x16x16-720p"),
        Some("nvidia/Cosmos-Tokenize1-DV8x16x16-720p")
    );
    assert_eq!(
        repo_of("CI8x8-LowRes"),
        Some("nvidia/Cosmos-1.0-Tokenizer-CI8x8-LowRes")
    );
    assert_eq!(
        repo_of("CI16x16-360p"),
        Some("nvidia/Cosmos-Tokenize1-CI16x16-360p")
    );
    assert_eq!(
        repo_of("nvidia/Cosmos-Tokenizer-DV8x8x8"),
        Some("nvidia/Cosmos-0.1-Tokenizer-DV8x8x8")
    );
    assert_eq!(
        repo_of("nvidia/Cosmos-1.0-Tokenizer-CV8x8x8"),
        Some("nvidia/Cosmos-1.0-Tokenizer-CV8x8x8")
    );
    assert_eq!(repo_of("CV8x8x8x"), None);
    // Sizes from the Hub's listing (spec §5.1).
    let cv = find_model("CV8x8x8").unwrap().sizes;
    assert_eq!((cv.encoder, cv.decoder), (93_100_000, 133_000_000));
    // Targets: known names, any owner/name repo id, and nothing else.
    assert_eq!(
        RepoTarget::parse("DV8x16x16").unwrap().repo,
        "nvidia/Cosmos-0.1-Tokenizer-DV8x16x16"
    );
    let other = RepoTarget::parse("someone/my-cosmos-finetune").unwrap();
    assert_eq!(
        (other.repo.as_str(), other.model),
        ("someone/my-cosmos-finetune", None)
    );
    for bad in [
        "CV9x9x9",
        "a/b/c",
        "models/encoder.jit",
        "./x/y",
        "",
        "nvidia/",
    ] {
        assert!(
            matches!(RepoTarget::parse(bad), Err(HubError::UnknownModel { .. })),
            "{bad}"
        );
    }
}

#[test]
fn the_hub_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Hub>();
    shareable::<HubConfig>();
    shareable::<HubError>();
}

#[test]
fn configuration_follows_the_hugging_face_environment_variables() {
    let vars = |pairs: &[(&str, &str)]| {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HubConfig::from_lookup(move |k| map.get(k).cloned())
    };
    let defaults = vars(&[("HOME", "/home/u")]);
    assert_eq!(defaults.endpoint, "https://huggingface.co");
    assert_eq!(
        defaults.cache_dir,
        PathBuf::from("/home/u/.cache/huggingface/hub")
    );
    assert!(!defaults.offline);
    assert!(defaults.token.is_none());
    let xdg = vars(&[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/xdg")]);
    assert_eq!(xdg.cache_dir, PathBuf::from("/xdg/huggingface/hub"));
    let hf_home = vars(&[("HOME", "/home/u"), ("HF_HOME", "/data/hf")]);
    assert_eq!(hf_home.cache_dir, PathBuf::from("/data/hf/hub"));
    let tilde = vars(&[("HOME", "/home/u"), ("HF_HOME", "~/hf")]);
    assert_eq!(tilde.cache_dir, PathBuf::from("/home/u/hf/hub"));
    let hub_cache = vars(&[("HF_HOME", "/data/hf"), ("HF_HUB_CACHE", "/fast/hub")]);
    assert_eq!(hub_cache.cache_dir, PathBuf::from("/fast/hub"));
    let online = vars(&[
        ("HF_ENDPOINT", "http://mirror.local:8080/"),
        ("HF_TOKEN", "hf_secret"),
        ("HF_HUB_OFFLINE", "0"),
    ]);
    assert_eq!(online.endpoint, "http://mirror.local:8080");
    assert_eq!(online.token.as_deref(), Some("hf_secret"));
    assert!(!online.offline);
    assert!(
        !format!("{online:?}").contains("hf_secret"),
        "Debug hides the token"
    );
    for value in ["1", "true", "YES", "on"] {
        assert!(vars(&[("HF_HUB_OFFLINE", value)]).offline, "{value}");
    }
    // The token file `huggingface-cli login` writes.
    let home = scratch("token-file");
    std::fs::write(home.join("token"), "hf_from_file\n").unwrap();
    let from_file = vars(&[("HF_HOME", home.to_str().unwrap())]);
    assert_eq!(from_file.token.as_deref(), Some("hf_from_file"));
}

// ---------------------------------------------------------------------------------------------
// Downloads.

#[test]
fn fetch_downloads_into_the_hf_cache_and_the_model_runs() {
    let server = dv_server();
    let cache = scratch("fetch");
    let mut cfg = config(&server, &cache);
    cfg.token = Some("hf_test_token".to_string());
    let hub = Hub::new(cfg);
    let mut reports: Vec<(String, Phase, u64, u64)> = Vec::new();
    let outcome = hub
        .fetch(DV_REPO, &no_cancel(), &mut |p: &FetchProgress<'_>| {
            reports.push((p.file.to_string(), p.phase, p.bytes, p.total))
        })
        .unwrap();

    // The standard layout: blobs by sha256, refs/main, snapshot symlinks.
    let folder = cache.join("models--nvidia--Cosmos-0.1-Tokenizer-DV8x16x16");
    assert_eq!(outcome.snapshot, folder.join("snapshots").join(COMMIT));
    assert_eq!(outcome.commit.as_deref(), Some(COMMIT));
    assert_eq!(
        std::fs::read_to_string(folder.join("refs/main")).unwrap(),
        COMMIT
    );
    let names: Vec<&str> = outcome.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["encoder.jit", "decoder.jit", "config.json"]);
    for file in ["encoder.jit", "decoder.jit"] {
        let want = reference_bytes("DV8x16x16-tiny", file);
        let sha = sha256_hex(&want);
        let pointer = outcome.snapshot.join(file);
        #[cfg(unix)]
        assert_eq!(
            std::fs::read_link(&pointer).unwrap(),
            PathBuf::from("../../blobs").join(&sha)
        );
        assert_eq!(std::fs::read(&pointer).unwrap(), want, "{file}");
        assert!(folder.join("blobs").join(&sha).is_file());
    }
    let leftovers: Vec<_> = std::fs::read_dir(folder.join("blobs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty());
    assert_eq!(
        outcome.downloaded_bytes(),
        outcome.files.iter().map(|f| f.bytes).sum::<u64>()
    );

    // Progress: checked every file first, then bytes rising to the announced total.
    let total = outcome.files.iter().map(|f| f.bytes).sum::<u64>();
    assert!(reports.iter().take(3).all(|r| r.1 == Phase::Checking));
    let bytes: Vec<u64> = reports
        .iter()
        .filter(|r| r.1 != Phase::Checking)
        .map(|r| r.2)
        .collect();
    assert!(
        bytes.windows(2).all(|w| w[0] <= w[1]),
        "progress goes forward"
    );
    let last = reports.last().unwrap();
    assert_eq!((last.1, last.2, last.3), (Phase::Done, total, total));

    // The token went to the Hub, never to the storage host the files were redirected to.
    let requests = server.requests();
    assert!(requests.iter().filter(|r| r.host == "hub").all(|r| r
        .headers
        .get("authorization")
        .map(String::as_str)
        == Some("Bearer hf_test_token")));
    assert!(requests
        .iter()
        .filter(|r| r.host == "storage")
        .all(|r| !r.headers.contains_key("authorization")));

    // The snapshot loads and runs like the reference model.
    load_and_check_dv(&outcome.snapshot);

    // A second fetch checks with the Hub but downloads nothing.
    let before = storage_gets(&server, ".jit").len();
    let again = fetch(&hub, "DV8x16x16").unwrap();
    assert_eq!(again.snapshot, outcome.snapshot);
    assert_eq!(again.downloaded_bytes(), 0);
    assert_eq!(storage_gets(&server, ".jit").len(), before);
}

#[test]
fn a_cached_model_is_used_without_the_network() {
    let mut server = dv_server();
    let cache = scratch("cache-hit");
    let online = Hub::new(config(&server, &cache));
    let snapshot = fetch(&online, DV_REPO).unwrap().snapshot;
    server.stop();
    let no_progress = &mut |_: &FetchProgress<'_>| panic!("nothing should be fetched");

    // The server is gone: names resolve from the cache alone.
    for name in [
        DV_REPO,
        "DV8x16x16",
        "Cosmos-0.1-Tokenizer-DV8x16x16",
        "nvidia/Cosmos-Tokenizer-DV8x16x16",
    ] {
        let resolved = online.resolve(name, &no_cancel(), no_progress).unwrap();
        assert_eq!(resolved, snapshot, "{name}");
    }
    let mut offline_cfg = config(&server, &cache);
    offline_cfg.offline = true;
    let offline = Hub::new(offline_cfg);
    assert_eq!(
        offline
            .resolve("DV8x16x16", &no_cancel(), no_progress)
            .unwrap(),
        snapshot
    );
    load_and_check_dv(&offline.resolve(DV_REPO, &no_cancel(), no_progress).unwrap());

    // `fetch` says it used the cache: offline by choice, or because the Hub is unreachable.
    let outcome = fetch(&offline, DV_REPO).unwrap();
    assert!(outcome.note.unwrap().contains("HF_HUB_OFFLINE"));
    let outcome = fetch(&online, DV_REPO).unwrap();
    assert_eq!(outcome.snapshot, snapshot);
    assert!(outcome.note.unwrap().contains("could not reach"));

    // A model that is not cached, with the Hub unreachable: a network error that says how to
    // work offline.
    let err = online
        .resolve("CV8x8x8", &no_cancel(), &mut |_| {})
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, HubError::Network { .. }), "{message}");
    assert!(
        message.contains("could not reach") && message.contains("HF_HUB_OFFLINE=1"),
        "{message}"
    );
    assert!(
        message.contains("models--nvidia--Cosmos-0.1-Tokenizer-CV8x8x8"),
        "{message}"
    );
    // A local path wins over everything.
    let dir = model_dir("DV8x16x16-tiny");
    assert_eq!(
        online
            .resolve(dir.to_str().unwrap(), &no_cancel(), no_progress)
            .unwrap(),
        dir
    );
}

#[test]
fn an_interrupted_download_is_resumed_with_a_range_request() {
    let server = dv_server();
    let encoder = reference_bytes("DV8x16x16-tiny", "encoder.jit");
    let half = encoder.len() / 2;
    server
        .state()
        .drop_first_get
        .insert("encoder.jit".to_string(), half);
    let cache = scratch("resume");
    let hub = Hub::new(config(&server, &cache));
    let outcome = fetch(&hub, DV_REPO).unwrap();

    let gets = storage_gets(&server, "encoder.jit");
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].headers.get("range"), None);
    assert_eq!(
        gets[1].headers.get("range").map(String::as_str),
        Some(format!("bytes={half}-").as_str()),
        "the second request resumes where the first stopped"
    );
    assert_eq!(
        std::fs::read(outcome.snapshot.join("encoder.jit")).unwrap(),
        encoder
    );
    load_and_check_dv(&outcome.snapshot);
}

#[test]
fn a_later_fetch_resumes_what_an_earlier_one_left() {
    let server = dv_server();
    let decoder = reference_bytes("DV8x16x16-tiny", "decoder.jit");
    let part = decoder.len() / 3;
    server
        .state()
        .drop_first_get
        .insert("decoder.jit".to_string(), part);
    let cache = scratch("resume-later");
    let mut cfg = config(&server, &cache);
    cfg.retries = 0;
    let hub = Hub::new(cfg);

    let err = fetch(&hub, DV_REPO).unwrap_err();
    let message = err.to_string();
    let HubError::Interrupted { done, partial, .. } = &err else {
        panic!("{message}");
    };
    assert_eq!(*done, part as u64);
    assert!(
        message.contains("decoder.jit") && message.contains(DV_REPO),
        "{message}"
    );
    assert!(message.contains("resume"), "{message}");
    assert_eq!(std::fs::metadata(partial).unwrap().len(), part as u64);
    assert!(partial.to_string_lossy().ends_with(".incomplete"));
    match hub.status(DV_REPO).unwrap() {
        CacheStatus::Partial {
            present,
            missing,
            incomplete_bytes,
            ..
        } => {
            assert_eq!(present, ["encoder.jit"]);
            assert_eq!(missing, ["decoder.jit"]);
            assert_eq!(incomplete_bytes, part as u64);
        }
        other => panic!("{other:?}"),
    }

    let outcome = fetch(&hub, DV_REPO).unwrap();
    let gets = storage_gets(&server, "decoder.jit");
    assert_eq!(
        gets.last()
            .unwrap()
            .headers
            .get("range")
            .map(String::as_str),
        Some(format!("bytes={part}-").as_str())
    );
    assert_eq!(
        std::fs::read(outcome.snapshot.join("decoder.jit")).unwrap(),
        decoder
    );
    assert!(!partial.exists());
    assert!(hub.status(DV_REPO).unwrap().is_complete());
}

#[test]
fn a_cancelled_download_keeps_its_bytes_for_later() {
    let server = dv_server();
    let cache = scratch("cancel");
    let hub = Hub::new(config(&server, &cache));
    let cancel = AtomicBool::new(false);
    let err = hub
        .fetch(DV_REPO, &cancel, &mut |p| {
            if p.phase == Phase::Downloading && p.file_bytes > 0 {
                cancel.store(true, Ordering::Relaxed);
            }
        })
        .unwrap_err();
    let HubError::Cancelled { partial, file, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(file, "encoder.jit");
    let kept = std::fs::metadata(partial).unwrap().len();
    assert!(kept > 0);
    let outcome = fetch(&hub, DV_REPO).unwrap();
    let last = storage_gets(&server, "encoder.jit").pop().unwrap();
    assert_eq!(
        last.headers.get("range").map(String::as_str),
        Some(format!("bytes={kept}-").as_str())
    );
    assert_eq!(
        std::fs::read(outcome.snapshot.join("encoder.jit")).unwrap(),
        reference_bytes("DV8x16x16-tiny", "encoder.jit")
    );
}

#[test]
fn a_corrupted_download_is_detected_and_discarded() {
    let server = dv_server();
    server.state().corrupt.insert("decoder.jit".to_string());
    let cache = scratch("corrupt");
    let hub = Hub::new(config(&server, &cache));
    let err = fetch(&hub, DV_REPO).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, HubError::Corrupted { .. }), "{message}");
    assert!(
        message.contains("decoder.jit") && message.contains(DV_REPO),
        "{message}"
    );
    assert!(message.contains("sha256"), "{message}");
    let decoder_sha = sha256_hex(&reference_bytes("DV8x16x16-tiny", "decoder.jit"));
    let blobs = cache.join("models--nvidia--Cosmos-0.1-Tokenizer-DV8x16x16/blobs");
    assert!(
        !blobs.join(&decoder_sha).exists(),
        "no corrupted blob in the cache"
    );
    assert!(!blobs.join(format!("{decoder_sha}.incomplete")).exists());
    assert!(!hub.status(DV_REPO).unwrap().is_complete());

    // Once the server sends the right bytes, the fetch completes.
    server.state().corrupt.clear();
    let outcome = fetch(&hub, DV_REPO).unwrap();
    load_and_check_dv(&outcome.snapshot);
}

#[test]
fn server_errors_and_missing_files_are_reported_clearly() {
    let server = dv_server();
    server.add_repo(
        "nvidia/Cosmos-0.1-Tokenizer-CV8x8x8",
        "CV8x8x8-tiny",
        &["encoder.jit"],
    );
    let cache = scratch("errors");
    let hub = Hub::new(config(&server, &cache));

    // A 500 on the Hub.
    server
        .state()
        .status
        .insert("encoder.jit".to_string(), (500, None));
    let err = fetch(&hub, DV_REPO).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, HubError::Server { status: 500, .. }),
        "{message}"
    );
    assert!(
        message.contains(DV_REPO) && message.contains("encoder.jit"),
        "{message}"
    );
    assert!(
        message.contains("500") && message.contains("try again later"),
        "{message}"
    );
    server.state().status.clear();

    // A repo that does not exist.
    let err = fetch(&hub, "nvidia/Cosmos-9.9-Tokenizer-XX").unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, HubError::RepoNotFound { .. }), "{message}");
    assert!(
        message.contains("nvidia/Cosmos-9.9-Tokenizer-XX"),
        "{message}"
    );
    assert!(message.contains("HF_TOKEN"), "{message}");

    // A repo without decoder.jit.
    let err = fetch(&hub, "CV8x8x8").unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, HubError::FileNotFound { .. }), "{message}");
    assert!(
        message.contains("decoder.jit") && message.contains("nvidia/Cosmos-0.1-Tokenizer-CV8x8x8"),
        "{message}"
    );

    // A bare 404 without the Hub's error code still names repo and file.
    server
        .state()
        .status
        .insert("decoder.jit".to_string(), (404, None));
    let message = fetch(&hub, DV_REPO).unwrap_err().to_string();
    assert!(
        message.contains("404") && message.contains("decoder.jit") && message.contains(DV_REPO),
        "{message}"
    );

    // Gated: a message about accepting the terms and HF_TOKEN.
    server
        .state()
        .status
        .insert("encoder.jit".to_string(), (403, Some("GatedRepo")));
    let err = fetch(&hub, DV_REPO).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, HubError::Gated { .. }), "{message}");
    assert!(
        message.contains("gated") && message.contains("HF_TOKEN"),
        "{message}"
    );

    // Nothing half-made was left in the cache by any of these.
    assert!(!hub.status(DV_REPO).unwrap().is_complete());
}

#[test]
fn a_repo_with_only_autoencoder_jit_is_fetched_whole() {
    let server = FakeHub::start();
    server.add_repo(
        "nvidia/Cosmos-Tokenize1-DV4x8x8-360p",
        "DV4x8x8-LowRes-tiny",
        &["autoencoder.jit"],
    );
    let cache = scratch("autoencoder");
    let hub = Hub::new(config(&server, &cache));
    let outcome = fetch(&hub, "DV4x8x8-360p").unwrap();
    let names: Vec<&str> = outcome.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["autoencoder.jit"]);
    let status = hub.status("nvidia/Cosmos-Tokenize1-DV4x8x8-360p").unwrap();
    assert!(status.is_complete(), "{status:?}");
    // The loader takes the variant from the repo name in the cache path (the tiny widths win
    // over the named configuration) and gives NVIDIA's tokens.
    let loaded = checkpoint::load(&outcome.snapshot, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.form, CheckpointForm::TorchScriptAutoencoder);
    assert_eq!(loaded.variant_name, "DV4x8x8-LowRes");
    let io = load_io(&model_dir("DV4x8x8-LowRes-tiny").join("io.safetensors"));
    match loaded.tokenizer.encode(&io["input"]).unwrap() {
        Tokens::Discrete { indices, .. } => assert_exact_i64("indices", &indices, &io["indices"]),
        Tokens::Continuous { .. } => panic!("continuous tokens from a DV model"),
    }
}

#[test]
fn offline_with_an_empty_cache_says_exactly_where_the_files_go() {
    let server = FakeHub::start();
    let cache = scratch("offline-help");
    let mut cfg = config(&server, &cache);
    cfg.offline = true;
    let hub = Hub::new(cfg);
    let err = hub
        .resolve("DV8x16x16", &no_cancel(), &mut |_| {})
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, HubError::Offline { .. }), "{message}");
    let target = cache.join("models--nvidia--Cosmos-0.1-Tokenizer-DV8x16x16/snapshots/main");
    for file in ["encoder.jit", "decoder.jit"] {
        assert!(
            message.contains(&target.join(file).display().to_string()),
            "{message}"
        );
    }
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
    assert!(message.contains("tokenscope models fetch"), "{message}");
    assert_eq!(hub.offline_help("DV8x16x16").unwrap(), message);
    assert!(
        server.requests().is_empty(),
        "offline never touches the network"
    );
    assert!(matches!(
        fetch(&hub, DV_REPO),
        Err(HubError::Offline { .. })
    ));

    // Following the message works.
    std::fs::create_dir_all(&target).unwrap();
    for file in ["encoder.jit", "decoder.jit"] {
        std::fs::copy(model_dir("DV8x16x16-tiny").join(file), target.join(file)).unwrap();
    }
    let resolved = hub.resolve(DV_REPO, &no_cancel(), &mut |_| {}).unwrap();
    assert_eq!(resolved, target);
    load_and_check_dv(&resolved);
    assert!(server.requests().is_empty());
}

#[test]
fn list_shows_the_cache_status_of_every_model() {
    let server = dv_server();
    let cache = scratch("list");
    let hub = Hub::new(config(&server, &cache));
    let entries = hub.list();
    assert_eq!(entries.len(), known_models().len());
    assert!(entries.iter().all(|e| e.status == CacheStatus::Absent));

    fetch(&hub, "DV8x16x16").unwrap();
    // Half of another model: the encoder only.
    server.add_repo(
        "nvidia/Cosmos-0.1-Tokenizer-CI8x8",
        "CI8x8-tiny",
        &["encoder.jit"],
    );
    assert!(fetch(&hub, "CI8x8").is_err());
    // ... which leaves nothing: HEADs fail before any download. Put the encoder in by hand.
    let by_hand = cache.join("models--nvidia--Cosmos-0.1-Tokenizer-CI8x8/snapshots/main");
    std::fs::create_dir_all(&by_hand).unwrap();
    std::fs::copy(
        model_dir("CI8x8-tiny").join("encoder.jit"),
        by_hand.join("encoder.jit"),
    )
    .unwrap();

    for entry in hub.list() {
        match entry.model.repo {
            DV_REPO => match &entry.status {
                CacheStatus::Complete { files, bytes, .. } => {
                    assert_eq!(files, &["encoder.jit", "decoder.jit"]);
                    assert!(*bytes > 0);
                }
                other => panic!("{other:?}"),
            },
            "nvidia/Cosmos-0.1-Tokenizer-CI8x8" => {
                assert_eq!(entry.status.label(), "partial", "{:?}", entry.status)
            }
            _ => assert_eq!(entry.status, CacheStatus::Absent, "{}", entry.model.repo),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The command line, with the configuration in the child's environment.

fn tokenscope(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenscope"));
    command.args(args);
    for var in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_OFFLINE",
        "XDG_CACHE_HOME",
    ] {
        command.env_remove(var);
    }
    command.envs(env.iter().copied());
    let out = command.output().expect("running tokenscope");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_fetches_then_works_offline() {
    let mut server = FakeHub::start();
    // As on the real Hub, config.json says nothing about the architecture: the variant comes from
    // the repo name in the cache path.
    server.add_repo(DV_REPO, "DV8x16x16-tiny", &["encoder.jit", "decoder.jit"]);
    let home = scratch("cli");
    let hf_home = home.to_str().unwrap();
    let endpoint = server.endpoint.clone();
    let online = [("HF_ENDPOINT", endpoint.as_str()), ("HF_HOME", hf_home)];

    let (ok, stdout, stderr) = tokenscope(&["models", "fetch", DV_REPO], &online);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(DV_REPO) && stdout.contains("downloaded"),
        "{stdout}"
    );
    assert!(home
        .join("hub/models--nvidia--Cosmos-0.1-Tokenizer-DV8x16x16/refs/main")
        .is_file());

    let (ok, stdout, stderr) = tokenscope(&["models", "list"], &online);
    assert!(ok, "{stderr}");
    let line = stdout.lines().find(|l| l.starts_with(DV_REPO)).unwrap();
    assert!(line.ends_with("complete"), "{line}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("nvidia/Cosmos-Tokenize1-CV8x8x8-720p"))
        .unwrap();
    assert!(line.ends_with("absent"), "{line}");

    server.stop();
    let offline = [("HF_HOME", hf_home), ("HF_HUB_OFFLINE", "1")];
    for name in [DV_REPO, "DV8x16x16"] {
        let (ok, stdout, stderr) = tokenscope(&["info", "--model", name], &offline);
        assert!(ok, "{name}: {stderr}");
        assert!(stdout.contains("DV8x16x16"), "{stdout}");
        assert!(
            stdout.contains("TorchScript encoder.jit/decoder.jit"),
            "{stdout}"
        );
    }
    // Encoding through a repo name gives NVIDIA's tokens.
    let io_path = model_dir("DV8x16x16-tiny").join("io.safetensors");
    let tokens = home.join("tokens.safetensors");
    let (ok, _, stderr) = tokenscope(
        &[
            "encode",
            "-m",
            DV_REPO,
            io_path.to_str().unwrap(),
            "-o",
            tokens.to_str().unwrap(),
        ],
        &offline,
    );
    assert!(ok, "{stderr}");
    assert_exact_i64(
        "indices",
        &load_io(&tokens)["indices"],
        &load_io(&io_path)["indices"],
    );

    // Not cached and offline: one line that says where the files go.
    let (ok, _, stderr) = tokenscope(&["info", "--model", "CV8x8x8"], &offline);
    assert!(!ok);
    assert!(
        stderr.contains("models--nvidia--Cosmos-0.1-Tokenizer-CV8x8x8/snapshots/main/encoder.jit"),
        "{stderr}"
    );
    let (ok, _, stderr) = tokenscope(&["models", "fetch", "CV8x8x8"], &offline);
    assert!(!ok);
    assert!(stderr.contains("HF_HUB_OFFLINE"), "{stderr}");
    // The Hub unreachable (server stopped): a clear network error.
    let (ok, _, stderr) = tokenscope(&["models", "fetch", "CV8x8x8"], &online);
    assert!(!ok);
    assert!(stderr.contains("could not reach"), "{stderr}");
    let (ok, _, stderr) = tokenscope(&["info", "--model", "no-such-model"], &offline);
    assert!(!ok);
    assert!(stderr.contains("models list"), "{stderr}");
}

#[test]
fn a_model_at_a_revision_is_fetched_from_that_revision_and_then_served_from_the_cache() {
    let server = dv_server();
    let cache = scratch("revision");
    let hub = Hub::new(config(&server, &cache));
    let spec = format!("{DV_REPO}@v1.0");
    let folder = hub.resolve(&spec, &no_cancel(), &mut |_| {}).unwrap();
    assert!(server
        .requests()
        .iter()
        .any(|r| r.path.contains("/resolve/v1.0/encoder.jit")));
    let repo = cache.join("models--nvidia--Cosmos-0.1-Tokenizer-DV8x16x16");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/v1.0")).unwrap(),
        COMMIT
    );
    assert!(
        !repo.join("refs/main").exists(),
        "only the asked revision is recorded"
    );
    load_and_check_dv(&folder);
    // Offline, the same spec resolves from the cache.
    let mut offline = config(&server, &cache);
    offline.offline = true;
    let again = Hub::new(offline)
        .resolve(&spec, &no_cancel(), &mut |_| {})
        .unwrap();
    assert_eq!(again, folder);
    assert_eq!(tokenscope::hub::split_revision("a/b@c"), ("a/b", "c"));
    assert_eq!(
        tokenscope::hub::split_revision("CV8x8x8"),
        ("CV8x8x8", "main")
    );
}
