//! etcd's report (`pkg/report` of etcd 3.4): the statistics of one
//! benchmark phase and their text form, printed exactly as etcd prints it,
//! plus a JSON form for machines.
//!
//! A phase starts a clock ([`Phase::start`]), its requests each produce an
//! [`Outcome`], and [`Phase::finish`] turns them into [`Stats`]. As in
//! etcd, `Total` is the wall time of the whole phase and `Requests/sec` is
//! the number of *successful* requests divided by it; latencies are of the
//! successful requests only, failed ones are counted per error message.
//!
//! Text form (the `%4.4f` verb becomes `%g` with `--precise`; a tab, shown
//! here as spaces, follows each label and each histogram count):
//!
//! ```text
//!
//! Summary:
//!   Total:    1.2361 secs.
//!   Slowest:    0.0299 secs.
//!   Fastest:    0.0012 secs.
//!   Average:    0.0121 secs.
//!   Stddev:    0.0050 secs.
//!   Requests/sec:    8089.9700
//!
//! Response time histogram:
//!   0.0012 [1]    |
//!   0.0041 [105]    |∎
//!   ...
//!
//! Latency distribution:
//!   10% in 0.0067 secs.
//!   ...
//!   99.9% in 0.0293 secs.
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::gofmt::{Precision, format_duration, format_g};

/// etcd's histogram bar character.
const BAR_CHAR: &str = "∎";
/// Buckets of the response time histogram (plus one for the slowest).
const HISTOGRAM_BUCKETS: usize = 10;
/// Length of the longest histogram bar, in characters.
const HISTOGRAM_BAR_MAX: usize = 40;
/// The percentiles of "Latency distribution".
const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// What happened to one request.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// When it was sent.
    pub start: Instant,
    /// When its answer (or error) arrived.
    pub end: Instant,
    /// The error, as the report prints it; `None` if it succeeded.
    pub error: Option<String>,
    /// Which of a command's reports it belongs to (txn-mixed: read or write).
    pub class: u8,
}

impl Outcome {
    /// A request sent at `start` that just finished with `result`.
    pub fn now(start: Instant, result: Result<(), String>) -> Outcome {
        Outcome { start, end: Instant::now(), error: result.err(), class: 0 }
    }
}

/// How reports are made: number format and per-second samples.
#[derive(Clone, Copy, Debug)]
pub struct ReportOptions {
    /// `%4.4f`, or `%g` with `--precise`.
    pub precision: Precision,
    /// `--sample`: add the per-second time series.
    pub sample: bool,
    /// One instant and the wall-clock time at that instant, to turn request
    /// start instants into Unix seconds.
    clock: (Instant, SystemTime),
}

impl ReportOptions {
    /// Options with the wall clock read now.
    pub fn new(precise: bool, sample: bool) -> ReportOptions {
        let precision = if precise { Precision::Shortest } else { Precision::Fixed4 };
        ReportOptions { precision, sample, clock: (Instant::now(), SystemTime::now()) }
    }

    fn unix_second(&self, at: Instant) -> i64 {
        let (base_instant, base_time) = self.clock;
        let time = match at.checked_duration_since(base_instant) {
            Some(after) => base_time + after,
            None => base_time - base_instant.duration_since(at),
        };
        match time.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64) - 1,
        }
    }
}

/// The clock of one report: from its start to [`Phase::finish`].
#[derive(Debug)]
pub struct Phase {
    name: String,
    started: Instant,
}

impl Phase {
    /// Starts the clock of report `name`.
    pub fn start(name: impl Into<String>) -> Phase {
        Phase { name: name.into(), started: Instant::now() }
    }

    /// Stops the clock and computes the statistics of `outcomes`.
    pub fn finish(self, outcomes: impl IntoIterator<Item = Outcome>, options: &ReportOptions) -> Stats {
        let total = self.started.elapsed();
        Stats::compute(self.name, total, outcomes, options)
    }
}

