//! `tokenscope bench-ui`: UI frame time while an inference job runs, and the time to switch to
//! a rate that is already computed. Runs the real app headless (egui layout, command handling and
//! tessellation; no GPU submission, which eframe does on the same thread after this).

use crate::analysis::ModelSource;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{Command, ViewerApp, ViewerOptions};

/// The numbers `bench-ui` prints.
#[derive(Clone, Debug)]
pub struct UiBench {
    pub frames_during_job: usize,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
    pub job_seconds: f64,
    pub switch_ms: f64,
    pub switch_frames: usize,
}

fn frame(app: &mut ViewerApp, ctx: &egui::Context, started: Instant) -> f64 {
    let input = egui::RawInput {
        screen_rect: Some(egui::Rect::from_min_size(
            egui::Pos2::ZERO,
            egui::vec2(1440.0, 900.0),
        )),
        time: Some(started.elapsed().as_secs_f64()),
        ..Default::default()
    };
    let t = Instant::now();
    let mut output = ctx.run_ui(input, |ui| app.logic_and_frame_ui(ui));
    let _ = ctx.tessellate(std::mem::take(&mut output.shapes), output.pixels_per_point);
    // No renderer takes the texture uploads; say so, or epaint complains on drop.
    output.textures_delta.clear();
    t.elapsed().as_secs_f64() * 1e3
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len().saturating_sub(1)) as f64 * q).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

/// Runs the benchmark: `models` are two catalogue keys (A, B); `file` the input.
pub fn run(
    options: ViewerOptions,
    other_model: &ModelSource,
    timeout: Duration,
) -> anyhow::Result<UiBench> {
    let ctx = egui::Context::default();
    let started = Instant::now();
    let mut app = ViewerApp::new(
        &ctx,
        None,
        None,
        ViewerOptions {
            no_hub: true,
            ..options
        },
    );
    let first = app.model.clone().context("no model to run")?;
    let wait_until =
        |app: &mut ViewerApp, done: &dyn Fn(&ViewerApp) -> bool| -> anyhow::Result<Vec<f64>> {
            let mut times = Vec::new();
            let deadline = Instant::now() + timeout;
            while !done(app) {
                if let Some(e) = app.errors.first() {
                    anyhow::bail!("{e}");
                }
                if Instant::now() > deadline {
                    anyhow::bail!("timed out");
                }
                times.push(frame(app, &ctx, started));
                // About 60 frames per second, as a window would ask for.
                std::thread::sleep(Duration::from_millis(16));
            }
            Ok(times)
        };
    // Decode, then the first job: frame times while it runs.
    wait_until(&mut app, &|a| a.jobs.running.is_some())?;
    let job_start = Instant::now();
    let mut times = wait_until(&mut app, &|a| a.current.is_some())?;
    let job_seconds = job_start.elapsed().as_secs_f64();
    // A second rate, then back to the first (cached).
    app.push(Command::SelectModel(other_model.clone()));
    let b = other_model.clone();
    wait_until(&mut app, &move |a| {
        a.current.as_ref().is_some_and(|c| c.key.model == b)
    })?;
    let t = Instant::now();
    app.push(Command::SelectModel(first.clone()));
    let mut switch_frames = 0;
    while app.current.as_ref().is_none_or(|c| c.key.model != first) {
        frame(&mut app, &ctx, started);
        switch_frames += 1;
        if switch_frames > 1000 {
            anyhow::bail!("switching back never finished");
        }
    }
    // The frame that shows it.
    frame(&mut app, &ctx, started);
    let switch_ms = t.elapsed().as_secs_f64() * 1e3;
    times.sort_by(f64::total_cmp);
    Ok(UiBench {
        frames_during_job: times.len(),
        median_ms: percentile(&times, 0.5),
        p95_ms: percentile(&times, 0.95),
        max_ms: times.last().copied().unwrap_or(f64::NAN),
        job_seconds,
        switch_ms,
        switch_frames,
    })
}

impl UiBench {
    pub fn table(&self) -> String {
        let mark = |ok: bool| if ok { "ok" } else { "OVER" };
        format!(
            "measure                                   value      target\n\
             UI frame time during inference, median    {:>7.2} ms  < 16 ms  {}\n\
             UI frame time during inference, p95       {:>7.2} ms  < 16 ms  {}\n\
             UI frame time during inference, max       {:>7.2} ms\n\
             frames drawn during the job               {:>7}     ({:.1} s job)\n\
             switch to a cached rate                   {:>7.2} ms  < 50 ms  {} ({} frame(s))\n",
            self.median_ms,
            mark(self.median_ms < 16.0),
            self.p95_ms,
            mark(self.p95_ms < 16.0),
            self.max_ms,
            self.frames_during_job,
            self.job_seconds,
            self.switch_ms,
            mark(self.switch_ms < 50.0),
            self.switch_frames
        )
    }
}
