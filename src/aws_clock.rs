//! AWS's clock as its responses state it: every KMS and Secrets Manager client carries an
//! interceptor that reads the `Date` header of each response (errors included) and remembers
//! it beside the local clock's reading at that moment (the test clock, `KEYPROV_TEST_NOW`,
//! when set). `clock_guard` compares the two before anything is generated or activated.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use aws_sdk_kms::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_kms::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_kms::error::BoxError;
use aws_sdk_kms::primitives::{DateTime, DateTimeFormat};

use crate::schedule::format_time;

/// One reading: what AWS said the time was, and what the local clock said when it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The response's `Date` (whole seconds).
    pub aws: SystemTime,
    /// The local clock (keyprov's, the test clock included) when the response arrived.
    pub local: SystemTime,
    /// The real monotonic moment of the reading, to tell how old it is.
    pub at: std::time::Instant,
}

impl Reading {
    /// How far apart the two clocks are, whichever is ahead.
    pub fn skew(&self) -> std::time::Duration {
        self.aws
            .duration_since(self.local)
            .or_else(|_| self.local.duration_since(self.aws))
            .unwrap_or_default()
    }
}

/// `reconcile.clockTolerance` of the running configuration.
fn tolerance_cell() -> &'static Mutex<Duration> {
    static TOLERANCE: OnceLock<Mutex<Duration>> = OnceLock::new();
    TOLERANCE.get_or_init(|| Mutex::new(crate::clock_guard::DEFAULT_TOLERANCE))
}

/// Sets the tolerance [`refusal`] applies (the configuration's `reconcile.clockTolerance`).
pub fn set_tolerance(tolerance: Duration) {
    *tolerance_cell().lock().expect("never poisoned") = tolerance;
}

/// The tolerance [`refusal`] applies.
pub fn tolerance() -> Duration {
    *tolerance_cell().lock().expect("never poisoned")
}

/// A reading older than this is not relied on.
pub const READING_MAX_AGE: Duration = Duration::from_secs(60);

/// The latest reading if it is fresh (see [`READING_MAX_AGE`]).
pub fn fresh_reading() -> Option<Reading> {
    reading().filter(|r| r.at.elapsed() < READING_MAX_AGE)
}

/// Why no key may be generated or activated now: this host's clock and AWS's (the fresh
/// reading) differ by more than the tolerance. Names both times (not the key: callers do).
pub fn refusal() -> Option<String> {
    let reading = fresh_reading()?;
    let tolerance = tolerance();
    (reading.skew() > tolerance).then(|| {
        format!(
            "not generated or activated: this host's clock says {} but AWS said \
             {} (the Date of its response at that moment), {} apart, more than \
             reconcile.clockTolerance ({}); a version stamped by a wrong clock would move the \
             fleet's rotations. Fix the clock (NTP: chronyc tracking, timedatectl) and run again",
            format_time(reading.local),
            format_time(reading.aws),
            humantime::format_duration(Duration::from_secs(reading.skew().as_secs())),
            humantime::format_duration(tolerance),
        )
    })
}

/// The latest reading of this process.
fn latest() -> &'static Mutex<Option<Reading>> {
    static LATEST: OnceLock<Mutex<Option<Reading>>> = OnceLock::new();
    LATEST.get_or_init(Mutex::default)
}

/// The latest reading, if any AWS response arrived in this process.
pub fn reading() -> Option<Reading> {
    *latest().lock().expect("never poisoned")
}

/// Records a response's `Date` header value (HTTP date); anything unparsable is ignored.
pub fn record(date: &str) {
    let Ok(parsed) = DateTime::from_str(date, DateTimeFormat::HttpDate) else {
        return;
    };
    let Ok(aws) = SystemTime::try_from(parsed) else {
        return;
    };
    *latest().lock().expect("never poisoned") = Some(Reading {
        aws,
        local: crate::clock::now_unlogged(),
        at: std::time::Instant::now(),
    });
}

/// The interceptor that feeds [`record`]; every AWS client keyprov builds carries it.
#[derive(Debug, Clone, Copy)]
pub struct DateHeader;

impl Intercept for DateHeader {
    fn name(&self) -> &'static str {
        "keyprov-aws-clock"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(date) = context.response().headers().get("date") {
            record(date);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_header_is_read_as_aws_time() {
        record("Sun, 06 Nov 1994 08:49:37 GMT");
        let reading = reading().unwrap();
        assert_eq!(
            crate::schedule::format_time(reading.aws),
            "1994-11-06T08:49:37.000000Z"
        );
        assert!(reading.skew() > std::time::Duration::from_secs(86_400 * 365 * 20));
        let refusal = refusal().unwrap();
        assert!(
            refusal.contains("but AWS said 1994-11-06T08:49:37.000000Z"),
            "{refusal}"
        );
        record("not a date");
        assert_eq!(super::reading().unwrap().aws, reading.aws, "ignored");
    }
}