/// One second of `--sample`'s time series (etcd's `DataPoint`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPoint {
    /// Unix second in which the requests started.
    pub unix_second: i64,
    /// Fastest request (zero-latency requests after the first are ignored, as in etcd).
    pub min: Duration,
    /// Mean latency.
    pub avg: Duration,
    /// Slowest request.
    pub max: Duration,
    /// Successful requests started in that second.
    pub count: u64,
}

/// The statistics of one phase (etcd's `report.Stats`).
#[derive(Clone, Debug)]
pub struct Stats {
    /// Report name (`put`, `watch-events`, ...), for the JSON form.
    pub name: String,
    /// Wall time of the phase.
    pub total: Duration,
    /// Latencies of the successful requests in seconds, ascending.
    pub lats: Vec<f64>,
    /// Failed requests per error message.
    pub errors: BTreeMap<String, u64>,
    /// Fastest successful request, seconds.
    pub fastest: f64,
    /// Slowest successful request, seconds.
    pub slowest: f64,
    /// Mean latency, seconds (NaN without successful requests).
    pub average: f64,
    /// Population standard deviation of the latencies, seconds.
    pub stddev: f64,
    /// Successful requests per second of `total`.
    pub rps: f64,
    /// `--sample`'s per-second series.
    pub series: Option<Vec<DataPoint>>,
    precision: Precision,
}

impl Stats {
    fn compute(
        name: String,
        total: Duration,
        outcomes: impl IntoIterator<Item = Outcome>,
        options: &ReportOptions,
    ) -> Stats {
        let mut lats = Vec::new();
        let mut errors = BTreeMap::new();
        let mut seconds: HashMap<i64, (Duration, Duration, Duration, u64)> = HashMap::new();
        for outcome in outcomes {
            if let Some(error) = outcome.error {
                *errors.entry(error).or_insert(0) += 1;
                continue;
            }
            let latency = outcome.end.saturating_duration_since(outcome.start);
            lats.push(latency.as_secs_f64());
            if options.sample {
                let second = options.unix_second(outcome.start);
                seconds
                    .entry(second)
                    .and_modify(|(min, max, sum, count)| {
                        if !latency.is_zero() {
                            *min = (*min).min(latency);
                        }
                        *max = (*max).max(latency);
                        *sum += latency;
                        *count += 1;
                    })
                    .or_insert((latency, latency, latency, 1));
            }
        }
        let n = lats.len() as f64;
        let sum: f64 = lats.iter().sum();
        let average = sum / n;
        let stddev = (lats.iter().map(|l| (l - average) * (l - average)).sum::<f64>() / n).sqrt();
        lats.sort_by(f64::total_cmp);
        let (fastest, slowest) = match (lats.first(), lats.last()) {
            (Some(&f), Some(&s)) => (f, s),
            _ => (0.0, 0.0),
        };
        let series = options.sample.then(|| time_series(seconds));
        Stats {
            name,
            total,
            rps: n / total.as_secs_f64(),
            lats,
            errors,
            fastest,
            slowest,
            average,
            stddev,
            series,
            precision: options.precision,
        }
    }

    /// Successful requests.
    pub fn successes(&self) -> usize {
        self.lats.len()
    }

    /// Failed requests.
    pub fn failures(&self) -> u64 {
        self.errors.values().sum()
    }

    fn secs(&self, v: f64) -> String {
        format!("{} secs", self.precision.format(v))
    }

