//! The Timeline: play/pause at the source rate, frame step, scrub, loop; the model's frame range,
//! its temporal windows and the frames the wrapper padded them with.

use egui::{Align2, Color32, FontId, Pos2, Rect, Sense, Stroke, Ui, Vec2};

use super::command::Command;
use super::ViewerApp;

pub fn timeline_ui(app: &ViewerApp, ui: &mut Ui, out: &mut Vec<Command>) {
    let frames = app.frame_count();
    let fps = app.clip.as_ref().map_or(25.0, |c| c.playback_fps());
    let mut view = app.state.view.clone();
    ui.horizontal(|ui| {
        if ui
            .button(egui::RichText::new("|◀").monospace())
            .on_hover_text("first frame (Home)")
            .clicked()
        {
            out.push(Command::Seek(0));
        }
        if ui
            .button(egui::RichText::new("◀").monospace())
            .on_hover_text("previous frame (Left)")
            .clicked()
        {
            out.push(Command::Step(-1));
        }
        let play = if app.playback.playing {
            "Pause"
        } else {
            "Play"
        };
        if ui
            .button(play)
            .on_hover_text("play / pause (Space)")
            .clicked()
        {
            out.push(Command::TogglePlay);
        }
        if ui
            .button(egui::RichText::new("▶|").monospace())
            .on_hover_text("next frame (Right)")
            .clicked()
        {
            out.push(Command::Step(1));
        }
        if ui
            .button(egui::RichText::new("▶▶|").monospace())
            .on_hover_text("last frame (End)")
            .clicked()
        {
            out.push(Command::Seek(usize::MAX));
        }
        ui.checkbox(&mut view.looping, "loop (L)");
        egui::ComboBox::from_id_salt("playback speed")
            .width(56.0)
            .selected_text(format!("{}x", view.speed))
            .show_ui(ui, |ui| {
                for speed in [0.125, 0.25, 0.5, 1.0, 2.0, 4.0] {
                    ui.selectable_value(&mut view.speed, speed, format!("{speed}x"));
                }
            })
            .response
            .on_hover_text("playback speed");
        ui.separator();
        ui.monospace(format!(
            "frame {:>3} / {}   {:>6.2} s   {:.2} fps",
            app.frame,
            frames,
            app.frame as f64 / fps.max(1e-6),
            fps
        ));
        if let (Some(total), Some(clip)) = (app.long_clip, app.clip.as_ref()) {
            ui.separator();
            let (first, held) = (clip.first_frame, clip.frames.frames);
            if ui
                .add_enabled(first > 0, egui::Button::new("◀ earlier"))
                .on_hover_text("hold the frames before these")
                .clicked()
            {
                out.extend(app.range_past(-1));
            }
            ui.label(format!("source frames {first}–{} of {total}", first + held - 1))
                .on_hover_text("The clip does not fit in memory whole: a range of it is held, and stepping past either end loads the next one");
            if ui
                .add_enabled(first + held < total, egui::Button::new("later ▶"))
                .on_hover_text("hold the frames after these")
                .clicked()
            {
                out.extend(app.range_past(held as i64));
            }
        }
        ui.separator();
        ui.label("model runs on frames");
        // Until a clip is decoded there is no frame count to clamp to.
        let last = if frames > 0 { frames - 1 } else { usize::MAX };
        ui.add(
            egui::DragValue::new(&mut view.start_frame)
                .range(0..=last)
                .prefix("from "),
        );
        ui.add(
            egui::DragValue::new(&mut view.frame_count)
                .range(1..=last.saturating_add(1))
                .prefix("count "),
        );
        ui.add(
            egui::DragValue::new(&mut view.temporal_window)
                .range(1..=257)
                .prefix("window "),
        );
        let stale = app.current.is_none() && app.jobs.running.is_none();
        let run = egui::Button::new(if stale { "Run (R) *" } else { "Run (R)" });
        if ui.add_enabled(app.model.is_some(), run).clicked() {
            out.push(Command::Run);
        }
    });
    if view != app.state.view {
        out.push(Command::SetView(Box::new(view)));
    }
    strip_ui(app, ui, out);
}

/// The scrub strip: frames left to right, the model's windows as blocks with their padding.
fn strip_ui(app: &ViewerApp, ui: &mut Ui, out: &mut Vec<Command>) {
    let frames = app.frame_count().max(1);
    let (rect, response) = ui.allocate_exact_size(
        Vec2::new(ui.available_width(), 30.0),
        Sense::click_and_drag(),
    );
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 2.0, Color32::from_gray(35));
    let x_of = |f: f32| rect.min.x + rect.width() * f / frames as f32;
    let settings = app.settings();
    // The range the model runs on (or ran on).
    let range_end = (settings.start + settings.frames).min(frames);
    painter.rect_filled(
        Rect::from_min_max(
            Pos2::new(x_of(settings.start as f32), rect.min.y),
            Pos2::new(x_of(range_end as f32), rect.min.y + 4.0),
        ),
        0.0,
        Color32::from_rgb(90, 140, 220),
    );
    if let Some(a) = &app.current {
        for (i, w) in a.windows.iter().enumerate() {
            let block = Rect::from_min_max(
                Pos2::new(x_of(w.start as f32), rect.min.y + 6.0),
                Pos2::new(x_of((w.start + w.frames) as f32), rect.max.y - 2.0),
            );
            let fill = if i % 2 == 0 {
                Color32::from_rgb(52, 78, 110)
            } else {
                Color32::from_rgb(70, 100, 135)
            };
            painter.rect_filled(block.shrink2(Vec2::new(0.5, 0.0)), 1.0, fill);
            // Padded frames: hatched stubs before/after the window, one frame wide each.
            let per = rect.width() / frames as f32;
            let (before, after) = w.padding.frames;
            for k in 0..before {
                let x = block.min.x - per * (k + 1) as f32 * 0.35;
                painter.line_segment(
                    [Pos2::new(x, block.min.y), Pos2::new(x, block.max.y)],
                    Stroke::new(1.0, Color32::from_rgb(230, 160, 60)),
                );
            }
            for k in 0..after {
                let x = block.max.x - per * (k + 1) as f32 * 0.35;
                painter.line_segment(
                    [Pos2::new(x, block.min.y), Pos2::new(x, block.max.y)],
                    Stroke::new(1.0, Color32::from_rgb(230, 160, 60)),
                );
            }
            if a.model.video && block.width() > 60.0 {
                let pad = if before + after > 0 {
                    format!(" +{} pad", before + after)
                } else {
                    String::new()
                };
                painter.text(
                    block.left_center() + Vec2::new(4.0, 0.0),
                    Align2::LEFT_CENTER,
                    format!("window {} · {} frames{pad}", i + 1, w.frames),
                    FontId::proportional(11.0),
                    Color32::from_gray(220),
                );
            }
        }
    }
    let x = x_of(app.frame as f32 + 0.5);
    painter.line_segment(
        [Pos2::new(x, rect.min.y), Pos2::new(x, rect.max.y)],
        Stroke::new(2.0, Color32::from_rgb(250, 220, 80)),
    );
    if let Some(pos) = response.interact_pointer_pos() {
        if response.clicked() || response.dragged() {
            let f = ((pos.x - rect.min.x) / rect.width() * frames as f32).floor();
            let f = f.clamp(0.0, (frames - 1) as f32) as usize;
            if f != app.frame {
                out.push(Command::Seek(f));
            }
        }
    }
    response.on_hover_text("click or drag to scrub · blue bar: frames the model runs on · blocks: temporal windows · orange ticks: padded (replicated) frames");
}
