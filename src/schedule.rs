//! Rotation arithmetic: durations as written in manifests, and when the next generation is due.

use std::time::{Duration, SystemTime};

/// Longest `rotation.every` and `rotation.publishAhead`: 100 years (of 365.25 days).
pub const MAX_ROTATION: Duration = Duration::from_secs(36_525 * 86_400);

/// Parses a manifest duration such as `90d`, `12h` or `1h 30m` (humantime syntax).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim())
        .map_err(|err| format!("invalid duration {text:?}: {err} (examples: 90d, 12h, 30m)"))?;
    if duration.is_zero() {
        return Err(format!("duration {text:?} must be positive"));
    }
    Ok(duration)
}

/// Parses a duration as [`parse_duration`] does and refuses one longer than `max`.
pub fn parse_bounded_duration(text: &str, max: Duration) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration > max {
        return Err(format!(
            "duration {text:?} is longer than the maximum of {}",
            humantime::format_duration(max)
        ));
    }
    Ok(duration)
}

/// The latest time keyprov writes or computes: 9999-12-31T23:59:59.999999Z, the end of what
/// RFC 3339 can say. Schedule arithmetic saturates here instead of overflowing.
pub fn max_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_000)
}

/// `time + duration`, saturating at [`max_time`].
pub fn add(time: SystemTime, duration: Duration) -> SystemTime {
    time.checked_add(duration)
        .map_or(max_time(), |t| t.min(max_time()))
}

/// Formats a time the way meta.json and status print it: RFC 3339, UTC, microseconds. Times
/// outside 1970..=9999 (a clock or a meta.json far off) are clamped, never a panic.
pub fn format_time(time: SystemTime) -> String {
    let time = time.clamp(SystemTime::UNIX_EPOCH, max_time());
    humantime::format_rfc3339_micros(time).to_string()
}

/// Parses an RFC 3339 time as written by [`format_time`].
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text).map_err(|err| format!("invalid time {text:?}: {err}"))
}

/// When publication of the next generation should start and when it should become current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// `activatesAt(current) + every`: when the next generation should be current.
    pub activate_at: SystemTime,
    /// `activate_at - publishAhead`: when the next generation should be published.
    pub publish_at: SystemTime,
}

/// Longest rotation spread (see [`spread`]).
pub const MAX_SPREAD: Duration = Duration::from_secs(3600);

