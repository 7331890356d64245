//! The viewer, driven like a user would with egui_kittest (wgpu renderer, offscreen): open the
//! demo clip, run a tiny reference model on a few frames, switch rates, scrub, change layouts,
//! hover a token, export; fetch an official model from a stand-in of the Hugging Face Hub. Plus
//! the `view --screenshot` path of the real binary.

// Tests fail loudly: unwrap and expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use egui_kittest::kittest::Queryable;
use egui_kittest::Harness;
use tokenscope::analysis::ModelSource;
use tokenscope::app::{Command, ExportKind, Layout, TokenView, ViewerApp, ViewerOptions};

const FRAMES: usize = 9;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn reference(name: &str) -> Option<PathBuf> {
    let dir = root().join("../shared/reference").join(name);
    dir.is_dir().then(|| dir.canonicalize().unwrap_or(dir))
}

fn harness(model: &Path) -> Harness<'static, ViewerApp> {
    harness_with(ViewerOptions {
        file: Some(root().join("assets/demo.mp4")),
        model: Some(model.display().to_string()),
        frames: Some(FRAMES),
        no_hub: true,
        ..Default::default()
    })
}

fn harness_with(options: ViewerOptions) -> Harness<'static, ViewerApp> {
    Harness::builder()
        .with_size(egui::vec2(1440.0, 900.0))
        .wgpu()
        .build_eframe(move |cc| {
            ViewerApp::new(
                &cc.egui_ctx,
                cc.wgpu_render_state.as_ref(),
                None,
                options.clone(),
            )
        })
}

/// Steps the app until `done` holds (the workers run in real time).
fn step_until(h: &mut Harness<'_, ViewerApp>, what: &str, done: impl Fn(&ViewerApp) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done(h.state()) {
        assert!(
            h.state().errors.is_empty(),
            "{what}: the app reported {:?}",
            h.state().errors
        );
        assert!(Instant::now() < deadline, "{what}: timed out");
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.step();
}

fn region_mean(image: &image::RgbaImage, x0: u32, y0: u32, x1: u32, y1: u32) -> [f64; 3] {
    let mut sum = [0f64; 3];
    let mut n = 0.0;
    for y in y0..y1 {
        for x in x0..x1 {
            let p = image.get_pixel(x, y);
            for c in 0..3 {
                sum[c] += f64::from(p[c]);
            }
            n += 1.0;
        }
    }
    sum.map(|s| s / n)
}

