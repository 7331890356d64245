//! The Compression rates panel: every model grouped by family with its compression and whether
//! it can run (and why not); one click switches; "compare all" and its table and
//! rate–distortion chart.

use egui::{Color32, RichText, Ui};
use egui_plot::{HoverPosition, Plot, PlotPoints, Points};

use super::command::Command;
use super::metrics_panel::series_color;
use super::models::{Availability, ModelEntry};
use super::ViewerApp;
use crate::tokenizer::config::Family;

fn family_title(family: Option<Family>) -> &'static str {
    match family {
        Some(Family::CI) => "CI · continuous image",
        Some(Family::DI) => "DI · discrete image",
        Some(Family::CV) => "CV · continuous video",
        Some(Family::DV) => "DV · discrete video",
        None => "unknown family",
    }
}

fn status_ui(app: &ViewerApp, e: &ModelEntry, ui: &mut Ui) {
    let running = app
        .jobs
        .running
        .as_ref()
        .is_some_and(|r| r.key.model == e.key);
    let (text, color) = if running {
        ("running", Color32::from_rgb(250, 200, 80))
    } else if app.jobs.loaded.contains(&e.key) {
        ("loaded", Color32::from_rgb(120, 210, 120))
    } else if e.is_available() {
        ("on disk", Color32::from_gray(170))
    } else if e.hub.is_some() {
        ("not fetched", Color32::from_gray(140))
    } else {
        ("not available", Color32::from_rgb(200, 110, 110))
    };
    ui.label(RichText::new(text).small().color(color));
}

/// "Fetch" for an official release that is not in the cache yet (disabled while another
/// download runs).
fn fetch_button_ui(app: &ViewerApp, e: &ModelEntry, ui: &mut Ui, out: &mut Vec<Command>) {
    let Some(hub) = &e.hub else {
        return;
    };
    if e.is_available() || app.fetching.as_ref().is_some_and(|f| f.repo == hub.repo) {
        return;
    }
    let idle = app.fetching.is_none();
    let button = ui.add_enabled(idle, egui::Button::new("Fetch").small());
    // Screen readers (and UI tests) need to know which model the button fetches.
    let spoken = format!("Fetch {}", e.name);
    button.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, idle, &spoken));
    let button = button
        .on_hover_text(format!(
            "download {} (about {:.0} MB) into the Hugging Face cache",
            hub.repo,
            hub.download_bytes as f64 / 1e6
        ))
        .on_disabled_hover_text("another model is downloading");
    if button.clicked() {
        out.push(Command::FetchModel(hub.repo.clone()));
    }
}

/// The progress bar and Cancel of the download of this entry, on its own row.
fn fetch_progress_ui(app: &ViewerApp, e: &ModelEntry, ui: &mut Ui, out: &mut Vec<Command>) {
    let (Some(hub), Some(fetch)) = (&e.hub, &app.fetching) else {
        return;
    };
    if fetch.repo != hub.repo {
        return;
    }
    let row = ui.horizontal(|ui| {
        let bar = match fetch.fraction() {
            Some(f) => egui::ProgressBar::new(f).show_percentage(),
            None => egui::ProgressBar::new(0.0).animate(true),
        };
        ui.add(
            bar.desired_width(ui.available_width() - 110.0)
                .text(fetch.describe()),
        );
        let cancel = ui.add_enabled(
            !fetch.is_cancelled(),
            egui::Button::new("Cancel download").small(),
        );
        if cancel.clicked() {
            out.push(Command::CancelFetch);
        }
    });
    // Bring the progress into view once per download, wherever the list was scrolled.
    let shown_id = egui::Id::unique("fetch progress shown");
    if ui.data(|d| d.get_temp::<String>(shown_id)).as_deref() != Some(fetch.repo.as_str()) {
        row.response.scroll_to_me(Some(egui::Align::Center));
        ui.data_mut(|d| d.insert_temp(shown_id, fetch.repo.clone()));
    }
}

