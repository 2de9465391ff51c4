//! How long an audio part may play, at most, read from its own bytes, so
//! that a hold covers the audio tokens a provider will charge for it
//! ([`crate::estimate`]). Providers count audio by duration, not by size or
//! format: a minute of speech is the same tokens as WAV or MP3. Decoders
//! read the durations as ffmpeg does:
//!
//! - WAV (PCM, float, A-law, µ-law, or the extensible form of one): the
//!   bytes after the `data` chunk's header at sample rate × channels ×
//!   bytes per sample from the first `fmt ` chunk (lowered further by its
//!   byte rate or block size when those say less, so no field a decoder
//!   might believe gives a longer clip).
//! - MP3: frame by frame (exact for constant and variable bit rates), a
//!   frame counting only when the next one agrees with it (same version,
//!   layer and sample rate) or it ends the file, as decoders synchronise.
//!   A well-formed ID3v2 tag at the start and an ID3v1 tag at the end are
//!   skipped; any other byte counts as [`MP3_MICROS_PER_BYTE`], the most a
//!   byte of any MPEG audio frame plays (an 8 kbit/s frame).
//!
//! Anything else (another format or WAV encoding, a header these parsers do
//! not read, data that is not base64, an "MP3" without two agreeing frames)
//! has no bound here: [`audio_micros_at_most`] says `None`, and the hold
//! takes the model's whole context window at its audio price.
//!
//! Durations are integer microseconds, rounded up.

use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;

/// 1 ms: MPEG-2 and 2.5 layer II and III frames at 8 kbit/s play 1 ms per
/// byte; every other bit rate, layer and version plays less.
pub const MP3_MICROS_PER_BYTE: u64 = 1_000;

const MICROS_PER_SECOND: u64 = 1_000_000;

/// Base64 as lenient decoders read it: padding optional, stray trailing bits ignored.
const fn lenient(alphabet: &'static base64::alphabet::Alphabet) -> GeneralPurpose {
    GeneralPurpose::new(
        alphabet,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    )
}
const STANDARD: GeneralPurpose = lenient(&base64::alphabet::STANDARD);
const URL_SAFE: GeneralPurpose = lenient(&base64::alphabet::URL_SAFE);

/// The longest `data` (an `input_audio` part's base64, or a `data:` URL)
/// may play, in microseconds, as audio in `format` (`wav` or `mp3`);
/// `None` when nothing here bounds it.
pub fn audio_micros_at_most(data: &str, format: &str) -> Option<u64> {
    let data = match data.strip_prefix("data:") {
        Some(url) => url.split_once(',').map_or(url, |(_, payload)| payload),
        None => data,
    };
    let bytes = decode(data)?;
    match format.to_ascii_lowercase().as_str() {
        "wav" | "wave" => wav_micros(&bytes),
        "mp3" | "mpeg" => mp3_micros(&bytes),
        _ => None,
    }
}

fn decode(data: &str) -> Option<Vec<u8>> {
    let data = data.trim();
    if let Ok(bytes) = STANDARD.decode(data) {
        return Some(bytes);
    }
    // Lines wrapped as the `base64` tool writes them, or the URL-safe alphabet.
    let joined: Vec<u8> = data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    STANDARD
        .decode(&joined)
        .or_else(|_| URL_SAFE.decode(&joined))
        .ok()
}

fn len(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}

/// `units` at `per_second` units per second, in microseconds rounded up.
fn micros(units: u64, per_second: u64) -> u64 {
    let exact = u128::from(units) * u128::from(MICROS_PER_SECOND);
    u64::try_from(exact.div_ceil(u128::from(per_second.max(1)))).unwrap_or(u64::MAX)
}

fn u16_le(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    )))
}

fn u32_le(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    )))
}

/// WAVE format tags whose bytes are plain samples: PCM, IEEE float, A-law, µ-law.
const SAMPLE_FORMATS: [u64; 4] = [1, 3, 6, 7];
/// `WAVE_FORMAT_EXTENSIBLE`: the real tag is the first two bytes of its sub-format GUID.
const EXTENSIBLE: u64 = 0xFFFE;

/// The bytes per second of a `fmt ` chunk's body starting at `body`, if it
/// is a sample format: the lowest of what its fields say.
fn wav_rate(b: &[u8], body: usize) -> Option<u64> {
    let mut tag = u16_le(b, body)?;
    if tag == EXTENSIBLE {
        tag = u16_le(b, body + 24)?;
    }
    if !SAMPLE_FORMATS.contains(&tag) {
        return None;
    }
    let channels = u16_le(b, body + 2)?;
    let sample_rate = u32_le(b, body + 4)?;
    let byte_rate = u32_le(b, body + 8)?;
    let block_align = u16_le(b, body + 12)?;
    let bits = u16_le(b, body + 14)?;
    let rate = [byte_rate, sample_rate * block_align]
        .into_iter()
        .filter(|r| *r != 0)
        .fold(sample_rate * channels * bits.div_ceil(8), u64::min);
    (rate != 0).then_some(rate)
}

