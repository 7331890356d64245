//! The Metrics panel: per-frame PSNR and SSIM of every computed rate on this input (one line
//! each), the playhead (click a plot to seek), window boundaries, and the clip numbers.

use egui::{Color32, Ui};
use egui_plot::{Legend, Line, LineStyle, Plot, PlotPoints, VLine};

use super::command::Command;
use super::ViewerApp;
use crate::metrics::psnr::psnr_capped;

/// A stable colour per model name.
pub fn series_color(name: &str) -> Color32 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let [r, g, b] = super::colormap::categorical(h as i64 & 0xffff);
    Color32::from_rgb(r, g, b)
}

pub fn metrics_ui(app: &ViewerApp, ui: &mut Ui, out: &mut Vec<Command>) {
    let (Some(clip), settings) = (app.clip.as_ref(), app.settings()) else {
        ui.weak("no input");
        return;
    };
    let mut runs: Vec<_> = app
        .jobs
        .cached_for(&clip.source, &settings)
        .cloned()
        .collect();
    runs.sort_by(|a, b| a.model.name.cmp(&b.model.variant));
    ui.horizontal(|ui| {
        ui.strong("Metrics");
        match &app.current {
            Some(a) => {
                ui.label(format!(
                    "{}: clip PSNR {:.2} dB (TokenBench) · mean PSNR {} · mean SSIM {:.4} · {:.3} bits/pixel",
                    a.model.name,
                    a.summary.psnr_clip,
                    if a.summary.psnr_mean.is_finite() {
                        format!("{:.2} dB", a.summary.psnr_mean)
                    } else {
                        "∞".into()
                    },
                    a.summary.ssim_mean,
                    a.bits_per_pixel
                ));
                if let Some(f) = a.frame(app.frame).map(|_| app.frame) {
                    let local = f - a.start();
                    if let (Some(p), Some(s)) = (
                        a.summary.psnr_frames.get(local),
                        a.summary.ssim_frames.get(local),
                    ) {
                        ui.separator();
                        ui.label(format!("frame {f}: PSNR {:.2} dB · SSIM {:.4}", psnr_capped(*p), s));
                    }
                }
            }
            None => {
                ui.weak("no reconstruction yet");
            }
        }
    });
    if runs.is_empty() {
        return;
    }
    let boundaries: Vec<f64> = app
        .current
        .as_ref()
        .map(|a| {
            a.windows
                .iter()
                .skip(1)
                .map(|w| w.start as f64 - 0.5)
                .collect()
        })
        .unwrap_or_default();
    let playhead = app.frame as f64;
    let height = (ui.available_height() - 4.0).max(130.0);
    let width = (ui.available_width() / 2.0 - 6.0).max(100.0);
    let link = egui::Id::unique("metrics x");
    ui.horizontal(|ui| {
        for (title, psnr) in [("PSNR (dB) per frame", true), ("SSIM per frame", false)] {
            let response = Plot::new(title)
                .width(width)
                .height(height)
                .legend(Legend::default())
                .link_axis(link, [true, false])
                .x_axis_label(title)
                .allow_scroll(false)
                .show(ui, |plot| {
                    for a in &runs {
                        let values = if psnr {
                            &a.summary.psnr_frames
                        } else {
                            &a.summary.ssim_frames
                        };
                        let points: PlotPoints = values
                            .iter()
                            .enumerate()
                            .map(|(i, &v)| {
                                [
                                    (a.start() + i) as f64,
                                    if psnr { psnr_capped(v) } else { v },
                                ]
                            })
                            .collect();
                        let current = app.current.as_ref().is_some_and(|c| c.key == a.key);
                        plot.line(
                            Line::new(a.model.name.clone(), points)
                                .color(series_color(&a.model.name))
                                .width(if current { 2.5 } else { 1.2 }),
                        );
                    }
                    for b in &boundaries {
                        plot.vline(
                            VLine::new("window boundary", *b)
                                .color(Color32::from_gray(110))
                                .style(LineStyle::dashed_loose()),
                        );
                    }
                    plot.vline(
                        VLine::new("playhead", playhead)
                            .color(Color32::from_rgb(250, 220, 80))
                            .width(1.5),
                    );
                    plot.pointer_coordinate()
                });
            if response.response.clicked() {
                if let Some(p) = response.inner {
                    out.push(Command::Seek(p.x.round().max(0.0) as usize));
                }
            }
        }
    });
}
