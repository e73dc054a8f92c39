//! The part of an e-mail a text model should read: its `Subject:` line and its body, without the
//! header block (routing lines, message ids, dates and host names, which fill the first hundred
//! tokens of a raw message and say little about its content).

use std::borrow::Cow;

/// `Subject: …` (when the message has one) followed by the body: the text after the first blank
/// line of a message that starts with a header block. Anything that does not start like an
/// e-mail (an mbox `From ` line or a `Name: value` header) is returned as it is.
pub fn subject_and_body(text: &str) -> Cow<'_, str> {
    let first = text.lines().next().unwrap_or("");
    let looks_like_header = first.starts_with("From ")
        || first
            .split_once(':')
            .is_some_and(|(name, _)| !name.is_empty() && !name.contains(' '));
    if !looks_like_header {
        return Cow::Borrowed(text);
    }
    let (headers, body) = match (text.find("\n\n"), text.find("\r\n\r\n")) {
        (Some(a), Some(b)) if b < a => (&text[..b], &text[b + 4..]),
        (Some(a), _) => (&text[..a], &text[a + 2..]),
        (None, Some(b)) => (&text[..b], &text[b + 4..]),
        (None, None) => (text, ""),
    };
    let subject = headers
        .lines()
        .find(|l| l.len() >= 8 && l[..8].eq_ignore_ascii_case("subject:"))
        .map(|l| l[8..].trim());
    match subject {
        Some(s) => Cow::Owned(format!("{s}\n{body}")),
        None => Cow::Borrowed(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_go_subject_stays() {
        let m = "From a@b  Thu Aug 22 2002\nReceived: from x\n\tby y\nSubject: Cheap pills\nTo: z\n\nBuy now.\n\nBye";
        assert_eq!(subject_and_body(m), "Cheap pills\nBuy now.\n\nBye");
        let crlf = "Subject: hi\r\nFrom: a\r\n\r\nbody";
        assert_eq!(subject_and_body(crlf), "hi\nbody");
        let no_subject = "Received: x\n\nonly body";
        assert_eq!(subject_and_body(no_subject), "only body");
        // Not an e-mail: untouched.
        let prose = "It is a truth universally acknowledged: a single man…\n\nMore.";
        assert_eq!(subject_and_body(prose), prose);
        // Headers only.
        assert_eq!(subject_and_body("Subject: x\nTo: y"), "x\n");
    }
}