/// A RIFF/WAVE file's duration: what follows the `data` chunk's header, at
/// the first `fmt ` chunk's rate.
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
        if id == b"fmt " && rate.is_none() {
            rate = Some(wav_rate(b, body)?);
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
    /// Sync, version, layer and sample rate: what consecutive frames share.
    key: (u8, u8),
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
        key: (b1 & 0xFE, b2 & 0x0C),
    })
}

/// An MP3's duration: its frames one by one, and any byte outside a
/// frame (junk, a cut last frame, tags other than ID3) at
/// [`MP3_MICROS_PER_BYTE`]. `None` without two agreeing frames (or one
/// that is the whole file): not an MP3.
fn mp3_micros(b: &[u8]) -> Option<u64> {
    let end = b.len() - id3v1_len(b);
    let b = &b[..end];
    let mut at = id3v2_len(b);
    let (mut total, mut unparsed, mut frames) = (0u64, 0u64, 0u64);
    while at < b.len() {
        let here = frame(&b[at..]).filter(|f| {
            let next = at.saturating_add(f.bytes);
            f.bytes >= 4
                && (next == b.len()
                    || (next < b.len() && frame(&b[next..]).is_some_and(|n| n.key == f.key)))
        });
        match here {
            Some(f) => {
                total = total.saturating_add(micros(f.samples, f.sample_rate));
                frames += 1;
                at += f.bytes;
            }
            None => {
                unparsed += 1;
                at += 1;
            }
        }
    }
    (frames > 0).then(|| total.saturating_add(unparsed.saturating_mul(MP3_MICROS_PER_BYTE)))
}

/// Length of a well-formed ID3v2 tag at the start of `b` (0 if none): a
/// 10-byte header (version bytes below 0xFF, a 28-bit "synchsafe" size),
/// and a 10-byte footer when flagged; a tag said to run past the end is
/// not one.
fn id3v2_len(b: &[u8]) -> usize {
    match b.get(..10) {
        Some([b'I', b'D', b'3', major, minor, flags, s0, s1, s2, s3])
            if *major != 0xFF && *minor != 0xFF && [s0, s1, s2, s3].iter().all(|s| **s < 0x80) =>
        {
            let size = [s0, s1, s2, s3]
                .iter()
                .fold(0usize, |n, s| (n << 7) | usize::from(**s));
            let footer = if flags & 0x10 != 0 { 10 } else { 0 };
            let tag = 10 + size + footer;
            if tag <= b.len() {
                tag
            } else {
                0
            }
        }
        _ => 0,
    }
}

