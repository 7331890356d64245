//! Files in and out: the menu bar, system dialogs (on their own threads, so the UI never
//! blocks), recent files, exports (PNG composite, metrics as CSV or JSON) and the error banner.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;

use anyhow::Context as _;
use egui::{Color32, Ui};

use super::colormap;
use super::command::{Command, ExportKind};
use super::state::Layout;
use super::{DialogAnswer, ViewerApp};
use crate::io::write_atomically;

const MEDIA_EXTENSIONS: &[&str] = &[
    "mp4", "mkv", "mov", "webm", "avi", "png", "jpg", "jpeg", "webp", "tif", "tiff", "bmp",
];

/// Shows an open dialog on a thread; the answer comes back through `tx`.
pub fn open_dialog(tx: Sender<DialogAnswer>, model: bool) {
    let spawned = std::thread::Builder::new()
        .name("tokenscope-dialog".into())
        .spawn(move || {
            let answer = if model {
                rfd::FileDialog::new()
                    .set_title("Open a checkpoint folder")
                    .pick_folder()
                    .map(DialogAnswer::Model)
            } else {
                rfd::FileDialog::new()
                    .set_title("Open an image or video")
                    .add_filter("images and videos", MEDIA_EXTENSIONS)
                    .pick_file()
                    .map(DialogAnswer::Open)
            };
            if let Some(a) = answer {
                let _ = tx.send(a);
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the dialog thread: {e}");
    }
}

/// Shows a save dialog on a thread.
pub fn save_dialog(tx: Sender<DialogAnswer>, kind: ExportKind, name: String) {
    let spawned = std::thread::Builder::new()
        .name("tokenscope-dialog".into())
        .spawn(move || {
            if let Some(p) = rfd::FileDialog::new()
                .set_title("Export")
                .set_file_name(name)
                .add_filter(kind.extension(), &[kind.extension()])
                .save_file()
            {
                let _ = tx.send(DialogAnswer::Export(kind, p));
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the dialog thread: {e}");
    }
}

pub fn menu_ui(app: &ViewerApp, ui: &mut Ui, out: &mut Vec<Command>) {
    egui::MenuBar::new().ui(ui, |ui| {
        ui.menu_button("File", |ui| {
            if ui.button("Open…  (Ctrl+O)").clicked() {
                out.push(Command::OpenDialog);
            }
            if ui.button("Open the demo clip").clicked() {
                out.push(Command::OpenFile(super::demo_clip()));
            }
            ui.menu_button("Recent files", |ui| {
                if app.state.recent_files.is_empty() {
                    ui.weak("none yet");
                }
                for p in &app.state.recent_files {
                    if ui.button(p.display().to_string()).clicked() {
                        out.push(Command::OpenFile(p.clone()));
                    }
                }
            });
            ui.separator();
            let has = app.current.is_some();
            if ui
                .add_enabled(has, egui::Button::new("Export composite PNG…  (Ctrl+E)"))
                .clicked()
            {
                out.push(Command::Export(ExportKind::Png, None));
            }
            if ui
                .add_enabled(has, egui::Button::new("Export metrics CSV…"))
                .clicked()
            {
                out.push(Command::Export(ExportKind::Csv, None));
            }
            if ui
                .add_enabled(has, egui::Button::new("Export metrics JSON…"))
                .clicked()
            {
                out.push(Command::Export(ExportKind::Json, None));
            }
            if ui
                .add_enabled(has, egui::Button::new("Export side-by-side MP4…"))
                .clicked()
            {
                out.push(Command::Export(ExportKind::Mp4, None));
            }
        });
        ui.menu_button("Models", |ui| {
            if ui.button("Open checkpoint folder…").clicked() {
                out.push(Command::OpenModelDialog);
            }
            if ui.button("Rescan").clicked() {
                out.push(Command::RescanModels);
            }
            if ui.button("Compare all").clicked() {
                out.push(Command::CompareAll);
            }
        });
        ui.menu_button("View", |ui| {
            for layout in Layout::ALL {
                if ui.button(layout.label()).clicked() {
                    out.push(Command::SetLayout(layout));
                }
            }
            ui.separator();
            let mut view = app.state.view.clone();
            ui.checkbox(&mut view.show_rates_panel, "Compression rates panel");
            ui.checkbox(&mut view.show_tokens_panel, "Tokens panel");
            ui.checkbox(&mut view.show_metrics_panel, "Metrics panel");
            if view != app.state.view {
                out.push(Command::SetView(Box::new(view)));
            }
        });
        if ui.button("Help (?)").clicked() {
            out.push(Command::ToggleHelp);
        }
    });
}

/// The first unread error, once, with a dismiss button.
pub fn errors_ui(app: &ViewerApp, ctx: &egui::Context, out: &mut Vec<Command>) {
    let Some(first) = app.errors.first() else {
        return;
    };
    egui::Window::new("Error")
        .collapsible(false)
        .resizable(true)
        .anchor(egui::Align2::CENTER_TOP, egui::Vec2::new(0.0, 40.0))
        .show(ctx, |ui| {
            ui.colored_label(Color32::from_rgb(240, 120, 110), first);
            ui.horizontal(|ui| {
                if ui.button("Dismiss").clicked() {
                    out.push(Command::DismissError);
                }
                if app.errors.len() > 1 {
                    ui.weak(format!("{} more", app.errors.len() - 1));
                }
            });
        });
}

/// The current frame as original | reconstruction | difference, RGB, with a 4-pixel gap.
pub fn composite(app: &ViewerApp) -> anyhow::Result<(usize, usize, Vec<u8>)> {
    let (w, h) = app.image_size().context("no input open")?;
    let a = app.current.as_ref().context("no reconstruction yet")?;
    let original = app.original_frame(app.frame).context("no such frame")?;
    let recon = a.frame(app.frame).with_context(|| {
        format!(
            "frame {} was not reconstructed (the model ran on frames {}..{})",
            app.frame,
            a.start(),
            a.start() + a.reconstruction.frames
        )
    })?;
    let view = &app.state.view;
    let gap = 4;
    let out_w = w * 3 + gap * 2;
    let mut out = vec![24u8; out_w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let i = (y * w + x) * 3;
            let (Some(pa), Some(pb)) = (original.get(i..i + 3), recon.get(i..i + 3)) else {
                continue;
            };
            let (Ok(a3), Ok(b3)) = (<[u8; 3]>::try_from(pa), <[u8; 3]>::try_from(pb)) else {
                continue;
            };
            let d = colormap::diff_color(a3, b3, view.diff_metric, view.gain, view.colormap);
            for (k, px) in [a3, b3, d].iter().enumerate() {
                let o = (y * out_w + k * (w + gap) + x) * 3;
                if let Some(dst) = out.get_mut(o..o + 3) {
                    dst.copy_from_slice(px);
                }
            }
        }
    }
    Ok((out_w, h, out))
}

/// Writes an export.
pub fn export(app: &ViewerApp, kind: ExportKind, path: &Path) -> anyhow::Result<()> {
    match kind {
        ExportKind::Png => {
            let (w, h, rgb) = composite(app)?;
            save_rgb_png(&rgb, w, h, path)
        }
        ExportKind::Csv => {
            let a = app.current.as_ref().context("no reconstruction yet")?;
            let mut text = String::from("frame,model,psnr_db,ssim,mse\n");
            for (i, ((p, s), m)) in a
                .summary
                .psnr_frames
                .iter()
                .zip(&a.summary.ssim_frames)
                .zip(&a.summary.mse_frames)
                .enumerate()
            {
                let p = if p.is_finite() {
                    format!("{p:.6}")
                } else {
                    "inf".into()
                };
                text.push_str(&format!(
                    "{},{},{p},{s:.6},{m:.6}\n",
                    a.start() + i,
                    a.model.name
                ));
            }
            write_text(path, &text)
        }
        ExportKind::Json => {
            let a = app.current.as_ref().context("no reconstruction yet")?;
            let value = serde_json::json!({
                "input": a.key.input,
                "model": a.key.model,
                "name": a.model.name,
                "variant": a.model.variant,
                "first_frame": a.start(),
                "frames": a.reconstruction.frames,
                "temporal_window": a.key.settings.temporal_window,
                "bits_per_pixel": a.bits_per_pixel,
                "encode_ms_per_frame": a.encode_ms_per_frame,
                "decode_ms_per_frame": a.decode_ms_per_frame,
                "model_facts": a.model,
                "summary": a.summary,
            });
            write_text(path, &serde_json::to_string_pretty(&value)?)
        }
        ExportKind::Mp4 => anyhow::bail!("MP4 exports run on a thread: use export_mp4"),
    }
}

/// Encodes original | reconstruction over the model's frame range on a thread (labelled with
/// the frame number and PSNR); the outcome comes back through `tx`.
pub fn export_mp4(app: &ViewerApp, path: PathBuf, tx: Sender<DialogAnswer>) -> anyhow::Result<()> {
    let clip = app.clip.clone().context("no input open")?;
    let a = app.current.clone().context("no reconstruction yet")?;
    std::thread::Builder::new()
        .name("tokenscope-export".into())
        .spawn(move || {
            let result = (|| -> anyhow::Result<PathBuf> {
                let original = clip.frames.slice(a.start(), a.reconstruction.frames)?;
                let labels = |i: usize| crate::media::PanelLabels {
                    original: format!("original  frame {}", a.start() + i),
                    reconstruction: format!(
                        "{}  PSNR {:.2} dB",
                        a.model.name,
                        crate::metrics::psnr::psnr_capped(
                            a.summary.psnr_frames.get(i).copied().unwrap_or(f64::NAN)
                        )
                    ),
                };
                let frames = crate::media::side_by_side(&original, &a.reconstruction, labels)?;
                crate::media::write(&frames, clip.playback_fps(), &path, &[&clip.source])?;
                Ok(path)
            })();
            let _ = tx.send(DialogAnswer::Exported(result.map_err(|e| format!("{e:#}"))));
        })?;
    Ok(())
}

fn write_text(path: &Path, text: &str) -> anyhow::Result<()> {
    write_atomically(path, |tmp| {
        std::fs::write(tmp, text).map_err(|e| e.to_string())
    })?;
    Ok(())
}

pub fn save_rgb_png(rgb: &[u8], w: usize, h: usize, path: &Path) -> anyhow::Result<()> {
    let image = image::RgbImage::from_raw(w as u32, h as u32, rgb.to_vec())
        .context("composite buffer has the wrong size")?;
    write_atomically(path, |tmp| {
        image
            .save_with_format(tmp, image::ImageFormat::Png)
            .map_err(|e| e.to_string())
    })?;
    Ok(())
}

/// Saves an egui screenshot as an RGB PNG.
pub fn save_color_image(image: &egui::ColorImage, path: &Path) -> anyhow::Result<()> {
    let [w, h] = image.size;
    let rgb: Vec<u8> = image
        .pixels
        .iter()
        .flat_map(|c| [c.r(), c.g(), c.b()])
        .collect();
    save_rgb_png(&rgb, w, h, path)
}
