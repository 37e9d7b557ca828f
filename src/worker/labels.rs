//! Bounded label values of the request metrics.

/// HTTP methods that get their own label value; anything else is `other`, so a
/// client cannot create series at will.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
    /// `CONNECT`.
    Connect,
    /// `OPTIONS`.
    Options,
    /// `TRACE`.
    Trace,
    /// `PATCH`.
    Patch,
    /// Any other method: label value `other`.
    Other,
}

impl Method {
    /// Parses an upper-case method name (as Gunicorn passes it).
    pub fn parse(name: &[u8]) -> Method {
        match name {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other => "other",
        }
    }
}

/// Status codes with a label of their own: the three-digit range. Anything
/// else (a broken application) shares one `other` series.
pub const STATUS_SLOTS: usize = 901;

/// Slot of a status code in `0..STATUS_SLOTS`.
pub fn status_slot(code: u16) -> usize {
    if (100..=999).contains(&code) {
        (code - 100) as usize
    } else {
        STATUS_SLOTS - 1
    }
}

/// The `status` label value of a slot: the code, or `other`.
pub fn status_label(slot: usize) -> String {
    if slot == STATUS_SLOTS - 1 {
        "other".to_owned()
    } else {
        (slot + 100).to_string()
    }
}

/// The leading status code of a status line such as `"200 OK"`.
pub fn parse_status(line: &[u8]) -> u16 {
    let digits = line.iter().take_while(|b| b.is_ascii_digit()).take(4);
    digits.fold(0u16, |acc, b| acc * 10 + (b - b'0') as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_are_other() {
        assert_eq!(Method::parse(b"GET"), Method::Get);
        assert_eq!(Method::parse(b"PROPFIND"), Method::Other);
        assert_eq!(Method::parse(b"get"), Method::Other);
    }

    #[test]
    fn status_lines_and_slots() {
        assert_eq!(parse_status(b"404 Not Found"), 404);
        assert_eq!(status_label(status_slot(parse_status(b"200"))), "200");
        assert_eq!(status_label(status_slot(parse_status(b"12345 x"))), "other");
        assert_eq!(status_label(status_slot(parse_status(b"OK"))), "other");
    }
}
