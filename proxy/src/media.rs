//! How long an audio part may play, at most, read from its own bytes, so
//! that a hold covers the audio tokens a provider will charge for it
//! ([`crate::estimate`]). Providers count audio by duration, not by size or
//! format: a minute of speech is the same tokens as WAV or MP3. The
//! bounds follow how decoders (ffmpeg's, for one) read the bytes:
//!
//! - WAV (PCM, float, A-law, µ-law, or the extensible form of one): the
//!   bytes after the `data` chunk's header at sample rate × channels ×
//!   bytes per sample from the first `fmt ` chunk, as ffmpeg decodes it
//!   (lowered further by its byte rate or block size when those say less,
//!   so no field a decoder might believe gives a longer clip).
//! - MP3: the longest way to read its bytes as whole frames (exact for an
//!   ordinary file, constant or variable bit rate; junk that hides frames
//!   cannot shorten it, whatever a decoder synchronises on).
//!
//! Anything else (another format or WAV encoding, a header these parsers do
//! not read, data that is not base64, an "MP3" that does not start with two
//! agreeing frames after its ID3v2 tag or that frames do not cover) has no
//! bound here: [`audio_micros_at_most`] says `None`, and the hold takes the
//! model's whole context window.
//!
//! Durations are integer microseconds, rounded up.

