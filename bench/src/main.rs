//! `jobq-bench`: drives a running jobq server through the client crate and
//! prints figures (throughput, latency percentiles, server CPU and memory) for
//! the scenarios of `bench/run.sh`. Figures, not pass/fail: targets are judged
//! against the pgbench baseline the script measures in the same run.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::Parser;
use futures::StreamExt;
use jobq_client::{
    ClaimJobs, ClaimedJob, Completion, EventKind, JobContext, JobQueueClient, ListJobs, SubmitJob,
    WatchJobs, Worker, WorkerClient, sha256_hex,
};
use serde_json::{Value, json};
use uuid::Uuid;

/// Runs the benchmark scenarios against a jobq server.
#[derive(Debug, Parser)]
struct Args {
    /// The server.
    #[arg(long, env = "JOBQ_URL")]
    url: String,
    /// An admin API key.
    #[arg(long, env = "JOBQ_API_KEY")]
    api_key: String,
    /// The server's database, for setting up rows and counting connections.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The server's process id, for its CPU time and memory.
    #[arg(long)]
    server_pid: u32,
    /// pgbench's single-row-insert transactions per second in this run.
    #[arg(long)]
    baseline_tps: f64,
    /// Small sizes, for CI: seconds, not minutes; no targets.
    #[arg(long)]
    smoke: bool,
    /// Where to write the figures as JSON.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
    /// Only these scenarios (comma-separated: submit, drain, steady, pickup,
    /// fan-out, scale; drain-each, drain-batched, drain-runner, steady-each
    /// or steady-batched for one row of drain or steady); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// One scenario's figures.
#[derive(Debug, Default)]
struct Figures {
    name: &'static str,
    operations: u64,
    seconds: f64,
    /// Milliseconds, sorted.
    latencies: Vec<f64>,
    cpu_seconds: f64,
    peak_rss_mib: f64,
    postgres_cpu_seconds: f64,
    generator_cpu_seconds: f64,
    /// The share of the machine's CPU time that was busy, 0 to 1.
    machine_busy: f64,
    notes: serde_json::Map<String, Value>,
}

impl Figures {
    fn per_second(&self) -> f64 {
        self.operations as f64 / self.seconds.max(1e-9)
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let at = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[at]
    }

    fn json(&self) -> Value {
        let mut value = json!({
            "scenario": self.name,
            "operations": self.operations,
            "seconds": self.seconds,
            "per_second": self.per_second(),
            "p50_ms": self.percentile(0.5),
            "p99_ms": self.percentile(0.99),
            "max_ms": self.latencies.last().copied().unwrap_or(f64::NAN),
            "server_cpu_seconds": self.cpu_seconds,
            "server_peak_rss_mib": self.peak_rss_mib,
            "postgres_cpu_seconds": self.postgres_cpu_seconds,
            "generator_cpu_seconds": self.generator_cpu_seconds,
            "machine_busy": self.machine_busy,
        });
        for (key, note) in &self.notes {
            value[key] = note.clone();
        }
        value
    }
}

/// Latencies gathered by many tasks.
#[derive(Clone, Default)]
struct Samples(Arc<Mutex<Vec<f64>>>);

impl Samples {
    fn add(&self, elapsed: Duration) {
        self.0.lock().unwrap().push(elapsed.as_secs_f64() * 1000.0);
    }
    fn sorted(&self) -> Vec<f64> {
        let mut all = std::mem::take(&mut *self.0.lock().unwrap());
        all.sort_by(f64::total_cmp);
        all
    }
}

/// The server process's CPU time and peak memory, measured per scenario, and
/// beside it where the rest of the machine's time went: Postgres's processes
/// (when they run on this machine), the load generator's own, and how busy the
/// machine's cores were.
struct ServerMeter {
    pid: u32,
    cpu_at_start: f64,
    postgres_at_start: f64,
    generator_at_start: f64,
    machine_at_start: (f64, f64),
}

impl ServerMeter {
    fn start(pid: u32) -> Self {
        // Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
        let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        Self {
            pid,
            cpu_at_start: cpu_seconds(pid),
            postgres_at_start: postgres_cpu_seconds(),
            generator_at_start: own_cpu_seconds(),
            machine_at_start: machine_ticks(),
        }
    }

