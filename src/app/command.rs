//! What the UI asks for. Panels only lay out and push commands; the app applies them after the
//! layout pass, so no panel mutates shared state while another is being drawn.

use std::path::PathBuf;

use super::state::{Layout, ViewSettings};
use crate::analysis::ModelSource;

/// What an export writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportKind {
    /// The current frame's original | reconstruction | difference composite.
    Png,
    /// Per-frame metrics of the current run.
    Csv,
    Json,
    /// Original | reconstruction side by side over the model's frame range (encoded on a
    /// thread).
    Mp4,
}

impl ExportKind {
    pub fn extension(self) -> &'static str {
        match self {
            ExportKind::Png => "png",
            ExportKind::Csv => "csv",
            ExportKind::Json => "json",
            ExportKind::Mp4 => "mp4",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Decode a file and show it.
    OpenFile(PathBuf),
    /// Ask for a file with the system dialog (on a thread; the answer comes back as `OpenFile`).
    OpenDialog,
    /// Ask for a checkpoint folder or file with the system dialog.
    OpenModelDialog,
    /// Make this model (catalogue key) current and run it (instant when cached).
    SelectModel(ModelSource),
    /// Run the current model on the current input with the current settings.
    Run,
    /// Run every available model in turn.
    CompareAll,
    /// Stop the running job (and the compare-all queue).
    Cancel,
    /// Hold the frames of a long clip from source frame `start` on (as many as fit), then show
    /// loaded frame `seek`.
    LoadRange {
        start: usize,
        seek: usize,
    },
    Seek(usize),
    Step(i64),
    TogglePlay,
    SetLayout(Layout),
    ZoomFit,
    /// One image pixel per screen pixel.
    ZoomOneToOne,
    /// Set zoom (points per image pixel) and the image point at the panes' centre.
    SetTransform {
        zoom: f32,
        cx: f32,
        cy: f32,
    },
    /// Wipe split as a fraction of the pane width.
    SetWipe(f32),
    /// Replace the view settings (panels edit a copy with their widgets).
    SetView(Box<ViewSettings>),
    /// Highlight every cell with this discrete index (None clears).
    SelectTokenIndex(Option<i64>),
    /// Show a token cell: seek to its first frame and centre the view on it.
    JumpToCell {
        frame: usize,
        x: usize,
        y: usize,
    },
    /// Write an export; `None` asks for a path with the system dialog.
    Export(ExportKind, Option<PathBuf>),
    ToggleHelp,
    DismissError,
    /// Previous (-1) or next (+1) model in the catalogue.
    CycleModel(i32),
    RescanModels,
    /// Download an official release (repo id) into the Hugging Face cache, then select it.
    FetchModel(String),
    /// Stop the download; what arrived is kept for the next fetch.
    CancelFetch,
}
