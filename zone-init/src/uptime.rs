//! Time since the kernel booted, from `/proc/uptime`.

/// Parses the first field of `/proc/uptime` ("12.34 5.67") into whole milliseconds.
pub fn parse_uptime_ms(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    // Milliseconds from the first three fractional digits, padded ("5" is 500 ms).
    let mut ms = 0u64;
    for i in 0..3 {
        let d = frac.as_bytes().get(i).map_or(0, |b| u64::from(b - b'0'));
        ms = ms * 10 + d;
    }
    secs.checked_mul(1000)?.checked_add(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_becomes_milliseconds() {
        assert_eq!(parse_uptime_ms("12.34 5.67\n"), Some(12_340));
        assert_eq!(parse_uptime_ms("0.05 0.00"), Some(50));
        assert_eq!(parse_uptime_ms("3.1"), Some(3_100));
        assert_eq!(parse_uptime_ms("7 1"), Some(7_000));
        assert_eq!(parse_uptime_ms("1.23456"), Some(1_234));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse_uptime_ms(""), None);
        assert_eq!(parse_uptime_ms("abc 1"), None);
        assert_eq!(parse_uptime_ms("-1.0"), None);
        assert_eq!(parse_uptime_ms(".5"), None);
        assert_eq!(parse_uptime_ms("1.x"), None);
    }
}
