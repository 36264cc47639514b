//! The end of a run: the figures as a small aligned table for people, or
//! as one JSON object (`--json`) for scripts. Field names are documented in
//! docs/BENCH.md.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::lag::{LagReport, VISIBLE_TIMEOUT};
use super::worker::{Op, OpStats, Stats};
use super::Workload;

/// The preload phase.
pub struct PreloadReport {
    pub keys: u64,
    pub elapsed: Duration,
    pub stats: Stats,
}

/// Everything a run found, with the settings that produced it.
pub struct Report {
    pub workload: Workload,
    pub read_ratio: f64,
    pub urls: Vec<String>,
    pub connections: usize,
    pub threads: usize,
    pub keys: u64,
    pub key_prefix: String,
    pub value_size: usize,
    pub rate: Option<f64>,
    pub seed: u64,
    pub warmup: Duration,
    pub duration: Option<Duration>,
    pub requests_target: Option<u64>,
    pub timeout: Duration,
    pub interrupted: bool,
    /// From the end of the warmup to the last counted answer (or the end of
    /// the `--duration`, whichever is later).
    pub elapsed: Duration,
    pub stats: Stats,
    pub preload: Option<PreloadReport>,
    pub lag: Option<LagReport>,
}

/// Milliseconds, rounded to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_nanos() as f64 / 1e3).round() / 1e3
}

