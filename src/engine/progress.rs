//! Progress for long work: a bar with loss, items/s and ETA on a terminal, plain log lines when
//! stdout is not a terminal (CI, files), nothing when quiet.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// When set (by `pretext compare`), every bar is drawn below the overall bar of this group.
static GROUP: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// Draw the bars created from now on inside `group` (None: on their own again).
pub fn set_group(group: Option<MultiProgress>) {
    *GROUP.lock().expect("progress group") = group;
}

fn in_group(bar: ProgressBar) -> ProgressBar {
    match GROUP.lock().expect("progress group").as_ref() {
        Some(g) => g.add(bar),
        None => bar,
    }
}

pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    total: u64,
    label: String,
}

impl Progress {
    pub fn new(label: &str, start: u64, total: u64, quiet: bool) -> Self {
        let terminal = std::io::stdout().is_terminal() && !quiet;
        let bar = terminal.then(|| {
            let bar = in_group(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar.set_position(start);
            bar
        });
        Self {
            bar,
            plain: !terminal && !quiet,
            total,
            label: label.to_string(),
        }
    }

    /// Report that `step` is done; `msg` carries loss, accuracy, throughput.
    pub fn update(&self, step: u64, msg: &str, log_line: bool, eta: Duration) {
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(msg.to_string());
        } else if self.plain && log_line {
            println!(
                "{} step {step}/{} {msg} eta {}",
                self.label,
                self.total,
                fmt_duration(eta)
            );
        }
    }

    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if self.plain => println!("{line}"),
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            if GROUP.lock().expect("progress group").is_some() {
                // Under an overall bar, a finished run makes room for the next one.
                bar.finish_and_clear();
            } else {
                bar.finish();
            }
        }
    }
}

pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Items/s over a sliding start point.
pub struct Throughput {
    start: Instant,
    items: u64,
}

impl Throughput {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            items: 0,
        }
    }
    pub fn add(&mut self, n: u64) {
        self.items += n;
    }
    pub fn per_sec(&self) -> f64 {
        self.items as f64 / self.start.elapsed().as_secs_f64().max(1e-9)
    }
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Default for Throughput {
    fn default() -> Self {
        Self::new()
    }
}
