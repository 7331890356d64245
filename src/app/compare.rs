//! The Compare panel: original | reconstruction | difference in 2-up, 3-up, wipe or flicker
//! layouts, drawn by the GPU callback; synced zoom and pan; the pixel inspector and the
//! colormap legend; the token overlay on top.

use egui::{Align2, Color32, FontId, Pos2, Rect, Sense, Stroke, StrokeKind, Ui, Vec2};

use super::colormap;
use super::command::Command;
use super::gpu::{ComparePaint, Params};
use super::state::{Colormap, DiffMetric, Layout, TokenView};
use super::{Hover, ViewTransform, ViewerApp};

/// What one pane shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PaneMode {
    Original,
    Reconstruction,
    Difference,
    Wipe,
}

impl PaneMode {
    fn code(self) -> f32 {
        match self {
            PaneMode::Original => 0.0,
            PaneMode::Reconstruction => 1.0,
            PaneMode::Difference => 2.0,
            PaneMode::Wipe => 3.0,
        }
    }
}

/// Zoom and centre actually used for panes of `pane` size (resolving "fit").
pub fn effective_view(view: &ViewTransform, pane: Vec2, image: (usize, usize)) -> (f32, Vec2) {
    let (w, h) = (image.0.max(1) as f32, image.1.max(1) as f32);
    if view.fit {
        let zoom = (pane.x / w).min(pane.y / h).max(0.01);
        (zoom, Vec2::new(w / 2.0, h / 2.0))
    } else {
        (view.zoom, view.center)
    }
}

/// Screen point → image point.
fn image_from_screen(p: Pos2, pane: Rect, zoom: f32, center: Vec2) -> Vec2 {
    center + (p - pane.center()) / zoom
}

/// Image point → screen point.
fn screen_from_image(v: Vec2, pane: Rect, zoom: f32, center: Vec2) -> Pos2 {
    pane.center() + (v - center) * zoom
}

fn toolbar_ui(app: &ViewerApp, ui: &mut Ui, out: &mut Vec<Command>) {
    let mut view = app.state.view.clone();
    ui.horizontal_wrapped(|ui| {
        for layout in Layout::ALL {
            if ui
                .selectable_label(view.layout == layout, layout.label())
                .clicked()
            {
                out.push(Command::SetLayout(layout));
            }
        }
        ui.separator();
        egui::ComboBox::from_id_salt("diff metric")
            .selected_text(format!("diff: {}", view.diff_metric.label()))
            .show_ui(ui, |ui| {
                for m in DiffMetric::ALL {
                    ui.selectable_value(&mut view.diff_metric, m, m.label());
                }
            });
        ui.add(
            egui::Slider::new(&mut view.gain, 0.25..=256.0)
                .logarithmic(true)
                .text("gain"),
        );
        egui::ComboBox::from_id_salt("colormap")
            .selected_text(view.colormap.label())
            .show_ui(ui, |ui| {
                for c in Colormap::ALL {
                    ui.selectable_value(&mut view.colormap, c, c.label());
                }
            });
        ui.separator();
        if ui
            .selectable_label(app.view.fit, "Fit")
            .on_hover_text("F")
            .clicked()
        {
            out.push(Command::ZoomFit);
        }
        if ui.button("1:1").on_hover_text("0").clicked() {
            out.push(Command::ZoomOneToOne);
        }
        if !app.view.fit {
            ui.label(format!(
                "{:.0}%",
                app.view.zoom * ui.ctx().pixels_per_point() * 100.0
            ));
        }
        ui.separator();
        egui::ComboBox::from_id_salt("token overlay")
            .selected_text(format!("tokens: {}", view.token_view.label()))
            .show_ui(ui, |ui| {
                let continuous = app.current.as_ref().is_some_and(|a| !a.model.discrete);
                for t in [
                    TokenView::Off,
                    TokenView::Values,
                    TokenView::Pca,
                    TokenView::Error,
                ] {
                    if t == TokenView::Pca && !continuous {
                        continue;
                    }
                    ui.selectable_value(&mut view.token_view, t, t.label());
                }
            });
        if view.token_view != TokenView::Off {
            ui.add(egui::Slider::new(&mut view.token_opacity, 0.0..=1.0).text("opacity"));
        }
        ui.checkbox(&mut view.show_grid, "grid");
    });
    if view != app.state.view {
        out.push(Command::SetView(Box::new(view)));
    }
}

