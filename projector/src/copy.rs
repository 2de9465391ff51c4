//! Rows in PostgreSQL's `COPY … FROM STDIN` text format, for rebuilding a
//! projection with each row written once (`tollgate replay`).
//!
//! Columns are tab-separated, rows end with a newline, `\N` is NULL, and
//! backslash, tab, newline and carriage return inside a value are escaped.
//! A NUL character, which no `text` value can hold, is written as
//! [`crate::pg_text::NUL_REPLACEMENT`], as the live projections store it.

use chrono::{DateTime, Timelike as _, Utc};
use std::fmt::Write as _;

/// A growing buffer of COPY text rows.
pub struct CopyRows {
    buf: Vec<u8>,
    rows: u64,
    at_line_start: bool,
    /// Reused for formatting timestamps.
    scratch: String,
}

impl CopyRows {
    pub fn new() -> Self {
        CopyRows {
            buf: Vec::with_capacity(1 << 16),
            rows: 0,
            at_line_start: true,
            scratch: String::new(),
        }
    }

    fn sep(&mut self) {
        if !self.at_line_start {
            self.buf.push(b'\t');
        }
        self.at_line_start = false;
    }

    /// A text value, escaped (and NUL replaced, see [`crate::pg_text`]).
    pub fn text(&mut self, value: &str) -> &mut Self {
        self.sep();
        let value = crate::pg_text::pg_text(value);
        escape_into(&mut self.buf, value.as_bytes());
        self
    }

    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub fn null(&mut self) -> &mut Self {
        self.sep();
        self.buf.extend_from_slice(b"\\N");
        self
    }

    /// A value whose text form never needs escaping (numbers, uuids, dates).
    pub fn display(&mut self, value: impl std::fmt::Display) -> &mut Self {
        self.sep();
        let mut w = ByteWriter(&mut self.buf);
        let _ = write!(w, "{value}");
        self
    }

    /// A decimal without trailing zeros (`0.050` → `0.05`, `0.00` → `0`),
    /// as the live projections store sums (`trim_scale`), so a rebuilt row
    /// reads the same however its sum was split into batches.
    pub fn decimal(&mut self, value: rust_decimal::Decimal) -> &mut Self {
        self.display(value.normalize())
    }

    /// A timestamp with microseconds, truncated as sqlx binds `DateTime<Utc>`
    /// for times after 2000 (sqlx truncates toward 2000-01-01; PostgreSQL
    /// would round more digits).
    pub fn timestamp(&mut self, at: DateTime<Utc>) -> &mut Self {
        self.sep();
        let micros = at
            .with_nanosecond(at.nanosecond() / 1_000 * 1_000)
            .unwrap_or(at);
        self.scratch.clear();
        schemas::timestamp::format(&micros, &mut self.scratch);
        self.buf.extend_from_slice(self.scratch.as_bytes());
        self
    }

    pub fn opt_timestamp(&mut self, at: Option<DateTime<Utc>>) -> &mut Self {
        match at {
            Some(at) => self.timestamp(at),
            None => self.null(),
        }
    }

    /// A JSON value (for `jsonb` columns), escaped. Written straight into
    /// the buffer: compact JSON holds no raw control characters (NUL
    /// included), so only its backslashes need escaping.
    pub fn json(&mut self, value: &impl serde::Serialize) -> &mut Self {
        self.sep();
        let start = self.buf.len();
        if serde_json::to_writer(Escaping(&mut self.buf), value).is_err() {
            self.buf.truncate(start);
            self.buf.extend_from_slice(b"null");
        }
        self
    }

    pub fn end_row(&mut self) {
        self.buf.push(b'\n');
        self.rows += 1;
        self.at_line_start = true;
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The complete rows so far; the buffer starts over.
    pub fn take(&mut self) -> Vec<u8> {
        self.rows = 0;
        std::mem::replace(&mut self.buf, Vec::with_capacity(1 << 16))
    }
}

impl Default for CopyRows {
    fn default() -> Self {
        CopyRows::new()
    }
}

/// Appends `bytes` to `buf` with COPY text's escapes.
fn escape_into(buf: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(b),
        }
    }
}

/// Writes through [`escape_into`].
struct Escaping<'a>(&'a mut Vec<u8>);

impl std::io::Write for Escaping<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        escape_into(self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct ByteWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for ByteWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Streams `data` into `COPY {table} ({columns}) FROM STDIN` on `conn`.
pub async fn copy_into(
    conn: &mut sqlx::PgConnection,
    table: &str,
    columns: &str,
    data: Vec<u8>,
) -> sqlx::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN"))
        .await?;
    copy.send(data).await?;
    copy.finish().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_nulls() {
        let mut rows = CopyRows::new();
        rows.text("a\tb\\c\nd\re")
            .null()
            .display(42)
            .opt_text(None)
            .json(&serde_json::json!({"k": "v\t"}));
        rows.end_row();
        rows.text("x\0y");
        rows.end_row();
        assert_eq!(rows.rows(), 2);
        assert_eq!(
            String::from_utf8(rows.take()).unwrap(),
            "a\\tb\\\\c\\nd\\re\t\\N\t42\t\\N\t{\"k\":\"v\\\\t\"}\nx\u{FFFD}y\n"
        );
        assert_eq!(rows.rows(), 0);
    }

    #[test]
    fn timestamps_truncate_to_microseconds() {
        let at = DateTime::parse_from_rfc3339("2026-11-21T20:15:03.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut rows = CopyRows::new();
        rows.timestamp(at);
        assert_eq!(rows.take(), b"2026-11-21T20:15:03.123456Z");
    }
}
