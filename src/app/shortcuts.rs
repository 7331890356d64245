//! The keyboard and pointer shortcuts: one table that both the input handling and the `?` help
//! overlay read, so what the help says is what the keys do.

use egui::{InputState, Key};

use super::command::{Command, ExportKind};
use super::state::{DiffMetric, Layout, TokenView, ViewSettings};
use super::ViewerApp;

/// One key press: a key, with or without the platform's command modifier (Ctrl, ⌘).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Press {
    pub key: Key,
    pub command: bool,
}

const fn key(key: Key) -> Press {
    Press {
        key,
        command: false,
    }
}

const fn ctrl(key: Key) -> Press {
    Press { key, command: true }
}

/// What a shortcut does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    TogglePlay,
    Step(i64),
    First,
    Last,
    ToggleLoop,
    Layout(Layout),
    Fit,
    OneToOne,
    NextDiffMetric,
    /// Difference gain ×2 (`true`) or ÷2.
    Gain(bool),
    ToggleTokens,
    ToggleGrid,
    CycleModel(i32),
    Run,
    Cancel,
    Open,
    ExportPng,
    Help,
    /// Read by the panes themselves (pointer, a held key); listed so the help shows it.
    InPane,
}

/// A row of the table: what to press (`keys` as the help shows it, `presses` as the input is
/// matched) and what it does.
#[derive(Clone, Copy, Debug)]
pub struct Shortcut {
    pub keys: &'static str,
    pub what: &'static str,
    pub presses: &'static [Press],
    pub action: Action,
}

const fn row(
    keys: &'static str,
    what: &'static str,
    presses: &'static [Press],
    action: Action,
) -> Shortcut {
    Shortcut {
        keys,
        what,
        presses,
        action,
    }
}

/// Every shortcut, in the order the help lists them.
pub const SHORTCUTS: &[Shortcut] = &[
    row(
        "Space",
        "play / pause at the source frame rate",
        &[key(Key::Space)],
        Action::TogglePlay,
    ),
    row(
        "→ or .",
        "next frame",
        &[key(Key::ArrowRight), key(Key::Period)],
        Action::Step(1),
    ),
    row(
        "← or ,",
        "previous frame",
        &[key(Key::ArrowLeft), key(Key::Comma)],
        Action::Step(-1),
    ),
    row("Home", "first frame", &[key(Key::Home)], Action::First),
    row("End", "last frame", &[key(Key::End)], Action::Last),
    row("L", "loop on / off", &[key(Key::L)], Action::ToggleLoop),
    row(
        "1",
        "layout: 2-up",
        &[key(Key::Num1)],
        Action::Layout(Layout::TwoUp),
    ),
    row(
        "2",
        "layout: 3-up (with the difference)",
        &[key(Key::Num2)],
        Action::Layout(Layout::ThreeUp),
    ),
    row(
        "3",
        "layout: wipe",
        &[key(Key::Num3)],
        Action::Layout(Layout::Wipe),
    ),
    row(
        "4",
        "layout: flicker",
        &[key(Key::Num4)],
        Action::Layout(Layout::Flicker),
    ),
    row(
        "X (hold)",
        "flicker: show the original instead of the reconstruction",
        &[],
        Action::InPane,
    ),
    row(
        "wheel, drag",
        "zoom at the cursor, pan (all panes together)",
        &[],
        Action::InPane,
    ),
    row(
        "F",
        "fit the image in the pane",
        &[key(Key::F)],
        Action::Fit,
    ),
    row(
        "0",
        "1:1 (one image pixel per screen pixel)",
        &[key(Key::Num0)],
        Action::OneToOne,
    ),
    row(
        "D",
        "difference metric: absolute, squared, luma",
        &[key(Key::D)],
        Action::NextDiffMetric,
    ),
    row(
        "+",
        "difference gain ×2",
        &[key(Key::Plus), key(Key::Equals)],
        Action::Gain(true),
    ),
    row(
        "−",
        "difference gain ÷2",
        &[key(Key::Minus)],
        Action::Gain(false),
    ),
    row(
        "T",
        "token overlay on / off",
        &[key(Key::T)],
        Action::ToggleTokens,
    ),
    row(
        "G",
        "token grid on / off",
        &[key(Key::G)],
        Action::ToggleGrid,
    ),
    row(
        "click a cell",
        "highlight every cell with the same discrete index",
        &[],
        Action::InPane,
    ),
    row(
        "[",
        "previous compression rate",
        &[key(Key::OpenBracket)],
        Action::CycleModel(-1),
    ),
    row(
        "]",
        "next compression rate",
        &[key(Key::CloseBracket)],
        Action::CycleModel(1),
    ),
    row("R", "run the model", &[key(Key::R)], Action::Run),
    row("Esc", "cancel the job", &[key(Key::Escape)], Action::Cancel),
    row(
        "Ctrl+O",
        "open an image or video (or drop a file on the window)",
        &[ctrl(Key::O)],
        Action::Open,
    ),
    row(
        "Ctrl+E",
        "export the current composite as PNG",
        &[ctrl(Key::E)],
        Action::ExportPng,
    ),
    row(
        "? or F1",
        "this help",
        &[key(Key::Questionmark), key(Key::F1)],
        Action::Help,
    ),
];