/// The spread of key `name`'s rotations: a fixed offset, derived from the name alone (so every
/// host agrees), of up to 1% of `every` and at most [`MAX_SPREAD`], added to each due time.
/// Keys created together (1,000 manifests applied at once) thus fall due spread over that
/// window instead of all in the same second, every `every` after.
pub fn spread(name: &str, every: Duration) -> Duration {
    let window = (every / 100).min(MAX_SPREAD);
    // Whole microseconds, the precision of meta.json times.
    let window_micros = window.as_micros() as u64;
    if window_micros == 0 {
        return Duration::ZERO;
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    Duration::from_micros(u64::from_be_bytes(first) % window_micros)
}

/// The rotation schedule of the current generation, or `None` when the key never rotates.
/// `spread` is the key's [`spread`].
pub fn due(
    current_activated_at: SystemTime,
    every: Option<Duration>,
    publish_ahead: Option<Duration>,
    spread: Duration,
) -> Option<Due> {
    let activate_at = add(add(current_activated_at, every?), spread);
    let publish_at = activate_at
        .checked_sub(publish_ahead.unwrap_or_default())
        .unwrap_or(activate_at);
    Some(Due {
        activate_at,
        publish_at,
    })
}

/// When a generation published at `now` activates: never before it is due, and never with
/// less than `publish_ahead` of notice for verifiers (a late publication keeps its full window).
pub fn activation_time(
    now: SystemTime,
    due_at: Option<SystemTime>,
    publish_ahead: Option<Duration>,
) -> SystemTime {
    let Some(ahead) = publish_ahead else {
        return now;
    };
    let earliest = add(now, ahead);
    match due_at {
        Some(due_at) if due_at > earliest => due_at,
        _ => earliest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_fixed_per_name_and_within_one_percent_capped() {
        let day = Duration::from_secs(86_400);
        assert_eq!(spread("a", day), spread("a", day), "deterministic");
        let names: Vec<String> = (0..1000).map(|i| format!("key-{i}")).collect();
        let spreads: Vec<Duration> = names.iter().map(|n| spread(n, day)).collect();
        assert!(spreads.iter().all(|s| *s < day / 100));
        let distinct_seconds: std::collections::BTreeSet<u64> =
            spreads.iter().map(Duration::as_secs).collect();
        assert!(distinct_seconds.len() > 500, "{}", distinct_seconds.len());
        assert!(names.iter().all(|n| spread(n, 90 * day) < MAX_SPREAD));
        assert!(spread("a", Duration::from_secs(1)) < Duration::from_millis(10));
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn parses_manifest_durations() {
        let cases = [
            ("90d", Ok(90 * DAY)),
            ("12h", Ok(Duration::from_secs(12 * 3600))),
            ("1h 30m", Ok(Duration::from_secs(5400))),
            ("0s", Err("must be positive")),
            ("soon", Err("invalid duration")),
            ("-5d", Err("invalid duration")),
        ];
        for (text, expected) in cases {
            match (parse_duration(text), expected) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{text}: {got}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn time_round_trips_with_fractional_seconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let text = format_time(t);
        assert_eq!(text, "2023-11-14T22:13:20.123456Z");
        assert_eq!(parse_time(&text), Ok(t));
    }

    #[test]
    fn due_subtracts_publish_ahead() {
        let t0 = SystemTime::UNIX_EPOCH + 1000 * DAY;
        assert_eq!(due(t0, None, Some(DAY), Duration::ZERO), None);
        let d = due(t0, Some(90 * DAY), Some(7 * DAY), Duration::ZERO).unwrap();
        assert_eq!(d.activate_at, t0 + 90 * DAY);
        assert_eq!(d.publish_at, t0 + 83 * DAY);
        let d = due(t0, Some(90 * DAY), None, Duration::ZERO).unwrap();
        assert_eq!(d.publish_at, d.activate_at);
    }

    #[test]
    fn far_times_saturate_instead_of_panicking() {
        let far = parse_time("9999-06-01T00:00:00Z").unwrap();
        let d = due(
            far,
            Some(MAX_ROTATION),
            Some(MAX_ROTATION / 2),
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(d.activate_at, max_time());
        assert_eq!(format_time(d.activate_at), "9999-12-31T23:59:59.999999Z");
        assert_eq!(activation_time(far, None, Some(MAX_ROTATION)), max_time());
        let beyond = SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40);
        assert_eq!(format_time(beyond), "9999-12-31T23:59:59.999999Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(format_time(before), "1970-01-01T00:00:00.000000Z");
        assert_eq!(add(max_time(), Duration::MAX), max_time());
        assert_eq!(parse_time(&format_time(max_time())), Ok(max_time()));
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(
            parse_bounded_duration("100y", MAX_ROTATION),
            Ok(MAX_ROTATION)
        );
        let err = parse_bounded_duration("20000y", MAX_ROTATION).unwrap_err();
        assert!(err.contains("longer than the maximum of 100years"), "{err}");
        let err = parse_bounded_duration("99999999999999999999y", MAX_ROTATION).unwrap_err();
        assert!(err.contains("invalid duration"), "{err}");
    }

    #[test]
    fn late_publication_keeps_its_notice_window() {
        let now = SystemTime::UNIX_EPOCH + 1000 * DAY;
        assert_eq!(activation_time(now, Some(now - DAY), None), now);
        assert_eq!(
            activation_time(now, Some(now + 7 * DAY), Some(7 * DAY)),
            now + 7 * DAY
        );
        assert_eq!(
            activation_time(now, Some(now + 3 * DAY), Some(7 * DAY)),
            now + 7 * DAY
        );
        assert_eq!(
            activation_time(now, Some(now + 9 * DAY), Some(7 * DAY)),
            now + 9 * DAY
        );
        assert_eq!(activation_time(now, None, Some(7 * DAY)), now + 7 * DAY);
    }
}
