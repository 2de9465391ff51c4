//! How long an audio part may play, at most, read from its own bytes, so
//! that a hold covers the audio tokens a provider will charge for it
//! ([`crate::estimate`]). Providers count audio by duration, not by size or
//! format: a minute of speech is the same tokens as WAV or MP3.
//!
//! - WAV: the data chunk's bytes at the header's rate (the lower of its
//!   byte rate and sample rate × block size, so a header that disagrees with
//!   itself gives the longer clip).
//! - MP3: every frame's samples at its sample rate, frame by frame (exact for
//!   constant and variable bit rates alike); an ID3v2 tag is skipped.
//! - Bytes that are not audio a parser recognises (an unknown format, a
//!   broken header, junk between frames, data that is not base64) count at
//!   [`MIN_BYTES_PER_SECOND`], below any codec's lowest rate in use, so the
//!   bound stays an upper one whatever the provider's decoder makes of them.
//!
//! Durations are integer microseconds, rounded up.

use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;

/// 4 kbit/s: below the lowest rate of MP3 (8 kbit/s), GSM-in-WAV
/// (13 kbit/s) and Opus in practice (6 kbit/s).
pub const MIN_BYTES_PER_SECOND: u64 = 500;

const MICROS_PER_SECOND: u64 = 1_000_000;

/// Standard base64, with or without padding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The longest `data` (an `input_audio` part's base64, or a `data:` URL) may
/// play, in microseconds, for audio in `format` (`wav`, `mp3`, or another).
pub fn audio_micros_at_most(data: &str, format: &str) -> u64 {
    let data = match data.strip_prefix("data:") {
        Some(url) => url.split_once(',').map_or(url, |(_, payload)| payload),
        None => data,
    };
    let decoded = LENIENT.decode(data.trim()).or_else(|_| {
        // Wrapped lines, as the `base64` tool writes them.
        let joined: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        LENIENT.decode(joined)
    });
    let bytes = match decoded {
        Ok(bytes) => bytes,
        // Not base64: the provider refuses it or reads something of about this size.
        Err(_) => return unparsed_micros(data.len() as u64 * 3 / 4),
    };
    match format.to_ascii_lowercase().as_str() {
        "wav" | "wave" => wav_micros(&bytes).unwrap_or_else(|| unparsed_micros(len(&bytes))),
        "mp3" | "mpeg" => mp3_micros(&bytes),
        _ => unparsed_micros(len(&bytes)),
    }
}

fn len(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// Bytes of unknown audio at the lowest rate any codec in use plays at.
fn unparsed_micros(bytes: u64) -> u64 {
    micros(bytes, MIN_BYTES_PER_SECOND)
}

/// `units` at `per_second` units per second, in microseconds rounded up.
fn micros(units: u64, per_second: u64) -> u64 {
    let exact = u128::from(units) * u128::from(MICROS_PER_SECOND);
    u64::try_from(exact.div_ceil(u128::from(per_second.max(1)))).unwrap_or(u64::MAX)
}

fn u16_le(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn u32_le(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(
        b.get(at..at + 4)?.try_into().ok()?,
    )))
}

/// A RIFF/WAVE file's duration: what follows the `data` chunk's header, at
/// the `fmt ` chunk's rate. `None` when the header is not readable.
fn wav_micros(b: &[u8]) -> Option<u64> {
    if b.get(0..4)? != b"RIFF" || b.get(8..12)? != b"WAVE" {
        return None;
    }
    let mut at = 12usize;
    let mut rate = None;
    while at.checked_add(8)? <= b.len() {
        let id = &b[at..at + 4];
        let size = usize::try_from(u32_le(b, at + 4)?).ok()?;
        let body = at + 8;
        if id == b"fmt " {
            let sample_rate = u32_le(b, body + 4)?;
            let byte_rate = u32_le(b, body + 8)?;
            let block_align = u16_le(b, body + 12)?;
            let framed = sample_rate.saturating_mul(block_align);
            rate = Some(match (byte_rate, framed) {
                (0, 0) => return None,
                (0, r) | (r, 0) => r,
                (a, b) => a.min(b),
            });
        } else if id == b"data" {
            // The data chunk's declared size may be 0 or 0xFFFFFFFF (a
            // stream): what is there is what plays. Chunks after it only
            // lengthen the bound.
            return Some(micros(len(&b[body.min(b.len())..]), rate?));
        }
        at = body.checked_add(size)?.checked_add(size & 1)?;
    }
    None
}

/// An MPEG audio frame header: its length in bytes and its duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    bytes: usize,
    samples: u64,
    sample_rate: u64,
}

