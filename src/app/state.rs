//! The one persisted app state (eframe storage, serde): layout, last model, recent files, view
//! settings. Everything else in the app is derived and rebuilt on start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How many recent files the File menu keeps.
pub const MAX_RECENT: usize = 10;

/// How the comparison panes are arranged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Layout {
    /// Original | reconstruction.
    TwoUp,
    /// Original | reconstruction | difference.
    ThreeUp,
    /// One pane: original left of a draggable split, reconstruction right of it.
    Wipe,
    /// One pane: the reconstruction; hold X to see the original in its place.
    Flicker,
}

impl Layout {
    pub const ALL: [Layout; 4] = [
        Layout::TwoUp,
        Layout::ThreeUp,
        Layout::Wipe,
        Layout::Flicker,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Layout::TwoUp => "2-up",
            Layout::ThreeUp => "3-up",
            Layout::Wipe => "Wipe",
            Layout::Flicker => "Flicker",
        }
    }
}

/// What the difference pane measures per pixel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiffMetric {
    /// Mean of |a − b| over R, G, B.
    Absolute,
    /// Mean of (a − b)² over R, G, B.
    Squared,
    /// |Y(a) − Y(b)| with BT.601 luma.
    Luma,
    /// |a − b| of one channel: red, green or blue.
    Red,
    Green,
    Blue,
}

impl DiffMetric {
    pub const ALL: [DiffMetric; 6] = [
        DiffMetric::Absolute,
        DiffMetric::Squared,
        DiffMetric::Luma,
        DiffMetric::Red,
        DiffMetric::Green,
        DiffMetric::Blue,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DiffMetric::Absolute => "absolute",
            DiffMetric::Squared => "squared",
            DiffMetric::Luma => "luma",
            DiffMetric::Red => "red channel",
            DiffMetric::Green => "green channel",
            DiffMetric::Blue => "blue channel",
        }
    }

    /// The shader's code for the metric.
    pub fn code(self) -> f32 {
        match self {
            DiffMetric::Absolute => 0.0,
            DiffMetric::Squared => 1.0,
            DiffMetric::Luma => 2.0,
            DiffMetric::Red => 3.0,
            DiffMetric::Green => 4.0,
            DiffMetric::Blue => 5.0,
        }
    }
}

/// The difference heatmap's colour scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Colormap {
    Turbo,
    Inferno,
    Grey,
}

impl Colormap {
    pub const ALL: [Colormap; 3] = [Colormap::Turbo, Colormap::Inferno, Colormap::Grey];

    pub fn label(self) -> &'static str {
        match self {
            Colormap::Turbo => "turbo",
            Colormap::Inferno => "inferno",
            Colormap::Grey => "grey",
        }
    }

    /// Row of the colormap in the LUT texture.
    pub fn row(self) -> u32 {
        match self {
            Colormap::Turbo => 0,
            Colormap::Inferno => 1,
            Colormap::Grey => 2,
        }
    }
}

/// What the token overlay shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenView {
    /// No overlay.
    Off,
    /// Discrete: index as a categorical colour. Continuous: one channel as a heatmap.
    Values,
    /// Continuous only: the 16 channels projected on their first 3 principal components.
    Pca,
    /// Reconstruction error pooled per token cell.
    Error,
}

impl TokenView {
    pub fn label(self) -> &'static str {
        match self {
            TokenView::Off => "off",
            TokenView::Values => "indices / channel",
            TokenView::Pca => "PCA to RGB",
            TokenView::Error => "pooled error",
        }
    }
}

/// View settings that survive a restart.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ViewSettings {
    pub layout: Layout,
    pub diff_metric: DiffMetric,
    pub colormap: Colormap,
    /// Multiplies the difference before the colormap.
    pub gain: f32,
    pub token_view: TokenView,
    /// Opacity of the token overlay.
    pub token_opacity: f32,
    /// Which latent channel the continuous heatmap shows.
    pub latent_channel: usize,
    pub show_grid: bool,
    pub looping: bool,
    /// Playback speed as a multiple of the source frame rate.
    pub speed: f64,
    /// Frames the model runs on, from `start_frame`.
    pub frame_count: usize,
    pub start_frame: usize,
    /// The official wrapper's temporal window.
    pub temporal_window: usize,
    pub show_tokens_panel: bool,
    pub show_rates_panel: bool,
    pub show_metrics_panel: bool,
}

impl Default for ViewSettings {
    fn default() -> Self {
        Self {
            layout: Layout::ThreeUp,
            diff_metric: DiffMetric::Absolute,
            colormap: Colormap::Turbo,
            gain: 4.0,
            token_view: TokenView::Off,
            token_opacity: 0.45,
            latent_channel: 0,
            show_grid: false,
            looping: true,
            speed: 1.0,
            frame_count: 17,
            start_frame: 0,
            temporal_window: crate::tokenizer::runner::DEFAULT_TEMPORAL_WINDOW,
            show_tokens_panel: true,
            show_rates_panel: true,
            show_metrics_panel: true,
        }
    }
}

/// Everything the app persists between runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppState {
    pub view: ViewSettings,
    /// The model last run (a folder or file path, or a Hugging Face model name).
    pub last_model: Option<String>,
    /// Most recent first.
    pub recent_files: Vec<PathBuf>,
}

impl AppState {
    /// Puts `path` first in the recent files, without duplicates.
    pub fn remember_file(&mut self, path: &Path) {
        self.recent_files.retain(|p| p != path);
        self.recent_files.insert(0, path.to_path_buf());
        self.recent_files.truncate(MAX_RECENT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_files_are_unique_and_bounded() {
        let mut state = AppState::default();
        for i in 0..15 {
            state.remember_file(Path::new(&format!("/tmp/{i}.mp4")));
        }
        state.remember_file(Path::new("/tmp/3.mp4"));
        assert_eq!(state.recent_files.len(), MAX_RECENT);
        assert_eq!(state.recent_files[0], PathBuf::from("/tmp/3.mp4"));
        assert_eq!(
            state
                .recent_files
                .iter()
                .filter(|p| p.ends_with("3.mp4"))
                .count(),
            1
        );
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut state = AppState::default();
        state.view.layout = Layout::Wipe;
        state.last_model = Some("CV8x8x8".into());
        let text = serde_json::to_string(&state).unwrap();
        let back: AppState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, state);
        // Older or partial state files fill in defaults.
        let partial: AppState = serde_json::from_str(r#"{"view":{"gain":2.0}}"#).unwrap();
        assert_eq!(partial.view.layout, Layout::ThreeUp);
    }
}
