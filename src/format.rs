//! How figures are written for people. Pure, shared by server and browser,
//! so the server-rendered HTML and the hydrated page agree to the character.
//!
//! Nothing here ever writes `NaN`, `inf` or a negative amount: a value that
//! is not a finite, non-negative number is shown as zero.

const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;
/// A year of 365 days: durations are totals of machine time, not calendar spans.
const YEAR_MS: u64 = 365 * DAY_MS;
/// CPU-hours in a CPU-year (365 days).
const HOURS_PER_YEAR: f64 = 365.0 * 24.0;

/// A count with thousands separators: `1234567` -> `1,234,567`.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A finite, non-negative value, or zero.
fn sane(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

/// A non-negative decimal with `decimals` places and thousands separators
/// in its whole part: `12345.678, 1` -> `12,345.7`.
pub fn decimal(x: f64, decimals: usize) -> String {
    let x = sane(x);
    let scale = 10f64.powi(decimals as i32);
    // Round once, in integer units of the last place, so 9.96 -> "10.0".
    let units = (x * scale).round();
    if units >= u64::MAX as f64 {
        return count(u64::MAX / 10u64.pow(decimals as u32));
    }
    let units = units as u64;
    let pow = 10u64.pow(decimals as u32);
    let whole = count(units / pow);
    if decimals == 0 {
        whole
    } else {
        format!("{whole}.{:0width$}", units % pow, width = decimals)
    }
}

/// A non-negative number for machines, without separators, to the
/// millionth: `1234.5` -> `1234.500000`, for `<data value>`. Integer
/// formatting only: `f64`'s own `Display` would add its float-printing
/// code to the WASM bundle.
pub fn plain(x: f64) -> String {
    let units = (sane(x) * 1e6).round();
    if units >= u64::MAX as f64 {
        return (u64::MAX / 1_000_000).to_string();
    }
    let units = units as u64;
    format!("{}.{:06}", units / 1_000_000, units % 1_000_000)
}

/// A duration in ms as its two largest units: `3y 41d`, `5h 12m`, `42s`.
/// Zero and negative durations are `0s`.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0) as u64;
    let units = [
        (YEAR_MS, "y"),
        (DAY_MS, "d"),
        (HOUR_MS, "h"),
        (MINUTE_MS, "m"),
        (SECOND_MS, "s"),
    ];
    for (i, &(size, name)) in units.iter().enumerate() {
        if ms >= size {
            let big = ms / size;
            let big = if name == "y" {
                count(big)
            } else {
                big.to_string()
            };
            return match units.get(i + 1) {
                Some(&(small_size, small_name)) => {
                    let small = (ms % size) / small_size;
                    if small == 0 {
                        format!("{big}{name}")
                    } else {
                        format!("{big}{name} {small}{small_name}")
                    }
                }
                None => format!("{big}{name}"),
            };
        }
    }
    "0s".to_string()
}

/// A wait, short: `350ms` under a second, `4.2s` under ten seconds
/// (truncated to the tenth, as [`duration_ms`] truncates), then as
/// [`duration_ms`]: `42s`, `1m 5s`. Negative waits are `0ms`.
pub fn wait_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < SECOND_MS as i64 {
        format!("{ms}ms")
    } else if ms < 10 * SECOND_MS as i64 {
        format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
    } else {
        duration_ms(ms)
    }
}

/// A window of time in words, in its largest whole unit: `2 minutes`,
/// `1 hour`, `90 seconds`.
pub fn window_words(ms: u64) -> String {
    let (amount, unit) = if ms >= HOUR_MS && ms.is_multiple_of(HOUR_MS) {
        (ms / HOUR_MS, "hour")
    } else if ms >= MINUTE_MS && ms.is_multiple_of(MINUTE_MS) {
        (ms / MINUTE_MS, "minute")
    } else {
        (ms.div_ceil(SECOND_MS), "second")
    };
    let plural = if amount == 1 { "" } else { "s" };
    format!("{amount} {unit}{plural}")
}

/// CPU time as an amount and its unit, CPU-hours below one CPU-year and
/// CPU-years from there: `(3600.0)` -> `("1.00", "CPU-hours")`.
pub fn cpu_time(seconds: f64) -> (String, &'static str) {
    let hours = sane(seconds) / 3600.0;
    if hours >= HOURS_PER_YEAR {
        let years = hours / HOURS_PER_YEAR;
        (significant(years), "CPU-years")
    } else if hours > 0.0 && hours < 0.005 {
        // Some CPU time, too little to show in hundredths: not "0.00".
        ("< 0.01".to_string(), "CPU-hours")
    } else {
        (significant(hours), "CPU-hours")
    }
}

/// CPU time in one string: `1,204 CPU-hours`, `3.52 CPU-years`.
pub fn cpu_time_text(seconds: f64) -> String {
    let (amount, unit) = cpu_time(seconds);
    format!("{amount} {unit}")
}