/// Kbit/s by bitrate index: MPEG-1 layers I, II, III; MPEG-2/2.5 layer I; layers II and III.
const BITRATES: [[u64; 15]; 5] = [
    [
        0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448,
    ],
    [
        0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384,
    ],
    [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ],
    [
        0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256,
    ],
    [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
];

/// The frame header at the start of `h`, if it is one (free-format frames,
/// whose length is not in the header, are not).
fn frame(h: &[u8]) -> Option<Frame> {
    let [b0, b1, b2, _] = *h.get(..4)? else {
        return None;
    };
    if b0 != 0xFF || b1 & 0xE0 != 0xE0 {
        return None;
    }
    // Version: 0 = MPEG-2.5, 2 = MPEG-2, 3 = MPEG-1 (1 reserved).
    let version = (b1 >> 3) & 3;
    // Layer: 1 = III, 2 = II, 3 = I (0 reserved).
    let layer = (b1 >> 1) & 3;
    let bitrate_index = usize::from(b2 >> 4);
    let rate_index = usize::from((b2 >> 2) & 3);
    if version == 1 || layer == 0 || bitrate_index == 0 || bitrate_index == 15 || rate_index == 3 {
        return None;
    }
    let mpeg1 = version == 3;
    let table = match (mpeg1, layer) {
        (true, 3) => 0,
        (true, 2) => 1,
        (true, _) => 2,
        (false, 3) => 3,
        (false, _) => 4,
    };
    let bitrate = BITRATES[table][bitrate_index] * 1000;
    let sample_rate = [44_100, 48_000, 32_000][rate_index]
        >> match version {
            3 => 0,
            2 => 1,
            _ => 2,
        };
    let padding = u64::from((b2 >> 1) & 1);
    let (bytes, samples) = match layer {
        3 => ((12 * bitrate / sample_rate + padding) * 4, 384),
        2 => (144 * bitrate / sample_rate + padding, 1152),
        _ if mpeg1 => (144 * bitrate / sample_rate + padding, 1152),
        _ => (72 * bitrate / sample_rate + padding, 576),
    };
    Some(Frame {
        bytes: usize::try_from(bytes).ok()?,
        samples,
        sample_rate,
    })
}

/// An MP3's duration: its frames one by one, and any byte outside a whole
/// frame (tags other than a leading ID3v2, junk, a cut last frame) at
/// [`MIN_BYTES_PER_SECOND`].
fn mp3_micros(b: &[u8]) -> u64 {
    let mut at = id3v2_len(b).min(b.len());
    let (mut total, mut unparsed) = (0u64, 0u64);
    while at < b.len() {
        match frame(&b[at..]).filter(|f| f.bytes >= 4 && at + f.bytes <= b.len()) {
            Some(f) => {
                total = total.saturating_add(micros(f.samples, f.sample_rate));
                at += f.bytes;
            }
            None => {
                unparsed += 1;
                at += 1;
            }
        }
    }
    total.saturating_add(unparsed_micros(unparsed))
}

/// Length of an ID3v2 tag at the start of `b` (0 if none): a 10-byte
/// header, a 28-bit "synchsafe" size, and a 10-byte footer when flagged.
fn id3v2_len(b: &[u8]) -> usize {
    match b.get(..10) {
        Some([b'I', b'D', b'3', _, _, flags, s0, s1, s2, s3])
            if [s0, s1, s2, s3].iter().all(|s| **s < 0x80) =>
        {
            let size = [s0, s1, s2, s3]
                .iter()
                .fold(0usize, |n, s| (n << 7) | usize::from(**s));
            let footer = if flags & 0x10 != 0 { 10 } else { 0 };
            10 + size + footer
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use testkit::mock_providers::pcm_wav as wav;

    /// `frames` MPEG-1 layer III frames at `kbps` and 44.1 kHz.
    fn mp3(kbps: u64, frames: usize) -> Vec<u8> {
        let index = BITRATES[2].iter().position(|k| *k == kbps).unwrap() as u8;
        let header = [0xFF, 0xFB, index << 4, 0xC4];
        let f = frame(&header).unwrap();
        let mut out = Vec::new();
        for _ in 0..frames {
            let start = out.len();
            out.extend_from_slice(&header);
            out.resize(start + f.bytes, 0);
        }
        out
    }

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    #[test]
    fn wav_lasts_its_data_at_its_rate() {
        // 16-bit mono at 24 kHz: 48,000 bytes a second.
        let three = wav(24_000, 1, 16, 3);
        assert_eq!(audio_micros_at_most(&b64(&three), "wav"), 3_000_000);
        // Stereo at 44.1 kHz: the rate comes from the header, not the size.
        let stereo = wav(44_100, 2, 16, 2);
        assert_eq!(audio_micros_at_most(&b64(&stereo), "wav"), 2_000_000);
        // Lines wrapped at 76 characters read the same.
        let encoded = b64(&three);
        let wrapped: Vec<&str> = encoded
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        assert_eq!(audio_micros_at_most(&wrapped.join("\n"), "wav"), 3_000_000);
        // A data: URL and missing padding read the same.
        let url = format!(
            "data:audio/wav;base64,{}",
            b64(&three).trim_end_matches('=')
        );
        assert_eq!(audio_micros_at_most(&url, "WAV"), 3_000_000);
    }

    #[test]
    fn a_wav_header_claiming_a_higher_rate_than_its_samples_is_not_believed() {
        let mut w = wav(8_000, 1, 16, 1);
        // byte rate field says 1,600,000 bytes a second; 8 kHz × 2 bytes says 16,000.
        w[28..32].copy_from_slice(&1_600_000u32.to_le_bytes());
        assert_eq!(audio_micros_at_most(&b64(&w), "wav"), 1_000_000);
    }

    #[test]
    fn a_streamed_wav_with_an_unknown_data_size_counts_what_follows() {
        let mut w = wav(16_000, 1, 16, 2);
        w[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(audio_micros_at_most(&b64(&w), "wav"), 2_000_000);
    }

    #[test]
    fn an_unreadable_wav_counts_at_the_lowest_rate() {
        let mut w = wav(16_000, 1, 16, 1);
        w[0..4].copy_from_slice(b"JUNK");
        let n = w.len() as u64;
        assert_eq!(
            audio_micros_at_most(&b64(&w), "wav"),
            (n * 1_000_000).div_ceil(MIN_BYTES_PER_SECOND)
        );
        assert_eq!(
            audio_micros_at_most(&b64(&w), "flac"),
            (n * 1_000_000).div_ceil(MIN_BYTES_PER_SECOND)
        );
        // Not base64 at all: about the bytes it would have been.
        assert_eq!(audio_micros_at_most("!!!!", "wav"), 6_000);
    }

    #[test]
    fn mp3_frames_add_up_whatever_their_bitrate() {
        // 1152 samples at 44.1 kHz = 26,123 µs (rounded up) per frame.
        let per_frame = micros(1152, 44_100);
        assert_eq!(per_frame, 26_123);
        let cbr = mp3(128, 100);
        assert_eq!(audio_micros_at_most(&b64(&cbr), "mp3"), 100 * per_frame);
        // Variable bit rate: 50 frames at 320 then 50 at 32 kbit/s.
        let mut vbr = mp3(320, 50);
        vbr.extend(mp3(32, 50));
        assert_eq!(audio_micros_at_most(&b64(&vbr), "mp3"), 100 * per_frame);
    }

    #[test]
    fn an_id3_tag_is_skipped_and_junk_counts_at_the_lowest_rate() {
        let mut tagged = vec![b'I', b'D', b'3', 4, 0, 0, 0, 0, 1, 0];
        tagged.resize(10 + 128, 0xFF);
        tagged.extend(mp3(64, 10));
        assert_eq!(
            audio_micros_at_most(&b64(&tagged), "mp3"),
            10 * micros(1152, 44_100)
        );
        let mut junk = mp3(64, 10);
        junk.extend_from_slice(&[1, 2, 3, 4, 5]);
        assert_eq!(
            audio_micros_at_most(&b64(&junk), "mp3"),
            10 * micros(1152, 44_100) + micros(5, MIN_BYTES_PER_SECOND)
        );
    }

    #[test]
    fn frame_headers_of_each_mpeg_version_and_layer() {
        // MPEG-1 layer III, 128 kbit/s, 44.1 kHz, no padding: 417 bytes.
        let f = frame(&[0xFF, 0xFB, 0x90, 0x00]).unwrap();
        assert_eq!((f.bytes, f.samples, f.sample_rate), (417, 1152, 44_100));
        // MPEG-2 layer III, 8 kbit/s, 22.05 kHz: 576 samples, 26 bytes.
        let f = frame(&[0xFF, 0xF3, 0x10, 0x00]).unwrap();
        assert_eq!((f.bytes, f.samples, f.sample_rate), (26, 576, 22_050));
        // MPEG-2.5 layer III, 8 kbit/s, 8 kHz: 72 bytes for 72 ms.
        let f = frame(&[0xFF, 0xE3, 0x18, 0x00]).unwrap();
        assert_eq!((f.bytes, f.samples, f.sample_rate), (72, 576, 8_000));
        // MPEG-1 layer I, 32 kbit/s, 32 kHz: 48 bytes.
        let f = frame(&[0xFF, 0xFF, 0x18, 0x00]).unwrap();
        assert_eq!((f.bytes, f.samples, f.sample_rate), (48, 384, 32_000));
        // Free format, bad bitrate, reserved rate, reserved version: not frames.
        for h in [
            [0xFF, 0xFB, 0x00, 0x00],
            [0xFF, 0xFB, 0xF0, 0x00],
            [0xFF, 0xFB, 0x9C, 0x00],
            [0xFF, 0xEB, 0x90, 0x00],
        ] {
            assert_eq!(frame(&h), None, "{h:x?}");
        }
    }
}
