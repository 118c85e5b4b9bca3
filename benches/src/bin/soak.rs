//! The soak-and-chaos run behind `scripts/soak`: three `example-axum`
//! instances on one PostgreSQL database and one Redis of the run's own,
//! traffic over keys of every kind, and a schedule of faults; one report,
//! and exit status 1 when a bound is broken.
//!
//! ```sh
//! cargo build -p example-axum -p keysmith-benches --bin soak
//! target/debug/soak --quick        # ~90 s
//! target/debug/soak --duration 600 # the default: 10 minutes
//! ```
//!
//! Options: `--duration SECS`, `--quick`, `--rate N` (requests per second
//! over all instances, default 300), `--binary PATH` (default
//! `target/debug/example-axum`), `--report PATH` (default
//! `target/soak-report.md`). The shared PostgreSQL server is reached at
//! `SOAK_POSTGRES` (default `postgres://postgres@127.0.0.1:5432`); the run
//! makes a database of its own there and drops it at the end. Redis is a
//! `redis-server` of the run's own on a free port: the shared one is never
//! touched.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use keysmith_benches::load::{git_commit, rss_kib, send};
use keysmith_tests::proxy::SilentProxy;
use keysmith_tests::server_process::ServerProcess;
use tokio::net::TcpStream;

/// How long after a revocation (or suspension) answered no instance may
/// admit the key: the change feed's bound while it works...
const REVOCATION_BOUND: Duration = Duration::from_secs(1);
/// ...and during a feed fault: missed-heartbeat bound + outage TTL.
const REVOCATION_BOUND_IN_FAULT: Duration = Duration::from_secs(3);
/// After a fault ends, how long its effects may last before they count as
/// a broken bound.
const GRACE: Duration = Duration::from_secs(5);
/// How long before a fault a request may have been sent and still be in
/// flight when it struck (seconds; answers take milliseconds).
const IN_FLIGHT: f64 = 1.0;
/// The demo's limited and owner-shared keys: 3 requests per 10 s.
const LIMIT_BURST: f64 = 3.0;
const LIMIT_INTERVAL: f64 = 10.0 / 3.0;
/// Requests one `local_first` instance may admit beyond a limit (`2 × L`,
/// `L = 1` for a burst of 3).
const LOCAL_FIRST_SLACK: f64 = 2.0;
const CREDITS: u64 = 200;
const QUOTA: u64 = 400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Plain,
    Limited,
    Owner,
    Credits,
    Quota,
}

const KINDS: [Kind; 5] = [Kind::Plain, Kind::Limited, Kind::Owner, Kind::Credits, Kind::Quota];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    RedisKilled,
    PgBackendsTerminated,
    PgPaused,
    FeedKilled,
    FeedSilent,
    InstanceKilled,
}

impl Fault {
    const ALL: [Self; 6] = [
        Self::RedisKilled,
        Self::PgBackendsTerminated,
        Self::PgPaused,
        Self::FeedKilled,
        Self::FeedSilent,
        Self::InstanceKilled,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::RedisKilled => "Redis killed and restarted (SIGKILL, 5 s down)",
            Self::PgBackendsTerminated => "PostgreSQL backends terminated",
            Self::PgPaused => "PostgreSQL paused (ALLOW_CONNECTIONS false, 5 s)",
            Self::FeedKilled => "change feed connections killed (CLIENT KILL TYPE pubsub)",
            Self::FeedSilent => "instance 2's Redis link silent (proxy stops forwarding, 5 s)",
            Self::InstanceKilled => "instance 1 SIGKILLed, restarted after 3 s",
        }
    }

    /// Whether Redis decisions fall back in process (fail open) during it:
    /// limits and quotas hold per instance only.
    fn redis(self) -> bool {
        matches!(self, Self::RedisKilled | Self::FeedSilent)
    }

    /// Whether the store (fail closed: 503) is down during it.
    fn store(self) -> bool {
        matches!(self, Self::PgBackendsTerminated | Self::PgPaused)
    }

    /// Whether the change feed is impaired during it.
    fn feed(self) -> bool {
        matches!(self, Self::RedisKilled | Self::FeedKilled | Self::FeedSilent | Self::InstanceKilled)
    }
}

