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

/// One attempt's CPU accounting. Each attempt is a run of its own whose
/// `cpuTimeS` counter starts from its own zero, so attempts are accounted
/// apart and a build's CPU time is the sum of theirs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttemptCpu {
    /// Sum of the attempt's percent-based samples, µs.
    pub percent_micros: i64,
    /// Largest `cpuTimeS` the attempt sent, µs; none when it sent none.
    pub counter_micros: Option<i64>,
}

impl AttemptCpu {
    /// The attempt's CPU time by SPEC: its largest counter if any sample
    /// carried one, else the sum of its percent-based samples.
    pub fn micros(&self) -> i64 {
        self.counter_micros.unwrap_or(self.percent_micros)
    }

    /// Folds in one distinct sample of this attempt.
    pub fn add_sample(&mut self, cpu_percent: f64, interval_s: i64, cpu_time_s: Option<f64>) {
        self.percent_micros += percent_sample_micros(cpu_percent, interval_s);
        if let Some(cpu_time) = cpu_time_s {
            let reading = counter_micros(cpu_time);
            self.counter_micros = Some(self.counter_micros.map_or(reading, |c| c.max(reading)));
        }
    }
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

    /// Within an attempt the counter wins over the estimate, lower or higher.
    #[test]
    fn counter_replaces_estimate() {
        let mut attempt = AttemptCpu::default();
        attempt.add_sample(100.0, 5, None);
        assert_eq!(attempt.micros(), 5_000_000);
        attempt.add_sample(0.0, 5, Some(3.0));
        assert_eq!(attempt.micros(), 3_000_000);
        attempt.add_sample(0.0, 5, Some(9.0));
        attempt.add_sample(0.0, 5, Some(4.0));
        assert_eq!(attempt.micros(), 9_000_000, "the largest reading counts");
    }

    /// Counter readings round to the nearest microsecond.
    #[test]
    fn counter_rounds_to_micros() {
        assert_eq!(counter_micros(312.75), 312_750_000);
        assert_eq!(counter_micros(0.0000004), 0);
        assert_eq!(micros_to_seconds(1_500_000), 1.5);
    }
}
