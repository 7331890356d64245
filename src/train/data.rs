//! Training data: images and videos decoded once into memory, a held-out validation tail per
//! video, and random batches (crops, flips, temporal windows of 1 + k·t frames, frame strides).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::Rng;

use super::{Result, TrainError};
use crate::frames::RgbFrames;
#[cfg(feature = "media")]
use crate::media::{self, DecodeOptions, MediaKind};

/// Whether a source is a still image or a video: videos give up a validation tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Image,
    Video,
}

impl SourceKind {
    fn name(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
        }
    }
}

#[cfg(feature = "media")]
impl From<MediaKind> for SourceKind {
    fn from(kind: MediaKind) -> Self {
        match kind {
            MediaKind::Image => Self::Image,
            MediaKind::Video => Self::Video,
        }
    }
}

/// One `--data` entry: a file or folder, optionally limited to source frames `start..end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSpec {
    pub path: PathBuf,
    pub start: usize,
    pub end: Option<usize>,
}

impl DataSpec {
    /// `PATH`, `PATH@START-END` or `PATH@START-` (frames of a video; END exclusive).
    pub fn parse(text: &str) -> Result<Self> {
        let Some((path, range)) = text.rsplit_once('@') else {
            return Ok(Self {
                path: PathBuf::from(text),
                start: 0,
                end: None,
            });
        };
        let bad = || {
            TrainError::Invalid(format!(
                "`{text}`: a frame range is written PATH@START-END or PATH@START- (e.g. clip.mp4@80-)"
            ))
        };
        let (start, end) = range.split_once('-').ok_or_else(bad)?;
        let start = start.trim().parse::<usize>().map_err(|_| bad())?;
        let end = match end.trim() {
            "" => None,
            e => Some(e.parse::<usize>().map_err(|_| bad())?),
        };
        if end.is_some_and(|e| e <= start) {
            return Err(bad());
        }
        Ok(Self {
            path: PathBuf::from(path),
            start,
            end,
        })
    }

    fn label(&self) -> String {
        match (self.start, self.end) {
            (0, None) => self.path.display().to_string(),
            (s, None) => format!("{} frames {s}-", self.path.display()),
            (s, Some(e)) => format!("{} frames {s}-{e}", self.path.display()),
        }
    }
}

/// A decoded source held in memory.
#[derive(Clone, Debug)]
pub struct Source {
    /// File name and frame range, for the model card.
    pub label: String,
    pub frames: RgbFrames,
    pub kind: SourceKind,
}

/// Training and validation material.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub train: Vec<Source>,
    pub validation: Vec<Source>,
}

/// Media files directly inside a folder (sorted), or the file itself.
fn media_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path).map_err(|e| {
        TrainError::Invalid(format!(
            "training data `{}` cannot be read: {e}",
            path.display()
        ))
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && (is_media_name(p) || crate::io::is_tensor_file(p)))
        .collect();
    files.sort();
    Ok(files)
}

fn is_media_name(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    matches!(
        ext.as_str(),
        "png"
            | "jpg"
            | "jpeg"
            | "webp"
            | "tif"
            | "tiff"
            | "bmp"
            | "mp4"
            | "mkv"
            | "mov"
            | "webm"
            | "avi"
    )
}

/// Decodes every entry; frames are scaled so the shorter side is at most `max_side`. Videos keep
/// their last `validation_fraction` of frames (at least `min_validation_frames`) for validation.
pub fn load(
    specs: &[DataSpec],
    max_side: usize,
    validation_fraction: f64,
    min_validation_frames: usize,
) -> Result<Dataset> {
    let mut dataset = Dataset::default();
    for spec in specs {
        let files = media_files(&spec.path)?;
        if files.is_empty() {
            return Err(TrainError::Invalid(format!(
                "no images or videos in `{}`",
                spec.path.display()
            )));
        }
        for file in files {
            let entry = DataSpec {
                path: file.clone(),
                ..spec.clone()
            };
            let DecodedSource {
                frames,
                kind,
                origin,
            } = read_source(&file, spec, max_side)?;
            // Frames files name the media they were cut from (and its frame range), for the card.
            let origin = origin
                .map(|source| format!(" (from {source})"))
                .unwrap_or_default();
            if kind == SourceKind::Video && frames.frames >= 2 * min_validation_frames {
                let held = ((frames.frames as f64 * validation_fraction).round() as usize)
                    .max(min_validation_frames);
                let kept = frames.frames - held;
                let end = spec.start + kept;
                dataset.train.push(Source {
                    label: format!("{} frames {}-{end}{origin}", file.display(), spec.start),
                    frames: frames.slice(0, kept)?,
                    kind,
                });
                dataset.validation.push(Source {
                    label: format!("{} frames {end}-{}{origin}", file.display(), end + held),
                    frames: frames.slice(kept, held)?,
                    kind,
                });
            } else {
                dataset.train.push(Source {
                    label: format!("{}{origin}", entry.label()),
                    frames,
                    kind,
                });
            }
        }
    }
    if dataset.train.is_empty() {
        return Err(TrainError::Invalid(
            "no training data given (--data)".into(),
        ));
    }
    Ok(dataset)
}

