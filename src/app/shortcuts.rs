//! The `?` overlay listing the keyboard shortcuts.

use super::command::Command;
use super::ViewerApp;

/// (keys, what they do).
pub const SHORTCUTS: &[(&str, &str)] = &[
    ("Space", "play / pause at the source frame rate"),
    ("← / →   , / .", "previous / next frame"),
    ("Home / End", "first / last frame"),
    ("L", "loop on / off"),
    ("1 2 3 4", "layout: 2-up, 3-up, wipe, flicker"),
    (
        "X (hold)",
        "flicker: show the original instead of the reconstruction",
    ),
    (
        "wheel, drag",
        "zoom at the cursor, pan (all panes together)",
    ),
    ("F / 0", "fit / 1:1 (one image pixel per screen pixel)"),
    ("D", "difference metric: absolute, squared, luma"),
    ("+ / −", "difference gain ×2 / ÷2"),
    ("T / G", "token overlay on / off, token grid on / off"),
    (
        "click a cell",
        "highlight every cell with the same discrete index",
    ),
    ("[ / ]", "previous / next compression rate"),
    ("R / Esc", "run the model / cancel the job"),
    (
        "Ctrl+O",
        "open an image or video (or drop a file on the window)",
    ),
    ("Ctrl+E", "export the current composite as PNG"),
    ("? / F1", "this help"),
];

pub fn help_ui(app: &ViewerApp, ctx: &egui::Context, out: &mut Vec<Command>) {
    if !app.show_help {
        return;
    }
    let mut open = true;
    egui::Window::new("Keyboard shortcuts")
        .open(&mut open)
        .collapsible(false)
        .resizable(false)
        .anchor(egui::Align2::CENTER_CENTER, egui::Vec2::ZERO)
        .show(ctx, |ui| {
            egui::Grid::new("shortcuts").striped(true).show(ui, |ui| {
                for (keys, what) in SHORTCUTS {
                    ui.monospace(*keys);
                    ui.label(*what);
                    ui.end_row();
                }
            });
        });
    if !open {
        out.push(Command::ToggleHelp);
    }
}
