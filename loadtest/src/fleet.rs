//! The coordinator's side of the worker processes: starts them, shows their
//! connect progress, asks them for counts and per-step figures, and adds up
//! their answers. See [`crate::worker`] for the other side.

use std::net::IpAddr;
use std::process::Stdio;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::procstat;
use crate::report::{Connections, Latency};
use crate::worker::{Answer, Job, StepCounts};

/// How to cut a run's connections into worker jobs.
pub struct Plan {
    pub template: Job,
    pub connections: u64,
    /// Connections per worker at most (below the open-files limit).
    pub per_worker: u64,
    /// Workers at least (to use several cores for reading).
    pub min_workers: u64,
    /// Source addresses, one per worker in turn; empty: automatic.
    pub sources: Vec<IpAddr>,
}

impl Plan {
    pub fn jobs(&self) -> Vec<Job> {
        let workers = self
            .connections
            .div_ceil(self.per_worker.max(1))
            .max(self.min_workers)
            .max(1);
        let loopback = self
            .template
            .urls
            .iter()
            .all(|u| u.contains("://127.") || u.contains("://localhost"));
        (0..workers)
            .map(|k| {
                let first = self.connections * k / workers;
                let next = self.connections * (k + 1) / workers;
                let source = if !self.sources.is_empty() {
                    Some(self.sources[k as usize % self.sources.len()])
                } else if loopback {
                    // Each worker its own loopback address: its own ephemeral
                    // port range towards every node.
                    Some(IpAddr::from([127, 0, (2 + k / 250) as u8, (2 + k % 250) as u8]))
                } else {
                    None
                };
                Job {
                    first,
                    count: next - first,
                    source,
                    ..self.template.clone()
                }
            })
            .collect()
    }
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn ask(&mut self, command: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn next(&mut self) -> anyhow::Result<Answer> {
        let line = self
            .lines
            .next_line()
            .await?
            .ok_or_else(|| anyhow::anyhow!("a worker exited early (see its stderr above)"))?;
        Ok(serde_json::from_str(&line)?)
    }
}

/// The running workers.
pub struct Fleet {
    workers: Vec<Worker>,
    /// (channel index, subscribers) over all workers.
    pub subscribers: Vec<(u64, u64)>,
}

impl Fleet {
    /// Starts the workers and waits until every connect finished.
    pub async fn start(plan: &Plan) -> anyhow::Result<(Fleet, Connections)> {
        let exe = std::env::current_exe()?;
        let mut workers = Vec::new();
        for job in plan.jobs() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?;
            let mut stdin = child
                .stdin
                .take()
                .ok_or_else(|| anyhow::anyhow!("no worker stdin"))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow::anyhow!("no worker stdout"))?;
            stdin
                .write_all(format!("{}\n", serde_json::to_string(&job)?).as_bytes())
                .await?;
            workers.push(Worker {
                child,
                stdin,
                lines: BufReader::new(stdout).lines(),
            });
        }
        let bar = ProgressBar::new(plan.connections).with_style(
            ProgressStyle::with_template("connecting {bar:40} {pos}/{len} ({per_sec}) {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut progress = vec![(0u64, 0u64); workers.len()];
        let mut ready = vec![None; workers.len()];
        let started = std::time::Instant::now();
        while ready.iter().any(Option::is_none) {
            for (k, worker) in workers.iter_mut().enumerate() {
                if ready[k].is_some() {
                    continue;
                }
                match worker.next().await? {
                    Answer::Progress { connected, failed } => progress[k] = (connected, failed),
                    Answer::Ready {
                        connected,
                        failed,
                        connect_secs,
                        subscribers,
                        errors,
                    } => {
                        progress[k] = (connected, failed);
                        ready[k] = Some((connect_secs, subscribers, errors));
                    }
                    other => anyhow::bail!("unexpected worker answer {other:?}"),
                }
                let (open, failed): (u64, u64) = progress.iter().fold((0, 0), |a, p| (a.0 + p.0, a.1 + p.1));
                bar.set_position(open + failed);
                if failed > 0 {
                    bar.set_message(format!("{failed} failed"));
                }
            }
        }
        bar.finish_and_clear();
        let connect_secs = started.elapsed().as_secs_f64();
        let mut connections = Connections {
            requested: plan.connections,
            connect_secs,
            ..Connections::default()
        };
        let mut subscribers = std::collections::BTreeMap::<u64, u64>::new();
        for (k, r) in ready.into_iter().enumerate() {
            let Some((_, subs, errors)) = r else { continue };
            connections.open += progress[k].0;
            connections.failed += progress[k].1;
            for (channel, n) in subs {
                *subscribers.entry(channel).or_default() += n;
            }
            for e in errors {
                if connections.first_errors.len() < 5 {
                    connections.first_errors.push(e);
                }
            }
        }
        connections.connect_rate = connections.open as f64 / connect_secs.max(1e-9);
        let fleet = Fleet {
            workers,
            subscribers: subscribers.into_iter().collect(),
        };
        Ok((fleet, connections))
    }

    /// Subscribers of channel index `channel`.
    pub fn subscribers_of(&self, channel: u64) -> u64 {
        self.subscribers
            .binary_search_by_key(&channel, |&(c, _)| c)
            .map(|i| self.subscribers[i].1)
            .unwrap_or(0)
    }

    /// Probes received so far, over all workers.
    pub async fn received(&mut self) -> anyhow::Result<u64> {
        for w in &mut self.workers {
            w.ask("count").await?;
        }
        let mut total = 0;
        for w in &mut self.workers {
            match w.next().await? {
                Answer::Count { received } => total += received,
                other => anyhow::bail!("unexpected worker answer {other:?}"),
            }
        }
        Ok(total)
    }

    /// Waits until `expected` probes arrived in total, or `patience` passed.
    pub async fn drain(&mut self, expected: u64, patience: Duration) -> anyhow::Result<u64> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let received = self.received().await?;
            if received >= expected || tokio::time::Instant::now() >= deadline {
                return Ok(received);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends a step: every worker's counts since the last step, added up.
    pub async fn step(&mut self) -> anyhow::Result<(StepCounts, Latency, Latency)> {
        for w in &mut self.workers {
            w.ask("step").await?;
        }
        let mut total = StepCounts::default();
        let (mut latency, mut churn) = (Latency::default(), Latency::default());
        for w in &mut self.workers {
            match w.next().await? {
                Answer::Step(s) => {
                    total.received += s.received;
                    total.duplicates += s.duplicates;
                    total.disconnects += s.disconnects;
                    total.churn_cycles += s.churn_cycles;
                    total.churn_failed += s.churn_failed;
                    latency.merge(&Latency::from_buckets(&s.latency));
                    churn.merge(&Latency::from_buckets(&s.churn_connect));
                }
                other => anyhow::bail!("unexpected worker answer {other:?}"),
            }
        }
        Ok((total, latency, churn))
    }

    /// Starts the churn loops in every worker.
    pub async fn churn(&mut self) -> anyhow::Result<()> {
        for w in &mut self.workers {
            w.ask("churn").await?;
        }
        Ok(())
    }

    /// CPU time of the worker processes so far.
    pub fn cpu(&self) -> Duration {
        self.workers
            .iter()
            .filter_map(|w| w.child.id())
            .filter_map(|pid| procstat::cpu_time(&pid.to_string()).ok())
            .sum()
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        for w in &mut self.workers {
            let _ = w.ask("stop").await;
        }
        for w in &mut self.workers {
            let _ = tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await;
        }
        Ok(())
    }
}
