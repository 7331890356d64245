//! A plain buffer of 8-bit RGB frames: what decoding produces, the tokenizer's wrapper takes and
//! gives back, and the metrics compare. A leaf module, so media and metrics need not depend on
//! the tokenizer for it.

/// A frame buffer whose size does not add up, or a frame range outside one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramesError {
    #[error("{frames} frames of {width}x{height} RGB need {expected} bytes, got {got}")]
    WrongLength {
        frames: usize,
        width: usize,
        height: usize,
        /// `None` when the size overflows.
        expected: String,
        got: usize,
    },
    #[error("frames {start}..{end} are outside a clip of {frames}")]
    OutOfRange {
        start: usize,
        end: usize,
        frames: usize,
    },
}

/// Frames of 8-bit RGB, frame-major, row-major, channels last: `frames × height × width × 3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbFrames {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl RgbFrames {
    /// Checks that `data` holds exactly `frames` non-empty frames of `width`×`height`.
    pub fn new(
        frames: usize,
        height: usize,
        width: usize,
        data: Vec<u8>,
    ) -> Result<Self, FramesError> {
        let expected = frames
            .checked_mul(height)
            .and_then(|n| n.checked_mul(width))
            .and_then(|n| n.checked_mul(3));
        if expected != Some(data.len()) || frames == 0 || height == 0 || width == 0 {
            return Err(FramesError::WrongLength {
                frames,
                width,
                height,
                expected: expected
                    .map_or_else(|| "more than memory holds".into(), |e| e.to_string()),
                got: data.len(),
            });
        }
        Ok(Self {
            frames,
            height,
            width,
            data,
        })
    }

    /// Bytes of one frame.
    pub fn frame_bytes(&self) -> usize {
        self.height * self.width * 3
    }

    /// Frames `start..start + count`, copied.
    pub fn slice(&self, start: usize, count: usize) -> Result<RgbFrames, FramesError> {
        let n = self.frame_bytes();
        let out_of_range = || FramesError::OutOfRange {
            start,
            end: start.saturating_add(count),
            frames: self.frames,
        };
        let end = start.checked_add(count).ok_or_else(out_of_range)?;
        let data = self
            .data
            .get(start * n..end * n)
            .ok_or_else(out_of_range)?
            .to_vec();
        RgbFrames::new(count, self.height, self.width, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_that_do_not_add_up_are_refused() {
        assert!(RgbFrames::new(2, 2, 2, vec![0; 24]).is_ok());
        assert!(matches!(
            RgbFrames::new(2, 2, 2, vec![0; 23]),
            Err(FramesError::WrongLength { got: 23, .. })
        ));
        assert!(RgbFrames::new(0, 2, 2, Vec::new()).is_err());
        let huge = RgbFrames::new(usize::MAX, 2, 2, Vec::new()).unwrap_err();
        assert!(
            huge.to_string().contains("more than memory holds"),
            "{huge}"
        );
    }

    #[test]
    fn slices_copy_their_frames_and_refuse_ranges_past_the_end() {
        let clip = RgbFrames::new(3, 1, 1, (0..9).collect()).unwrap();
        assert_eq!(clip.slice(1, 2).unwrap().data, vec![3, 4, 5, 6, 7, 8]);
        assert_eq!(
            clip.slice(2, 2).unwrap_err(),
            FramesError::OutOfRange {
                start: 2,
                end: 4,
                frames: 3
            }
        );
        assert!(clip.slice(usize::MAX, 2).is_err());
    }
}
