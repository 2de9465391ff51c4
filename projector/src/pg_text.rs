//! Text as PostgreSQL can store it. A `text` value cannot hold the NUL
//! character (0x00): PostgreSQL refuses the whole statement, or the whole
//! `COPY`. The ingest API refuses control characters, but the stream is the
//! source of truth and may hold any string (another producer, an older
//! version), and a projection that cannot write an event would stop at it
//! for good. So every text value taken from an event goes through
//! [`pg_text`] on its way to a projection table: the live consumers and
//! `tollgate replay` alike, so both write the same rows (invariant 3).

use std::borrow::Cow;

/// What a NUL character is stored as: U+FFFD REPLACEMENT CHARACTER, so the
/// row still shows that something was there.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `value` with every NUL character replaced by [`NUL_REPLACEMENT`]
/// (borrowed unchanged in the usual case, when it has none).
pub fn pg_text(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', &NUL_REPLACEMENT.to_string()))
    } else {
        Cow::Borrowed(value)
    }
}

/// [`pg_text`] into an owned `String` (for bind arrays).
pub fn pg_string(value: &str) -> String {
    pg_text(value).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_replaced_and_other_text_is_untouched() {
        assert_eq!(pg_text("a\0b\0"), "a\u{FFFD}b\u{FFFD}");
        assert!(matches!(pg_text("a\tb\u{1}é"), Cow::Borrowed("a\tb\u{1}é")));
        assert_eq!(pg_string(""), "");
    }
}
