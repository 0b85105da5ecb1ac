//! What a run measured: latency histograms that merge across worker
//! processes, per-step figures, the human summary table and the JSON report
//! (`--json FILE`) that `loadtest plot` reads back.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latency in microseconds, 1 µs to 10 min, 3 significant digits.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds are valid"))
    }
}

impl Latency {
    pub fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Non-empty buckets, to ship a histogram between processes.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    pub fn from_buckets(buckets: &[(u64, u64)]) -> Latency {
        let mut latency = Latency::default();
        for &(value, count) in buckets {
            let _ = latency.0.record_n(value.max(1), count);
        }
        latency
    }

    pub fn summary(&self) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let h = &self.0;
        let empty = h.is_empty();
        let at = |q: f64| if empty { 0.0 } else { ms(h.value_at_quantile(q)) };
        Percentiles {
            count: h.len(),
            mean: if empty { 0.0 } else { h.mean() / 1000.0 },
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: if empty { 0.0 } else { ms(h.max()) },
            curve: if empty {
                Vec::new()
            } else {
                // Quantiles 0.5, 0.75, 0.875, ...: the usual HDR percentile plot.
                (1..=20)
                    .map(|i| {
                        let q = 1.0 - 0.5f64.powi(i);
                        (q, at(q))
                    })
                    .collect()
            },
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// (quantile, ms) points for percentile charts.
    pub curve: Vec<(f64, f64)>,
}

/// One measurement window: a publish rate held for a duration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Step {
    /// Publications per second asked for.
    pub publish_rate: f64,
    pub duration_secs: f64,
    pub published: u64,
    /// Publications the API refused or that failed (not expected anywhere).
    pub publish_failed: u64,
    /// Deliveries owed to subscribers for the acknowledged publications.
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Connections the server closed or that broke during the step.
    pub disconnects: u64,
    pub deliveries_per_sec: f64,
    /// Receive time minus *scheduled* send time, all deliveries.
    pub latency: Percentiles,
    /// Time from sending the publish request to its answer.
    pub publish_round_trip: Percentiles,
    /// user+sys CPU seconds of the gateway processes (`--pid`) in the step.
    pub server_cpu_secs: Option<f64>,
    /// ... and of the load generator (this process and its workers).
    pub generator_cpu_secs: f64,
    pub server_cpu_per_million: Option<f64>,
}

/// Connection establishment figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Connections {
    pub requested: u64,
    pub open: u64,
    pub failed: u64,
    pub connect_secs: f64,
    /// Handshake + subscribe completions per second.
    pub connect_rate: f64,
    /// Connections that dropped while held (`idle`).
    pub dropped: u64,
    pub first_errors: Vec<String>,
}

/// Server memory around opening the connections (`--pid`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Memory {
    pub rss_before: u64,
    pub rss_after: u64,
    pub per_connection_bytes: f64,
}

/// Churn figures (`loadtest churn`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Churn {
    pub cycles: u64,
    pub failed: u64,
    pub cycles_per_sec: f64,
    pub connect_latency: Percentiles,
}

/// A whole run, as written by `--json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    /// The command line that produced it.
    pub command: String,
    pub started_unix: u64,
    pub cores: usize,
    pub connections: Connections,
    pub memory: Option<Memory>,
    pub steps: Vec<Step>,
    pub churn: Option<Churn>,
    /// For stepped runs: the highest rate that kept p99 under the bound and lost nothing.
    pub sustainable_deliveries_per_sec: Option<f64>,
}

impl Report {
    /// The human summary.
    pub fn print(&self) {
        let c = &self.connections;
        println!("\n== {} ==", self.scenario);
        println!(
            "connections   {} open of {} ({} failed) in {:.2} s: {:.0}/s",
            c.open, c.requested, c.failed, c.connect_secs, c.connect_rate
        );
        if c.dropped > 0 {
            println!("  {} connections dropped while held", c.dropped);
        }
        for error in &c.first_errors {
            println!("  error: {error}");
        }
        if let Some(m) = &self.memory {
            println!(
                "server RSS    {:.1} MiB -> {:.1} MiB: {:.0} bytes ({:.2} KiB) per connection",
                m.rss_before as f64 / 1048576.0,
                m.rss_after as f64 / 1048576.0,
                m.per_connection_bytes,
                m.per_connection_bytes / 1024.0
            );
        }
        if let Some(churn) = &self.churn {
            println!(
                "churn         {} cycles ({:.0}/s), {} failed; connect+subscribe p50 {:.2} ms p99 {:.2} ms",
                churn.cycles,
                churn.cycles_per_sec,
                churn.failed,
                churn.connect_latency.p50,
                churn.connect_latency.p99
            );
        }
        if self.steps.is_empty() {
            return;
        }
        println!(
            "\n{:>9} {:>10} {:>11} {:>7} {:>5} {:>6} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
            "pub/s",
            "published",
            "delivered/s",
            "lost",
            "dup",
            "disc",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "srv CPU/M",
            "gen CPU s"
        );
        for s in &self.steps {
            println!(
                "{:>9.0} {:>10} {:>11.0} {:>7} {:>5} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9} {:>9.2}",
                s.publish_rate,
                s.published,
                s.deliveries_per_sec,
                s.lost,
                s.duplicates,
                s.disconnects,
                s.latency.p50,
                s.latency.p90,
                s.latency.p99,
                s.latency.p999,
                s.latency.max,
                s.server_cpu_per_million
                    .map(|v| format!("{v:.2}"))
                    .unwrap_or_else(|| "-".into()),
                s.generator_cpu_secs
            );
        }
        if let Some(rate) = self.sustainable_deliveries_per_sec {
            println!("\nhighest sustainable: {rate:.0} deliveries/s");
        }
    }

    pub fn write_json(&self, path: &std::path::Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }

    pub fn read_json(path: &std::path::Path) -> anyhow::Result<Report> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a loadtest report: {e}", path.display()))
    }

    /// Zero loss, zero duplicates, zero disconnects in every step.
    pub fn clean(&self) -> bool {
        self.connections.failed == 0
            && self.connections.dropped == 0
            && self
                .steps
                .iter()
                .all(|s| s.lost == 0 && s.duplicates == 0 && s.disconnects == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_trip_between_processes() {
        let mut a = Latency::default();
        for v in [100, 200, 300, 5_000, 70_000] {
            a.record(v);
        }
        let b = Latency::from_buckets(&a.buckets());
        assert_eq!(b.count(), 5);
        let (sa, sb) = (a.summary(), b.summary());
        assert_eq!(sa.p50, sb.p50);
        assert_eq!(sa.max, sb.max);
        let mut merged = Latency::default();
        merged.merge(&a);
        merged.merge(&b);
        assert_eq!(merged.count(), 10);
        assert!((merged.summary().p50 - 0.3).abs() < 0.01);
    }
}