#[test]
fn viewer_runs_switches_scrubs_and_exports() {
    let (Some(dv), Some(cv)) = (reference("DV8x8x8-tiny"), reference("CV8x8x8-tiny")) else {
        eprintln!("SKIPPED: ../shared/reference tiny models are missing");
        return;
    };
    let mut h = harness(&dv);
    assert!(
        h.state().has_gpu(),
        "the compare callback needs the wgpu renderer"
    );

    // Open the demo clip and run the model on the first frames.
    step_until(&mut h, "first run", |a| a.current.is_some());
    let first = h.state().current.clone().unwrap();
    assert_eq!(first.reconstruction.frames, FRAMES);
    assert_eq!(first.summary.psnr_frames.len(), FRAMES);
    assert!(first
        .summary
        .psnr_frames
        .iter()
        .all(|p| p.is_finite() && *p > 0.0));
    assert!(first.summary.ssim_frames.iter().all(|s| s.is_finite()));
    assert!(first.summary.psnr_clip.is_finite());
    assert!(first.bits_per_pixel > 0.0);
    let usage = first
        .usage
        .as_ref()
        .expect("a discrete model has codebook usage");
    assert!(usage.unique > 0 && usage.entropy_bits > 0.0);
    // 9 frames in one 17-frame window, padded to 9 = 1 + 8: no temporal padding.
    assert_eq!(first.windows.len(), 1);
    assert!(h.query_all_by_label_contains("clip PSNR").count() > 0);

    // Switch rate: runs; switching back is a cache hit (same analysis, no job).
    h.state_mut()
        .push(Command::SelectModel(ModelSource::Path(cv.clone())));
    step_until(&mut h, "second rate", |a| {
        a.current.as_ref().is_some_and(|c| !c.model.discrete)
    });
    h.state_mut()
        .push(Command::SelectModel(ModelSource::Path(dv.clone())));
    h.step();
    let back = h
        .state()
        .current
        .clone()
        .expect("cached result shown at once");
    assert!(
        Arc::ptr_eq(&back, &first),
        "switching back must reuse the cached analysis"
    );
    assert!(h.state().jobs.running.is_none(), "no job for a cached rate");

    // Scrub: keys, buttons and the timeline.
    h.key_press(egui::Key::ArrowRight);
    h.step();
    assert_eq!(h.state().frame, 1);
    h.get_by_label("▶|").click();
    h.step();
    assert_eq!(h.state().frame, 2);
    h.state_mut().push(Command::Seek(5));
    h.step();
    assert_eq!(h.state().frame, 5);

    // Layouts: wipe by its button, flicker by key; holding X swaps in the original.
    h.get_by_label("Wipe").click();
    h.step();
    assert_eq!(h.state().state.view.layout, Layout::Wipe);
    h.key_press(egui::Key::Num4);
    h.step();
    assert_eq!(h.state().state.view.layout, Layout::Flicker);
    h.run_steps(2);
    let recon_img = h.render().expect("render");
    h.key_down(egui::Key::X);
    h.run_steps(2);
    let original_img = h.render().expect("render");
    h.key_up(egui::Key::X);
    h.step();
    // The centre of the pane differs: random-weight reconstructions look nothing like the clip.
    let (w, hgt) = recon_img.dimensions();
    let (cx, cy) = (w / 2, hgt * 2 / 5);
    let a = region_mean(&recon_img, cx - 40, cy - 40, cx + 40, cy + 40);
    let b = region_mean(&original_img, cx - 40, cy - 40, cx + 40, cy + 40);
    let diff: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
    assert!(
        diff > 3.0,
        "flicker did not change the picture: {a:?} vs {b:?}"
    );

    // Wipe shares the flicker pane's geometry: left of the split is the original, right of it
    // the reconstruction.
    h.key_press(egui::Key::Num3);
    h.run_steps(2);
    let wipe_img = h.render().expect("render");
    let (lx, rx) = (cx - 120, cx + 120);
    let close =
        |p: [f64; 3], q: [f64; 3]| p.iter().zip(&q).map(|(x, y)| (x - y).abs()).sum::<f64>() < 1.0;
    assert!(close(
        region_mean(&wipe_img, lx - 20, cy - 20, lx + 20, cy + 20),
        region_mean(&original_img, lx - 20, cy - 20, lx + 20, cy + 20)
    ));
    assert!(close(
        region_mean(&wipe_img, rx - 20, cy - 20, rx + 20, cy + 20),
        region_mean(&recon_img, rx - 20, cy - 20, rx + 20, cy + 20)
    ));

    // Zoomed in 8x (flicker, original): image pixels become 8x8 blocks of one colour
    // (nearest-neighbour sampling when magnified).
    h.key_press(egui::Key::Num4);
    h.state_mut().push(Command::SetTransform {
        zoom: 8.0,
        cx: 320.0,
        cy: 176.0,
    });
    h.key_down(egui::Key::X);
    h.run_steps(2);
    let zoomed = h.render().expect("render");
    h.key_up(egui::Key::X);
    h.step();
    let mut blocks_flat = 0;
    let mut blocks = 0;
    for by in 0..6u32 {
        for bx in 0..6u32 {
            // Sample inside blocks, away from their edges, wherever the grid falls.
            let (x0, y0) = (cx - 48 + bx * 16, cy - 48 + by * 16);
            let p = zoomed.get_pixel(x0, y0);
            let q = zoomed.get_pixel(x0 + 1, y0 + 1);
            let r = zoomed.get_pixel(x0 + 2, y0);
            blocks += 1;
            if p == q || q == r {
                blocks_flat += 1;
            }
        }
    }
    assert!(
        blocks_flat * 10 >= blocks * 8,
        "magnified pixels are not flat blocks ({blocks_flat}/{blocks})"
    );
    h.state_mut().push(Command::ZoomFit);
    h.step();

    // Hover a token cell with the overlay on (3-up): the app resolves the cell and its index.
    h.key_press(egui::Key::Num2);
    let mut view = h.state().state.view.clone();
    view.token_view = TokenView::Values;
    h.state_mut().push(Command::SetView(Box::new(view)));
    h.run_steps(2);
    h.hover_at(egui::pos2(
        w as f32 / 2.0 / h.ctx.pixels_per_point(),
        hgt as f32 * 0.4 / h.ctx.pixels_per_point(),
    ));
    h.run_steps(2);
    let hover = h.state().hover.expect("a pixel under the cursor");
    let cell = hover.cell.expect("a token cell under the cursor");
    assert!(hover.reconstruction.is_some());
    assert!(h.state().token_texture_ready());
    assert!(h.query_all_by_label_contains("digits").count() > 0);
    // Clicking the cell highlights its index everywhere.
    let at = egui::pos2(
        w as f32 / 2.0 / h.ctx.pixels_per_point(),
        hgt as f32 * 0.4 / h.ctx.pixels_per_point(),
    );
    for pressed in [true, false] {
        h.event(egui::Event::PointerButton {
            pos: at,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: egui::Modifiers::NONE,
        });
        h.step();
    }
    h.step();
    let selected = h
        .state()
        .selected_index
        .expect("clicking a cell selects its index");
    assert!((0..64000).contains(&selected));
    let a = h.state().current.clone().unwrap();
    let w0 = &a.windows[cell.0];
    let (_, gh, gw) = w0.grid;
    match &w0.values {
        tokenscope::app::analysis::TokenValues::Discrete(v) => {
            assert_eq!(v[(cell.1 * gh + cell.3) * gw + cell.2], selected)
        }
        _ => panic!("a discrete model has indices"),
    }
    assert!(h.query_all_by_label_contains("highlighted index").count() > 0);

    // Exports: the composite PNG has three panes of the clip's size; the CSV one row per frame.
    let dir = std::env::temp_dir().join(format!("tokenscope-ui-{}", std::process::id()));
    let png = dir.join("composite.png");
    let csv = dir.join("metrics.csv");
    let json = dir.join("metrics.json");
    h.state_mut()
        .push(Command::Export(ExportKind::Png, Some(png.clone())));
    h.state_mut()
        .push(Command::Export(ExportKind::Csv, Some(csv.clone())));
    h.state_mut()
        .push(Command::Export(ExportKind::Json, Some(json.clone())));
    h.step();
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let decoded = image::open(&png).expect("exported PNG decodes").to_rgb8();
    assert_eq!(decoded.dimensions(), (640 * 3 + 8, 352));
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(rows.lines().count(), FRAMES + 1);
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(value["summary"]["frames"], FRAMES);
    // The side-by-side MP4 is encoded on a thread; it decodes to the run's frames.
    let mp4 = dir.join("side-by-side.mp4");
    h.state_mut()
        .push(Command::Export(ExportKind::Mp4, Some(mp4.clone())));
    step_until(&mut h, "mp4 export", |a| {
        a.last_export.as_deref() == Some(mp4.as_path())
    });
    let video = tokenscope::media::open(&mp4, &Default::default()).expect("exported MP4 decodes");
    assert_eq!(video.frames.frames, FRAMES);
    assert_eq!(video.frames.width, 2 * 640 + tokenscope::media::PANEL_GAP);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_overlay_lists_the_shortcuts() {
    let Some(dv) = reference("DV8x8x8-tiny") else {
        eprintln!("SKIPPED: ../shared/reference tiny models are missing");
        return;
    };
    let mut h = harness(&dv);
    h.step();
    h.state_mut().push(Command::ToggleHelp);
    h.run_steps(2);
    h.get_by_label("Keyboard shortcuts");
    h.get_by_label_contains("flicker: show the original");
    h.state_mut().push(Command::Cancel);
    h.step();
}

/// Many distinct colours: the window shows pictures, not a blank or single-colour surface.
fn distinct_colours(path: &Path) -> usize {
    let image = image::open(path).expect("screenshot decodes").to_rgb8();
    let mut seen = std::collections::HashSet::new();
    for p in image.pixels() {
        seen.insert(p.0);
    }
    seen.len()
}

#[test]
fn view_screenshot_renders_the_window() {
    let Some(dv) = reference("DV8x8x8-tiny") else {
        eprintln!("SKIPPED: ../shared/reference tiny models are missing");
        return;
    };
    let out = std::env::temp_dir().join(format!("tokenscope-shot-{}.png", std::process::id()));
    let bin = env!("CARGO_BIN_EXE_tokenscope");
    let args = [
        "view".to_string(),
        root().join("assets/demo.mp4").display().to_string(),
        "--model".into(),
        dv.display().to_string(),
        "--frames".into(),
        FRAMES.to_string(),
        "--frame".into(),
        "4".into(),
        "--screenshot".into(),
        out.display().to_string(),
    ];
    let has_display =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    let mut command = if has_display {
        std::process::Command::new(bin)
    } else {
        let found = std::process::Command::new("sh")
            .args(["-c", "command -v xvfb-run"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            eprintln!("\n\n*** SKIPPED view --screenshot: no DISPLAY and no xvfb-run (apt-get install xvfb xauth) ***\n\n");
            return;
        }
        let mut c = std::process::Command::new("xvfb-run");
        c.args(["-a", "-s", "-screen 0 1600x1000x24", bin]);
        c
    };
    let runtime = std::env::temp_dir().join(format!("tokenscope-xdg-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&runtime);
    let status = command
        .args(&args)
        .env("XDG_RUNTIME_DIR", &runtime)
        .status()
        .expect("run tokenscope view");
    assert!(
        status.success(),
        "tokenscope view --screenshot failed: {status}"
    );
    let colours = distinct_colours(&out);
    assert!(
        colours > 2000,
        "the screenshot looks blank: {colours} distinct colours"
    );
    let _ = std::fs::remove_file(&out);
}

/// The model manager downloads an official release by name from the Hub (a local stand-in serving
/// the tiny DV8x8x8 reference files under NVIDIA's repo id) into the cache: progress shows, Cancel
/// stops it and keeps what arrived, Fetch again resumes where it stopped, and the fetched model is
/// selected and runs.
#[test]
fn model_manager_fetches_with_progress_cancel_and_resume() {
    use crate::common::fake_hub::{scratch, FakeHub};
    const REPO: &str = "nvidia/Cosmos-0.1-Tokenizer-DV8x8x8";
    if reference("DV8x8x8-tiny").is_none() {
        eprintln!("skipping: no ../shared/reference");
        return;
    }
    let server = FakeHub::start();
    server.add_repo(
        REPO,
        "DV8x8x8-tiny",
        &["encoder.jit", "decoder.jit", "config.json"],
    );
    // A slow link: 16 KiB every 25 ms, about 2.6 s for the encoder.
    server
        .state()
        .throttle
        .insert("encoder.jit".into(), Duration::from_millis(25));
    let cache = scratch("ui-fetch");
    let mut h = harness_with(ViewerOptions {
        file: Some(root().join("assets/demo.mp4")),
        model: reference("DV8x8x8-tiny").map(|p| p.display().to_string()),
        frames: Some(FRAMES),
        hub: Some(server.config(&cache)),
        ..Default::default()
    });
    step_until(&mut h, "first run", |app| app.current.is_some());
    let entry = |app: &ViewerApp| {
        app.models
            .iter()
            .find(|e| e.hub.as_ref().is_some_and(|s| s.repo == REPO))
            .cloned()
            .expect("the official DV8x8x8 release is listed")
    };
    assert!(!entry(h.state()).is_available(), "nothing is cached yet");

    h.state_mut().push(Command::FetchModel(REPO.into()));
    step_until(&mut h, "download progress", |app| {
        app.fetching.as_ref().is_some_and(|f| f.bytes > 100_000)
    });
    // The progress row names the file and counts megabytes.
    h.get_by_label_contains("encoder.jit");
    h.get_by_label("Cancel download").click();
    step_until(&mut h, "cancel", |app| app.fetching.is_none());
    let notice = h.state().notice.clone().unwrap_or_default();
    assert!(notice.contains("cancelled"), "notice: {notice}");
    assert!(!entry(h.state()).is_available());
    let partial: u64 = walk_files(&cache)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "incomplete"))
        .map(|p| p.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(
        partial > 100_000,
        "the partial download was kept ({partial} bytes)"
    );

    server.state().throttle.clear();
    h.get_by_label("Fetch DV8x8x8 · 0.1").click();
    step_until(&mut h, "fetch starts", |app| app.fetching.is_some());
    step_until(&mut h, "fetch ends", |app| app.fetching.is_none());
    let fetched = entry(h.state());
    assert!(fetched.is_available(), "{:?}", fetched.availability);
    assert_eq!(h.state().model.as_ref(), Some(&fetched.key));
    let resumed = server.requests().into_iter().any(|r| {
        r.host == "storage"
            && r.path.ends_with("encoder.jit")
            && r.headers.get("range").is_some_and(|v| v != "bytes=0-")
    });
    assert!(
        resumed,
        "the second fetch resumed the encoder with a Range request"
    );
    step_until(&mut h, "run the fetched model", |app| {
        app.current
            .as_ref()
            .is_some_and(|a| a.key.model == fetched.key)
    });
    let psnr = h.state().current.as_ref().map(|a| a.summary.psnr_clip);
    assert!(psnr.is_some_and(f64::is_finite), "PSNR {psnr:?}");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// eframe calls only `logic()` while the window is hidden (minimised, another workspace):
/// "Compare all" must still run every available model to the end with no frame drawn.
#[test]
fn compare_all_finishes_while_the_window_is_hidden() {
    let ctx = egui::Context::default();
    let mut app = ViewerApp::new(
        &ctx,
        None,
        None,
        ViewerOptions {
            file: Some(root().join("assets/demo.mp4")),
            model: reference("CV8x8x8-tiny").map(|p| p.display().to_string()),
            frames: Some(FRAMES),
            no_hub: true,
            ..Default::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let logic_until = |app: &mut ViewerApp, what: &str, done: &dyn Fn(&ViewerApp) -> bool| {
        while !done(app) {
            assert!(app.errors.is_empty(), "{what}: {:?}", app.errors);
            assert!(
                Instant::now() < deadline,
                "{what}: timed out; running {:?}, notice {:?}, still to compare {:?}",
                app.jobs.running.as_ref().map(|r| (&r.key.model, &r.stage)),
                app.notice,
                app.compare_pending()
            );
            app.logic(&ctx);
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    logic_until(&mut app, "decode", &|a| a.clip.is_some());
    app.push(Command::CompareAll);
    let available: Vec<ModelSource> = app
        .models
        .iter()
        .filter(|e| e.is_available())
        .map(|e| e.key.clone())
        .collect();
    assert!(available.len() > 1, "{available:?}");
    let all_done = |a: &ViewerApp| {
        let input = root().join("assets/demo.mp4");
        let settings = a.settings();
        a.compare_pending().is_empty()
            && a.jobs.running.is_none()
            && a.jobs.cached_for(&input, &settings).count() == available.len()
    };
    let missing = |a: &ViewerApp| -> Vec<ModelSource> {
        let input = root().join("assets/demo.mp4");
        let settings = a.settings();
        let done: Vec<ModelSource> = a
            .jobs
            .cached_for(&input, &settings)
            .map(|r| r.key.model.clone())
            .collect();
        available
            .iter()
            .filter(|k| !done.contains(k))
            .cloned()
            .collect()
    };
    let deadline_all = Instant::now() + Duration::from_secs(300);
    while !all_done(&app) {
        assert!(app.errors.is_empty(), "{:?}", app.errors);
        assert!(Instant::now() < deadline_all, "missing {:?}", missing(&app));
        app.logic(&ctx);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A clip longer than the memory the viewer gives clips is held a range at a time: the first
/// range that fits opens (with a notice saying so), stepping past its end loads the next one,
/// stepping back before its start loads the previous one, and the frames shown are the
/// source's.
#[test]
fn a_clip_too_long_to_hold_is_held_a_range_at_a_time() {
    let ctx = egui::Context::default();
    let demo = root().join("assets/demo.mp4");
    let full = tokenscope::media::open(&demo, &Default::default()).unwrap();
    let frame_bytes = full.frames.frame_bytes() as u64;
    // Room for 20 of the demo's 65 frames.
    let mut app = ViewerApp::new(
        &ctx,
        None,
        None,
        ViewerOptions {
            file: Some(demo.clone()),
            model: reference("CV8x8x8-tiny").map(|p| p.display().to_string()),
            no_hub: true,
            clip_memory: Some(20 * frame_bytes + frame_bytes / 2),
            ..Default::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let logic_until = |app: &mut ViewerApp, what: &str, done: &dyn Fn(&ViewerApp) -> bool| {
        while !done(app) {
            assert!(Instant::now() < deadline, "{what}: timed out");
            app.logic(&ctx);
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    logic_until(&mut app, "open", &|a| a.clip.is_some());
    app.push(Command::Cancel);
    let held = |a: &ViewerApp| {
        let c = a.clip.as_ref().unwrap();
        (c.first_frame, c.frames.frames)
    };
    assert_eq!(held(&app), (0, 20));
    assert_eq!(app.long_clip, Some(65));
    assert!(
        app.notice
            .as_deref()
            .is_some_and(|n| n.contains("0–19 of 65")),
        "{:?}",
        app.notice
    );
    let same_pixels = |a: &ViewerApp, source_frame: usize| {
        let n = full.frames.frame_bytes();
        a.original_frame(a.frame).unwrap()
            == &full.frames.data[source_frame * n..(source_frame + 1) * n]
    };
    // Past the end: the next range, at its first frame.
    app.push(Command::Seek(19));
    app.push(Command::Step(1));
    logic_until(&mut app, "next range", &|a| held(a).0 == 20);
    assert_eq!((held(&app), app.frame), ((20, 20), 0));
    assert!(same_pixels(&app, 20));
    // Before the start: the previous range, at its last frame.
    app.push(Command::Step(-1));
    logic_until(&mut app, "previous range", &|a| held(a).0 == 0);
    assert_eq!(app.frame, 19);
    assert!(same_pixels(&app, 19));
    // The last range holds what is left.
    for start in [20, 40, 60] {
        app.push(Command::Seek(usize::MAX));
        app.push(Command::Step(1));
        logic_until(&mut app, "later range", &|a| held(a).0 == start);
    }
    assert_eq!(held(&app), (60, 5));
    // Past the clip's last frame: nothing more without looping, its first range with it.
    let mut view = app.state.view.clone();
    view.looping = false;
    app.push(Command::SetView(Box::new(view.clone())));
    app.push(Command::Seek(usize::MAX));
    app.push(Command::Step(1));
    app.logic(&ctx);
    assert_eq!(
        (held(&app).0, app.frame, app.jobs.decoding.is_some()),
        (60, 4, false),
        "nothing after the last frame"
    );
    view.looping = true;
    app.push(Command::SetView(Box::new(view)));
    app.push(Command::Step(1));
    logic_until(&mut app, "loop to the first range", &|a| held(a).0 == 0);
    assert_eq!(app.frame, 0);
    assert!(same_pixels(&app, 0));
}