/// The actions whose keys were pressed this frame, in table order.
pub fn pressed(input: &InputState) -> Vec<Action> {
    // Some layouts deliver `?` only as text (Shift+/), never as the Questionmark key.
    let question = input
        .events
        .iter()
        .any(|e| matches!(e, egui::Event::Text(t) if t == "?"));
    let mut actions = Vec::new();
    for shortcut in SHORTCUTS {
        let hit = shortcut
            .presses
            .iter()
            .any(|p| input.key_pressed(p.key) && (!p.command || input.modifiers.command))
            || (question && shortcut.action == Action::Help);
        if hit && !actions.contains(&shortcut.action) {
            actions.push(shortcut.action);
        }
    }
    actions
}

impl Action {
    /// Applies the action: view settings change in `view`, everything else becomes a command.
    pub fn apply(self, view: &mut ViewSettings, out: &mut Vec<Command>) {
        match self {
            Action::TogglePlay => out.push(Command::TogglePlay),
            Action::Step(d) => out.push(Command::Step(d)),
            Action::First => out.push(Command::Seek(0)),
            Action::Last => out.push(Command::Seek(usize::MAX)),
            Action::Layout(layout) => out.push(Command::SetLayout(layout)),
            Action::Fit => out.push(Command::ZoomFit),
            Action::OneToOne => out.push(Command::ZoomOneToOne),
            Action::CycleModel(step) => out.push(Command::CycleModel(step)),
            Action::Run => out.push(Command::Run),
            Action::Cancel => out.push(Command::Cancel),
            Action::Open => out.push(Command::OpenDialog),
            Action::ExportPng => out.push(Command::Export(ExportKind::Png, None)),
            Action::Help => out.push(Command::ToggleHelp),
            Action::ToggleLoop => view.looping = !view.looping,
            Action::ToggleTokens => {
                view.token_view = match view.token_view {
                    TokenView::Off => TokenView::Values,
                    _ => TokenView::Off,
                };
            }
            Action::ToggleGrid => view.show_grid = !view.show_grid,
            Action::NextDiffMetric => {
                let all = DiffMetric::ALL;
                let at = all.iter().position(|m| *m == view.diff_metric);
                view.diff_metric = at
                    .and_then(|i| all.get((i + 1) % all.len()))
                    .copied()
                    .unwrap_or(DiffMetric::Absolute);
            }
            Action::Gain(true) => view.gain = (view.gain * 2.0).min(256.0),
            Action::Gain(false) => view.gain = (view.gain / 2.0).max(0.25),
            Action::InPane => {}
        }
    }
}

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
                for shortcut in SHORTCUTS {
                    ui.monospace(shortcut.keys);
                    ui.label(shortcut.what);
                    ui.end_row();
                }
            });
        });
    if !open {
        out.push(Command::ToggleHelp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The actions a frame with these key presses yields.
    fn actions_for(presses: &[Press]) -> Vec<Action> {
        let ctx = egui::Context::default();
        let mut events = Vec::new();
        for p in presses {
            let modifiers = if p.command {
                egui::Modifiers::COMMAND
            } else {
                egui::Modifiers::NONE
            };
            events.push(egui::Event::ModifiersChanged(modifiers));
            events.push(egui::Event::Key {
                key: p.key,
                physical_key: None,
                pressed: true,
                repeat: false,
                modifiers,
            });
        }
        let mut actions = Vec::new();
        let mut output = ctx.run_ui(
            egui::RawInput {
                events,
                ..Default::default()
            },
            |ui| actions = ui.ctx().input(pressed),
        );
        // Nothing paints here: drop the font atlas upload egui asks for on its first pass.
        output.textures_delta.clear();
        actions
    }

    /// Every key the help lists does what the help says: pressing it yields that row's action
    /// and no other.
    #[test]
    fn every_listed_key_triggers_its_rows_action() {
        for shortcut in SHORTCUTS {
            for press in shortcut.presses {
                assert_eq!(
                    actions_for(&[*press]),
                    vec![shortcut.action],
                    "{} ({:?})",
                    shortcut.keys,
                    press
                );
            }
        }
    }

    /// Ctrl+O opens; a bare O does nothing.
    #[test]
    fn command_shortcuts_need_the_modifier() {
        assert_eq!(actions_for(&[ctrl(Key::O)]), vec![Action::Open]);
        assert!(actions_for(&[key(Key::O)]).is_empty());
    }

    /// Toggles come back to where they started, and the gain stays in its range.
    #[test]
    fn view_actions_change_the_settings_they_name() {
        let start = ViewSettings::default();
        let mut view = start.clone();
        let mut out = Vec::new();
        for action in [Action::ToggleLoop, Action::ToggleGrid, Action::ToggleTokens] {
            action.apply(&mut view, &mut out);
            assert_ne!(view, start, "{action:?}");
            action.apply(&mut view, &mut out);
            assert_eq!(view, start, "{action:?}");
        }
        for _ in 0..20 {
            Action::Gain(true).apply(&mut view, &mut out);
        }
        assert_eq!(view.gain, 256.0);
        let metric = view.diff_metric;
        for _ in 0..DiffMetric::ALL.len() {
            Action::NextDiffMetric.apply(&mut view, &mut out);
        }
        assert_eq!(view.diff_metric, metric);
        assert!(out.is_empty(), "view actions push no commands: {out:?}");
    }
}
