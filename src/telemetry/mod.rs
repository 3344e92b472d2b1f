//! Telemetry bodies as SPEC defines them, pure: parsing the current batch
//! and the legacy Swift body (a bad sample is rejected alone), and the range
//! checks of each sample; [`batch`], what a batch of requests does to the
//! figures. Shared by the ingest route and every storage backend.

pub mod batch;

use serde_json::{Map, Value};

use crate::body::parse_json;
use crate::error::{AppError, Result};
use crate::wire::{Snapshot, INTERVAL_S};
pub use crate::wire::{MAX_BATCH, TELEMETRY_BODY_LIMIT};

/// Largest `data` of a legacy event, serialized.
pub const MAX_EVENT_DATA: usize = 4 * 1024;
/// How far `sampledAt` may lie before the assignment or ahead of our clock.
const CLOCK_SLACK_MS: i64 = 60_000;
/// `intervalS` when a sample has none.
pub const DEFAULT_INTERVAL_S: i64 = 5;

/// What a telemetry body asks for.
#[derive(Debug)]
pub enum TelemetryBody {
    /// Samples, each already type-checked or rejected.
    Samples(Vec<std::result::Result<Snapshot, String>>),
    /// A legacy event that is not a sample.
    Event {
        /// The event's `type`.
        kind: String,
        /// Its time, ms (the controller's clock when it had none).
        at: i64,
        /// Its `data`, serialized.
        data: String,
    },
}

fn number(sample: &Map<String, Value>, field: &str) -> std::result::Result<Option<f64>, String> {
    match sample.get(field) {
        None => Ok(None),
        Some(Value::Null) => Err(format!("{field} must be a number, not null")),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if x.is_finite() => Ok(Some(x)),
            _ => Err(format!("{field} must be a finite number")),
        },
        Some(_) => Err(format!(
            "{field} must be a number, not a string or other type"
        )),
    }
}

fn required_number(sample: &Map<String, Value>, field: &str) -> std::result::Result<f64, String> {
    number(sample, field)?.ok_or_else(|| format!("{field} is required"))
}

fn integer(sample: &Map<String, Value>, field: &str) -> std::result::Result<Option<i64>, String> {
    match sample.get(field) {
        None => Ok(None),
        Some(Value::Null) => Err(format!("{field} must be an integer, not null")),
        Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Ok(Some(i)),
            (None, Some(x)) if x.is_finite() && x.fract() == 0.0 && x.abs() < 9.0e15 => {
                Ok(Some(x as i64))
            }
            _ => Err(format!("{field} must be an integer")),
        },
        Some(_) => Err(format!(
            "{field} must be an integer, not a string or other type"
        )),
    }
}

/// Type-checks one sample of the current format.
pub fn parse_sample(value: &Value) -> std::result::Result<Snapshot, String> {
    let sample = value
        .as_object()
        .ok_or_else(|| "a sample must be a JSON object".to_string())?;
    Ok(Snapshot {
        seq: integer(sample, "seq")?.ok_or("seq is required")?,
        sampled_at: integer(sample, "sampledAt")?.ok_or("sampledAt is required")?,
        cpu_percent: required_number(sample, "cpuPercent")?,
        memory_mb: required_number(sample, "memoryMb")?,
        cpu_time_s: number(sample, "cpuTimeS")?,
        interval_s: integer(sample, "intervalS")?.unwrap_or(DEFAULT_INTERVAL_S),
    })
}