    fn finish(self, figures: &mut Figures) {
        figures.cpu_seconds = cpu_seconds(self.pid) - self.cpu_at_start;
        figures.peak_rss_mib = status_kib(self.pid, "VmHWM:") / 1024.0;
        figures.postgres_cpu_seconds = postgres_cpu_seconds() - self.postgres_at_start;
        figures.generator_cpu_seconds = own_cpu_seconds() - self.generator_at_start;
        let (busy, total) = machine_ticks();
        let (busy_before, total_before) = self.machine_at_start;
        figures.machine_busy = (busy - busy_before) / (total - total_before).max(1.0);
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces), and the name.
fn proc_stat(pid: &str) -> Option<(String, Vec<u64>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    // The state (a letter) is the first field after the name; it reads as 0.
    let fields = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Some((name, fields))
}

fn cpu_seconds(pid: u32) -> f64 {
    // utime and stime are the 14th and 15th fields: 12th and 13th after the name.
    proc_stat(&pid.to_string()).map_or(0.0, |(_, f)| {
        (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) as f64 / clock_ticks()
    })
}

fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id())
}

/// The CPU time of every process named `postgres` on this machine, and of the
/// ones that have exited (postmaster's waited-for children: cutime and cstime,
/// the 16th and 17th fields), so that a backend ending mid-scenario still
/// counts. 0 when Postgres runs elsewhere.
fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0;
    for entry in entries.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Some((name, f)) = proc_stat(pid) else {
            continue;
        };
        if name != "postgres" {
            continue;
        }
        let field = |i: usize| f.get(i).copied().unwrap_or(0);
        ticks += field(11) + field(12);
        // The postmaster is the one whose parent is not a postgres process.
        let parent = proc_stat(&field(1).to_string()).map(|(name, _)| name);
        if parent.as_deref() != Some("postgres") {
            ticks += field(13) + field(14);
        }
    }
    ticks as f64 / clock_ticks()
}

/// The machine's busy and total CPU ticks so far, over every core (`/proc/stat`).
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0.0))
        .collect();
    let total: f64 = ticks.iter().take(8).sum();
    // idle and iowait are the 4th and 5th.
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    (total - idle, total)
}