pub fn rates_ui(app: &ViewerApp, ui: &mut Ui, out: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        ui.heading("Compression rates");
    });
    ui.horizontal(|ui| {
        if ui.button("Open model…").clicked() {
            out.push(Command::OpenModelDialog);
        }
        if ui.button("Rescan").clicked() {
            out.push(Command::RescanModels);
        }
        if ui
            .button("Compare all")
            .on_hover_text("run every available model on this input and frame range")
            .clicked()
        {
            out.push(Command::CompareAll);
        }
    });
    let settings = app.settings();
    let cached: Vec<_> = app
        .clip
        .as_ref()
        .map(|c| app.jobs.cached_for(&c.source, &settings).cloned().collect())
        .unwrap_or_default();
    egui::ScrollArea::vertical()
        .id_salt("rates list")
        .max_height((ui.available_height() * 0.55).max(120.0))
        .show(ui, |ui| {
            for family in [
                Some(Family::CV),
                Some(Family::DV),
                Some(Family::CI),
                Some(Family::DI),
                None,
            ] {
                let mut entries: Vec<&ModelEntry> =
                    app.models.iter().filter(|e| e.family == family).collect();
                if entries.is_empty() {
                    continue;
                }
                entries.sort_by_key(|e| (e.compression(), !e.is_available(), e.name.clone()));
                egui::CollapsingHeader::new(family_title(family))
                    .default_open(true)
                    .show(ui, |ui| {
                        for e in entries {
                            let selected = app.model.as_ref() == Some(&e.key);
                            let has_result = cached.iter().any(|a| a.key.model == e.key);
                            ui.horizontal(|ui| {
                                let mut label = format!(
                                    "{} ({}, {}×)",
                                    e.name,
                                    e.rate_label(),
                                    e.compression()
                                );
                                if has_result {
                                    label.push_str(" · done");
                                }
                                let text = if e.is_available() {
                                    RichText::new(label)
                                } else {
                                    RichText::new(label).weak()
                                };
                                let mut response = ui.selectable_label(selected, text);
                                let why = match &e.availability {
                                    Availability::OnDisk => {
                                        format!("{} · {}", e.origin.label(), e.key)
                                    }
                                    Availability::Unavailable(why) => why.clone(),
                                };
                                response = response.on_hover_text(why);
                                if response.clicked() && e.is_available() {
                                    out.push(Command::SelectModel(e.key.clone()));
                                }
                                status_ui(app, e, ui);
                                fetch_button_ui(app, e, ui, out);
                            });
                            fetch_progress_ui(app, e, ui, out);
                        }
                    });
            }
        });
    ui.separator();
    if cached.is_empty() {
        ui.weak("computed rates appear here");
        return;
    }
    let mut rows = cached;
    rows.sort_by(|a, b| a.bits_per_pixel.total_cmp(&b.bits_per_pixel));
    egui::Grid::new("compare all grid")
        .striped(true)
        .num_columns(5)
        .show(ui, |ui| {
            for h in ["model", "PSNR", "SSIM", "bits/px", "ms/frame"] {
                ui.strong(h);
            }
            ui.end_row();
            for a in &rows {
                if ui
                    .selectable_label(
                        app.current.as_ref().is_some_and(|c| c.key == a.key),
                        RichText::new(&a.model.name).color(series_color(&a.model.name)),
                    )
                    .clicked()
                {
                    out.push(Command::SelectModel(a.key.model.clone()));
                }
                ui.monospace(format!("{:.2}", a.summary.psnr_clip));
                ui.monospace(format!("{:.4}", a.summary.ssim_mean));
                ui.monospace(format!("{:.4}", a.bits_per_pixel));
                ui.monospace(format!(
                    "{:.0}",
                    a.encode_ms_per_frame + a.decode_ms_per_frame
                ));
                ui.end_row();
            }
        });
    // A continuous model far right of the discrete ones surprises; say why.
    ui.weak(
        "bits per pixel: log2(64,000) per discrete token; continuous latents at the bits of the \
         dtype the model runs in (f32: 32 a value, bf16: 16, as NVIDIA's published points)",
    );
    // No legend: the table above names the colours, and hovering a point names it too.
    // The rates span 0.03 to 8 bits per pixel: on a linear axis every discrete model sits on
    // the y axis, so x is log2 of the rate, one grid line per power of two.
    Plot::new("rate distortion")
        .height(ui.available_height().clamp(100.0, 220.0))
        .x_axis_label("bits per pixel (log scale)")
        .y_axis_label("clip PSNR (dB)")
        .x_grid_spacer(egui_plot::uniform_grid_spacer(|_| [1.0, 2.0, 4.0]))
        .x_axis_formatter(|mark, _| rate_axis_label(mark.value))
        .label_formatter(|hover| match hover {
            HoverPosition::NearDataPoint {
                plot_name,
                position,
                ..
            } => Some(format!(
                "{plot_name}\n{:.4} bits/px · {:.2} dB",
                position.x.exp2(),
                position.y
            )),
            HoverPosition::Elsewhere { .. } => None,
        })
        .show(ui, |plot| {
            // NVIDIA's published TokenBench figures, for orientation (their clips, not yours).
            for r in PUBLISHED_TOKENBENCH {
                plot.points(
                    Points::new(
                        format!("{} {} · TokenBench (published)", r.name, r.compression),
                        PlotPoints::from(vec![[r.bits_per_pixel().log2(), r.psnr]]),
                    )
                    .shape(egui_plot::MarkerShape::Diamond)
                    .filled(false)
                    .radius(5.0)
                    .color(Color32::GRAY),
                );
            }
            for a in &rows {
                plot.points(
                    Points::new(
                        a.model.name.clone(),
                        PlotPoints::from(vec![[a.bits_per_pixel.log2(), a.summary.psnr_clip]]),
                    )
                    .radius(5.0)
                    .color(series_color(&a.model.name)),
                );
            }
        });
}