/// Milliseconds with three significant digits or so, for people.
fn ms_text(d: Duration) -> String {
    let v = d.as_nanos() as f64 / 1e6;
    if v < 1.0 {
        format!("{v:.3}")
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn per_sec(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        return 0.0;
    }
    n as f64 / d.as_secs_f64()
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Quantiles of a histogram, as JSON.
fn latency_json(o: &OpStats) -> Value {
    let h = &o.latency;
    json!({
        "p50": ms(h.quantile(0.5)),
        "p90": ms(h.quantile(0.9)),
        "p99": ms(h.quantile(0.99)),
        "p99_9": ms(h.quantile(0.999)),
        "max": ms(h.max()),
        "mean": ms(h.mean()),
    })
}

fn errors_json(stats: &Stats) -> (Value, Value) {
    let by_status: Map<String, Value> = stats
        .by_status
        .iter()
        .map(|(s, n)| (s.to_string(), json!(n)))
        .collect();
    let by_kind: Map<String, Value> = stats
        .by_kind
        .iter()
        .map(|(k, n)| (k.to_string(), json!(n)))
        .collect();
    (Value::Object(by_status), Value::Object(by_kind))
}

impl Report {
    /// Requests answered as expected (including misses).
    pub fn succeeded(&self) -> u64 {
        let t = self.stats.total();
        t.ok + t.misses
    }

    fn throughput(&self, o: &OpStats) -> f64 {
        per_sec(o.ok + o.misses, self.elapsed)
    }

    pub fn to_json(&self) -> Value {
        let total = self.stats.total();
        let mut ops = Map::new();
        for op in Op::ALL {
            let o = &self.stats.ops[op as usize];
            if o.requests() == 0 {
                continue;
            }
            ops.insert(
                op.name().to_owned(),
                json!({
                    "requests": o.requests(),
                    "ok": o.ok,
                    "misses": o.misses,
                    "errors": o.errors,
                    "throughput_ops_per_sec": round1(self.throughput(o)),
                    "latency_ms": latency_json(o),
                }),
            );
        }
        let (by_status, by_kind) = errors_json(&self.stats);
        let preload = self.preload.as_ref().map(|p| {
            let t = p.stats.total();
            let (by_status, by_kind) = errors_json(&p.stats);
            json!({
                "keys": p.keys,
                "ok": t.ok,
                "errors": t.errors,
                "elapsed_s": p.elapsed.as_secs_f64(),
                "keys_per_sec": round1(per_sec(t.ok, p.elapsed)),
                "errors_by_status": by_status,
                "errors_by_kind": by_kind,
            })
        });
        let lag = self.lag.as_ref().map(|l| {
            let visible = !l.visible.is_empty();
            let q = |v: f64| visible.then(|| ms(l.quantile(v)));
            json!({
                "samples": l.samples(),
                "visible": l.visible.len(),
                "not_visible": l.not_visible,
                "skipped": l.skipped,
                "median_ms": q(0.5),
                "p99_ms": q(0.99),
                "max_ms": q(1.0),
                "visible_timeout_s": VISIBLE_TIMEOUT.as_secs(),
            })
        });
        json!({
            "workload": self.workload.name(),
            "read_ratio": (self.workload == Workload::Mixed).then_some(self.read_ratio),
            "urls": self.urls,
            "connections": self.connections,
            "threads": self.threads,
            "keys": self.keys,
            "key_prefix": self.key_prefix,
            "value_size": self.value_size,
            "rate": self.rate,
            "seed": self.seed,
            "warmup_s": self.warmup.as_secs_f64(),
            "duration_s": self.duration.map(|d| d.as_secs_f64()),
            "requests_target": self.requests_target,
            "timeout_s": self.timeout.as_secs_f64(),
            "interrupted": self.interrupted,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "requests": total.requests(),
            "ok": total.ok,
            "misses": total.misses,
            "errors": total.errors,
            "throughput_ops_per_sec": round1(self.throughput(&total)),
            "latency_ms": latency_json(&total),
            "ops": ops,
            "errors_by_status": by_status,
            "errors_by_kind": by_kind,
            "error_examples": self.stats.examples,
            "preload": preload,
            "replication_lag": lag,
        })
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let total = self.stats.total();
        let mut out = String::new();
        let what = match self.workload {
            Workload::Mixed => format!(
                "mixed ({:.0}% get, {:.0}% put)",
                self.read_ratio * 100.0,
                (1.0 - self.read_ratio) * 100.0
            ),
            w => w.name().to_owned(),
        };
        let nodes = match self.urls.len() {
            1 => self.urls[0].clone(),
            n => format!("{n} nodes"),
        };
        let length = match (self.duration, self.requests_target) {
            (_, Some(n)) => format!("{n} requests"),
            (Some(d), None) => secs_text(d),
            (None, None) => String::new(),
        };
        let warmup = if self.warmup.is_zero() {
            "no warmup".to_owned()
        } else {
            format!("after {} warmup", secs_text(self.warmup))
        };
        let pace = match self.rate {
            Some(r) => format!("{r} ops/s"),
            None => "closed loop".to_owned(),
        };
        let mut head = vec![
            row(["workload", &what]),
            row([
                "target",
                &format!(
                    "{nodes}, {} connections, {} client thread{}",
                    self.connections,
                    self.threads,
                    if self.threads == 1 { "" } else { "s" }
                ),
            ]),
            row([
                "keys",
                &format!(
                    "{} ({}00000000..), {}-byte values",
                    self.keys, self.key_prefix, self.value_size
                ),
            ]),
            row([
                "run",
                &format!("{length} {warmup}, {pace}, seed {}", self.seed),
            ]),
        ];
        if let Some(p) = &self.preload {
            let t = p.stats.total();
            head.push(row([
                "preload",
                &format!(
                    "{} keys in {} ({:.0} keys/s), {} errors",
                    p.keys,
                    secs_text(p.elapsed),
                    per_sec(t.ok, p.elapsed),
                    t.errors
                ),
            ]));
        }
        out.push_str(&table(&head, false));
        out.push('\n');

        let mut figures = vec![
            row([
                "requests",
                &format!("{} in {}", total.requests(), secs_text(self.elapsed)),
            ]),
            row([
                "throughput",
                &format!("{:.0} ops/s", self.throughput(&total)),
            ]),
            row(["ok", &total.ok.to_string()]),
            row(["misses", &format!("{} (404: key absent)", total.misses)]),
            row(["errors", &total.errors.to_string()]),
        ];
        if self.interrupted {
            figures.push(row([
                "interrupted",
                "yes (Ctrl-C): figures cover the part that ran",
            ]));
        }
        out.push_str(&table(&figures, false));
        out.push('\n');

        let mut lat = vec![row([
            "latency (ms)",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "mean",
            "requests",
        ])];
        let mut line = |name: &str, o: &OpStats| {
            let h = &o.latency;
            lat.push(vec![
                name.to_owned(),
                ms_text(h.quantile(0.5)),
                ms_text(h.quantile(0.9)),
                ms_text(h.quantile(0.99)),
                ms_text(h.quantile(0.999)),
                ms_text(h.max()),
                ms_text(h.mean()),
                o.requests().to_string(),
            ]);
        };
        let used: Vec<Op> = Op::ALL
            .into_iter()
            .filter(|op| self.stats.ops[*op as usize].requests() > 0)
            .collect();
        if used.len() != 1 {
            line("all", &total);
        }
        for op in used {
            line(op.name(), &self.stats.ops[op as usize]);
        }
        out.push_str(&table(&lat, true));

        if total.errors > 0 {
            out.push('\n');
            let mut errs = Vec::new();
            for (s, n) in &self.stats.by_status {
                let ex = self.stats.examples.get(&s.to_string());
                errs.push(row([
                    &format!("status {s}"),
                    &n.to_string(),
                    ex.map(String::as_str).unwrap_or(""),
                ]));
            }
            for (k, n) in &self.stats.by_kind {
                let ex = self.stats.examples.get(*k);
                errs.push(row([
                    k,
                    &n.to_string(),
                    ex.map(String::as_str).unwrap_or(""),
                ]));
            }
            out.push_str("errors\n");
            out.push_str(&indent(&table(&errs, false)));
        }

        if let Some(l) = &self.lag {
            out.push('\n');
            let mut rows = vec![row([
                "replication lag",
                "ack -> visible on every other node",
            ])];
            rows.push(row(["samples", &l.samples().to_string()]));
            if !l.visible.is_empty() {
                rows.push(row(["median", &format!("{} ms", ms_text(l.quantile(0.5)))]));
                rows.push(row(["p99", &format!("{} ms", ms_text(l.quantile(0.99)))]));
                rows.push(row(["max", &format!("{} ms", ms_text(l.quantile(1.0)))]));
            }
            rows.push(row([
                "not visible",
                &format!("{} (within {} s)", l.not_visible, VISIBLE_TIMEOUT.as_secs()),
            ]));
            if l.skipped > 0 {
                rows.push(row([
                    "skipped",
                    &format!("{} (too many probes in flight)", l.skipped),
                ]));
            }
            out.push_str(&table(&rows, false));
        }
        out
    }
}

fn secs_text(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{} ms", d.as_millis())
    } else {
        format!("{s:.2} s")
    }
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// Columns padded to their widest cell; with `numbers`, every column but
/// the first is right-aligned.
fn table(rows: &[Vec<String>], numbers: bool) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c] - cell.chars().count();
            if numbers && c > 0 {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if c + 1 < r.len() {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &[row(["a", "1", "22"]), row(["long name", "333", "4"])],
            true,
        );
        assert_eq!(t, "a            1  22\nlong name  333   4\n");
        assert_eq!(ms_text(Duration::from_micros(1234)), "1.23");
        assert_eq!(ms_text(Duration::from_micros(456)), "0.456");
        assert_eq!(ms(Duration::from_nanos(1_234_567)), 1.235);
    }
}
