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

/// Whether `text` is a raw e-mail beyond doubt: a header block of at least two lines (an mbox
/// `From ` line first, or `Name: value` headers with names of letters, digits and `-`, and
/// continuation lines starting with a space or tab) ended by a blank line. Prose that opens
/// with `Note: …` is one line of "header", not a block: it is read whole by `text_part = auto`.
pub fn is_email(text: &str) -> bool {
    let end = match (text.find("\n\n"), text.find("\r\n\r\n")) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => return false,
    };
    let mut headers = 0;
    for (i, line) in text[..end].lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if i == 0 && line.starts_with("From ") {
            headers += 1;
        } else if line.starts_with([' ', '\t']) && i > 0 {
            continue;
        } else if line.split_once(':').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        }) {
            headers += 1;
        } else {
            return false;
        }
    }
    headers >= 2
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

    #[test]
    fn only_a_header_block_makes_an_email() {
        let m =
            "From a@b  Thu Aug 22 2002\nReceived: from x\n\tby y\nSubject: Cheap pills\n\nBuy now.";
        assert!(is_email(m));
        assert!(is_email("Subject: hi\r\nFrom: a\r\n\r\nbody"));
        assert!(is_email("X-Spam-Level: 1\nMessage-Id: <1@x>\n\n"));
        // One header-like line, a sentence with a colon, no blank line, no headers at all.
        assert!(!is_email("Note: the train is late.\n\nMore."));
        assert!(!is_email("Dear John: hello\nTo: you\n\nbody"));
        assert!(!is_email("Subject: x\nTo: y"));
        assert!(!is_email(
            "It is a truth universally acknowledged.\n\nMore."
        ));
        assert!(!is_email(""));
    }
}
