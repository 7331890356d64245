//! The status bar: device, dtype, encode/decode time per frame, model parameters, memory, a
//! warning when the input is smaller than the model's training resolution, and the running job
//! with its ETA.

use egui::{Color32, Ui};

use super::command::Command;
use super::ViewerApp;
use crate::analysis::plan::human_bytes;

pub fn status_ui(app: &ViewerApp, ui: &mut Ui, out: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        if let Some(r) = &app.jobs.running {
            ui.spinner();
            let eta = r
                .eta_seconds()
                .map(|s| format!(" · ETA {s:.0} s"))
                .unwrap_or_default();
            let name = r.key.model.short_name();
            ui.add(
                egui::ProgressBar::new(r.fraction())
                    .desired_width(140.0)
                    .text(format!("{}/{}", r.done, r.total)),
            );
            ui.label(format!(
                "{name}: {} · {:.1} s{eta}",
                r.stage,
                r.started.elapsed().as_secs_f64()
            ));
            if let Some(m) = &r.memory {
                let using = app.memory.bytes()
                    .map(|b| format!(", using {}", human_bytes(b)))
                    .unwrap_or_default();
                ui.label(format!(
                    "memory: expects {} of {}{using}",
                    human_bytes(m.estimate),
                    human_bytes(m.budget)
                ))
                .on_hover_text("The planner's estimate of the job's peak memory, against the budget (--memory-budget, else 80% of the memory available when the job started)");
                if let Some(note) = &m.adjustment {
                    ui.colored_label(Color32::from_rgb(240, 180, 60), "⚠ adjusted to fit")
                        .on_hover_text(note.as_str());
                }
            }
            if ui.small_button("Cancel (Esc)").clicked() {
                out.push(Command::Cancel);
            }
            ui.separator();
        } else if app.jobs.decoding.is_some() {
            ui.spinner();
            ui.label("decoding…");
            ui.separator();
        }
        if let Some(a) = &app.current {
            let m = &a.model;
            // Resident memory of the whole app (clip, models, results).
            let memory = app.memory.bytes()
                .map(|b| format!(" · {:.2} GB", b as f64 / 1e9))
                .unwrap_or_default();
            ui.label(format!(
                "{} · {} · {} ({}) · {:.2} M parameters · encode {:.0} ms/frame · decode {:.0} ms/frame{memory}",
                m.device,
                m.dtype,
                m.name,
                m.variant,
                m.parameters as f64 / 1e6,
                a.encode_ms_per_frame,
                a.decode_ms_per_frame
            ));
            if let Some((w, h)) = app.image_size() {
                if w.min(h) < m.training_shorter_side {
                    ui.colored_label(
                        Color32::from_rgb(240, 180, 60),
                        format!(
                            "input below training resolution ({}p)",
                            m.training_shorter_side
                        ),
                    )
                    .on_hover_text("this model was trained on larger frames; expect lower quality on small inputs");
                }
            }
        } else if let Some(n) = &app.notice {
            ui.weak(n);
        }
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            if ui.small_button("?").on_hover_text("keyboard shortcuts").clicked() {
                out.push(Command::ToggleHelp);
            }
            if let Some(c) = &app.clip {
                ui.weak(format!(
                    "{} · {}×{} · {} frames",
                    c.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    c.frames.width,
                    c.frames.height,
                    c.frames.frames
                ));
            }
        });
    });
}

/// The app's resident memory, read from the operating system at most twice a second rather than
/// on every frame.
#[derive(Debug, Default)]
pub struct MemorySampler {
    sampled: Option<std::time::Instant>,
    bytes: Option<u64>,
}

impl MemorySampler {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(500);

    pub fn sample(&mut self) {
        if self.sampled.is_none_or(|at| at.elapsed() >= Self::EVERY) {
            self.bytes = crate::sys::rss_bytes();
            self.sampled = Some(std::time::Instant::now());
        }
    }

    /// The last reading, if any.
    pub fn bytes(&self) -> Option<u64> {
        self.bytes
    }
}