/// Name of the frames tensor in a frames file.
const FRAMES_TENSOR: &str = "frames";

/// One source read into memory.
#[derive(Clone, Debug)]
pub struct DecodedSource {
    pub frames: RgbFrames,
    pub kind: SourceKind,
    /// For a frames file: the media file and frame range it was decoded from, as it records.
    pub origin: Option<String>,
}

/// Reads one training source: a frames file as stored (see [`save_frames`]), or an image or video
/// decoded with its shorter side scaled to at most `max_side`.
pub fn read_source(file: &Path, spec: &DataSpec, max_side: usize) -> Result<DecodedSource> {
    if crate::io::is_tensor_file(file) {
        let stored = load_frames(file)?;
        let frames = &stored.frames;
        let end = spec.end.unwrap_or(frames.frames).min(frames.frames);
        if spec.start >= end {
            return Err(TrainError::Invalid(format!(
                "`{}` has {} frames; the range starts at {}",
                file.display(),
                frames.frames,
                spec.start
            )));
        }
        return Ok(DecodedSource {
            frames: frames.slice(spec.start, end - spec.start)?,
            ..stored
        });
    }
    decode_source(file, spec, max_side)
}

#[cfg(feature = "media")]
fn decode_source(file: &Path, spec: &DataSpec, max_side: usize) -> Result<DecodedSource> {
    let media_error =
        |e: media::MediaError| TrainError::Media(file.display().to_string(), e.to_string());
    let probe = media::open(
        file,
        &DecodeOptions {
            max_frames: Some(1),
            ..DecodeOptions::default()
        },
    )
    .map_err(media_error)?;
    let shorter = probe.frames.height.min(probe.frames.width);
    let options = DecodeOptions {
        start: spec.start,
        count: spec.end.map(|e| e - spec.start),
        resize_shorter_side: (shorter > max_side).then_some(max_side),
        ..DecodeOptions::default()
    };
    let clip = media::open(file, &options).map_err(media_error)?;
    Ok(DecodedSource {
        frames: clip.frames,
        kind: clip.kind.into(),
        origin: None,
    })
}

#[cfg(not(feature = "media"))]
fn decode_source(file: &Path, _spec: &DataSpec, _max_side: usize) -> Result<DecodedSource> {
    Err(TrainError::Media(
        file.display().to_string(),
        "this build decodes no images or videos (built without the `media` feature); \
         give frames files made by `tokenscope frames` instead"
            .into(),
    ))
}

/// Writes decoded frames as a frames file: one u8 tensor `frames` (T, H, W, 3) and the source's
/// kind and label in the metadata. Headless builds train on these.
pub fn save_frames(target: &Path, frames: &RgbFrames, kind: SourceKind, label: &str) -> Result<()> {
    let tensor = Tensor::from_slice(
        &frames.data,
        (frames.frames, frames.height, frames.width, 3),
        &Device::Cpu,
    )?;
    let metadata = std::collections::HashMap::from([
        ("kind".to_string(), kind.name().to_string()),
        ("source".to_string(), label.to_string()),
    ]);
    crate::io::save_safetensors(target, &[(FRAMES_TENSOR, &tensor)], metadata)?;
    Ok(())
}

/// Reads a frames file written by [`save_frames`].
pub fn load_frames(path: &Path) -> Result<DecodedSource> {
    let invalid = |why: String| TrainError::Media(path.display().to_string(), why);
    let bytes = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let not_safetensors =
        |e: safetensors::SafeTensorError| invalid(format!("not a safetensors file: {e}"));
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(not_safetensors)?;
    let metadata = header.metadata().as_ref();
    let kind = match metadata.and_then(|m| m.get("kind")).map(String::as_str) {
        Some("video") => SourceKind::Video,
        Some("image") => SourceKind::Image,
        other => {
            return Err(invalid(format!(
                "not a frames file (metadata `kind` is {other:?}, want \"image\" or \"video\"); \
                 make one with `tokenscope frames`"
            )))
        }
    };
    let origin = metadata.and_then(|m| m.get("source")).cloned();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(not_safetensors)?;
    let view = tensors
        .tensor(FRAMES_TENSOR)
        .map_err(|_| invalid(format!("no `{FRAMES_TENSOR}` tensor")))?;
    let (t, h, w) = match (view.dtype(), view.shape()) {
        (safetensors::Dtype::U8, &[t, h, w, 3]) => (t, h, w),
        (dtype, shape) => {
            return Err(invalid(format!(
                "`{FRAMES_TENSOR}` must be u8 (T, H, W, 3), got {dtype:?} {shape:?}"
            )))
        }
    };
    let frames = RgbFrames::new(t, h, w, view.data().to_vec())?;
    Ok(DecodedSource {
        frames,
        kind,
        origin,
    })
}

