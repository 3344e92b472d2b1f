//! CPU-seconds accounting, pure. Amounts are integer microseconds so that a
//! running total and a recomputation from raw rows agree to the last digit,
//! whatever order the samples arrived in.

/// Microseconds in a second.
pub const MICROS_PER_SECOND: i64 = 1_000_000;

/// CPU time one percent-based sample stands for: `cpuPercent / 100 * intervalS`.
pub fn percent_sample_micros(cpu_percent: f64, interval_s: i64) -> i64 {
    // cpuPercent/100 * intervalS * 1e6 == cpuPercent * intervalS * 1e4
    (cpu_percent * interval_s as f64 * 10_000.0).round() as i64
}

/// A `cpuTimeS` counter reading in microseconds.
pub fn counter_micros(cpu_time_s: f64) -> i64 {
    (cpu_time_s * MICROS_PER_SECOND as f64).round() as i64
}

/// A build's CPU time by SPEC: the largest counter seen if any sample carried
/// one, else the sum of its percent-based samples.
pub fn build_cpu_micros(percent_sum_micros: i64, counter_max_micros: Option<i64>) -> i64 {
    counter_max_micros.unwrap_or(percent_sum_micros)
}

/// Microseconds as (fractional) seconds, for display and JSON.
pub fn micros_to_seconds(micros: i64) -> f64 {
    micros as f64 / MICROS_PER_SECOND as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 153.2 % for 5 s is 7.66 CPU seconds, exactly.
    #[test]
    fn percent_sample_is_exact_in_micros() {
        assert_eq!(percent_sample_micros(153.2, 5), 7_660_000);
        assert_eq!(percent_sample_micros(0.0, 300), 0);
        assert_eq!(percent_sample_micros(100.0, 1), 1_000_000);
    }

    /// The counter wins over the estimate, lower or higher.
    #[test]
    fn counter_replaces_estimate() {
        assert_eq!(build_cpu_micros(5_000_000, None), 5_000_000);
        assert_eq!(build_cpu_micros(5_000_000, Some(3_000_000)), 3_000_000);
        assert_eq!(build_cpu_micros(5_000_000, Some(9_000_000)), 9_000_000);
    }

    /// Counter readings round to the nearest microsecond.
    #[test]
    fn counter_rounds_to_micros() {
        assert_eq!(counter_micros(312.75), 312_750_000);
        assert_eq!(counter_micros(0.0000004), 0);
        assert_eq!(micros_to_seconds(1_500_000), 1.5);
    }
}