use base64::engine::general_purpose::GeneralPurpose;
use base64::engine::{DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;

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

/// WAVE format tags whose bytes are plain samples: PCM and IEEE float
/// (bytes per sample from the bit depth), A-law and µ-law (one byte per
/// sample, whatever the header says).
const PCM: u64 = 1;
const FLOAT: u64 = 3;
const ALAW: u64 = 6;
const MULAW: u64 = 7;
/// `WAVE_FORMAT_EXTENSIBLE`: the real tag is the first two bytes of its
/// sub-format GUID, whose other 14 bytes are [`EXTENSIBLE_GUID_TAIL`].
const EXTENSIBLE: u64 = 0xFFFE;
const EXTENSIBLE_GUID_TAIL: [u8; 14] = [
    0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x80, 0x00, 0x00, 0xAA, 0x00, 0x38, 0x9B, 0x71,
];

/// The bytes per second of a `fmt ` chunk (its body, `fmt`), if it holds a
/// sample format: sample rate × channels × bytes per sample as ffmpeg
/// decodes it (8 bits for a 14-byte chunk; an extensible chunk's valid
/// bits when fewer), lowered by the byte rate or block size when those say
/// less.
fn wav_rate(fmt: &[u8]) -> Option<u64> {
    let mut tag = u16_le(fmt, 0)?;
    let mut bits = if fmt.len() >= 16 { u16_le(fmt, 14)? } else { 8 };
    if tag == EXTENSIBLE {
        if fmt.get(26..40)? != EXTENSIBLE_GUID_TAIL {
            return None;
        }
        tag = u16_le(fmt, 24)?;
        bits = match u16_le(fmt, 18)? {
            0 => bits,
            valid => bits.min(valid),
        };
    }
    let bytes_per_sample = match tag {
        PCM | FLOAT if (1..=64).contains(&bits) => bits.div_ceil(8),
        ALAW | MULAW => 1,
        _ => return None,
    };
    let channels = u16_le(fmt, 2)?;
    let sample_rate = u32_le(fmt, 4)?;
    let byte_rate = u32_le(fmt, 8)?;
    let block_align = u16_le(fmt, 12)?;
    let rate = [byte_rate, sample_rate * block_align]
        .into_iter()
        .filter(|r| *r != 0)
        .fold(sample_rate * channels * bytes_per_sample, u64::min);
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
            let fmt = b.get(body..body.checked_add(size)?.min(b.len()))?;
            rate = Some(wav_rate(fmt)?);
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

/// More than the largest MPEG audio frame (MPEG-2.5 layer II at
/// 160 kbit/s and 8 kHz, padded: 2,881 bytes; a test checks every header).
const FRAME_WINDOW: usize = 4096;

/// Bytes after an MP3's tag that no reading as frames may cover before it
/// is taken for another format: room for an APE or Lyrics3 tag at the end.
const UNCOVERED_SLACK: usize = 4096;

/// An MP3's duration at most: the longest way to read its bytes as whole
/// frames, skipping the rest. A decoder plays frames and skips what is not
/// one, and which frames it finds depends on where it synchronises; taking
/// the longest of every reading covers them all (junk costs nothing, a
/// last frame cut short counts whole, and every frame plays at most at the
/// sample rate of the first frames, which a decoder may keep: those after
/// the tag, or an agreeing pair inside it). An ID3v2 tag's
/// bytes are read too (a decoder that ignores the tag would find its frames).
///
/// `None` unless the bytes after an ID3v2 tag start with two agreeing frames
/// (or one that is all of them), as decoders probe an MP3, and frames can
/// cover all of them but [`UNCOVERED_SLACK`] and the tags and padding at
/// the end ([`trailer_len`]): other bytes labelled `mp3` (AAC, a
/// container) may be another format that plays far longer.
fn mp3_micros(b: &[u8]) -> Option<u64> {
    let tag = id3v2_len(b);
    let audio = &b[tag..];
    let first = frame(audio)?;
    let agreed = first.bytes >= audio.len()
        || frame(&audio[first.bytes..]).is_some_and(|next| next.key == first.key);
    if !agreed {
        return None;
    }
    // A decoder that ignores the tag synchronises on the first agreeing
    // pair of frames in it, if any, and may keep that pair's sample rate.
    let slowest = (0..tag)
        .filter_map(|i| {
            let f = frame(&b[i..])?;
            let next = frame(b.get(i + f.bytes..)?)?;
            (next.key == f.key).then_some(f.sample_rate)
        })
        .fold(first.sample_rate, u64::min);
    // Reading back from the end, position i needs only i + 1 and i + a
    // frame: longest[i % FRAME_WINDOW] is the longest reading of b[i..],
    // covered[i % FRAME_WINDOW] the most bytes a reading of it covers.
    let mut longest = vec![0u64; FRAME_WINDOW];
    let mut covered = vec![0usize; FRAME_WINDOW];
    fn at<T: Copy + Default>(ring: &[T], i: usize, len: usize) -> T {
        // Past the end, nothing is left to read or cover.
        if i >= len {
            T::default()
        } else {
            ring[i % FRAME_WINDOW]
        }
    }
    let len = b.len();
    for i in (0..b.len()).rev() {
        let (mut time, mut cover) = (at(&longest, i + 1, len), at(&covered, i + 1, len));
        if let Some(f) = frame(&b[i..]) {
            let rate = f.sample_rate.min(slowest);
            let next = i + f.bytes;
            time = time.max(micros(f.samples, rate).saturating_add(at(&longest, next, len)));
            let bytes = f.bytes.min(b.len() - i);
            cover = cover.max(bytes + at(&covered, next, len));
        }
        longest[i % FRAME_WINDOW] = time;
        covered[i % FRAME_WINDOW] = cover;
    }
    if at(&covered, tag, len) + UNCOVERED_SLACK < audio.len() - trailer_len(audio) {
        return None;
    }
    Some(at(&longest, 0, len))
}

/// Bytes at the end of an MP3 that are tags or padding, not audio in any
/// format: zeros, and ID3v1, APEv2, Lyrics3v2 and appended ID3v2 tags, in
/// any order. They need no frames to cover them (their bytes are still
/// read for frames).
fn trailer_len(b: &[u8]) -> usize {
    let mut end = b.len();
    loop {
        let zeros = b[..end].iter().rev().take_while(|&&x| x == 0).count();
        // A tag may end in zeros of its own (ID3v1's padding, APEv2's
        // reserved bytes), and padding may follow it: the fewest first.
        let tag = (0..=zeros.min(128)).find_map(|own| {
            let tag_end = end - zeros + own;
            let len = tag_ending_at(&b[..tag_end]).filter(|len| *len <= tag_end)?;
            Some(tag_end - len)
        });
        let new_end = tag.unwrap_or(end - zeros);
        if new_end == end {
            return b.len() - end;
        }
        end = new_end;
    }
}

/// The length of an ID3v1, APEv2, appended ID3v2 or Lyrics3v2 tag ending
/// exactly at the end of `b`.
fn tag_ending_at(b: &[u8]) -> Option<usize> {
    if b.len() >= 128 && b[b.len() - 128..].starts_with(b"TAG") {
        return Some(128);
    }
    let footer = &b[b.len().checked_sub(32)?..];
    apev2_len(footer)
        .or_else(|| id3v2_footer_len(b))
        .or_else(|| lyrics3_len(b))
        .filter(|len| *len > 0)
}

/// An APEv2 tag ending with `footer` (its last 32 bytes): "APETAGEX", the
/// tag's size with the footer, and a flag for a 32-byte header before it.
fn apev2_len(footer: &[u8]) -> Option<usize> {
    if !footer.starts_with(b"APETAGEX") {
        return None;
    }
    let size = usize::try_from(u32_le(footer, 12)?).ok()?;
    let header = if u32_le(footer, 20)? & (1 << 31) != 0 {
        32
    } else {
        0
    };
    size.checked_add(header)
}

/// An ID3v2 tag appended at the end of `b`, found by its 10-byte footer
/// ("3DI", version, flags, synchsafe size): header, body and footer.
fn id3v2_footer_len(b: &[u8]) -> Option<usize> {
    let footer = b.get(b.len().checked_sub(10)?..)?;
    let [b'3', b'D', b'I', major, minor, _, s0, s1, s2, s3] = *footer else {
        return None;
    };
    let size_bytes = [s0, s1, s2, s3];
    if major == 0xFF || minor == 0xFF || size_bytes.iter().any(|s| *s >= 0x80) {
        return None;
    }
    let size = size_bytes
        .iter()
        .fold(0usize, |n, s| (n << 7) | usize::from(*s));
    Some(size + 20)
}

/// A Lyrics3v2 tag at the end of `b`: "LYRICS200" after its size in six
/// decimal digits, which counts from its "LYRICSBEGIN".
fn lyrics3_len(b: &[u8]) -> Option<usize> {
    let end = b.len().checked_sub(15)?;
    if &b[end + 6..] != b"LYRICS200" {
        return None;
    }
    let digits = std::str::from_utf8(&b[end..end + 6]).ok()?;
    digits.parse::<usize>().ok()?.checked_add(15)
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

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use testkit::mock_providers::pcm_wav as wav;

    /// `frames` MPEG-1 layer III frames at `kbps` and 44.1 kHz.
    fn mp3(kbps: u64, n: usize) -> Vec<u8> {
        let index = BITRATES[2].iter().position(|k| *k == kbps).unwrap() as u8;
        frames([0xFF, 0xFB, index << 4, 0xC4], n)
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
        // A-law and µ-law are one byte a sample, whatever the bit depth says.
        let mut alaw = one_second();
        alaw[20..22].copy_from_slice(&6u16.to_le_bytes());
        alaw[34..36].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(audio_micros_at_most(&b64(&alaw), "wav"), Some(1_000_000));
        // Extensible: the valid bits count when fewer than the container's.
        let extensible = |valid: u16, tail: [u8; 14]| {
            let w = one_second();
            let mut fmt = Vec::new();
            fmt.extend_from_slice(b"fmt \x28\0\0\0\xFE\xFF\x01\0");
            fmt.extend_from_slice(&8_000u32.to_le_bytes());
            fmt.extend_from_slice(&u32::MAX.to_le_bytes());
            fmt.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 22, 0]);
            fmt.extend_from_slice(&valid.to_le_bytes());
            fmt.extend_from_slice(&[0, 0, 0, 0, 1, 0]);
            fmt.extend_from_slice(&tail);
            b64(&[&w[..12], &fmt, &w[36..]].concat())
        };
        assert_eq!(
            audio_micros_at_most(&extensible(8, EXTENSIBLE_GUID_TAIL), "wav"),
            Some(1_000_000)
        );
        assert_eq!(
            audio_micros_at_most(&extensible(8, [0; 14]), "wav"),
            None,
            "another sub-format"
        );
        // A 14-byte `fmt ` chunk is 8-bit, and nothing past it is read.
        let w = one_second();
        let short = [&w[..16], &14u32.to_le_bytes(), &w[20..34], &w[36..]].concat();
        assert_eq!(audio_micros_at_most(&b64(&short), "wav"), Some(1_000_000));
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
        // A tag with version 0xFF is not one, nor is one said to run past
        // the end: the file does not start with frames, so it is no MP3
        // these rules can bound.
        for header in [
            [b'I', b'D', b'3', 0xFF, 0, 0, 0x7F, 0x7F, 0x7F, 0x7F],
            [b'I', b'D', b'3', 4, 0, 0, 0x7F, 0x7F, 0x7F, 0x7F],
        ] {
            let fake = [&header[..], &mp3(64, 10)].concat();
            assert_eq!(
                audio_micros_at_most(&b64(&fake), "mp3"),
                None,
                "{header:x?}"
            );
        }
    }

    #[test]
    fn junk_never_shortens_an_mp3() {
        let per_frame = micros(1152, 44_100);
        let mut junk = mp3(64, 10);
        junk.extend_from_slice(&[1, 2, 3, 4, 5]);
        assert_eq!(
            audio_micros_at_most(&b64(&junk), "mp3"),
            Some(10 * per_frame)
        );
        // A last frame cut short counts whole.
        let cut = &mp3(64, 10)[..208 * 9 + 100];
        assert_eq!(audio_micros_at_most(&b64(cut), "mp3"), Some(10 * per_frame));
        // Five 8 kbit/s MPEG-2.5 frames (72 bytes, 72 ms each), a sixth
        // followed by a stray byte, 29 more; inside their payloads a chain
        // of fake MPEG-1 layer I headers (672 bytes, 12 ms each) that a
        // walker thrown off by the stray byte would follow instead.
        let real = [0xFF, 0xE3, 0x18, 0x00];
        let fake = [0xFF, 0xFF, 0xE8, 0x00];
        assert_eq!(frame(&fake).map(|f| (f.bytes, f.samples)), Some((672, 384)));
        let mut b = Vec::new();
        for n in 0..35 {
            let start = b.len();
            b.extend_from_slice(&real);
            b.resize(start + 72, 0);
            if n == 5 {
                b.push(0x00);
            }
        }
        for at in [374, 1046, 1718, 2390] {
            b[at..at + 4].copy_from_slice(&fake);
        }
        assert_eq!(audio_micros_at_most(&b64(&b), "mp3"), Some(35 * 72_000));
        // Starting with one frame and junk: not known to be an MP3.
        let lone = [&real[..], &[0u8; 68], b"junk"].concat();
        assert_eq!(audio_micros_at_most(&b64(&lone), "mp3"), None);
    }

    /// `n` frames with `header`, payloads zero.
    fn frames(header: [u8; 4], n: usize) -> Vec<u8> {
        let bytes = frame(&header).unwrap().bytes;
        let mut out = Vec::new();
        for _ in 0..n {
            let start = out.len();
            out.extend_from_slice(&header);
            out.resize(start + bytes, 0);
        }
        out
    }

    #[test]
    fn every_frame_fits_the_window() {
        let mut largest = 0;
        for b1 in 0xE0..=0xFFu8 {
            for b2 in 0..=0xFFu8 {
                if let Some(f) = frame(&[0xFF, b1, b2, 0]) {
                    assert!(f.bytes >= 24, "{b1:x} {b2:x}: {f:?}");
                    largest = largest.max(f.bytes);
                }
            }
        }
        assert_eq!(largest, 2_881);
        assert!(largest < FRAME_WINDOW);
        // A chain of the largest (MPEG-2.5 layer II, 160 kbit/s, 8 kHz,
        // padded: 1152 samples, 144 ms) reads whole.
        let big = frames([0xFF, 0xE5, 0xEA, 0x00], 5);
        assert_eq!(big.len(), 5 * 2_881);
        assert_eq!(audio_micros_at_most(&b64(&big), "mp3"), Some(5 * 144_000));
    }

    #[test]
    fn an_mp3_that_frames_do_not_cover_is_another_format() {
        let per_frame = micros(1152, 44_100);
        // Two agreeing frames, then 10 KB that no frame covers (AAC, say).
        let mut aac = mp3(64, 2);
        aac.resize(aac.len() + 10_240, 0x21);
        assert_eq!(audio_micros_at_most(&b64(&aac), "mp3"), None);
        // A 1 KB tag at the end is allowed for.
        let mut ape = mp3(64, 10);
        ape.resize(ape.len() + 1_024, 0x21);
        assert_eq!(
            audio_micros_at_most(&b64(&ape), "mp3"),
            Some(10 * per_frame)
        );
        // A tag footer flag adds 10 bytes to the tag.
        let mut footer = vec![b'I', b'D', b'3', 4, 0, 0x10, 0, 0, 0, 20];
        footer.resize(10 + 20 + 10, 0);
        footer.extend(mp3(64, 3));
        assert_eq!(
            audio_micros_at_most(&b64(&footer), "mp3"),
            Some(3 * per_frame)
        );
    }

    #[test]
    fn a_tag_is_read_for_frames_a_decoder_ignoring_it_would_find() {
        // A 10 KB tag (more than the slack: coverage counts from its end)
        // holding two agreeing 8 kHz frames, then 44.1 kHz frames that such
        // a decoder might play at 8 kHz: 1152 samples, 144 ms each.
        let mut tagged = vec![b'I', b'D', b'3', 4, 0, 0, 0, 0, 0x50, 0];
        let body = 0x50 << 7;
        tagged.extend(frames([0xFF, 0xE3, 0x18, 0x00], 2));
        tagged.resize(10 + body, 0);
        tagged.extend(mp3(64, 10));
        assert_eq!(
            audio_micros_at_most(&b64(&tagged), "mp3"),
            Some(2 * 72_000 + 10 * 144_000)
        );
        // The same tag without frames in it: the frames at their own rate.
        let mut plain = vec![b'I', b'D', b'3', 4, 0, 0, 0, 0, 0x50, 0];
        plain.resize(10 + body, 0);
        plain.extend(mp3(64, 10));
        assert_eq!(
            audio_micros_at_most(&b64(&plain), "mp3"),
            Some(10 * micros(1152, 44_100))
        );
    }

    #[test]
    fn tags_and_padding_at_the_end_need_no_frames() {
        let per_frame = micros(1152, 44_100);
        let audio = mp3(64, 10);
        // An APEv2 tag with a 9 KB picture and a header, then 6 KB of zeros.
        let mut ape = b"APETAGEX\xd0\x07\0\0".to_vec();
        let size: u32 = 9_000 + 32;
        let mut tag = ape.clone();
        tag.extend_from_slice(&[0; 20]);
        tag.resize(32 + 9_000, 0x42);
        ape.extend_from_slice(&size.to_le_bytes());
        ape.extend_from_slice(&1u32.to_le_bytes());
        ape.extend_from_slice(&(1u32 << 31).to_le_bytes());
        ape.extend_from_slice(&[0; 8]);
        tag.extend_from_slice(&ape);
        let mut b = [&audio[..], &tag].concat();
        b.resize(b.len() + 6_000, 0);
        assert_eq!(audio_micros_at_most(&b64(&b), "mp3"), Some(10 * per_frame));
        // An appended ID3v2 tag (footer "3DI") of 8 KB, then ID3v1.
        let mut id3 = b"ID3\x04\0\x10\0\0\x40\0".to_vec();
        id3.resize(10 + 8_192, 0x42);
        id3.extend_from_slice(b"3DI\x04\0\x10\0\0\x40\0");
        let mut v1 = b"TAG".to_vec();
        v1.resize(128, b'x');
        let b = [&audio[..], &id3, &v1].concat();
        assert_eq!(audio_micros_at_most(&b64(&b), "mp3"), Some(10 * per_frame));
        // A Lyrics3v2 tag of 6 KB.
        let mut lyrics = b"LYRICSBEGIN".to_vec();
        lyrics.resize(6_000, b'l');
        lyrics.extend_from_slice(b"006000LYRICS200");
        let b = [&audio[..], &lyrics].concat();
        assert_eq!(audio_micros_at_most(&b64(&b), "mp3"), Some(10 * per_frame));
        // The same 6 KB without the tag's footer: not known, another format.
        let b = [&audio[..], &lyrics[..6_000]].concat();
        assert_eq!(audio_micros_at_most(&b64(&b), "mp3"), None);
    }

    #[test]
    fn frames_play_at_most_at_the_first_frame_s_sample_rate() {
        // Two 8 kHz MPEG-2.5 frames (72 ms), then 48 kHz MPEG-1 layer III
        // frames (384 bytes, 24 ms at 48 kHz; 144 ms if played at 8 kHz).
        let mut b = frames([0xFF, 0xE3, 0x18, 0x00], 2);
        b.extend(frames([0xFF, 0xFB, 0x94, 0x00], 3));
        assert_eq!(frame(&[0xFF, 0xFB, 0x94, 0x00]).map(|f| f.bytes), Some(384));
        assert_eq!(
            audio_micros_at_most(&b64(&b), "mp3"),
            Some(2 * 72_000 + 3 * 144_000)
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