/// What one batch looks like.
#[derive(Clone, Copy, Debug)]
pub struct BatchShape {
    pub batch: usize,
    /// Frames per item (1 for image networks and image steps).
    pub frames: usize,
    pub crop: usize,
    /// Colour jitter strength `j`: each crop gets a brightness shift in ±j, a gain per channel in
    /// 1 ± j and a shift per channel in ±j/2 (in [-1, 1] units, clamped), to widen the colours a
    /// small training set shows; 0 leaves the crops (and the random sequence) as they were.
    pub color_jitter: f32,
}

/// A random batch in [-1, 1]: (B, 3, T, H, W) for video networks, (B, 3, H, W) for image ones.
/// Video windows need sources with enough frames; images (and single frames) serve T = 1.
pub fn sample_batch(
    dataset: &Dataset,
    shape: BatchShape,
    video: bool,
    rng: &mut StdRng,
    device: &Device,
) -> Result<Tensor> {
    let BatchShape {
        batch,
        frames,
        crop,
        color_jitter,
    } = shape;
    let candidates: Vec<&Source> = dataset
        .train
        .iter()
        .filter(|s| s.frames.frames >= frames && s.frames.height >= crop && s.frames.width >= crop)
        .collect();
    if candidates.is_empty() {
        return Err(TrainError::Invalid(format!(
            "no training source has {frames} frames of at least {crop}x{crop} pixels"
        )));
    }
    let plane = crop * crop;
    let mut values = vec![0f32; batch * 3 * frames * plane];
    for item in 0..batch {
        let source = candidates
            .get(rng.random_range(0..candidates.len()))
            .ok_or_else(|| TrainError::Invalid("empty candidate list".into()))?;
        let f = &source.frames;
        // A faster apparent motion now and then: every second frame when the source allows it.
        let stride = if frames > 1 && f.frames >= 2 * frames - 1 && rng.random_bool(0.3) {
            2
        } else {
            1
        };
        let span = (frames - 1) * stride + 1;
        let first = rng.random_range(0..=f.frames - span);
        let top = rng.random_range(0..=f.height - crop);
        let left = rng.random_range(0..=f.width - crop);
        let flip = rng.random_bool(0.5);
        // (gain, shift) per channel.
        let mut color = [(1f32, 0f32); 3];
        if color_jitter > 0.0 {
            let j = color_jitter;
            let brightness = rng.random_range(-j..=j);
            for (gain, shift) in &mut color {
                *gain = 1.0 + rng.random_range(-j..=j);
                *shift = brightness + rng.random_range(-j / 2.0..=j / 2.0);
            }
        }
        for t in 0..frames {
            let frame = first + t * stride;
            for (c, &(gain, shift)) in color.iter().enumerate() {
                // (B, 3, T, H, W) for video, (B, 3, H, W) (T = 1) for images: same memory order.
                let base = ((item * 3 + c) * frames + t) * plane;
                for y in 0..crop {
                    let row = ((frame * f.height + top + y) * f.width + left) * 3;
                    let outside =
                        || TrainError::Invalid(format!("crop row {y} outside frame {frame}"));
                    let pixels = f.data.get(row..row + crop * 3).ok_or_else(outside)?;
                    let slots = values
                        .get_mut(base + y * crop..base + (y + 1) * crop)
                        .ok_or_else(outside)?;
                    for (x, slot) in slots.iter_mut().enumerate() {
                        let sx = if flip { crop - 1 - x } else { x };
                        // sx < crop and c < 3: inside `pixels`.
                        let v = f32::from(pixels[sx * 3 + c]) / 127.5 - 1.0;
                        *slot = if color_jitter > 0.0 {
                            (gain * v + shift).clamp(-1.0, 1.0)
                        } else {
                            v
                        };
                    }
                }
            }
        }
    }
    let tensor = if video {
        Tensor::from_vec(values, (batch, 3, frames, crop, crop), device)?
    } else {
        Tensor::from_vec(values, (batch, 3, crop, crop), device)?
    };
    Ok(tensor)
}

/// Fixed validation inputs: one centred window per validation source (and per image when there is
/// no validation video), cropped to at most `side`×`side`.
pub fn validation_windows(dataset: &Dataset, frames: usize, side: usize) -> Result<Vec<RgbFrames>> {
    let mut windows = Vec::new();
    for source in &dataset.validation {
        let f = &source.frames;
        if f.frames < frames {
            continue;
        }
        let start = (f.frames - frames) / 2;
        let window = f.slice(start, frames)?;
        windows.push(centre_crop(&window, side)?);
    }
    Ok(windows)
}

