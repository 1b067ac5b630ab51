//! `startDateTime` as the API writes it: `yyyy-M-dd hh:mm:ss AM|PM` (month not padded, day
//! padded). The server re-pads what it is sent, so the operator compares parsed times.

use jiff::civil::DateTime;

const PARSE: &str = "%Y-%m-%d %I:%M:%S %p";

/// Parse leniently (either padding, either case of AM/PM).
pub fn parse_start(value: &str) -> Option<DateTime> {
    DateTime::strptime(PARSE, value.trim()).ok()
}

/// Format as the server does (`yyyy-M-dd hh:mm:ss AM|PM`). Written out by hand: this runs on
/// both sides of every diff, and is several times faster than interpreting a format string.
pub fn format_start(value: DateTime) -> String {
    let hour = value.hour();
    let (h12, half) = match hour {
        0 => (12, "AM"),
        1..=11 => (hour, "AM"),
        12 => (12, "PM"),
        _ => (hour - 12, "PM"),
    };
    format!(
        "{}-{}-{:02} {:02}:{:02}:{:02} {half}",
        value.year(),
        value.month(),
        value.day(),
        h12,
        value.minute(),
        value.second()
    )
}

/// The server's spelling of a value it accepts, or `None` when it does not parse.
pub fn canonical_start(value: &str) -> Option<String> {
    parse_start(value).map(format_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_repads_the_month() {
        assert_eq!(
            canonical_start("2025-07-01 09:57:18 AM").as_deref(),
            Some("2025-7-01 09:57:18 AM")
        );
        assert_eq!(
            canonical_start("2025-7-1 9:57:18 pm").as_deref(),
            Some("2025-7-01 09:57:18 PM")
        );
        assert_eq!(
            canonical_start("2024-12-31 10:25:52 AM").as_deref(),
            Some("2024-12-31 10:25:52 AM")
        );
        assert_eq!(canonical_start("2025-2-30 09:57:18 AM"), None);
        assert_eq!(canonical_start("tomorrow"), None);
        assert_eq!(
            canonical_start("2025-1-05 12:00:00 AM").as_deref(),
            Some("2025-1-05 12:00:00 AM")
        );
        assert_eq!(
            canonical_start("2025-1-05 12:30:00 PM").as_deref(),
            Some("2025-1-05 12:30:00 PM")
        );
        assert_eq!(
            canonical_start("2025-1-05 11:59:59 PM").as_deref(),
            Some("2025-1-05 11:59:59 PM")
        );
    }
}
