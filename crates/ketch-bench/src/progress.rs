//! The progress bar, drawn on stderr like the `pb` bar etcd's tool draws
//! (format `"Bom !"`): ` 512 / 2000 Booooooom                     !  25.60% 3s`,
//! the time left while running and the time taken at the end. Off when
//! stderr is not a terminal or with `--no-progress`; the counter then
//! still counts, for nothing.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::gofmt::format_duration;

/// How often the bar is redrawn (pb's default refresh rate).
const REFRESH: Duration = Duration::from_millis(200);
/// Width of the bar between `B` and `!`, in characters.
const BAR_WIDTH: usize = 50;

/// A cheap handle that counts finished requests.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// One more done.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// How many so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A running progress bar over `total` steps.
#[derive(Debug)]
pub struct Progress {
    counter: Counter,
    total: u64,
    started: Instant,
    drawer: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts a bar over `total` steps; drawn only if `enabled`.
    pub fn start(total: u64, enabled: bool) -> Progress {
        let counter = Counter::default();
        let started = Instant::now();
        let drawer = enabled.then(|| {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(REFRESH);
                loop {
                    tick.tick().await;
                    draw(counter.get(), total, started.elapsed(), false);
                }
            })
        });
        Progress { counter, total, started, drawer }
    }

    /// The counter requests increment.
    pub fn counter(&self) -> Counter {
        self.counter.clone()
    }

    /// Stops redrawing, draws the final state and ends the line.
    pub fn finish(self) {
        if let Some(drawer) = self.drawer {
            drawer.abort();
            draw(self.counter.get(), self.total, self.started.elapsed(), true);
            eprintln!();
        }
    }
}

fn draw(current: u64, total: u64, elapsed: Duration, done: bool) {
    let fraction = if total == 0 { 1.0 } else { (current as f64 / total as f64).min(1.0) };
    let filled = ((fraction * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
    let bar = match filled {
        0 => " ".repeat(BAR_WIDTH),
        n => format!("{}m{}", "o".repeat(n - 1), " ".repeat(BAR_WIDTH - n)),
    };
    let time = if done {
        format_duration(Duration::from_secs(elapsed.as_secs()))
    } else if current > 0 && current < total {
        let left = elapsed.mul_f64((total - current) as f64 / current as f64);
        format_duration(Duration::from_secs(left.as_secs()))
    } else {
        String::new()
    };
    let width = total.to_string().len();
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "\r{current:>width$} / {total} B{bar}! {:6.2}% {time}   ", fraction * 100.0);
    let _ = stderr.flush();
}