/// Lays out the panel; returns what is under the cursor.
pub fn compare_ui(
    app: &ViewerApp,
    token_texture: Option<egui::TextureId>,
    ui: &mut Ui,
    out: &mut Vec<Command>,
) -> Option<Hover> {
    toolbar_ui(app, ui, out);
    let Some(image) = app.image_size() else {
        ui.centered_and_justified(|ui| {
            if app.jobs.decoding.is_some() {
                ui.spinner();
            } else {
                ui.label("Open an image or a video: File > Open…, drop a file here, or pass it on the command line.");
            }
        });
        return None;
    };
    let layout = app.state.view.layout;
    let flicker_original = ui.input(|i| i.key_down(egui::Key::X));
    let modes: Vec<PaneMode> = match layout {
        Layout::TwoUp => vec![PaneMode::Original, PaneMode::Reconstruction],
        Layout::ThreeUp => vec![
            PaneMode::Original,
            PaneMode::Reconstruction,
            PaneMode::Difference,
        ],
        Layout::Wipe => vec![PaneMode::Wipe],
        Layout::Flicker if flicker_original => vec![PaneMode::Original],
        Layout::Flicker => vec![PaneMode::Reconstruction],
    };
    let footer = 46.0;
    let area = ui.available_rect_before_wrap();
    let panes_rect = Rect::from_min_max(
        area.min,
        Pos2::new(area.max.x, (area.max.y - footer).max(area.min.y + 40.0)),
    );
    let gap = 4.0;
    let n = modes.len() as f32;
    let pane_w = ((panes_rect.width() - gap * (n - 1.0)) / n).max(10.0);
    let pane_size = Vec2::new(pane_w, panes_rect.height());
    let (zoom, center) = effective_view(&app.view, pane_size, image);
    let ppp = ui.ctx().pixels_per_point();
    let mut hover = None;
    let analysis = app.current.as_ref();
    let has_recon = analysis.is_some_and(|a| a.covers(app.frame));
    for (i, mode) in modes.iter().copied().enumerate() {
        let min = Pos2::new(
            panes_rect.min.x + i as f32 * (pane_w + gap),
            panes_rect.min.y,
        );
        let rect = Rect::from_min_size(min, pane_size);
        let response = ui.allocate_rect(rect, Sense::click_and_drag());
        let painter = ui.painter_at(rect);
        let wipe_x = rect.width() * app.view.wipe;
        match (&app.textures.pair, app.has_gpu()) {
            (Some(frames), true) => {
                let params = Params {
                    pane: [rect.width(), rect.height(), ppp, mode.code()],
                    view: [center.x, center.y, zoom * ppp, wipe_x],
                    image: [
                        image.0 as f32,
                        image.1 as f32,
                        app.state.view.gain,
                        app.state.view.diff_metric.code(),
                    ],
                    extra: [
                        if has_recon { 1.0 } else { 0.0 },
                        app.state.view.colormap.row() as f32,
                        0.0,
                        0.0,
                    ],
                };
                painter.add(egui_wgpu::Callback::new_paint_callback(
                    rect,
                    ComparePaint {
                        pane: i,
                        params,
                        frames: frames.clone(),
                    },
                ));
            }
            _ => {
                painter.rect_filled(rect, 0.0, Color32::from_gray(30));
                painter.text(
                    rect.center(),
                    Align2::CENTER_CENTER,
                    "the comparison needs the wgpu renderer",
                    FontId::proportional(14.0),
                    Color32::GRAY,
                );
            }
        }
        overlay_ui(app, token_texture, &painter, rect, zoom, center);
        // Pane label.
        let label = match mode {
            PaneMode::Original => "original".to_string(),
            PaneMode::Reconstruction => match analysis {
                Some(a) if has_recon => format!("reconstruction · {}", a.model.name),
                Some(_) => "not reconstructed (outside the model's frame range)".into(),
                None if app.jobs.running.is_some() => "reconstruction · computing…".into(),
                None => "reconstruction · not computed (press R)".into(),
            },
            PaneMode::Difference => format!(
                "difference · {} ×{:.2}",
                app.state.view.diff_metric.label(),
                app.state.view.gain
            ),
            PaneMode::Wipe => "original | reconstruction (drag the split)".into(),
        };
        let galley = painter.layout_no_wrap(label, FontId::proportional(13.0), Color32::WHITE);
        let bg = Rect::from_min_size(
            rect.min + Vec2::splat(4.0),
            galley.size() + Vec2::new(8.0, 4.0),
        );
        painter.rect_filled(bg, 3.0, Color32::from_black_alpha(170));
        painter.galley(bg.min + Vec2::new(4.0, 2.0), galley, Color32::WHITE);

        // Interaction: wheel zooms at the cursor, drag pans (in wipe: drag moves the split,
        // secondary drag pans).
        if let Some(pos) = response.hover_pos() {
            let (scroll, pinch) = ui.input(|i| (i.smooth_scroll_delta.y, i.zoom_delta()));
            let factor = pinch * (scroll * 0.0025).exp();
            if (factor - 1.0).abs() > 1e-4 {
                let at = image_from_screen(pos, rect, zoom, center);
                let new_zoom = (zoom * factor).clamp(0.02, 128.0);
                let new_center = at - (pos - rect.center()) / new_zoom;
                out.push(Command::SetTransform {
                    zoom: new_zoom,
                    cx: new_center.x,
                    cy: new_center.y,
                });
            }
            let img = image_from_screen(pos, rect, zoom, center);
            hover = hover_at(app, img);
        }
        let delta = response.drag_delta();
        if delta != Vec2::ZERO {
            if mode == PaneMode::Wipe && response.dragged_by(egui::PointerButton::Primary) {
                if let Some(pos) = response.interact_pointer_pos() {
                    out.push(Command::SetWipe((pos.x - rect.min.x) / rect.width()));
                }
            } else {
                let c = center - delta / zoom;
                out.push(Command::SetTransform {
                    zoom,
                    cx: c.x,
                    cy: c.y,
                });
            }
        }
        if response.clicked() {
            if let Some(h) = &hover {
                click_token(app, h, out);
            }
        }
    }
    if let Some(h) = &hover {
        draw_hover_cell(app, ui, h, &modes, panes_rect, pane_w, gap, zoom, center);
    }
    let footer_rect = Rect::from_min_max(Pos2::new(area.min.x, panes_rect.max.y + 2.0), area.max);
    let mut footer_ui = ui.new_child(egui::UiBuilder::new().max_rect(footer_rect));
    inspector_ui(app, hover.as_ref(), &mut footer_ui);
    ui.advance_cursor_after_rect(area);
    hover
}