    /// The text etcd's report prints (its `String()`): empty without any
    /// successful request except for the error distribution.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if !self.lats.is_empty() {
            s.push_str("\nSummary:\n");
            let _ = writeln!(s, "  Total:\t{}.", self.secs(self.total.as_secs_f64()));
            let _ = writeln!(s, "  Slowest:\t{}.", self.secs(self.slowest));
            let _ = writeln!(s, "  Fastest:\t{}.", self.secs(self.fastest));
            let _ = writeln!(s, "  Average:\t{}.", self.secs(self.average));
            let _ = writeln!(s, "  Stddev:\t{}.", self.secs(self.stddev));
            let _ = writeln!(s, "  Requests/sec:\t{}", self.precision.format(self.rps));
            s.push_str("\nResponse time histogram:\n");
            let histogram = self.histogram();
            let max = histogram.iter().map(|&(_, c)| c).max().unwrap_or(0);
            for (mark, count) in histogram {
                let bar = (count * HISTOGRAM_BAR_MAX).checked_div(max).unwrap_or(0);
                let _ = writeln!(s, "  {} [{count}]\t|{}", self.precision.format(mark), BAR_CHAR.repeat(bar));
            }
            s.push_str("\nLatency distribution:\n");
            for (p, v) in self.percentiles() {
                let _ = writeln!(s, "  {}% in {}.", format_g(p), self.secs(v));
            }
            if let Some(series) = &self.series {
                s.push_str("\nSample in one second (unix latency throughput):\n");
                s.push_str("UNIX-SECOND,MIN-LATENCY-MS,AVG-LATENCY-MS,MAX-LATENCY-MS,AVG-THROUGHPUT\n");
                for p in series {
                    let _ = writeln!(
                        s,
                        "{},{},{},{},{}",
                        p.unix_second,
                        format_duration(p.min),
                        format_duration(p.avg),
                        format_duration(p.max),
                        p.count
                    );
                }
                s.push('\n');
            }
        }
        if !self.errors.is_empty() {
            s.push_str("\nError distribution:\n");
            for (error, count) in &self.errors {
                let _ = writeln!(s, "  [{count}]\t{error}");
            }
        }
        s
    }

    /// etcd's histogram: ten equal buckets from the fastest to the slowest
    /// request plus one at the slowest; each latency counts in the first
    /// bucket whose mark it does not exceed.
    pub fn histogram(&self) -> Vec<(f64, usize)> {
        if self.lats.is_empty() {
            return Vec::new();
        }
        let width = (self.slowest - self.fastest) / HISTOGRAM_BUCKETS as f64;
        let mut marks: Vec<f64> = (0..HISTOGRAM_BUCKETS).map(|i| self.fastest + width * i as f64).collect();
        marks.push(self.slowest);
        let mut counts = vec![0usize; marks.len()];
        let mut bucket = 0;
        for &lat in &self.lats {
            while lat > marks[bucket] && bucket < marks.len() - 1 {
                bucket += 1;
            }
            counts[bucket] += 1;
        }
        marks.into_iter().zip(counts).collect()
    }

    /// etcd 3.4's percentiles: the `p`th percentile is the first latency
    /// (ascending) at whose index `i` `i * 100 / n >= p`; at most one
    /// percentile per latency, and percentiles never reached (or zero) are
    /// left out, as etcd leaves them out of its text.
    pub fn percentiles(&self) -> Vec<(f64, f64)> {
        let n = self.lats.len();
        let mut data = [0f64; PERCENTILES.len()];
        let mut j = 0;
        for (i, &lat) in self.lats.iter().enumerate() {
            if j >= PERCENTILES.len() {
                break;
            }
            if i as f64 * 100.0 / n as f64 >= PERCENTILES[j] {
                data[j] = lat;
                j += 1;
            }
        }
        PERCENTILES.iter().copied().zip(data).filter(|&(_, v)| v > 0.0).collect()
    }

    /// The report as JSON: every figure of the text form, in seconds, plus
    /// the request counts.
    pub fn to_json(&self) -> Value {
        let series = self.series.as_ref().map(|series| {
            series
                .iter()
                .map(|p| {
                    json!({
                        "unix_second": p.unix_second,
                        "min_latency_secs": p.min.as_secs_f64(),
                        "avg_latency_secs": p.avg.as_secs_f64(),
                        "max_latency_secs": p.max.as_secs_f64(),
                        "throughput": p.count,
                    })
                })
                .collect::<Vec<_>>()
        });
        let none = self.lats.is_empty();
        let figure = |v: f64| if none { Value::Null } else { json!(v) };
        json!({
            "name": self.name,
            "requests": self.successes() as u64 + self.failures(),
            "count": self.successes(),
            "errors": self.failures(),
            "error_distribution": self.errors,
            "total_secs": self.total.as_secs_f64(),
            "slowest_secs": figure(self.slowest),
            "fastest_secs": figure(self.fastest),
            "average_secs": figure(self.average),
            "stddev_secs": figure(self.stddev),
            "requests_per_sec": json!(self.rps),
            "histogram": self.histogram().into_iter()
                .map(|(mark, count)| json!({"mark_secs": mark, "count": count}))
                .collect::<Vec<_>>(),
            "latency_distribution": self.percentiles().into_iter()
                .map(|(p, v)| json!({"percentile": p, "latency_secs": v}))
                .collect::<Vec<_>>(),
            "time_series": series,
        })
    }
}