/// The rate axis's tick at `log2_rate`: the rate itself at powers of two (`1/32` below one bit,
/// `8` above), nothing between them.
fn rate_axis_label(log2_rate: f64) -> String {
    let power = log2_rate.round();
    if (log2_rate - power).abs() > 1e-6 {
        return String::new();
    }
    if power >= 0.0 {
        format!("{}", power.exp2())
    } else {
        format!("1/{}", (-power).exp2())
    }
}

/// One published TokenBench leaderboard row (NVlabs/TokenBench README).
struct PublishedResult {
    name: &'static str,
    compression: &'static str,
    discrete: bool,
    /// Source pixels per token position: t·h·w.
    pixels_per_token: usize,
    psnr: f64,
}

impl PublishedResult {
    /// As the table computes it: log2(64000) per discrete token, 16 bf16 channels (as NVIDIA
    /// runs them) per continuous position.
    fn bits_per_pixel(&self) -> f64 {
        let per_token = if self.discrete {
            (64_000f64).log2()
        } else {
            16.0 * 16.0
        };
        per_token / self.pixels_per_token as f64
    }
}

const PUBLISHED_TOKENBENCH: [PublishedResult; 6] = [
    PublishedResult {
        name: "Cosmos-CV",
        compression: "4x8x8",
        discrete: false,
        pixels_per_token: 4 * 8 * 8,
        psnr: 37.270,
    },
    PublishedResult {
        name: "Cosmos-CV",
        compression: "8x8x8",
        discrete: false,
        pixels_per_token: 8 * 8 * 8,
        psnr: 36.856,
    },
    PublishedResult {
        name: "Cosmos-CV",
        compression: "8x16x16",
        discrete: false,
        pixels_per_token: 8 * 16 * 16,
        psnr: 35.158,
    },
    PublishedResult {
        name: "Cosmos-DV",
        compression: "4x8x8",
        discrete: true,
        pixels_per_token: 4 * 8 * 8,
        psnr: 35.137,
    },
    PublishedResult {
        name: "Cosmos-DV",
        compression: "8x8x8",
        discrete: true,
        pixels_per_token: 8 * 8 * 8,
        psnr: 34.746,
    },
    PublishedResult {
        name: "Cosmos-DV",
        compression: "8x16x16",
        discrete: true,
        pixels_per_token: 8 * 16 * 16,
        psnr: 33.718,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rate_axis_labels_powers_of_two_with_their_rates() {
        let labels: Vec<String> = [-5.0, -1.0, 0.0, 3.0, 0.5, -2.3]
            .into_iter()
            .map(rate_axis_label)
            .collect();
        assert_eq!(labels, ["1/32", "1/2", "1", "8", "", ""]);
    }
}