/// Clock ticks per second (`getconf CLK_TCK`), asked once: every meter reads
/// several processes' times at each scenario's start and finish.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Runs SQL on the server's database with psql; returns its unaligned output.
fn psql(database_url: &str, sql: &str) -> String {
    let output = Command::new("psql")
        .args([database_url, "-v", "ON_ERROR_STOP=1", "-Atqc", sql])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Inserts `n` jobs straight into the table: `queued` of them queued, the rest
/// completed, spread over `users` users.
fn insert_jobs(database_url: &str, n: u64, queued: u64, users: u64) {
    psql(
        database_url,
        &format!(
            "INSERT INTO menu_extraction_jobs (id, user_id, image_url, image_hash, status, completed_at)
             SELECT gen_random_uuid(),
                    ('00000000-0000-4000-8000-' || lpad(to_hex(g % {users}), 12, '0'))::uuid,
                    'https://bench.example/' || g || '.jpg',
                    md5(g::text || random()::text) || md5(g::text),
                    CASE WHEN g <= {queued} THEN 'queued' ELSE 'completed' END,
                    CASE WHEN g <= {queued} THEN NULL ELSE now() END
             FROM generate_series(1, {n}) AS g"
        ),
    );
}

fn queued(database_url: &str) -> u64 {
    psql(
        database_url,
        "SELECT count(*) FROM menu_extraction_jobs WHERE status = 'queued'",
    )
    .parse()
    .unwrap_or(0)
}

struct Bench {
    args: Args,
    /// Clients on connections of their own, used round robin.
    clients: Vec<JobQueueClient>,
}

impl Bench {
    fn client(&self, i: usize) -> JobQueueClient {
        self.clients[i % self.clients.len()].clone()
    }

    fn worker(&self, i: usize) -> WorkerClient {
        self.client(i).worker()
    }

    /// Before each scenario (and after each bulk load): what came before is
    /// cleaned up so that each scenario is measured on its own, as pgbench
    /// vacuums before its own run. Dead row versions are vacuumed (a claim would
    /// otherwise walk the queue index over every job the scenario before
    /// claimed), statistics are fresh, and a checkpoint writes the dirty pages
    /// (otherwise the next scenario's commits wait behind the writes of the
    /// last one's, and its first change of each page logs the whole page).
    fn settle(&self) {
        let db = &self.args.database_url;
        psql(db, "VACUUM ANALYZE menu_extraction_jobs");
        psql(db, "CHECKPOINT");
    }

    fn size(&self, full: u64, smoke: u64) -> u64 {
        if self.args.smoke { smoke } else { full }
    }

    /// 64 callers, each its own user, submitting distinct photos.
    async fn submit(&self) -> Figures {
        let total = self.size(20_000, 500);
        let meter = ServerMeter::start(self.args.server_pid);
        let next = Arc::new(AtomicU64::new(0));
        let samples = Samples::default();
        let started = Instant::now();
        let callers: Vec<_> = (0..64)
            .map(|i| {
                let client = self.client(i);
                let next = next.clone();
                let samples = samples.clone();
                let user = Uuid::new_v4();
                tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= total {
                            break;
                        }
                        let request = SubmitJob::new(
                            user,
                            format!("https://bench.example/submit/{n}.jpg"),
                            sha256_hex(n.to_le_bytes()),
                        );
                        let t = Instant::now();
                        client.submit_job(request).await.expect("submitted");
                        samples.add(t.elapsed());
                    }
                })
            })
            .collect();
        futures::future::join_all(callers).await;
        let mut figures = Figures {
            name: "submit",
            operations: total,
            seconds: started.elapsed().as_secs_f64(),
            latencies: samples.sorted(),
            ..Figures::default()
        };
        meter.finish(&mut figures);
        figures
    }

    /// Workers with a no-op handler drain the queue: batches of ClaimJobs, and
    /// one CompleteJob per job or one CompleteJobs per claimed batch
    /// (`Drainers::Loops`; a job's latency is its report's call), or the
    /// client crate's runner (no latencies: the runner reports for itself).
    async fn drain(&self, drainers: Drainers) -> Figures {
        let total = self.size(20_000, 500);
        let have = queued(&self.args.database_url);
        if have < total {
            insert_jobs(&self.args.database_url, total - have, total - have, 1_000);
            self.settle();
        }
        let total = queued(&self.args.database_url);
        let meter = ServerMeter::start(self.args.server_pid);
        let samples = Samples::default();
        let done = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        if let Drainers::Loops(reports) = drainers {
            let workers: Vec<_> = (0..8)
                .map(|i| {
                    let worker = self.worker(i);
                    let samples = samples.clone();
                    let done = done.clone();
                    tokio::spawn(async move {
                        loop {
                            let claim = ClaimJobs::new(format!("drain-{i}"), 100);
                            let claimed = worker.claim_jobs(&claim).await.expect("claimed");
                            if claimed.is_empty() {
                                break;
                            }
                            report_done(&worker, &claimed, reports, |_, took| samples.add(took))
                                .await;
                            done.fetch_add(claimed.len() as u64, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            futures::future::join_all(workers).await;
        } else {
            done.store(self.drain_with_runners(total).await, Ordering::Relaxed);
        }
        let mut figures = Figures {
            name: match drainers {
                Drainers::Loops(Reports::Each) => "drain",
                Drainers::Loops(Reports::Batched) => "drain, CompleteJobs",
                Drainers::Runner => "drain, Worker runner",
            },
            operations: done.load(Ordering::Relaxed),
            seconds: started.elapsed().as_secs_f64(),
            latencies: samples.sorted(),
            ..Figures::default()
        };
        figures.notes.insert("queued_at_start".into(), total.into());
        meter.finish(&mut figures);
        figures
    }

    /// Drains `total` queued jobs with the client crate's [`Worker`] runner,
    /// as a user would: eight runners of 100 handlers each, a no-op handler,
    /// claims that do not wait (so the last runners stop as soon as the queue
    /// is empty). Returns how many jobs the runners reported completed.
    async fn drain_with_runners(&self, total: u64) -> u64 {
        let handled = Arc::new(AtomicU64::new(0));
        let (all_handled, handled_all) = tokio::sync::watch::channel(false);
        let all_handled = Arc::new(all_handled);
        let runners: Vec<_> = (0..8)
            .map(|i| {
                let (handled, all_handled) = (handled.clone(), all_handled.clone());
                let mut handled_all = handled_all.clone();
                let runner = Worker::builder(self.worker(i))
                    .worker_id(format!("drain-{i}"))
                    .concurrency(100)
                    .claim_wait(Duration::ZERO)
                    .run(
                        move |_job: JobContext| {
                            if handled.fetch_add(1, Ordering::Relaxed) + 1 >= total {
                                all_handled.send_replace(true);
                            }
                            async { Ok::<_, String>(Completion::new(Default::default())) }
                        },
                        async move {
                            let _ = handled_all.wait_for(|all| *all).await;
                        },
                    );
                tokio::spawn(runner)
            })
            .collect();
        let mut completed = 0;
        for runner in futures::future::join_all(runners).await {
            completed += runner
                .expect("the runner ran")
                .expect("the runner ended cleanly")
                .completed;
        }
        completed
    }

    /// Submitting and draining at once; latency from a submission's answer to
    /// its completion's answer. Workers report as drain's do (`reports`).
    async fn steady(&self, reports: Reports) -> Figures {
        let window = Duration::from_secs(self.size(30, 3));
        let meter = ServerMeter::start(self.args.server_pid);
        let submitted: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
        let samples = Samples::default();
        let stop = Arc::new(AtomicBool::new(false));
        let completed = Arc::new(AtomicU64::new(0));
        let counter = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        // As many callers as the submit scenario.
        let submitters: Vec<_> = (0..64)
            .map(|i| {
                let client = self.client(i);
                let (stop, submitted, counter) = (stop.clone(), submitted.clone(), counter.clone());
                let user = Uuid::new_v4();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        let request = SubmitJob::new(
                            user,
                            format!("https://bench.example/steady/{n}.jpg"),
                            sha256_hex(format!("steady-{n}-{user}")),
                        );
                        let job = client.submit_job(request).await.expect("submitted").job;
                        submitted.lock().unwrap().insert(job.id, Instant::now());
                    }
                })
            })
            .collect();
        let workers: Vec<_> = (0..8)
            .map(|i| {
                let worker = self.worker(i + 64);
                let (stop, submitted, samples, completed) = (
                    stop.clone(),
                    submitted.clone(),
                    samples.clone(),
                    completed.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let claim = ClaimJobs::new(format!("steady-{i}"), 50)
                            .wait(Duration::from_millis(500));
                        let claimed = worker.claim_jobs(&claim).await.expect("claimed");
                        report_done(&worker, &claimed, reports, |job, _| {
                            let at = submitted.lock().unwrap().remove(&job.job.id);
                            if let Some(at) = at {
                                samples.add(at.elapsed());
                            }
                            completed.fetch_add(1, Ordering::Relaxed);
                        })
                        .await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(window).await;
        let completed_in_window = completed.load(Ordering::Relaxed);
        let seconds = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        futures::future::join_all(submitters).await;
        futures::future::join_all(workers).await;
        let mut figures = Figures {
            name: match reports {
                Reports::Each => "steady",
                Reports::Batched => "steady, CompleteJobs",
            },
            operations: completed_in_window,
            seconds,
            latencies: samples.sorted(),
            ..Figures::default()
        };
        figures
            .notes
            .insert("submitted".into(), counter.load(Ordering::Relaxed).into());
        meter.finish(&mut figures);
        // Leave an empty queue for the next scenario.
        psql(
            &self.args.database_url,
            "UPDATE menu_extraction_jobs SET status = 'completed', completed_at = now() WHERE status = 'queued'",
        );
        figures
    }

    /// A parked worker; submissions 20 ms apart; from a submission's answer to
    /// the claim's answer (the target's measure), and, in a second row, from
    /// the submission's call to the claim's answer (what a submitter waits
    /// before a worker has its job).
    async fn pickup(&self) -> [Figures; 2] {
        let count = self.size(200, 30);
        let meter = ServerMeter::start(self.args.server_pid);
        let claimed_at: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
        let worker = self.worker(0);
        let parked = {
            let claimed_at = claimed_at.clone();
            tokio::spawn(async move {
                let mut seen = 0;
                while seen < count {
                    let claim = ClaimJobs::new("pickup", 1).wait(Duration::from_secs(10));
                    for job in worker.claim_jobs(&claim).await.expect("claimed") {
                        claimed_at
                            .lock()
                            .unwrap()
                            .insert(job.job.id, Instant::now());
                        worker
                            .complete_job(&job.lease, Completion::new(Default::default()))
                            .await
                            .expect("completed");
                        seen += 1;
                    }
                }
            })
        };
        let client = self.client(1);
        let user = Uuid::new_v4();
        let mut submitted_at = HashMap::new();
        let mut called_at = HashMap::new();
        let mut ticks = tokio::time::interval(Duration::from_millis(20));
        let started = Instant::now();
        for n in 0..count {
            ticks.tick().await;
            let request = SubmitJob::new(
                user,
                format!("https://bench.example/pickup/{n}.jpg"),
                sha256_hex(format!("pickup-{n}-{user}")),
            );
            let called = Instant::now();
            let job = client.submit_job(request).await.expect("submitted").job;
            submitted_at.insert(job.id, Instant::now());
            called_at.insert(job.id, called);
        }
        parked.await.expect("the worker ran");
        let seconds = started.elapsed().as_secs_f64();
        let claimed_at = claimed_at.lock().unwrap();
        // Milliseconds from each submission's instant in `from` to its claim's
        // answer, sorted. The claim may answer before the submission's own
        // answer arrives (a parked worker is handed the job in the submission's
        // transaction): that counts as 0.
        let to_claim = |from: &HashMap<Uuid, Instant>| {
            let mut latencies: Vec<f64> = from
                .iter()
                .filter_map(|(id, at)| {
                    let claimed = claimed_at.get(id)?;
                    Some(claimed.saturating_duration_since(*at).as_secs_f64() * 1000.0)
                })
                .collect();
            latencies.sort_by(f64::total_cmp);
            latencies
        };
        let mut figures = Figures {
            name: "pickup",
            operations: count,
            seconds,
            latencies: to_claim(&submitted_at),
            ..Figures::default()
        };
        meter.finish(&mut figures);
        // The same calls, so no CPU or memory figures of its own (they would
        // be the row above's).
        let from_call = Figures {
            name: "pickup, from the submit call",
            operations: count,
            seconds,
            latencies: to_claim(&called_at),
            ..Figures::default()
        };
        [figures, from_call]
    }

    /// Many WatchJobs streams (most per user, a few for all users) while jobs are
    /// created at a fixed rate: from a job's commit (its updated_at) to its
    /// arrival on a stream.
    async fn fan_out(&self) -> Figures {
        let streams = self.size(10_000, 200) as usize;
        let all_users_streams = self.size(10, 2) as usize;
        let per_user = streams - all_users_streams;
        let users: Vec<Uuid> = (0..per_user.div_ceil(10)).map(|_| Uuid::new_v4()).collect();
        let rate = self.size(1_000, 200);
        let window = Duration::from_secs(self.size(20, 3));
        // Streams over connections of their own (100 streams each).
        let mut channels = Vec::new();
        for _ in 0..streams.div_ceil(100) {
            channels.push(
                JobQueueClient::builder(&self.args.url)
                    .api_key(&self.args.api_key)
                    .build()
                    .await
                    .expect("connected"),
            );
        }
        let connections_before = db_connections(&self.args.database_url);
        let meter = ServerMeter::start(self.args.server_pid);
        let samples = Samples::default();
        let received = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for s in 0..streams {
            let client = channels[s / 100].clone();
            let request = if s < per_user {
                WatchJobs::user(users[s / 10])
            } else {
                WatchJobs::all()
            };
            let (samples, received, opened) = (samples.clone(), received.clone(), opened.clone());
            tasks.push(tokio::spawn(async move {
                let mut events = std::pin::pin!(client.watch_jobs(request));
                opened.fetch_add(1, Ordering::Relaxed);
                while let Some(event) = events.next().await {
                    let Ok(event) = event else { break };
                    if event.kind == EventKind::Created {
                        let latency = SystemTime::now()
                            .duration_since(event.job.updated_at)
                            .unwrap_or_default();
                        samples.add(latency);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        // Let the streams open (a benchmark's settling time, not a test's wait).
        while opened.load(Ordering::Relaxed) < streams as u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let connections_during = db_connections(&self.args.database_url);
        let rss_with_streams = status_kib(self.args.server_pid, "VmRSS:") / 1024.0;
        // Jobs created at `rate` per second, round robin over the users.
        let started = Instant::now();
        let submitters = 8;
        let created = Arc::new(AtomicU64::new(0));
        let producers: Vec<_> = (0..submitters)
            .map(|i| {
                let client = self.client(i);
                let users = users.clone();
                let created = created.clone();
                let period = Duration::from_secs_f64(submitters as f64 / rate as f64);
                // Open loop: each submission starts on its tick, whether or not
                // the one before has been answered, so the rate holds.
                tokio::spawn(async move {
                    let mut ticks = tokio::time::interval(period);
                    let end = Instant::now() + window;
                    let mut n = i;
                    let mut in_flight = Vec::new();
                    while Instant::now() < end {
                        ticks.tick().await;
                        let user = users[n % users.len()];
                        let request = SubmitJob::new(
                            user,
                            format!("https://bench.example/fan-out/{n}.jpg"),
                            sha256_hex(format!("fan-{n}-{user}")),
                        );
                        let (client, created) = (client.clone(), created.clone());
                        in_flight.push(tokio::spawn(async move {
                            client.submit_job(request).await.expect("submitted");
                            created.fetch_add(1, Ordering::Relaxed);
                        }));
                        n += submitters;
                    }
                    futures::future::join_all(in_flight).await;
                })
            })
            .collect();
        futures::future::join_all(producers).await;
        let seconds = started.elapsed().as_secs_f64();
        // Events still in flight arrive within moments.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for task in &tasks {
            task.abort();
        }
        let mut figures = Figures {
            name: "fan-out",
            operations: created.load(Ordering::Relaxed),
            seconds,
            latencies: samples.sorted(),
            ..Figures::default()
        };
        figures.notes.insert("streams".into(), streams.into());
        figures.notes.insert(
            "events_received".into(),
            received.load(Ordering::Relaxed).into(),
        );
        figures.notes.insert(
            "db_connections_before_streams".into(),
            connections_before.into(),
        );
        figures.notes.insert(
            "db_connections_with_streams".into(),
            connections_during.into(),
        );
        figures.notes.insert(
            "server_rss_mib_with_streams".into(),
            rss_with_streams.into(),
        );
        meter.finish(&mut figures);
        figures
    }

    /// Claim and ListJobs latency with 10,000 rows and with 1,000,000.
    async fn scale(&self) -> Vec<Figures> {
        let db = &self.args.database_url;
        let (small, large) = (self.size(10_000, 2_000), self.size(1_000_000, 20_000));
        psql(db, "TRUNCATE menu_extraction_jobs CASCADE");
        // Settled after each bulk load, so that both sizes are measured as a
        // table in service is (visibility map and hint bits set, pages written),
        // not while the first reads of a million new rows write hint bits,
        // autovacuum starts on them and a checkpoint writes them out.
        insert_jobs(db, small, 2_000.min(small), 50);
        self.settle();
        let mut figures = self.scale_at(small, false).await;
        insert_jobs(db, large - small, 0, 5_000);
        self.settle();
        figures.extend(self.scale_at(large, true).await);
        figures
    }

    async fn scale_at(&self, rows: u64, large: bool) -> Vec<Figures> {
        let calls = self.size(500, 100);
        let client = self.client(0);
        let worker = self.worker(0);
        let user = Uuid::parse_str("00000000-0000-4000-8000-000000000007").expect("a UUID");
        let list = Samples::default();
        let claim = Samples::default();
        let meter = ServerMeter::start(self.args.server_pid);
        let started = Instant::now();
        for _ in 0..calls {
            let t = Instant::now();
            client
                .list_jobs(ListJobs::new(user).page_size(20))
                .await
                .expect("listed");
            list.add(t.elapsed());
            let t = Instant::now();
            let claimed = worker
                .claim_jobs(&ClaimJobs::new("scale", 1))
                .await
                .expect("claimed");
            claim.add(t.elapsed());
            for job in claimed {
                worker
                    .complete_job(&job.lease, Completion::new(Default::default()))
                    .await
                    .expect("completed");
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let name = |small: &'static str, big: &'static str| if large { big } else { small };
        let mut list = Figures {
            name: name(
                "scale: ListJobs, small table",
                "scale: ListJobs, large table",
            ),
            operations: calls,
            seconds,
            latencies: list.sorted(),
            ..Figures::default()
        };
        let mut claim = Figures {
            name: name(
                "scale: ClaimJobs, small table",
                "scale: ClaimJobs, large table",
            ),
            operations: calls,
            seconds,
            latencies: claim.sorted(),
            ..Figures::default()
        };
        meter.finish(&mut list);
        for figures in [&mut list, &mut claim] {
            figures.notes.insert("rows".into(), rows.into());
        }
        vec![list, claim]
    }
}

fn db_connections(database_url: &str) -> u64 {
    psql(
        database_url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .parse()
    .unwrap_or(0)
}

fn ms(value: f64) -> String {
    if value.is_nan() {
        "-".to_owned()
    } else if value < 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.1}")
    }
}

/// Who drains the queue in the drain scenario.
#[derive(Debug, Clone, Copy)]
enum Drainers {
    /// The benchmark's own claim-and-report loops.
    Loops(Reports),
    /// The client crate's `Worker` runner, as a user would run it.
    Runner,
}

/// How the workers of drain and steady report what they finished.
#[derive(Debug, Clone, Copy)]
enum Reports {
    /// One CompleteJob per job.
    Each,
    /// One CompleteJobs per claimed batch.
    Batched,
}

/// Reports every job of `claimed` done with a no-op result, as `reports` says,
/// and calls `done` with each job and how long its report took to answer (its
/// CompleteJob call, or the CompleteJobs call of the whole batch).
async fn report_done(
    worker: &WorkerClient,
    claimed: &[ClaimedJob],
    reports: Reports,
    done: impl Fn(&ClaimedJob, Duration),
) {
    match reports {
        Reports::Each => {
            let reports = claimed.iter().map(|job| async {
                let t = Instant::now();
                worker
                    .complete_job(&job.lease, Completion::new(Default::default()))
                    .await
                    .expect("completed");
                done(job, t.elapsed());
            });
            futures::future::join_all(reports).await;
        }
        Reports::Batched if claimed.is_empty() => {}
        Reports::Batched => {
            let t = Instant::now();
            let outcomes = worker
                .complete_jobs(
                    claimed
                        .iter()
                        .map(|job| (&job.lease, Completion::new(Default::default()))),
                )
                .await
                .expect("completed");
            let took = t.elapsed();
            for (job, outcome) in claimed.iter().zip(outcomes) {
                outcome.expect("completed");
                done(job, took);
            }
        }
    }
}

/// The target of a scenario, and whether its figures meet it.
fn verdict(figures: &Figures, baseline: f64, all: &[Figures]) -> (String, String) {
    let ratio = figures.per_second() / baseline;
    let p99 = figures.percentile(0.99);
    let (target, met) = match figures.name {
        "submit" => (
            "≥ 0.5x pgbench, p99 ≤ 20 ms".to_owned(),
            ratio >= 0.5 && p99 <= 20.0,
        ),
        "drain" | "drain, CompleteJobs" | "drain, Worker runner" => {
            ("≥ 1.5x pgbench".to_owned(), ratio >= 1.5)
        }
        "steady" | "steady, CompleteJobs" => (
            "≥ 0.5x pgbench, p99 ≤ 50 ms".to_owned(),
            ratio >= 0.5 && p99 <= 50.0,
        ),
        "pickup" => ("p99 ≤ 2 ms".to_owned(), p99 <= 2.0),
        "fan-out" => {
            let rss = figures
                .notes
                .get("server_rss_mib_with_streams")
                .and_then(Value::as_f64)
                .unwrap_or(f64::NAN);
            let before = figures
                .notes
                .get("db_connections_before_streams")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let during = figures
                .notes
                .get("db_connections_with_streams")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX);
            (
                format!(
                    "p99 ≤ 50 ms, RSS ≤ 512 MiB ({rss:.0}), db connections {before} -> {during}"
                ),
                p99 <= 50.0 && rss <= 512.0 && during <= before + 2,
            )
        }
        name if name.ends_with("large table") => {
            let small_name = name.replace("large", "small");
            let small = all
                .iter()
                .find(|f| f.name == small_name)
                .map_or(f64::NAN, |f| f.percentile(0.5));
            let large = figures.percentile(0.5);
            (
                format!("p50 within 1.5x of the small table ({:.2}x)", large / small),
                large <= 1.5 * small,
            )
        }
        _ => (String::new(), true),
    };
    let ratio = match figures.name {
        "submit"
        | "drain"
        | "drain, CompleteJobs"
        | "drain, Worker runner"
        | "steady"
        | "steady, CompleteJobs" => {
            format!("{ratio:.2}x")
        }
        _ => "-".to_owned(),
    };
    (
        format!("{ratio}  {target}"),
        if target.is_empty() {
            String::new()
        } else if met {
            "met".into()
        } else {
            "NOT met".into()
        },
    )
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(
            JobQueueClient::builder(&args.url)
                .api_key(&args.api_key)
                .build()
                .await
                .expect("connected to the server"),
        );
    }
    let bench = Bench { args, clients };
    let wanted =
        |name: &str| bench.args.only.is_empty() || bench.args.only.iter().any(|o| o == name);
    let mut all: Vec<Figures> = Vec::new();
    if wanted("submit") {
        bench.settle();
        all.push(bench.submit().await);
    }
    if wanted("drain") || wanted("drain-each") {
        bench.settle();
        all.push(bench.drain(Drainers::Loops(Reports::Each)).await);
    }
    if wanted("drain") || wanted("drain-batched") {
        bench.settle();
        all.push(bench.drain(Drainers::Loops(Reports::Batched)).await);
    }
    if wanted("drain") || wanted("drain-runner") {
        bench.settle();
        all.push(bench.drain(Drainers::Runner).await);
    }
    if wanted("steady") || wanted("steady-each") {
        bench.settle();
        all.push(bench.steady(Reports::Each).await);
    }
    if wanted("steady") || wanted("steady-batched") {
        bench.settle();
        all.push(bench.steady(Reports::Batched).await);
    }
    if wanted("pickup") {
        bench.settle();
        all.extend(bench.pickup().await);
    }
    if wanted("fan-out") {
        bench.settle();
        all.push(bench.fan_out().await);
    }
    if wanted("scale") {
        all.extend(bench.scale().await);
    }

    let baseline = bench.args.baseline_tps;
    println!();
    println!("pgbench baseline (single-row INSERT, -M prepared -c 16 -j 2): {baseline:.0} tps");
    println!(
        "{:<31} {:>9} {:>10} {:>8} {:>8} {:>8} {:>7} {:>8} {:>7} {:>7} {:>6}  ratio / target",
        "scenario",
        "ops",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "cpu s",
        "RSS MiB",
        "pg cpu",
        "gen cpu",
        "busy"
    );
    let mut rows = Vec::new();
    for figures in &all {
        let (target, met) = verdict(figures, baseline, &all);
        println!(
            "{:<31} {:>9} {:>10.0} {:>8} {:>8} {:>8} {:>7.1} {:>8.0} {:>7.1} {:>7.1} {:>5.0}%  {} {}",
            figures.name,
            figures.operations,
            figures.per_second(),
            ms(figures.percentile(0.5)),
            ms(figures.percentile(0.99)),
            ms(figures.latencies.last().copied().unwrap_or(f64::NAN)),
            figures.cpu_seconds,
            figures.peak_rss_mib,
            figures.postgres_cpu_seconds,
            figures.generator_cpu_seconds,
            figures.machine_busy * 100.0,
            target,
            if bench.args.smoke { "" } else { met.as_str() }
        );
        let mut row = figures.json();
        row["target"] = target.into();
        row["met"] = (!bench.args.smoke && met == "met").into();
        rows.push(row);
    }
    if let Some(path) = &bench.args.json_out {
        let report = json!({
            "baseline_tps": baseline,
            "smoke": bench.args.smoke,
            "scenarios": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report).expect("JSON"))
            .expect("write the JSON");
        println!("\nfigures written to {}", path.display());
    }
}
