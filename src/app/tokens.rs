//! The Tokens panel: what the token under the cursor is (discrete index, FSQ digits and code
//! values; continuous latent vector), codebook usage, the continuous channel picker, and the
//! token cells with the largest reconstruction error. Also builds the overlay texture.

use egui::{Color32, ColorImage, Ui};
use egui_plot::{Bar, BarChart, Plot};

use super::analysis::{describe_index, percentile_range, Analysis, TokenValues};
use super::colormap;
use super::command::Command;
use super::compare::token_index;
use super::state::{Colormap, TokenView};
use super::ViewerApp;
use crate::tokenizer::config::FSQ_LEVELS;

/// The overlay of latent frame `t` of a window, one texel per token cell.
#[allow(clippy::too_many_arguments)]
pub fn overlay_image(
    a: &Analysis,
    window: usize,
    t: usize,
    view: TokenView,
    channel: usize,
    selected: Option<i64>,
    opacity: f32,
    map: Colormap,
) -> Option<ColorImage> {
    let w = a.windows.get(window)?;
    let (gt, gh, gw) = w.grid;
    if gh == 0 || gw == 0 || t >= gt {
        return None;
    }
    let plane = gh * gw;
    let alpha = (opacity.clamp(0.0, 1.0) * 255.0) as u8;
    let range = t * plane..(t + 1) * plane;
    let rgba = |[r, g, b]: [u8; 3], a: u8| Color32::from_rgba_unmultiplied(r, g, b, a);
    let pixels: Vec<Color32> = match (view, &w.values) {
        (TokenView::Error, _) => {
            let errors = w.cell_error.get(range)?;
            // A log scale: pooled MSE spans orders of magnitude between flat and busy regions.
            let top = errors.iter().copied().fold(1.0f32, f32::max).ln_1p();
            errors
                .iter()
                .map(|e| rgba(colormap::color_at(map, e.ln_1p() / top), alpha))
                .collect()
        }
        (_, TokenValues::Discrete(indices)) => indices
            .get(range)?
            .iter()
            .map(|&i| match selected {
                Some(s) if s == i => rgba([255, 255, 255], 235),
                Some(_) => rgba([0, 0, 0], alpha / 2),
                None => rgba(colormap::categorical(i), alpha),
            })
            .collect(),
        (TokenView::Pca, TokenValues::Continuous { pca, .. }) => {
            pca.get(range)?.iter().map(|&p| rgba(p, alpha)).collect()
        }
        (
            _,
            TokenValues::Continuous {
                channels, latent, ..
            },
        ) => {
            let c = channel.min(channels.saturating_sub(1));
            let n = gt * plane;
            let all = latent.get(c * n..(c + 1) * n)?;
            let (lo, hi) = percentile_range(all);
            all.get(range)?
                .iter()
                .map(|&v| {
                    rgba(
                        colormap::color_at(map, (v - lo) / (hi - lo).max(1e-6)),
                        alpha,
                    )
                })
                .collect()
        }
        (_, TokenValues::None) => return None,
    };
    Some(ColorImage::new([gw, gh], pixels))
}