/// About three significant figures, never fewer than the whole part:
/// `1.234` -> `1.23`, `12.34` -> `12.3`, `1234.5` -> `1,235`.
fn significant(x: f64) -> String {
    // Decide the places on the rounded value, so 9.999 shows as "10.0".
    if (x * 100.0).round() < 1000.0 {
        decimal(x, 2)
    } else if (x * 10.0).round() < 1000.0 {
        decimal(x, 1)
    } else {
        decimal(x, 0)
    }
}

/// Cores busy with one decimal: `2.46` -> `2.5`.
pub fn cores(busy: f64) -> String {
    decimal(busy, 1)
}

/// Civil date (year, month 1..=12, day 1..=31) of a UTC day number
/// (days since 1970-01-01). Howard Hinnant's `civil_from_days`.
pub fn civil_from_days(day: i64) -> (i64, u32, u32) {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// `YYYY-MM-DD` of a UTC day number.
pub fn iso_day(day: i64) -> String {
    let (y, m, d) = civil_from_days(day);
    format!("{y:04}-{m:02}-{d:02}")
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A `YYYY-MM-DD` day as `Nov 29`; anything else is returned as it came.
pub fn short_day(iso: &str) -> String {
    let mut parts = iso.splitn(3, '-').skip(1);
    let month = parts.next().and_then(|m| m.parse::<usize>().ok());
    let day = parts.next().and_then(|d| d.parse::<u32>().ok());
    match (month, day) {
        (Some(m @ 1..=12), Some(d)) => format!("{} {d}", MONTHS[m - 1]),
        _ => iso.to_string(),
    }
}

/// The time of day of `ms` since the epoch, UTC: `14:03:27 UTC`. Always the
/// same on server and browser (no local time zone involved).
pub fn clock_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// `ms` since the epoch as an RFC 3339 UTC time to the second:
/// `2025-11-29T01:33:27Z`, for `<time datetime>`.
pub fn rfc3339_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let of_day = secs.rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        iso_day(secs.div_euclid(86_400)),
        of_day / 3600,
        (of_day / 60) % 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers for `<data value>`: no separators, millionths, never NaN.
    #[test]
    fn plain_numbers() {
        assert_eq!(plain(1234.5), "1234.500000");
        assert_eq!(plain(0.0000004), "0.000000");
        assert_eq!(plain(f64::NAN), "0.000000");
        assert_eq!(plain(-3.0), "0.000000");
    }

    /// Windows read in their largest whole unit, singular or plural.
    #[test]
    fn windows_in_words() {
        assert_eq!(window_words(120_000), "2 minutes");
        assert_eq!(window_words(60_000), "1 minute");
        assert_eq!(window_words(3_600_000), "1 hour");
        assert_eq!(window_words(90_000), "90 seconds");
        assert_eq!(window_words(1_000), "1 second");
        assert_eq!(window_words(1_500), "2 seconds");
    }

    /// Counts get a separator every three digits, and none below 1,000.
    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(u64::MAX), "18,446,744,073,709,551,615");
    }

    /// Zero, sub-second and negative durations read `0s`.
    #[test]
    fn durations_zero_and_below_a_second() {
        assert_eq!(duration_ms(0), "0s");
        assert_eq!(duration_ms(999), "0s");
        assert_eq!(duration_ms(-5_000), "0s");
        assert_eq!(duration_ms(i64::MIN), "0s");
    }

    /// Waits read in ms below a second, tenths below ten seconds, then
    /// like any duration; never a rounding up across a unit.
    #[test]
    fn waits() {
        assert_eq!(wait_ms(-3), "0ms");
        assert_eq!(wait_ms(0), "0ms");
        assert_eq!(wait_ms(999), "999ms");
        assert_eq!(wait_ms(1_000), "1.0s");
        assert_eq!(wait_ms(4_268), "4.2s");
        assert_eq!(wait_ms(9_999), "9.9s");
        assert_eq!(wait_ms(10_000), "10s");
        assert_eq!(wait_ms(65_000), "1m 5s");
    }

    /// Under a minute shows seconds only.
    #[test]
    fn durations_under_a_minute() {
        assert_eq!(duration_ms(1_000), "1s");
        assert_eq!(duration_ms(42_500), "42s");
        assert_eq!(duration_ms(59_999), "59s");
    }

    /// Exactly one of each unit shows that unit alone.
    #[test]
    fn durations_at_unit_boundaries() {
        assert_eq!(duration_ms(60_000), "1m");
        assert_eq!(duration_ms(3_600_000), "1h");
        assert_eq!(duration_ms(86_400_000), "1d");
        assert_eq!(duration_ms(365 * 86_400_000), "1y");
        assert_eq!(duration_ms(365 * 86_400_000 - 1), "364d 23h");
        assert_eq!(duration_ms(86_400_000 - 1), "23h 59m");
        assert_eq!(duration_ms(3_600_000 - 1), "59m 59s");
    }

    /// Two largest units: `5h 12m`, `3y 41d`.
    #[test]
    fn durations_two_largest_units() {
        assert_eq!(duration_ms((5 * 3600 + 12 * 60 + 30) * 1000), "5h 12m");
        assert_eq!(
            duration_ms((3 * 365 + 41) * 86_400_000 + 3_600_000),
            "3y 41d"
        );
        assert_eq!(duration_ms(61_000), "1m 1s");
    }

    /// The largest representable duration still reads as years and days.
    #[test]
    fn durations_huge() {
        assert_eq!(duration_ms(i64::MAX), "292,471,208y 247d");
    }

    /// CPU time is CPU-hours below a CPU-year, CPU-years from there.
    #[test]
    fn cpu_time_units() {
        assert_eq!(cpu_time_text(0.0), "0.00 CPU-hours");
        assert_eq!(cpu_time_text(3600.0), "1.00 CPU-hours");
        assert_eq!(cpu_time_text(36_000.0), "10.0 CPU-hours");
        assert_eq!(cpu_time_text(3_600.0 * 1204.4), "1,204 CPU-hours");
        assert_eq!(cpu_time_text(3_600.0 * 8759.0), "8,759 CPU-hours");
        assert_eq!(cpu_time_text(3_600.0 * 8760.0), "1.00 CPU-years");
        assert_eq!(cpu_time_text(3_600.0 * 8760.0 * 3.5249), "3.52 CPU-years");
    }

    /// Under a minute of CPU is never shown as nothing.
    #[test]
    fn cpu_time_tiny() {
        assert_eq!(cpu_time_text(1.0), "< 0.01 CPU-hours");
        assert_eq!(cpu_time_text(17.0), "< 0.01 CPU-hours");
        assert_eq!(cpu_time_text(18.0), "0.01 CPU-hours");
    }

    /// Rounding up across a precision step keeps three figures.
    #[test]
    fn cpu_time_rounding_steps() {
        assert_eq!(cpu_time_text(3_600.0 * 9.999), "10.0 CPU-hours");
        assert_eq!(cpu_time_text(3_600.0 * 99.99), "100 CPU-hours");
    }

    /// Enormous totals stay readable and never overflow.
    #[test]
    fn cpu_time_huge() {
        assert_eq!(
            cpu_time_text(3_600.0 * 8760.0 * 1.0e6),
            "1,000,000 CPU-years"
        );
        let (amount, unit) = cpu_time(f64::MAX);
        assert_eq!(unit, "CPU-years");
        assert!(amount.chars().all(|c| c.is_ascii_digit() || c == ','));
    }

    /// NaN, infinities and negatives are shown as zero, never as text like `NaN`.
    #[test]
    fn never_nan() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, -0.0] {
            assert_eq!(cpu_time_text(bad), "0.00 CPU-hours");
            assert_eq!(cores(bad), "0.0");
            assert_eq!(decimal(bad, 2), "0.00");
        }
    }

    /// No output of this module mentions cycles.
    #[test]
    fn never_cycles() {
        for s in [0.0, 1.0, 1e3, 1e6, 1e9, 1e12] {
            assert!(!cpu_time_text(s).to_lowercase().contains("cycle"));
        }
    }

    /// Cores busy round to one decimal.
    #[test]
    fn cores_one_decimal() {
        assert_eq!(cores(0.0), "0.0");
        assert_eq!(cores(2.46), "2.5");
        assert_eq!(cores(9.96), "10.0");
        assert_eq!(cores(1234.5), "1,234.5");
    }

    /// Day numbers become calendar dates across leap years and the epoch.
    #[test]
    fn dates() {
        assert_eq!(iso_day(0), "1970-01-01");
        assert_eq!(iso_day(11_016), "2000-02-29");
        assert_eq!(iso_day(-1), "1969-12-31");
        assert_eq!(iso_day(1_764_380_000_000 / 86_400_000), "2025-11-29");
        assert_eq!(short_day("2025-11-29"), "Nov 29");
        assert_eq!(short_day("2025-01-05"), "Jan 5");
        assert_eq!(short_day("garbage"), "garbage");
    }

    /// Clock times are UTC and zero-padded.
    #[test]
    fn clock() {
        assert_eq!(clock_utc(0), "00:00:00 UTC");
        assert_eq!(clock_utc(1_764_380_007_000), "01:33:27 UTC");
        assert_eq!(clock_utc(-1_000), "23:59:59 UTC");
        assert_eq!(rfc3339_utc(1_764_380_007_000), "2025-11-29T01:33:27Z");
        assert_eq!(rfc3339_utc(-1_000), "1969-12-31T23:59:59Z");
    }
}