/// etcd's `getTimeSeries`: one point per second from the first to the last
/// second with requests, empty seconds included.
fn time_series(seconds: HashMap<i64, (Duration, Duration, Duration, u64)>) -> Vec<DataPoint> {
    let (Some(&first), Some(&last)) = (seconds.keys().min(), seconds.keys().max()) else {
        return Vec::new();
    };
    (first..=last)
        .map(|second| {
            let (min, max, sum, count) = seconds.get(&second).copied().unwrap_or_default();
            let avg = if count > 0 { Duration::from_nanos((sum.as_nanos() / u128::from(count)) as u64) } else { sum };
            DataPoint { unix_second: second, min, avg, max, count }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(latencies_ms: &[u64], errors: &[&str]) -> Stats {
        let options = ReportOptions::new(false, false);
        let start = Instant::now();
        let mut outcomes: Vec<Outcome> = latencies_ms
            .iter()
            .map(|&ms| Outcome { start, end: start + Duration::from_millis(ms), error: None, class: 0 })
            .collect();
        outcomes.extend(errors.iter().map(|e| Outcome { start, end: start, error: Some(e.to_string()), class: 0 }));
        Stats::compute("t".into(), Duration::from_secs(2), outcomes, &options)
    }

    #[test]
    fn summary_like_etcd() {
        let stats = stats_of(&[1, 2, 3, 4, 10], &[]);
        let text = stats.render();
        assert!(text.starts_with("\nSummary:\n  Total:\t2.0000 secs.\n  Slowest:\t0.0100 secs.\n"), "{text}");
        assert!(text.contains("  Fastest:\t0.0010 secs.\n  Average:\t0.0040 secs.\n"), "{text}");
        assert!(text.contains("  Requests/sec:\t2.5000\n\nResponse time histogram:\n"), "{text}");
        // Ten buckets of 0.9 ms from 1 ms, plus the slowest: 1 | 1.9 2 | ... .
        assert!(text.contains("  0.0010 [1]\t|∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎\n"), "{text}");
        assert!(text.contains("  0.0100 [1]\t|"), "{text}");
        // 3.4's percentiles: index i with i*100/5 >= p: 10% and 25% at i=1, ...
        assert!(text.contains("\nLatency distribution:\n  10% in 0.0020 secs.\n  25% in 0.0030 secs.\n"), "{text}");
        assert!(!text.contains("Error distribution"), "{text}");
        let hist: usize = stats.histogram().iter().map(|&(_, c)| c).sum();
        assert_eq!(hist, 5);
    }

    #[test]
    fn errors_only() {
        let stats = stats_of(&[], &["boom", "boom", "bang"]);
        assert_eq!(stats.render(), "\nError distribution:\n  [1]\tbang\n  [2]\tboom\n");
        let json = stats.to_json();
        assert_eq!(json["count"], 0);
        assert_eq!(json["errors"], 3);
        assert_eq!(json["average_secs"], Value::Null);
    }

    #[test]
    fn time_series_fills_gaps() {
        let mut seconds = HashMap::new();
        seconds.insert(10, (Duration::from_millis(1), Duration::from_millis(3), Duration::from_millis(4), 2));
        seconds.insert(12, (Duration::from_millis(2), Duration::from_millis(2), Duration::from_millis(2), 1));
        let series = time_series(seconds);
        assert_eq!(series.len(), 3);
        assert_eq!(series[0].avg, Duration::from_millis(2));
        assert_eq!(series[1].count, 0);
    }
}