pub fn tokens_ui(app: &ViewerApp, ui: &mut Ui, out: &mut Vec<Command>) {
    ui.heading("Tokens");
    let Some(a) = app.current.clone() else {
        ui.weak("run a model to see its tokens");
        return;
    };
    let s = a.model.spatial;
    ui.label(format!(
        "{} · {} · cell {s}×{s} px{}",
        a.model.name,
        if a.model.discrete {
            "discrete (FSQ)"
        } else {
            "continuous"
        },
        if a.model.video {
            format!(", {} frames", a.model.temporal)
        } else {
            String::new()
        }
    ));
    if let Some((window, t)) = a.token_frame(app.frame) {
        if let Some(w) = a.windows.get(window) {
            ui.label(format!(
                "window {} · latent frame {} of {} · grid {}×{}",
                window + 1,
                t,
                w.grid.0,
                w.grid.2,
                w.grid.1
            ));
        }
    }
    let mut view = app.state.view.clone();
    ui.horizontal(|ui| {
        ui.label("overlay");
        egui::ComboBox::from_id_salt("tokens panel overlay")
            .selected_text(view.token_view.label())
            .show_ui(ui, |ui| {
                for t in [
                    TokenView::Off,
                    TokenView::Values,
                    TokenView::Pca,
                    TokenView::Error,
                ] {
                    if t == TokenView::Pca && a.model.discrete {
                        continue;
                    }
                    ui.selectable_value(&mut view.token_view, t, t.label());
                }
            });
    });
    if !a.model.discrete {
        ui.add(
            egui::Slider::new(
                &mut view.latent_channel,
                0..=a.model.latent_channels.saturating_sub(1),
            )
            .text("channel"),
        );
    }
    if view != app.state.view {
        out.push(Command::SetView(Box::new(view)));
    }
    ui.separator();
    hover_ui(app, &a, ui);
    if let Some(sel) = app.selected_index {
        ui.horizontal(|ui| {
            let count = a
                .usage
                .as_ref()
                .and_then(|u| u.counts.iter().find(|(i, _)| *i == sel))
                .map_or(0, |(_, c)| *c);
            ui.label(format!("highlighted index {sel} ({count} cells)"));
            if ui.small_button("clear").clicked() {
                out.push(Command::SelectTokenIndex(None));
            }
        });
    }
    ui.separator();
    if let Some(u) = &a.usage {
        ui.strong("Codebook usage");
        ui.label(format!(
            "{} tokens · {} unique of 64,000 · entropy {:.2} bits/token (of {:.2})",
            u.tokens,
            u.unique,
            u.entropy_bits,
            64000f64.log2()
        ));
        let bars: Vec<Bar> = u
            .counts
            .iter()
            .take(32)
            .enumerate()
            .map(|(i, (index, count))| {
                let [r, g, b] = colormap::categorical(*index);
                Bar::new(i as f64, *count as f64)
                    .name(format!("index {index}"))
                    .fill(Color32::from_rgb(r, g, b))
            })
            .collect();
        Plot::new("codebook usage")
            .height(110.0)
            .show_axes([false, true])
            .allow_drag(false)
            .allow_zoom(false)
            .allow_scroll(false)
            .show(ui, |plot| {
                plot.bar_chart(BarChart::new("most used indices", bars))
            });
        ui.separator();
    }
    ui.strong("Worst token cells");
    ui.weak("frame (cell x, y) pooled MSE · click to jump");
    egui::ScrollArea::vertical()
        .id_salt("worst cells")
        .show(ui, |ui| {
            for cell in &a.worst {
                let text = format!("f{} ({},{}) {:.0}", cell.frame, cell.x, cell.y, cell.mse);
                if ui
                    .selectable_label(false, egui::RichText::new(text).monospace())
                    .clicked()
                {
                    out.push(Command::JumpToCell {
                        frame: cell.frame,
                        x: cell.x,
                        y: cell.y,
                    });
                }
            }
        });
}

/// The token under the cursor.
fn hover_ui(app: &ViewerApp, a: &Analysis, ui: &mut Ui) {
    let Some(cell) = app.hover.and_then(|h| h.cell) else {
        ui.weak("hover the picture to inspect a token");
        return;
    };
    let (window, t, x, y) = cell;
    ui.label(format!("cell ({x}, {y}) · latent frame {t}"));
    if let Some(index) = token_index(app, cell) {
        let (digits, codes) = describe_index(index);
        ui.monospace(format!("index  {index}"));
        ui.monospace(format!("levels {FSQ_LEVELS:?}"));
        ui.monospace(format!("digits {digits:?}"));
        let codes: Vec<String> = codes.iter().map(|c| format!("{c:+.2}")).collect();
        ui.monospace(format!("code   [{}]", codes.join(", ")));
    } else if let Some(w) = a.windows.get(window) {
        if let TokenValues::Continuous {
            channels, latent, ..
        } = &w.values
        {
            let (gt, gh, gw) = w.grid;
            let n = gt * gh * gw;
            let at = (t * gh + y) * gw + x;
            let values: Vec<String> = (0..*channels)
                .filter_map(|c| latent.get(c * n + at))
                .map(|v| format!("{v:+.2}"))
                .collect();
            for chunk in values.chunks(4) {
                ui.monospace(chunk.join(" "));
            }
        }
    }
    if let Some(w) = a.windows.get(window) {
        let (_, gh, gw) = w.grid;
        if let Some(e) = w.cell_error.get((t * gh + y) * gw + x) {
            ui.label(format!(
                "pooled MSE {e:.1} (PSNR {:.1} dB)",
                crate::metrics::psnr::psnr_from_mse(f64::from(*e))
            ));
        }
    }
}