/// Length of an ID3v1 tag at the end of `b` (128 bytes from `TAG`), or 0.
fn id3v1_len(b: &[u8]) -> usize {
    match b.len().checked_sub(128).and_then(|at| b.get(at..at + 3)) {
        Some(b"TAG") => 128,
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
        assert_eq!(audio_micros_at_most(&b64(&three), "wav"), Some(3_000_000));
        // Stereo at 44.1 kHz: the rate comes from the header, not the size.
        let stereo = wav(44_100, 2, 16, 2);
        assert_eq!(audio_micros_at_most(&b64(&stereo), "wav"), Some(2_000_000));
        // Lines wrapped at 76 characters read the same.
        let encoded = b64(&three);
        let wrapped: Vec<&str> = encoded
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        assert_eq!(
            audio_micros_at_most(&wrapped.join("\n"), "wav"),
            Some(3_000_000)
        );
        // A data: URL and missing padding read the same.
        let url = format!(
            "data:audio/wav;base64,{}",
            b64(&three).trim_end_matches('=')
        );
        assert_eq!(audio_micros_at_most(&url, "WAV"), Some(3_000_000));
    }

    #[test]
    fn a_wav_header_is_read_as_decoders_read_it() {
        let one_second = || wav(8_000, 1, 8, 1);
        // Byte rate and block size claiming far more than 8 kHz × 1 byte.
        let mut w = one_second();
        w[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        w[32..34].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(audio_micros_at_most(&b64(&w), "wav"), Some(1_000_000));
        // A block size of 0 is ignored, not believed.
        let mut w = one_second();
        w[32..34].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(audio_micros_at_most(&b64(&w), "wav"), Some(1_000_000));
        // A byte rate lower than the samples say lengthens the bound.
        let mut w = one_second();
        w[28..32].copy_from_slice(&4_000u32.to_le_bytes());
        assert_eq!(audio_micros_at_most(&b64(&w), "wav"), Some(2_000_000));
        // A second `fmt ` chunk claiming 48 kHz stereo: the first one counts.
        let w = one_second();
        let mut second = b"fmt \x10\0\0\0\x01\0\x02\0".to_vec();
        second.extend_from_slice(&48_000u32.to_le_bytes());
        second.extend_from_slice(&192_000u32.to_le_bytes());
        second.extend_from_slice(&[4, 0, 16, 0]);
        let twice = [&w[..36], &second, &w[36..]].concat();
        assert_eq!(audio_micros_at_most(&b64(&twice), "wav"), Some(1_000_000));
        // A low sample rate is exact, however slow.
        let slow = wav(100, 1, 8, 2);
        assert_eq!(audio_micros_at_most(&b64(&slow), "wav"), Some(2_000_000));
    }

    #[test]
    fn a_streamed_wav_with_an_unknown_data_size_counts_what_follows() {
        let mut w = wav(16_000, 1, 16, 2);
        w[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(audio_micros_at_most(&b64(&w), "wav"), Some(2_000_000));
    }

    #[test]
    fn audio_nothing_here_can_bound_has_no_bound() {
        let w = wav(16_000, 1, 16, 1);
        let mut junk = w.clone();
        junk[0..4].copy_from_slice(b"JUNK");
        // MP3 inside a WAV container (format tag 0x55): its frames decide.
        let mut mp3_in_wav = w.clone();
        mp3_in_wav[20..22].copy_from_slice(&0x55u16.to_le_bytes());
        for (data, format) in [
            (b64(&junk), "wav"),
            (b64(&mp3_in_wav), "wav"),
            (b64(&w), "flac"),
            (b64(&w), "mp3"),
            ("!!!!".to_owned(), "wav"),
            (format!("{}*", b64(&w)), "wav"),
        ] {
            assert_eq!(audio_micros_at_most(&data, format), None, "{format}");
        }
        // The URL-safe alphabet decodes.
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode(&w);
        assert_eq!(audio_micros_at_most(&url_safe, "wav"), Some(1_000_000));
    }

    #[test]
    fn mp3_frames_add_up_whatever_their_bitrate() {
        // 1152 samples at 44.1 kHz = 26,123 µs (rounded up) per frame.
        let per_frame = micros(1152, 44_100);
        assert_eq!(per_frame, 26_123);
        let cbr = mp3(128, 100);
        assert_eq!(
            audio_micros_at_most(&b64(&cbr), "mp3"),
            Some(100 * per_frame)
        );
        // Variable bit rate: 50 frames at 320 then 50 at 32 kbit/s.
        let mut vbr = mp3(320, 50);
        vbr.extend(mp3(32, 50));
        assert_eq!(
            audio_micros_at_most(&b64(&vbr), "mp3"),
            Some(100 * per_frame)
        );
    }

    #[test]
    fn id3_tags_are_skipped_only_when_well_formed() {
        let per_frame = micros(1152, 44_100);
        let mut tagged = vec![b'I', b'D', b'3', 4, 0, 0, 0, 0, 1, 0];
        tagged.resize(10 + 128, 0xFF);
        tagged.extend(mp3(64, 10));
        let mut v1 = b"TAG".to_vec();
        v1.resize(128, b'x');
        tagged.extend(v1);
        assert_eq!(
            audio_micros_at_most(&b64(&tagged), "mp3"),
            Some(10 * per_frame)
        );
        // A tag with version 0xFF is not one (decoders play what follows),
        // nor is one said to run past the end: its bytes count as junk.
        for header in [
            [b'I', b'D', b'3', 0xFF, 0, 0, 0x7F, 0x7F, 0x7F, 0x7F],
            [b'I', b'D', b'3', 4, 0, 0, 0x7F, 0x7F, 0x7F, 0x7F],
        ] {
            let fake = [&header[..], &mp3(64, 10)].concat();
            assert_eq!(
                audio_micros_at_most(&b64(&fake), "mp3"),
                Some(10 * per_frame + 10 * MP3_MICROS_PER_BYTE),
                "{header:x?}"
            );
        }
    }

    #[test]
    fn a_frame_counts_only_when_the_next_agrees() {
        // Junk after the last frame: that frame has no agreeing successor,
        // so its 208 bytes count as junk too.
        let per_frame = micros(1152, 44_100);
        let mut junk = mp3(64, 10);
        junk.extend_from_slice(&[1, 2, 3, 4, 5]);
        assert_eq!(
            audio_micros_at_most(&b64(&junk), "mp3"),
            Some(9 * per_frame + (208 + 5) * MP3_MICROS_PER_BYTE)
        );
        // A fake MPEG-1 layer II header (384 kbit/s, 32 kHz: 1,728 bytes,
        // 36 ms) over 30 real MPEG-2.5 frames of 72 ms each.
        let real = [0xFF, 0xE3, 0x18, 0x00];
        let mut hidden = vec![0xFF, 0xFD, 0xE8, 0x00];
        for _ in 0..30 {
            let start = hidden.len();
            hidden.extend_from_slice(&real);
            hidden.resize(start + 72, 0);
        }
        assert_eq!(frame(&hidden).map(|f| f.bytes), Some(1_728));
        assert_eq!(
            audio_micros_at_most(&b64(&hidden), "mp3"),
            Some(30 * 72_000 + 4 * MP3_MICROS_PER_BYTE)
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
