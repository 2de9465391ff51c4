//! Incremental Server-Sent Events parser: bytes in, whole events out.
//!
//! Accepts any chunking of the input (an event, a line, even a multi-byte
//! character may be split across pushes), LF, CRLF and CR line endings,
//! `event:` and multi-line `data:` fields, and `:` comment lines. The result
//! does not depend on where the input was split.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Most bytes an event may hold before it is complete (its unfinished
/// line and its `data:` so far). Base URLs are the projects' to set, so a
/// provider's stream that never ends a line or an event must not fill the
/// memory every project shares; real events, an image in one included, are
/// far smaller.
pub const MAX_SSE_EVENT_BYTES: usize = 16 << 20;

#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    /// The previous push ended on `\r`: a leading `\n` belongs to that line end.
    skip_lf: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    /// Nothing has been read yet: a byte order mark may start the stream.
    started: bool,
    /// An event outgrew [`MAX_SSE_EVENT_BYTES`]: dropped, and nothing more
    /// is read.
    oversized: bool,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        if self.oversized {
            return events;
        }
        let mut rest = bytes;
        if !self.started && !rest.is_empty() {
            // One U+FEFF at the very start is not part of the first field
            // (the SSE specification); it may come split over pushes.
            // Until then `line` holds only the mark's bytes seen so far.
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            let seen = self.line.len();
            let take = (BOM.len() - seen).min(rest.len());
            if rest[..take] == BOM[seen..seen + take] {
                rest = &rest[take..];
                if seen + take < BOM.len() {
                    self.line.extend_from_slice(&BOM[seen..seen + take]);
                    return events;
                }
                self.line.clear();
            }
            // (Not a mark after all: what was held back is text, in `line`.)
            self.started = true;
        }
        if self.skip_lf && !rest.is_empty() {
            self.skip_lf = false;
            if let Some(stripped) = rest.strip_prefix(b"\n") {
                rest = stripped;
            }
        }
        while let Some(pos) = memchr::memchr2(b'\n', b'\r', rest) {
            if self.line.is_empty() {
                // The whole line is in this push: read it where it is.
                self.end_line(&rest[..pos], &mut events);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&rest[..pos]);
                self.end_line(&line, &mut events);
                line.clear();
                self.line = line;
            }
            let crlf = rest[pos] == b'\r';
            rest = &rest[pos + 1..];
            if crlf {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
        }
        self.line.extend_from_slice(rest);
        if self.line.len() + self.data.len() > MAX_SSE_EVENT_BYTES {
            self.oversized = true;
            self.line = Vec::new();
            self.data = String::new();
            self.has_data = false;
        }
        events
    }

    /// Whether an event outgrew [`MAX_SSE_EVENT_BYTES`] (the stream is to end).
    pub fn oversized(&self) -> bool {
        self.oversized
    }

    /// End of input: an unterminated last line and event still count if
    /// whole (their data reads as JSON, or is `[DONE]`); the half of one a
    /// broken connection cut off is dropped, not passed on as an event.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.end_line(&line, &mut events);
        }
        self.dispatch(&mut events);
        self.skip_lf = false;
        events.pop().filter(|e| {
            e.data.trim() == "[DONE]"
                || serde_json::from_str::<serde::de::IgnoredAny>(&e.data).is_ok()
        })
    }

    fn end_line(&mut self, line: &[u8], events: &mut Vec<SseEvent>) {
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        // `from_utf8` first: much faster than the lossy scan on valid text.
        let line = match std::str::from_utf8(line) {
            Ok(text) => std::borrow::Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(line),
        };
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        let event = self.event.take();
        if std::mem::take(&mut self.has_data) {
            events.push(SseEvent {
                event,
                data: std::mem::take(&mut self.data),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out: Vec<SseEvent> = chunks.iter().flat_map(|c| p.push(c)).collect();
        out.extend(p.finish());
        out
    }

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
        }
    }

    #[test]
    fn lf_crlf_and_cr_framing() {
        let want = vec![ev(None, "a"), ev(Some("x"), "b")];
        assert_eq!(parse_all(&[b"data: a\n\nevent: x\ndata: b\n\n"]), want);
        assert_eq!(
            parse_all(&[b"data: a\r\n\r\nevent: x\r\ndata: b\r\n\r\n"]),
            want
        );
        assert_eq!(parse_all(&[b"data: a\r\r", b"event: x\rdata: b\r\r"]), want);
    }

    #[test]
    fn crlf_split_between_pushes() {
        let want = vec![ev(None, "a"), ev(None, "b")];
        assert_eq!(
            parse_all(&[b"data: a\r", b"", b"\n\r", b"\ndata: b\r\n\r\n"]),
            want
        );
    }

    #[test]
    fn multi_line_data_comments_and_unterminated_tail() {
        let got =
            parse_all(&[b": keep-alive\ndata: one\ndata:two\n\nid: 5\ndata: {\"type\":\"x\"}"]);
        assert_eq!(
            got,
            vec![ev(None, "one\ntwo"), ev(None, "{\"type\":\"x\"}")]
        );
    }

    #[test]
    fn a_cut_off_last_event_is_dropped_and_a_whole_one_kept() {
        let cut =
            parse_all(&[b"data: {\"a\":1}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"he"]);
        assert_eq!(cut, vec![ev(None, "{\"a\":1}")]);
        assert_eq!(
            parse_all(&[b"data: {\"a\":1}\n\ndata: [DONE]"]),
            vec![ev(None, "{\"a\":1}"), ev(None, "[DONE]")]
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_field() {
        let want = vec![ev(None, "{}")];
        assert_eq!(parse_all(&[b"\xef\xbb\xbfdata: {}\n\n"]), want);
        assert_eq!(parse_all(&[b"\xef", b"\xbb", b"\xbfdata: {}\n\n"]), want);
        // Only at the very start, and only a whole one.
        assert_eq!(parse_all(&[b"\xef\xbbdata: {}\n\n"]), vec![]);
        assert_eq!(parse_all(&[b"data: {}\n\n\xef\xbb\xbfdata: {}\n\n"]), want);
    }

    #[test]
    fn an_event_that_never_ends_stops_the_parser_at_the_limit() {
        let mut p = SseParser::default();
        let line = vec![b'a'; 1 << 20];
        assert!(p.push(b"data: ").is_empty());
        for _ in 0..(MAX_SSE_EVENT_BYTES >> 20) {
            assert!(p.push(&line).is_empty());
            assert!(!p.oversized() || p.line.is_empty());
        }
        assert!(p.push(&line).is_empty());
        assert!(p.oversized());
        assert!(
            p.line.capacity() == 0 && p.data.capacity() == 0,
            "memory given back"
        );
        // Nothing more is read, ended events neither.
        assert!(p.push(b"\n\ndata: {}\n\n").is_empty());
        assert_eq!(p.finish(), None);
        // Many short data lines without the blank line that ends an event.
        let mut p = SseParser::default();
        let lines = b"data: x\n".repeat(1 << 16);
        while !p.oversized() {
            assert!(p.push(&lines).is_empty());
        }
        assert!(p.data.len() + p.line.len() <= MAX_SSE_EVENT_BYTES);
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let input: &[u8] = b"\xef\xbb\xbf: hi\r\nevent: x\ndata: h\xc3\xa9\r\ndata: {\"a\":1}\r\rdata: b\n\ndata: \xff\n\ndata: \"tail\"";
        let whole = parse_all(&[input]);
        assert_eq!(
            whole,
            vec![
                ev(Some("x"), "h\u{e9}\n{\"a\":1}"),
                ev(None, "b"),
                ev(None, "\u{fffd}"),
                ev(None, "\"tail\""),
            ]
        );
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let got = parse_all(&[&input[..i], &input[i..j], &input[j..]]);
                assert_eq!(got, whole, "split at {i} and {j}");
            }
        }
    }

    #[test]
    fn split_multibyte_character() {
        let bytes = "data: héllo\n\n".as_bytes();
        let got = parse_all(&[&bytes[..8], &bytes[8..]]);
        assert_eq!(got, vec![ev(None, "héllo")]);
    }
}