/// A fault as it happened: from its start to its end (restored).
#[derive(Debug, Clone, Copy)]
struct Window {
    fault: Fault,
    start: f64,
    end: f64,
    /// From `end` until a key made then (a store write) passed on every
    /// instance (store reads, Redis limits): seconds, `None` if never.
    recovered_after: Option<f64>,
}

impl Window {
    /// Whether a request sent at `t` may meet the fault: sent up to
    /// [`IN_FLIGHT`] before it began (answered during it), or until
    /// [`GRACE`] after it ended.
    fn covers(&self, t: f64) -> bool {
        t >= self.start - IN_FLIGHT && t <= self.end + GRACE.as_secs_f64()
    }
}

/// One request and its answer.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the traffic began, when it was sent.
    at: f64,
    instance: usize,
    /// Which lifetime of the instance answered (restarts count up).
    life: u32,
    kind: Kind,
    /// The status, or 0 when no answer came (connection refused, reset).
    status: u16,
    micros: u64,
}

struct Settings {
    duration: Duration,
    rate: u32,
    binary: String,
    report: String,
    postgres: String,
    /// The commit the run started on.
    commit: String,
}

fn settings() -> Settings {
    let mut settings = Settings {
        duration: Duration::from_secs(600),
        rate: 300,
        binary: "target/debug/example-axum".to_owned(),
        report: "target/soak-report.md".to_owned(),
        postgres: std::env::var("SOAK_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned()),
        commit: git_commit(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| fail(&format!("{name} needs a value")));
        match arg.as_str() {
            "--quick" => settings.duration = Duration::from_secs(90),
            "--duration" => {
                let secs = value("--duration").parse().unwrap_or_else(|_| fail("--duration takes seconds"));
                settings.duration = Duration::from_secs(secs);
            }
            "--rate" => settings.rate = value("--rate").parse().unwrap_or_else(|_| fail("--rate takes a number")),
            "--binary" => settings.binary = value("--binary"),
            "--report" => settings.report = value("--report"),
            other => fail(&format!("unknown argument {other:?} (see the file's doc comment)")),
        }
    }
    if settings.duration < Duration::from_secs(60) {
        fail("--duration must be at least 60 s (one round of faults)");
    }
    settings
}

fn fail(message: &str) -> ! {
    eprintln!("soak: {message}");
    std::process::exit(2)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn psql(server: &str, database: &str, sql: &str) -> bool {
    Command::new("psql")
        .args(["-q", "-X", "-v", "ON_ERROR_STOP=1", &format!("{server}/{database}"), "-c", sql])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The run's own Redis.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start(port: u16) -> Self {
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| fail(&format!("cannot start redis-server: {error}")));
        self.child = Some(child);
        for _ in 0..200 {
            if self.cli(&["PING"]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        fail("the run's redis-server did not start");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One demo instance and its lifetimes.
struct Instance {
    port: u16,
    redis_url: String,
    local_first: bool,
    process: Option<ServerProcess>,
    life: u32,
    rss_start: u64,
}

impl Instance {
    fn start(&mut self, binary: &str, database_url: &str) {
        let mut command = Command::new(binary);
        command
            .env("DATABASE_URL", database_url)
            .env("REDIS_URL", &self.redis_url)
            .env("PORT", self.port.to_string())
            .env("KEYSMITH_SHUTDOWN_TIMEOUT", "5")
            .env("RUST_LOG", "warn");
        if self.local_first {
            command.env("REDIS_RATE_LIMIT", "local_first");
        }
        let process = ServerProcess::start(command);
        self.life += 1;
        if self.life == 1 {
            self.rss_start = rss_kib(process.id());
        }
        self.process = Some(process);
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

fn json_field(body: &str, field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let mut at = &value;
    for part in field.split('.') {
        at = at.get(part)?;
    }
    at.as_str().map(str::to_owned)
}

/// What the run shares between its tasks.
struct Run {
    started: Instant,
    samples: Mutex<Vec<Sample>>,
    windows: Mutex<Vec<Window>>,
    /// The lifetime each instance is in (from its kill, the next one).
    lives: Mutex<Vec<u32>>,
    stop: AtomicBool,
    revocations: Mutex<Vec<Revocation>>,
    admin_calls: Mutex<Vec<(u32, u16)>>,
}

impl Run {
    fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// A key revoked or suspended during the run, and what every instance
/// answered for it after.
#[derive(Debug, Clone)]
struct Revocation {
    suspended: bool,
    /// When the revoke call answered.
    at: f64,
    /// The latest send time (seconds after `at`) of a request it passed.
    last_pass_after: Option<f64>,
    /// When every instance had refused it (seconds after `at`).
    refused_everywhere_after: Option<f64>,
}

async fn admin(run: &Run, addr: SocketAddr, key: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut conn = None;
    let life = run.lives.lock().unwrap_or_else(PoisonError::into_inner)[0];
    let answer = send(&mut conn, addr, method, &format!("/keysmith/v1{path}"), key, Some(body)).await;
    run.admin_calls.lock().unwrap_or_else(PoisonError::into_inner).push((life, answer.0));
    answer
}

/// Retries an admin call through a fault until it answers `expected`.
async fn admin_until(
    run: &Run, addr: SocketAddr, key: &str, method: &str, path: &str, body: &str, expected: u16,
) -> Option<String> {
    for _ in 0..600 {
        if run.stop.load(Ordering::Relaxed) {
            return None;
        }
        let (status, body) = admin(run, addr, key, method, path, body).await;
        if status == expected {
            return Some(body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Sends traffic at `rate` per second, round-robin over instances and key kinds.
async fn traffic(
    run: Arc<Run>, addrs: Vec<SocketAddr>, keys: Arc<HashMap<Kind, Vec<String>>>, rate: u32, worker: usize,
    workers: usize,
) {
    let mut conns: Vec<Option<TcpStream>> = addrs.iter().map(|_| None).collect();
    let period = Duration::from_secs_f64(f64::from(workers as u32) / f64::from(rate));
    let mut next = Instant::now();
    let mut i = worker;
    while !run.stop.load(Ordering::Relaxed) {
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        i += workers;
        let instance = i % addrs.len();
        let kind = KINDS[(i / addrs.len()) % KINDS.len()];
        let choices = &keys[&kind];
        let key = &choices[(i / (addrs.len() * KINDS.len())) % choices.len()];
        let life = run.lives.lock().unwrap_or_else(PoisonError::into_inner)[instance];
        let at = run.now();
        let sent = Instant::now();
        let (status, _) = send(&mut conns[instance], addrs[instance], "GET", "/users", key, None).await;
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        run.samples.lock().unwrap_or_else(PoisonError::into_inner).push(Sample {
            at,
            instance,
            life,
            kind,
            status,
            micros,
        });
    }
}

/// Every ~3 s: a fresh key, used on every instance (so each caches it),
/// revoked or suspended through instance 0, then polled on every instance.
async fn revocations(run: Arc<Run>, addrs: Vec<SocketAddr>, admin_key: String) {
    let mut round = 0u32;
    let mut conns: Vec<Option<TcpStream>> = addrs.iter().map(|_| None).collect();
    while !run.stop.load(Ordering::Relaxed) {
        round += 1;
        let body = format!(r#"{{"name":"soak {round}","scopes":["read:users"]}}"#);
        let Some(created) = admin_until(&run, addrs[0], &admin_key, "POST", "/keys", &body, 201).await else { break };
        let (Some(raw), Some(id)) = (json_field(&created, "raw_key"), json_field(&created, "key.id")) else { break };
        for (instance, addr) in addrs.iter().enumerate() {
            let life = run.lives.lock().unwrap_or_else(PoisonError::into_inner)[instance];
            let (status, _) = send(&mut conns[instance], *addr, "GET", "/me", &raw, None).await;
            run.samples.lock().unwrap_or_else(PoisonError::into_inner).push(Sample {
                at: run.now(),
                instance,
                life,
                kind: Kind::Plain,
                status,
                micros: 0,
            });
        }
        let suspended = round.is_multiple_of(2);
        let action = if suspended { "suspend" } else { "revoke" };
        if admin_until(&run, addrs[0], &admin_key, "POST", &format!("/keys/{id}/{action}"), "{}", 200).await.is_none() {
            break;
        }
        let at = run.now();
        let mut revocation = Revocation { suspended, at, last_pass_after: None, refused_everywhere_after: None };
        let mut refused = vec![false; addrs.len()];
        let deadline = Instant::now() + Duration::from_secs(8);
        while Instant::now() < deadline && !run.stop.load(Ordering::Relaxed) {
            for (instance, addr) in addrs.iter().enumerate() {
                let sent = run.now();
                let life = run.lives.lock().unwrap_or_else(PoisonError::into_inner)[instance];
                let (status, _) = send(&mut conns[instance], *addr, "GET", "/me", &raw, None).await;
                let passed = (200..300).contains(&status);
                if passed {
                    revocation.last_pass_after = Some(sent - at);
                    refused[instance] = false;
                } else if status == 401 {
                    refused[instance] = true;
                }
                // A pass is a usage record and a refusal of a known key is
                // counted in its roll-ups: the usage bound counts both.
                if passed || status == 401 {
                    run.samples.lock().unwrap_or_else(PoisonError::into_inner).push(Sample {
                        at: sent,
                        instance,
                        life,
                        kind: Kind::Plain,
                        status,
                        micros: 0,
                    });
                }
            }
            if revocation.refused_everywhere_after.is_none() && refused.iter().all(|r| *r) {
                revocation.refused_everywhere_after = Some(run.now() - at);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        run.revocations.lock().unwrap_or_else(PoisonError::into_inner).push(revocation);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let settings = settings();
    let database = format!("keysmith_soak_{}", std::process::id());
    if !psql(&settings.postgres, "postgres", &format!("CREATE DATABASE {database}")) {
        fail(&format!("cannot create database {database} on {}", settings.postgres));
    }
    let database_url = format!("{}/{database}", settings.postgres);
    let code = soak(&settings, &database, &database_url).await;
    let _ = psql(&settings.postgres, "postgres", &format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"));
    let _ = psql(&settings.postgres, "postgres", &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"));
    std::process::exit(code);
}

#[allow(clippy::too_many_lines)]
async fn soak(settings: &Settings, database: &str, database_url: &str) -> i32 {
    let mut redis = Redis::start(free_port());
    let redis_addr = SocketAddr::from(([127, 0, 0, 1], redis.port));
    let proxy = SilentProxy::start(redis_addr).await;
    let mut instances: Vec<Instance> = (0..3)
        .map(|i| Instance {
            port: free_port(),
            redis_url: if i == 2 { format!("redis://{}", proxy.addr()) } else { format!("redis://{redis_addr}") },
            local_first: i == 2,
            process: None,
            life: 0,
            rss_start: 0,
        })
        .collect();
    // One at a time: each migrates the database on start.
    for instance in &mut instances {
        instance.start(&settings.binary, database_url);
    }
    let addrs: Vec<SocketAddr> = instances.iter().map(Instance::addr).collect();
    let first = instances[0].process.as_ref().unwrap();
    let admin_key = first.printed("KEYSMITH_DEMO_ADMIN_KEY");
    let run = Arc::new(Run {
        started: Instant::now(),
        samples: Mutex::default(),
        windows: Mutex::default(),
        lives: Mutex::new(vec![1; 3]),
        stop: AtomicBool::new(false),
        revocations: Mutex::default(),
        admin_calls: Mutex::default(),
    });

    // Keys of every kind: the demo's, and a credits key and a quota key
    // made through the admin API.
    let policy = format!(r#"{{"name":"soak quota","quota":{{"daily":{QUOTA}}}}}"#);
    let policy = admin_until(&run, addrs[0], &admin_key, "POST", "/policies", &policy, 201).await.unwrap();
    let policy = json_field(&policy, "id").unwrap();
    let quota_key = format!(r#"{{"name":"soak quota","scopes":["read:users"],"policy_id":"{policy}"}}"#);
    let quota_key = admin_until(&run, addrs[0], &admin_key, "POST", "/keys", &quota_key, 201).await.unwrap();
    let credits_key =
        format!(r#"{{"name":"soak credits","scopes":["read:users"],"credits":{{"remaining":{CREDITS}}}}}"#);
    let credits_key = admin_until(&run, addrs[0], &admin_key, "POST", "/keys", &credits_key, 201).await.unwrap();
    let keys: HashMap<Kind, Vec<String>> = HashMap::from([
        (Kind::Plain, vec![first.printed("KEYSMITH_DEMO_READ_KEY")]),
        (Kind::Limited, vec![first.printed("KEYSMITH_DEMO_LIMITED_KEY")]),
        (Kind::Owner, vec![first.printed("KEYSMITH_DEMO_OWNER_KEY_1"), first.printed("KEYSMITH_DEMO_OWNER_KEY_2")]),
        (Kind::Credits, vec![json_field(&credits_key, "raw_key").unwrap()]),
        (Kind::Quota, vec![json_field(&quota_key, "raw_key").unwrap()]),
    ]);
    let keys = Arc::new(keys);
    println!(
        "soak: 3 instances (ports {}, {}, {}; instance 2 local_first, through a proxy), database {database}, redis port {}, {} s at {} requests/s",
        instances[0].port,
        instances[1].port,
        instances[2].port,
        redis.port,
        settings.duration.as_secs(),
        settings.rate
    );

    const WORKERS: usize = 8;
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        tasks.push(tokio::spawn(traffic(
            Arc::clone(&run),
            addrs.clone(),
            Arc::clone(&keys),
            settings.rate,
            worker,
            WORKERS,
        )));
    }
    tasks.push(tokio::spawn(revocations(Arc::clone(&run), addrs.clone(), admin_key.clone())));

    // The fault schedule: after 10 s of steady traffic, one fault every
    // 12 s in turn, each over within 6 s; the last 10 s steady again.
    let total = settings.duration.as_secs_f64();
    let mut next_fault = 10.0;
    let mut turn = 0;
    while next_fault + 6.0 < total - 10.0 {
        sleep_until(&run, next_fault).await;
        let fault = Fault::ALL[turn % Fault::ALL.len()];
        turn += 1;
        let start = run.now();
        println!("soak: {start:6.1} s  {}", fault.name());
        match fault {
            Fault::RedisKilled => {
                redis.kill();
                sleep_until(&run, start + 5.0).await;
                redis.restart();
            }
            Fault::PgBackendsTerminated => {
                let sql = format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()"
                );
                psql(&settings.postgres, "postgres", &sql);
            }
            Fault::PgPaused => {
                psql(&settings.postgres, "postgres", &format!("ALTER DATABASE {database} ALLOW_CONNECTIONS false"));
                let sql = format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()"
                );
                psql(&settings.postgres, "postgres", &sql);
                sleep_until(&run, start + 5.0).await;
                psql(&settings.postgres, "postgres", &format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"));
            }
            Fault::FeedKilled => {
                redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            }
            Fault::FeedSilent => {
                proxy.go_silent();
                sleep_until(&run, start + 5.0).await;
                proxy.recover();
            }
            Fault::InstanceKilled => {
                let rss_before = instances[1].process.as_ref().map_or(0, |p| rss_kib(p.id()));
                if let Some(mut process) = instances[1].process.take() {
                    process.kill();
                }
                // A request sent from now on is answered by the next lifetime
                // or not at all (`send` does not wait out the restart), and
                // one sent before was answered by this one: samples carry the
                // lifetime of their sending.
                run.lives.lock().unwrap_or_else(PoisonError::into_inner)[1] = instances[1].life + 1;
                println!("soak:          instance 1 had {rss_before} KiB resident");
                sleep_until(&run, start + 3.0).await;
                instances[1].start(&settings.binary, database_url);
            }
        }
        let end = run.now();
        let recovered_after = recovery(&run, &addrs, &admin_key).await.map(|at| at - end);
        run.windows.lock().unwrap_or_else(PoisonError::into_inner).push(Window { fault, start, end, recovered_after });
        next_fault += 12.0;
    }
    sleep_until(&run, total).await;
    run.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let rss_end: Vec<u64> = instances.iter().map(|i| i.process.as_ref().map_or(0, |p| rss_kib(p.id()))).collect();

    // Graceful stop: each prints what its usage recorder did.
    let mut usage = Vec::new();
    for instance in &mut instances {
        let Some(mut process) = instance.process.take() else { continue };
        process.terminate();
        let _ = process.wait_for_exit(Duration::from_secs(60));
        usage.push(parse_usage(&process.stdout()));
    }
    drop(proxy);
    redis.kill();

    let report = report(&run, &instances, &usage, &rss_end, settings);
    println!("{}", report.text);
    if let Some(dir) = std::path::Path::new(&settings.report).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&settings.report, &report.text);
    println!("soak: report written to {}", settings.report);
    i32::from(report.broken > 0)
}

/// When a fresh key, made through instance 0's admin API, first passed on
/// every instance (tried for up to 30 s).
async fn recovery(run: &Run, addrs: &[SocketAddr], admin_key: &str) -> Option<f64> {
    let give_up = run.now() + 30.0;
    let body = r#"{"name":"soak recovery probe","scopes":["read:users"]}"#;
    let raw = loop {
        let (status, created) = admin(run, addrs[0], admin_key, "POST", "/keys", body).await;
        if status == 201 {
            break json_field(&created, "raw_key")?;
        }
        if run.now() > give_up {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut conns: Vec<Option<TcpStream>> = addrs.iter().map(|_| None).collect();
    let mut passed = vec![false; addrs.len()];
    while run.now() < give_up {
        for (instance, addr) in addrs.iter().enumerate() {
            if !passed[instance] {
                let life = run.lives.lock().unwrap_or_else(PoisonError::into_inner)[instance];
                let at = run.now();
                let sent = Instant::now();
                let (status, _) = send(&mut conns[instance], *addr, "GET", "/me", &raw, None).await;
                let micros =
                    if status == 0 { u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX) } else { 0 };
                run.samples.lock().unwrap_or_else(PoisonError::into_inner).push(Sample {
                    at,
                    instance,
                    life,
                    kind: Kind::Plain,
                    status,
                    micros,
                });
                passed[instance] = status == 200;
            }
        }
        if passed.iter().all(|p| *p) {
            return Some(run.now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn sleep_until(run: &Run, at: f64) {
    let wait = at - run.now();
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }
}

/// (written, dropped, failed) from the demo's last line.
fn parse_usage(stdout: &str) -> Option<(u64, u64, u64)> {
    let line = stdout.lines().rev().find(|line| line.contains("usage records written:"))?;
    let number = |label: &str| -> Option<u64> {
        let rest = &line[line.find(label)? + label.len()..];
        rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    Some((number("written:")?, number("dropped:")?, number("failed:").unwrap_or(0)))
}

struct Report {
    text: String,
    broken: usize,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}

#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
fn report(
    run: &Run, instances: &[Instance], usage: &[Option<(u64, u64, u64)>], rss_end: &[u64], settings: &Settings,
) -> Report {
    let samples = run.samples.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let windows = run.windows.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let revocations = run.revocations.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let admin_calls = run.admin_calls.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let in_window = |t: f64, pick: fn(Fault) -> bool| windows.iter().any(|w| pick(w.fault) && w.covers(t));
    let mut text = String::new();
    let mut broken = 0;
    let mut bound = |text: &mut String, name: &str, value: String, ok: bool| {
        if !ok {
            broken += 1;
        }
        let _ = writeln!(text, "| {name} | {value} | {} |", if ok { "ok" } else { "**BROKEN**" });
    };
    let _ = writeln!(
        text,
        "## Soak {} s, {} requests/s, commit {}\n",
        settings.duration.as_secs(),
        settings.rate,
        settings.commit
    );
    let _ = writeln!(
        text,
        "{} requests, {} faults, {} revocations/suspensions.\n",
        samples.len(),
        windows.len(),
        revocations.len()
    );
    let _ = writeln!(text, "| bound | measured | |\n|---|---|---|");

    // False passes: revoked or suspended keys.
    let late: Vec<&Revocation> = revocations
        .iter()
        .filter(|r| {
            let bound = if in_window(r.at, Fault::feed) { REVOCATION_BOUND_IN_FAULT } else { REVOCATION_BOUND };
            r.last_pass_after.is_some_and(|after| after > bound.as_secs_f64())
        })
        .collect();
    let mut seen: Vec<f64> =
        revocations.iter().filter_map(|r| r.refused_everywhere_after).map(|s| s * 1000.0).collect();
    seen.sort_by(f64::total_cmp);
    let never = revocations.iter().filter(|r| r.refused_everywhere_after.is_none()).count();
    bound(
        &mut text,
        "revoked/suspended key admitted after the bound (1 s; 3 s in a feed fault)",
        format!(
            "{} of {} ({} suspended); refused everywhere after p50 {:.0} ms, max {:.0} ms; never within 8 s: {never}",
            late.len(),
            revocations.len(),
            revocations.iter().filter(|r| r.suspended).count(),
            percentile(&seen, 0.5),
            seen.last().copied().unwrap_or(f64::NAN)
        ),
        late.is_empty() && never == 0,
    );

    // Limits: in any stretch without a Redis fault, at most burst + t / T
    // (+ local_first's slack) passes per budget.
    let redis_cuts: Vec<(f64, f64)> =
        windows.iter().filter(|w| w.fault.redis()).map(|w| (w.start, w.end + GRACE.as_secs_f64())).collect();
    for (kind, label) in
        [(Kind::Limited, "limited key (3 per 10 s)"), (Kind::Owner, "owner-shared keys (3 per 10 s per owner)")]
    {
        let passes: Vec<f64> = samples
            .iter()
            .filter(|s| {
                s.kind == kind
                    && (200..300).contains(&s.status)
                    && !redis_cuts.iter().any(|(a, b)| s.at >= *a && s.at <= *b)
            })
            .map(|s| s.at)
            .collect();
        let mut worst: f64 = 0.0;
        let mut edges = vec![0.0];
        for (a, b) in &redis_cuts {
            edges.push(*a);
            edges.push(*b);
        }
        edges.push(f64::MAX);
        for segment in edges.chunks(2) {
            let (from, to) = (segment[0], segment[1]);
            let inside: Vec<f64> = passes.iter().copied().filter(|t| *t >= from && *t <= to).collect();
            // Every window [inside[i], inside[j]]: passes over the bound.
            for i in 0..inside.len() {
                for j in i..inside.len() {
                    let allowed = LIMIT_BURST + ((inside[j] - inside[i]) / LIMIT_INTERVAL).floor() + LOCAL_FIRST_SLACK;
                    worst = worst.max((j - i + 1) as f64 - allowed);
                }
            }
        }
        let total = samples.iter().filter(|s| s.kind == kind && (200..300).contains(&s.status)).count();
        bound(
            &mut text,
            &format!("{label}: passes beyond burst + t/T + 2 outside Redis faults"),
            format!("{worst:.0} ({total} passes in all)"),
            worst <= 0.0,
        );
    }

    // Credits and quota.
    let passes_of =
        |kind: Kind| samples.iter().filter(|s| s.kind == kind && (200..300).contains(&s.status)).count() as u64;
    let credits = passes_of(Kind::Credits);
    bound(
        &mut text,
        &format!("credits spent below zero ({CREDITS} credits)"),
        format!("{credits} passes"),
        credits <= CREDITS,
    );
    let quota = passes_of(Kind::Quota);
    let quota_in_redis_faults = samples
        .iter()
        .filter(|s| s.kind == Kind::Quota && (200..300).contains(&s.status) && in_window(s.at, Fault::redis))
        .count() as u64;
    bound(
        &mut text,
        &format!("quota exceeded (daily {QUOTA}; fail-open passes during Redis faults exempt)"),
        format!("{quota} passes, {quota_in_redis_faults} of them during Redis faults"),
        quota <= QUOTA + quota_in_redis_faults,
    );

    // 503s only in fail-closed outage windows; no answer only from a killed instance.
    let unavailable_outside = samples.iter().filter(|s| s.status == 503 && !in_window(s.at, Fault::store)).count();
    let unavailable = samples.iter().filter(|s| s.status == 503).count();
    bound(
        &mut text,
        "503 outside the store's outage windows (+5 s)",
        format!("{unavailable_outside} (503 in all: {unavailable})"),
        unavailable_outside == 0,
    );
    let silent: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.status == 0 && !(s.instance == 1 && in_window(s.at, |f| f == Fault::InstanceKilled)))
        .collect();
    let first = silent
        .iter()
        .take(5)
        .map(|s| format!("{:.1} s on instance {} ({:?}, waited {} ms)", s.at, s.instance, s.kind, s.micros / 1000));
    bound(
        &mut text,
        "no answer, other than from the killed instance while it was down",
        format!(
            "{}{}",
            silent.len(),
            if silent.is_empty() { String::new() } else { format!(": {}", first.collect::<Vec<_>>().join("; ")) }
        ),
        silent.is_empty(),
    );
    let others: BTreeMap<u16, usize> = samples
        .iter()
        .filter(|s| !matches!(s.status, 0 | 200..=299 | 429 | 503 | 401))
        .fold(BTreeMap::new(), |mut map, s| {
            *map.entry(s.status).or_default() += 1;
            map
        });
    let plain_refused = samples.iter().filter(|s| s.status == 401 && s.kind != Kind::Plain).count();
    bound(
        &mut text,
        "unexpected answers (other statuses; 401 for a live key)",
        format!("{others:?}, 401: {plain_refused}"),
        others.is_empty() && plain_refused == 0,
    );
    let fallbacks = samples.iter().filter(|s| (200..300).contains(&s.status) && in_window(s.at, Fault::redis)).count();
    let _ =
        writeln!(text, "| passes during Redis faults (+5 s), where fail-open may decide in process | {fallbacks} | |");

    // Usage: per instance lifetime that ended gracefully.
    for (index, instance) in instances.iter().enumerate() {
        let life = instance.life;
        // Every key the soak sends is known to the store, so each answer
        // but a 503 is recorded: a pass as a record, a refusal (revoked,
        // suspended, limited, out of quota or credits) in the roll-ups.
        let accepted = samples
            .iter()
            .filter(|s| s.instance == index && s.life == life && matches!(s.status, 200..=299 | 401 | 403 | 429))
            .count() as u64;
        // Unanswered requests the server may have answered too late: not
        // those sent while the killed instance was down.
        let killed = |s: &Sample| s.instance == 1 && in_window(s.at, |f| f == Fault::InstanceKilled);
        let no_answer =
            samples.iter().filter(|s| s.instance == index && s.life == life && s.status == 0 && !killed(s)).count()
                as u64;
        let (admin_ok, admin_other) = if index == 0 {
            let ok = admin_calls.iter().filter(|(l, status)| *l == life && (200..300).contains(status)).count() as u64;
            let other =
                admin_calls.iter().filter(|(l, status)| *l == life && !(200..300).contains(status)).count() as u64;
            (ok, other)
        } else {
            (0, 0)
        };
        let Some((written, dropped, failed)) = usage.get(index).copied().flatten() else {
            bound(&mut text, &format!("usage, instance {index}"), "no usage line at shutdown".to_owned(), false);
            continue;
        };
        let counted = written + dropped + failed;
        let low = accepted + admin_ok;
        let high = low + admin_other + no_answer;
        bound(
            &mut text,
            &format!("usage, instance {index} (lifetime {life}): written + dropped + failed = answers recorded"),
            format!(
                "{written} + {dropped} + {failed} = {counted}; recorded {low}{}",
                if high > low {
                    format!(" (up to {high} with admin refusals and unanswered requests)")
                } else {
                    String::new()
                }
            ),
            (low..=high).contains(&counted),
        );
    }

    // Recovery after each fault: from its end until a key made then passed
    // on every instance.
    let mut by_fault: BTreeMap<Fault, Vec<f64>> = BTreeMap::new();
    let mut unrecovered = 0;
    for window in &windows {
        match window.recovered_after {
            Some(after) => by_fault.entry(window.fault).or_default().push(after * 1000.0),
            None => unrecovered += 1,
        }
    }
    bound(&mut text, "faults not recovered from within 30 s", unrecovered.to_string(), unrecovered == 0);
    let _ = writeln!(
        text,
        "\nRecovery: from the fault's end until a key created then (a store write) passes on every instance.\n\n\
         | fault | times | recovery p50 | recovery max |\n|---|---:|---:|---:|"
    );
    for (fault, mut times) in by_fault {
        times.sort_by(f64::total_cmp);
        let _ = writeln!(
            text,
            "| {} | {} | {:.0} ms | {:.0} ms |",
            fault.name(),
            times.len(),
            percentile(&times, 0.5),
            times.last().copied().unwrap_or(0.0)
        );
    }

    let mut latencies: Vec<f64> = samples
        .iter()
        .filter(|s| (200..300).contains(&s.status) && s.micros > 0)
        .map(|s| s.micros as f64 / 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let _ = writeln!(
        text,
        "\nPassed requests: {}, latency p50 {:.2} ms, p99 {:.2} ms (debug build, one client on the same 2 cores).\n",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    let _ = writeln!(text, "| instance | RSS at start | RSS at end | lifetimes |\n|---|---:|---:|---:|");
    for (index, instance) in instances.iter().enumerate() {
        let _ = writeln!(
            text,
            "| {index} | {} KiB | {} KiB | {} |",
            instance.rss_start,
            rss_end.get(index).copied().unwrap_or(0),
            instance.life
        );
    }
    let _ = writeln!(
        text,
        "\n{}",
        if broken == 0 { "Every bound held.".to_owned() } else { format!("{broken} bound(s) broken.") }
    );
    Report { text, broken }
}