/// The centred `side`×`side` crop (sides rounded down to multiples of 16).
pub fn centre_crop(clip: &RgbFrames, side: usize) -> Result<RgbFrames> {
    let h = clip.height.min(side) / 16 * 16;
    let w = clip.width.min(side) / 16 * 16;
    let (top, left) = ((clip.height - h) / 2, (clip.width - w) / 2);
    let mut data = Vec::with_capacity(clip.frames * h * w * 3);
    for t in 0..clip.frames {
        for y in 0..h {
            let start = ((t * clip.height + top + y) * clip.width + left) * 3;
            let row = clip
                .data
                .get(start..start + w * 3)
                .ok_or_else(|| TrainError::Invalid("crop outside the frame".into()))?;
            data.extend_from_slice(row);
        }
    }
    Ok(RgbFrames::new(clip.frames, h, w, data)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_files_round_trip_and_reject_other_tensor_files() {
        let dir = std::env::temp_dir().join(format!("tokenscope-frames-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let data: Vec<u8> = (0..2 * 4 * 6 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let frames = RgbFrames::new(2, 4, 6, data.clone()).unwrap();
        let path = dir.join("clip.safetensors");
        save_frames(&path, &frames, SourceKind::Video, "clip.mp4 frames 0-2").unwrap();
        let DecodedSource {
            frames: back,
            kind,
            origin,
        } = load_frames(&path).unwrap();
        assert_eq!((back.frames, back.height, back.width), (2, 4, 6));
        assert_eq!(back.data, data);
        assert_eq!(kind, SourceKind::Video);
        assert_eq!(origin.as_deref(), Some("clip.mp4 frames 0-2"));
        // A frame range applies to frames files as to videos.
        let spec = DataSpec::parse(&format!("{}@1-", path.display())).unwrap();
        let tail = read_source(&path, &spec, 360).unwrap().frames;
        assert_eq!(tail.frames, 1);
        assert_eq!(tail.data.as_slice(), &data[4 * 6 * 3..]);
        // A tensor file without the frames metadata is refused with a reason, not misread.
        let other = dir.join("tokens.safetensors");
        let t = Tensor::zeros((1, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        crate::io::save_safetensors(&other, &[("latent", &t)], Default::default()).unwrap();
        let err = load_frames(&other).unwrap_err().to_string();
        assert!(err.contains("not a frames file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Without jitter a crop holds the pixels as they are; with it, each crop's channels are
    /// shifted and scaled by their own random amounts, staying inside [-1, 1].
    #[test]
    fn colour_jitter_shifts_each_crop_and_stays_in_range() {
        use rand::SeedableRng;
        // A flat grey image: any change comes from the jitter.
        let frames = RgbFrames::new(1, 32, 32, vec![128; 32 * 32 * 3]).unwrap();
        let dataset = Dataset {
            train: vec![Source {
                label: "grey".into(),
                frames,
                kind: SourceKind::Image,
            }],
            validation: Vec::new(),
        };
        let batch = |color_jitter: f32| {
            let shape = BatchShape {
                batch: 8,
                frames: 1,
                crop: 16,
                color_jitter,
            };
            let mut rng = StdRng::seed_from_u64(7);
            sample_batch(&dataset, shape, false, &mut rng, &Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let grey = 128.0 / 127.5 - 1.0;
        assert!(batch(0.0).iter().all(|&v| v == grey));
        let jittered = batch(0.2);
        assert!(jittered.iter().all(|v| (-1.0..=1.0).contains(v)));
        // 8 crops x 3 channels, each plane constant: distinct values, none the original.
        let mut planes: Vec<f32> = jittered.chunks_exact(16 * 16).map(|p| p[0]).collect();
        assert!(jittered
            .chunks_exact(16 * 16)
            .all(|p| p.iter().all(|&v| v == p[0])));
        assert!(planes.iter().all(|&v| (v - grey).abs() > 1e-6));
        planes.sort_by(f32::total_cmp);
        planes.dedup();
        assert_eq!(planes.len(), 8 * 3);
    }

    #[test]
    fn data_specs_parse_frame_ranges() {
        let s = DataSpec::parse("a/b.mp4@80-").unwrap();
        assert_eq!((s.start, s.end), (80, None));
        let s = DataSpec::parse("a/b.mp4@3-9").unwrap();
        assert_eq!(
            (s.path.to_str().unwrap(), s.start, s.end),
            ("a/b.mp4", 3, Some(9))
        );
        assert_eq!(DataSpec::parse("plain.png").unwrap().start, 0);
        assert!(DataSpec::parse("x.mp4@9-3").is_err());
        assert!(DataSpec::parse("x.mp4@nine").is_err());
    }
}