/// Selecting a discrete index by clicking its cell (clicking it again clears).
fn click_token(app: &ViewerApp, h: &Hover, out: &mut Vec<Command>) {
    if app.state.view.token_view == TokenView::Off {
        return;
    }
    let index = h.cell.and_then(|c| token_index(app, c));
    if let Some(index) = index {
        let next = (app.selected_index != Some(index)).then_some(index);
        out.push(Command::SelectTokenIndex(next));
    }
}

/// The discrete index of a cell.
pub fn token_index(
    app: &ViewerApp,
    (window, t, x, y): (usize, usize, usize, usize),
) -> Option<i64> {
    let a = app.current.as_ref()?;
    let w = a.windows.get(window)?;
    let (_, gh, gw) = w.grid;
    match &w.values {
        super::analysis::TokenValues::Discrete(v) => v.get((t * gh + y) * gw + x).copied(),
        _ => None,
    }
}

fn hover_at(app: &ViewerApp, img: Vec2) -> Option<Hover> {
    let (w, h) = app.image_size()?;
    if img.x < 0.0 || img.y < 0.0 || img.x >= w as f32 || img.y >= h as f32 {
        return None;
    }
    let (x, y) = (img.x as usize, img.y as usize);
    let at = |frame: &[u8]| {
        let i = (y * w + x) * 3;
        frame
            .get(i..i + 3)
            .and_then(|p| <[u8; 3]>::try_from(p).ok())
    };
    let original = at(app.original_frame(app.frame)?)?;
    let a = app.current.as_ref();
    let reconstruction = a.and_then(|a| a.frame(app.frame)).and_then(at);
    let cell = a.and_then(|a| {
        let (window, t) = a.token_frame(app.frame)?;
        let (cx, cy) = a.cell_at(window, img.x, img.y)?;
        Some((window, t, cx, cy))
    });
    Some(Hover {
        x,
        y,
        original,
        reconstruction,
        cell,
    })
}