fn parse_timestamp(text: &str) -> Option<i64> {
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some((parsed.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Reads the legacy Swift worker's body: `cpu_snapshot` is one sample whose
/// seq is its timestamp in whole seconds; any other type is an event.
fn parse_legacy(body: &Map<String, Value>, kind: &str, now: i64) -> Result<TelemetryBody> {
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    let timestamp = body
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(parse_timestamp);
    if kind != "cpu_snapshot" {
        let data = serde_json::to_string(&data).map_err(|_| AppError::Unavailable)?;
        if data.len() > MAX_EVENT_DATA {
            return Err(AppError::TooLarge(format!(
                "an event's data may be at most {MAX_EVENT_DATA} bytes"
            )));
        }
        return Ok(TelemetryBody::Event {
            kind: kind.to_string(),
            at: timestamp.unwrap_or(now),
            data,
        });
    }
    let sample = (|| {
        let at = timestamp.ok_or("timestamp must be an RFC 3339 time like 2026-01-28T16:13:27Z")?;
        let data = data.as_object().ok_or("data must be an object")?;
        Ok(Snapshot {
            seq: at.div_euclid(1000),
            sampled_at: at,
            cpu_percent: required_number(data, "cpu_percent")?,
            memory_mb: required_number(data, "memory_mb")?,
            cpu_time_s: None,
            interval_s: DEFAULT_INTERVAL_S,
        })
    })();
    Ok(TelemetryBody::Samples(vec![sample]))
}

/// Reads a telemetry body (current batch or legacy single sample).
pub fn parse_body(value: Value, now: i64) -> Result<TelemetryBody> {
    let Value::Object(body) = value else {
        return Err(AppError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    };
    match (body.get("snapshots"), body.get("type")) {
        (Some(Value::Array(list)), _) => {
            if list.len() > MAX_BATCH {
                return Err(too_many_samples());
            }
            Ok(TelemetryBody::Samples(
                list.iter().map(parse_sample).collect(),
            ))
        }
        (None, Some(Value::String(kind))) => parse_legacy(&body, kind, now),
        _ => Err(AppError::BadRequest(
            "the body needs a `snapshots` list (or a legacy `type`)".into(),
        )),
    }
}

/// What range checks need to know.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Declared cores of the worker.
    pub cpu_cores: i64,
    /// Declared memory of the worker, MiB.
    pub memory_mb: i64,
    /// When the build was assigned, ms.
    pub assigned_at: i64,
    /// The controller's clock, ms.
    pub now: i64,
}

/// Checks a sample's values against SPEC's ranges.
pub fn check_ranges(s: &Snapshot, b: &Bounds) -> std::result::Result<(), String> {
    if s.seq < 1 {
        return Err("seq must be 1 or more".into());
    }
    let max_percent = 100.0 * b.cpu_cores as f64;
    if !(s.cpu_percent.is_finite() && (0.0..=max_percent).contains(&s.cpu_percent)) {
        return Err(format!(
            "cpuPercent must be in 0..={max_percent} for this worker's cores"
        ));
    }
    if !(s.memory_mb.is_finite() && (0.0..=b.memory_mb as f64).contains(&s.memory_mb)) {
        return Err(format!(
            "memoryMb must be in 0..={} declared by this worker",
            b.memory_mb
        ));
    }
    if !INTERVAL_S.contains(&s.interval_s) {
        return Err("intervalS must be in 1..=300".into());
    }
    if s.sampled_at < b.assigned_at - CLOCK_SLACK_MS {
        return Err("sampledAt is more than 60 s before the build was assigned".into());
    }
    if s.sampled_at > b.now + CLOCK_SLACK_MS {
        return Err("sampledAt is more than 60 s ahead of the controller's clock".into());
    }
    if let Some(cpu_time) = s.cpu_time_s {
        let limit = 1.1 * b.cpu_cores as f64 * (s.sampled_at - b.assigned_at) as f64 / 1000.0 + 1.0;
        if !(cpu_time.is_finite() && cpu_time >= 0.0 && cpu_time <= limit) {
            return Err(format!(
                "cpuTimeS must be in 0..={limit:.3}: more than this worker's cores could burn since assignment"
            ));
        }
    }
    Ok(())
}

/// Replaces bare `NaN`, `Infinity` and `-Infinity` tokens and numbers too
/// large for a double (`1e400`) outside strings with strings, so that a
/// sample carrying one is rejected alone instead of failing its whole batch
/// as text that is not JSON.
fn quote_non_finite(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() + 16);
    let (mut i, mut in_string, mut changed) = (0, false, false);
    while i < text.len() {
        let c = text[i];
        if in_string {
            out.push(c);
            if c == b'\\' && i + 1 < text.len() {
                out.push(text[i + 1]);
                i += 1;
            } else if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        let rest = &text[i..];
        let token = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        match (c, token) {
            (b'"', _) => {
                in_string = true;
                out.push(c);
                i += 1;
            }
            (_, Some(token)) => {
                out.push(b'"');
                out.extend_from_slice(token);
                out.push(b'"');
                i += token.len();
                changed = true;
            }
            (b'-' | b'0'..=b'9', None) => {
                let length = rest
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .unwrap_or(rest.len());
                let literal = &rest[..length];
                let overflows = std::str::from_utf8(literal)
                    .ok()
                    .and_then(|t| t.parse::<f64>().ok())
                    .is_some_and(f64::is_infinite);
                if overflows {
                    out.push(b'"');
                    out.extend_from_slice(literal);
                    out.push(b'"');
                    changed = true;
                } else {
                    out.extend_from_slice(literal);
                }
                i += length;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

/// Reads a telemetry body from its bytes. A well-formed batch's samples are
/// parsed one at a time from their own text, so that a 1000-sample body is
/// never a tree of 1000 JSON maps at once (server memory under batch load);
/// anything else goes through [`parse_body`].
pub fn parse_body_bytes(bytes: &[u8], now: i64) -> Result<TelemetryBody> {
    #[derive(serde::Deserialize)]
    struct Batch<'a> {
        #[serde(borrow)]
        snapshots: Vec<&'a serde_json::value::RawValue>,
    }
    let Ok(Batch { snapshots }) = serde_json::from_slice::<Batch>(bytes) else {
        return parse_body(parse_telemetry_json(bytes)?, now);
    };
    if snapshots.len() > MAX_BATCH {
        return Err(too_many_samples());
    }
    Ok(TelemetryBody::Samples(
        snapshots.iter().map(|raw| read_sample(raw.get())).collect(),
    ))
}

/// A sample as the agent writes it, read straight into its fields rather
/// than through a map of `Value`s (a map and a string per field, on every
/// sample). It accepts less than [`parse_sample`]: a null where a field may
/// be absent, an integer written as `3.0`, a repeated field, or a sample
/// that is not an object fail here, and those samples go through
/// `parse_sample` for its exact answer.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlainSample {
    seq: i64,
    sampled_at: i64,
    cpu_percent: f64,
    memory_mb: f64,
    #[serde(default, deserialize_with = "present")]
    cpu_time_s: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    interval_s: Option<i64>,
}

/// An optional field that, when present, must hold a value: serde's own
/// `Option` would take `null` for absent, which `parse_sample` refuses.
fn present<'de, D, T>(deserializer: D) -> std::result::Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// Type-checks one sample of a batch from its own JSON text.
fn read_sample(text: &str) -> std::result::Result<Snapshot, String> {
    // An array would fill a struct's fields in order; only objects qualify.
    if text.starts_with('{') {
        if let Ok(plain) = serde_json::from_str::<PlainSample>(text) {
            return Ok(Snapshot {
                seq: plain.seq,
                sampled_at: plain.sampled_at,
                cpu_percent: plain.cpu_percent,
                memory_mb: plain.memory_mb,
                cpu_time_s: plain.cpu_time_s,
                interval_s: plain.interval_s.unwrap_or(DEFAULT_INTERVAL_S),
            });
        }
    }
    // Its syntax is checked already (the batch parsed); what can still fail
    // is a number beyond a double, like 1e400.
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("a sample could not be read: {e}"))?;
    parse_sample(&value)
}

fn too_many_samples() -> AppError {
    AppError::TooLarge(format!("a batch may hold at most {MAX_BATCH} samples"))
}

fn parse_telemetry_json(bytes: &[u8]) -> Result<Value> {
    match parse_json(bytes) {
        Ok(value) => Ok(value),
        Err(error) => match quote_non_finite(bytes) {
            Some(quoted) => serde_json::from_slice(&quoted).map_err(|_| error),
            None => Err(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bounds() -> Bounds {
        Bounds {
            cpu_cores: 4,
            memory_mb: 8192,
            assigned_at: 1_000_000,
            now: 1_100_000,
        }
    }

    fn good() -> Value {
        json!({"seq": 1, "sampledAt": 1_050_000, "cpuPercent": 150.0, "memoryMb": 100.5,
               "cpuTimeS": 20.0, "intervalS": 5})
    }

    fn check(value: Value) -> std::result::Result<Snapshot, String> {
        parse_sample(&value).and_then(|s| check_ranges(&s, &bounds()).map(|()| s))
    }

    fn with(field: &str, value: Value) -> Value {
        let mut sample = good();
        sample[field] = value;
        sample
    }

    /// A well-formed sample passes; every invalid class SPEC lists is refused.
    #[test]
    fn sample_validation_classes() {
        assert!(check(good()).is_ok());
        assert!(check(with("cpuPercent", json!("50"))).is_err());
        assert!(check(with("cpuPercent", json!(null))).is_err());
        assert!(check(with("cpuPercent", json!([77]))).is_err());
        assert!(check(with("cpuPercent", json!(1e308))).is_err());
        assert!(check(with("cpuPercent", json!(-1.0))).is_err());
        assert!(check(with("cpuPercent", json!(400.1))).is_err());
        assert!(check(with("cpuPercent", json!(400.0))).is_ok());
        assert!(check(with("memoryMb", json!(8192.5))).is_err());
        assert!(check(with("cpuTimeS", json!(-0.1))).is_err());
        // 50 s after assignment on 4 cores: at most 1.1*4*50+1 = 221 s.
        assert!(check(with("cpuTimeS", json!(221.5))).is_err());
        assert!(check(with("cpuTimeS", json!(220.0))).is_ok());
        assert!(check(with("intervalS", json!(0))).is_err());
        assert!(check(with("intervalS", json!(301))).is_err());
        assert!(check(with("intervalS", json!("5"))).is_err());
        assert!(check(with("sampledAt", json!(1_000_000 - 60_001))).is_err());
        assert!(check(with("sampledAt", json!(1_100_000 + 60_001))).is_err());
        assert!(check(with("seq", json!(0))).is_err());
        let mut missing = good();
        missing.as_object_mut().map(|o| o.remove("memoryMb"));
        assert!(check(missing).is_err());
    }

    /// The direct read of a sample answers exactly as `parse_sample` on its
    /// `Value`, whichever of the two paths a sample takes.
    #[test]
    fn direct_read_answers_as_parse_sample() {
        let texts = [
            r#"{"seq":1,"sampledAt":1050000,"cpuPercent":150.5,"memoryMb":100,"cpuTimeS":20,"intervalS":5}"#,
            r#"{"seq":2,"sampledAt":1050000,"cpuPercent":0,"memoryMb":0.25}"#,
            r#"{"seq":3,"sampledAt":1050000,"cpuPercent":1,"memoryMb":1,"extra":{"a":[1]}}"#,
            r#"{"seq":3.0,"sampledAt":1050000,"cpuPercent":1,"memoryMb":1}"#,
            r#"{"seq":3.5,"sampledAt":1050000,"cpuPercent":1,"memoryMb":1}"#,
            r#"{"seq":1e16,"sampledAt":1050000,"cpuPercent":1,"memoryMb":1}"#,
            r#"{"seq":18446744073709551615,"sampledAt":1,"cpuPercent":1,"memoryMb":1}"#,
            r#"{"seq":1,"sampledAt":1050000,"cpuPercent":null,"memoryMb":1}"#,
            r#"{"seq":1,"sampledAt":1050000,"cpuPercent":1,"memoryMb":1,"cpuTimeS":null}"#,
            r#"{"seq":1,"sampledAt":1050000,"cpuPercent":1,"memoryMb":1,"intervalS":null}"#,
            r#"{"seq":1,"sampledAt":1050000,"cpuPercent":1,"memoryMb":1,"intervalS":"5"}"#,
            r#"{"seq":1,"sampledAt":1050000,"cpuPercent":"50","memoryMb":1}"#,
            r#"{"seq":1,"seq":2,"sampledAt":1050000,"cpuPercent":1,"memoryMb":1}"#,
            r#"{"sampledAt":1050000,"cpuPercent":1,"memoryMb":1}"#,
            r#"{"seq":-4,"sampledAt":-1,"cpuPercent":-0,"memoryMb":-2.5e3}"#,
            r#"[1,1050000,1.0,1.0,null,5]"#,
            r#"[]"#,
            r#""a sample""#,
            r#"{"seq":1,"sampledAt":1050000,"cpuPercent":1e400,"memoryMb":1}"#,
        ];
        for text in texts {
            let through_value = serde_json::from_str::<Value>(text)
                .map_err(|e| format!("a sample could not be read: {e}"))
                .and_then(|value| parse_sample(&value));
            assert_eq!(read_sample(text), through_value, "{text}");
        }
        assert!(read_sample(texts[0]).is_ok() && read_sample(texts[3]).is_ok());
        assert!(read_sample(texts[8]).is_err() && read_sample(texts[12]).is_ok());
    }

    /// Bare NaN/Infinity become strings, so their sample alone is rejected;
    /// the same words inside strings are left alone.
    #[test]
    fn non_finite_tokens_are_quoted() {
        let text = br#"{"snapshots":[{"cpuPercent":NaN,"x":"NaN Infinity"},{"a":-Infinity}]}"#;
        let quoted = quote_non_finite(text).map(String::from_utf8);
        assert_eq!(
            quoted,
            Some(Ok(
                r#"{"snapshots":[{"cpuPercent":"NaN","x":"NaN Infinity"},{"a":"-Infinity"}]}"#
                    .to_string()
            ))
        );
        assert!(quote_non_finite(br#"{"a":1}"#).is_none());
        assert_eq!(
            quote_non_finite(br#"{"a":1e400,"b":-2.5e3}"#).map(String::from_utf8),
            Some(Ok(r#"{"a":"1e400","b":-2.5e3}"#.to_string()))
        );
    }

    /// The sample-by-sample path reads what the whole-tree path reads: good
    /// samples, each bad one rejected alone, bare NaN and 1e400 included.
    #[test]
    fn batch_bytes_parse_sample_by_sample() {
        let text = br#"{"snapshots":[{"seq":1,"sampledAt":5,"cpuPercent":1.5,"memoryMb":2},
            {"seq":2,"sampledAt":5,"cpuPercent":"1","memoryMb":2},
            {"seq":3,"sampledAt":5,"cpuPercent":1e400,"memoryMb":2}]}"#;
        let Ok(TelemetryBody::Samples(samples)) = parse_body_bytes(text, 0) else {
            panic!("not a batch");
        };
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].as_ref().map(|s| s.cpu_percent), Ok(1.5));
        assert!(samples[1].is_err() && samples[2].is_err());
        let nan = br#"{"snapshots":[{"seq":1,"sampledAt":5,"cpuPercent":NaN,"memoryMb":2}]}"#;
        assert!(matches!(parse_body_bytes(nan, 0), Ok(TelemetryBody::Samples(s)) if s[0].is_err()));
        let many = format!(r#"{{"snapshots":[{}{{}}]}}"#, "{},".repeat(MAX_BATCH));
        assert!(matches!(
            parse_body_bytes(many.as_bytes(), 0),
            Err(AppError::TooLarge(_))
        ));
        assert!(matches!(
            parse_body_bytes(b"{\"snapshots\": 5}", 0),
            Err(AppError::BadRequest(_))
        ));
    }

    /// The legacy body is one sample keyed by its timestamp's whole seconds.
    #[test]
    fn legacy_sample() {
        let body = json!({"type": "cpu_snapshot", "timestamp": "2026-01-28T16:13:27Z",
                          "data": {"cpu_percent": 42.0, "memory_mb": 1024}});
        match parse_body(body, 0) {
            Ok(TelemetryBody::Samples(samples)) => {
                let sample = samples[0].clone().unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(sample.seq, 1_769_616_807);
                assert_eq!(sample.sampled_at, 1_769_616_807_000);
                assert_eq!(sample.interval_s, 5);
            }
            other => panic!("unexpected {other:?}"),
        }
        let event = json!({"type": "log", "data": {"line": "x".repeat(5000)}});
        assert!(matches!(parse_body(event, 0), Err(AppError::TooLarge(_))));
        assert!(matches!(
            parse_body(json!({"x": 1}), 0),
            Err(AppError::BadRequest(_))
        ));
    }
}