/// The token overlay and grid, mapped like the picture.
fn overlay_ui(
    app: &ViewerApp,
    texture: Option<egui::TextureId>,
    painter: &egui::Painter,
    pane: Rect,
    zoom: f32,
    center: Vec2,
) {
    let Some(a) = app.current.as_ref() else {
        return;
    };
    let Some((window, _)) = a.token_frame(app.frame) else {
        return;
    };
    let Some(w) = a.windows.get(window) else {
        return;
    };
    let s = a.model.spatial as f32;
    let (_, gh, gw) = w.grid;
    let origin = Vec2::new(-(w.padding.cols.0 as f32), -(w.padding.rows.0 as f32));
    let min = screen_from_image(origin, pane, zoom, center);
    let max = screen_from_image(
        origin + Vec2::new(gw as f32 * s, gh as f32 * s),
        pane,
        zoom,
        center,
    );
    let grid_rect = Rect::from_min_max(min, max);
    if let (Some(tex), true) = (texture, app.state.view.token_view != TokenView::Off) {
        painter.image(
            tex,
            grid_rect,
            Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)),
            Color32::WHITE,
        );
    }
    // Grid lines only where cells are big enough to see.
    if app.state.view.show_grid && s * zoom >= 6.0 {
        let stroke = Stroke::new(1.0, Color32::from_white_alpha(70));
        for gx in 0..=gw {
            let x = min.x + gx as f32 * s * zoom;
            if x >= pane.min.x && x <= pane.max.x {
                painter.line_segment(
                    [
                        Pos2::new(x, min.y.max(pane.min.y)),
                        Pos2::new(x, max.y.min(pane.max.y)),
                    ],
                    stroke,
                );
            }
        }
        for gy in 0..=gh {
            let y = min.y + gy as f32 * s * zoom;
            if y >= pane.min.y && y <= pane.max.y {
                painter.line_segment(
                    [
                        Pos2::new(min.x.max(pane.min.x), y),
                        Pos2::new(max.x.min(pane.max.x), y),
                    ],
                    stroke,
                );
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn draw_hover_cell(
    app: &ViewerApp,
    ui: &Ui,
    h: &Hover,
    modes: &[PaneMode],
    panes: Rect,
    pane_w: f32,
    gap: f32,
    zoom: f32,
    center: Vec2,
) {
    let (Some(a), Some((window, _, cx, cy))) = (app.current.as_ref(), h.cell) else {
        return;
    };
    if app.state.view.token_view == TokenView::Off && !app.state.view.show_grid {
        return;
    }
    let Some(w) = a.windows.get(window) else {
        return;
    };
    let s = a.model.spatial as f32;
    let origin = Vec2::new(
        cx as f32 * s - w.padding.cols.0 as f32,
        cy as f32 * s - w.padding.rows.0 as f32,
    );
    for i in 0..modes.len() {
        let rect = Rect::from_min_size(
            Pos2::new(panes.min.x + i as f32 * (pane_w + gap), panes.min.y),
            Vec2::new(pane_w, panes.height()),
        );
        let min = screen_from_image(origin, rect, zoom, center);
        let cell = Rect::from_min_size(min, Vec2::splat(s * zoom));
        ui.painter_at(rect).rect_stroke(
            cell,
            0.0,
            Stroke::new(2.0, Color32::YELLOW),
            StrokeKind::Outside,
        );
    }
}

/// Pixel values and error under the cursor (two lines), and the colormap legend.
fn inspector_ui(app: &ViewerApp, hover: Option<&Hover>, ui: &mut Ui) {
    let (first, second) = match hover {
        Some(h) => {
            let [r, g, b] = h.original;
            let mut first = format!("x {:>4} y {:>4}   original ({r:>3}, {g:>3}, {b:>3})", h.x, h.y);
            let mut second = String::new();
            if let Some(rec) = h.reconstruction {
                let [r2, g2, b2] = rec;
                first.push_str(&format!("   reconstruction ({r2:>3}, {g2:>3}, {b2:>3})"));
                let abs = colormap::diff_value(h.original, rec, DiffMetric::Absolute) * 255.0;
                let sq = colormap::diff_value(h.original, rec, DiffMetric::Squared) * 255.0 * 255.0;
                let luma = colormap::diff_value(h.original, rec, DiffMetric::Luma) * 255.0;
                second = format!("error  |Δ| {abs:5.1}   Δ² {sq:6.0}   Δluma {luma:5.1}");
            }
            if let Some(cell) = h.cell {
                second.push_str(&format!("   token cell ({}, {})", cell.2, cell.3));
                if let Some(i) = token_index(app, cell) {
                    second.push_str(&format!(" index {i}"));
                }
            }
            (first, Some(second))
        }
        None => (
            "hover a pane for pixel values · wheel zooms · drag pans · hold X in flicker · ? for help".to_string(),
            None,
        ),
    };
    ui.horizontal(|ui| {
        legend_ui(app, ui);
        ui.separator();
        if second.is_some() {
            ui.monospace(first);
        } else {
            ui.weak(first);
        }
    });
    if let Some(second) = second {
        ui.monospace(second);
    }
}

/// The colour bar of the difference heatmap, in 8-bit units of the chosen metric.
fn legend_ui(app: &ViewerApp, ui: &mut Ui) {
    let view = &app.state.view;
    let (rect, _) = ui.allocate_exact_size(Vec2::new(160.0, 14.0), Sense::hover());
    let steps = 48;
    for i in 0..steps {
        let t = i as f32 / (steps - 1) as f32;
        let [r, g, b] = colormap::color_at(view.colormap, t);
        let x0 = rect.min.x + rect.width() * i as f32 / steps as f32;
        let x1 = rect.min.x + rect.width() * (i + 1) as f32 / steps as f32;
        ui.painter().rect_filled(
            Rect::from_min_max(Pos2::new(x0, rect.min.y), Pos2::new(x1 + 0.5, rect.max.y)),
            0.0,
            Color32::from_rgb(r, g, b),
        );
    }
    // The value at the top of the scale, in the metric's 8-bit units.
    let top = match view.diff_metric {
        DiffMetric::Squared => format!("{:.0}", 255.0 * 255.0 / view.gain),
        _ => format!("{:.1}", 255.0 / view.gain),
    };
    ui.label(format!("0 … {top} ({})", view.diff_metric.label()));
}
