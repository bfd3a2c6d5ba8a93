//! `switchboard up` as a child process: the whole embedded stack (broker, Postgres, ClickHouse,
//! every role) under one data directory, on free ports.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Up {
    pub child: std::process::Child,
    pub base: String,
    pub ports: [u16; 6],
    /// The folder holding `up.log` and `data/logs`.
    pub dir: std::path::PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary folder for `up`'s data; when we are root, the private Postgres runs as the
/// postgres user and must reach it.
pub fn folder() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// [`start`], then [`ready`].
pub async fn start_ready(
    dir: &std::path::Path,
    ports: &[u16; 6],
    token: &str,
    http: &reqwest::Client,
) -> Up {
    let mut up = start(dir, ports, token);
    ready(&mut up, http, dir).await;
    up
}

pub fn ports() -> [u16; 6] {
    super::free_ports()
}

/// Starts `switchboard up` with its data under `dir/data` and its log appended to `dir/up.log`.
pub fn start(dir: &std::path::Path, ports: &[u16; 6], token: &str) -> Up {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("up.log"))
        .unwrap();
    let mut cmd = Command::new(super::switchboard_bin());
    cmd.current_dir(super::repo())
        .args(["up"])
        .env_remove("SWITCHBOARD__SERVICES__KAFKA__BROKERS")
        .env_remove("SWITCHBOARD__SERVICES__POSTGRES__URL")
        .env_remove("SWITCHBOARD__SERVICES__CLICKHOUSE__URL")
        .env("SWITCHBOARD__DATA_DIR", dir.join("data"))
        .env(
            "SWITCHBOARD__HTTP__LISTEN",
            format!("127.0.0.1:{}", ports[0]),
        )
        .env("SWITCHBOARD__HTTP__ADMIN_TOKEN", token)
        // Two `up`s at once (tests run side by side) must not share the SMTP port either.
        .env(
            "SWITCHBOARD__CHANNELS__EMAIL__SMTP__LISTEN",
            format!("127.0.0.1:{}", ports[5]),
        )
        .env("RUST_LOG", "info,librdkafka=off,rdkafka=off");
    // The embedded services, each on its own port.
    for (key, port) in [
        ("SWITCHBOARD__SERVICES__KAFKA__EMBEDDED_PORT", ports[1]),
        ("SWITCHBOARD__SERVICES__POSTGRES__EMBEDDED_PORT", ports[2]),
        (
            "SWITCHBOARD__SERVICES__CLICKHOUSE__EMBEDDED_HTTP_PORT",
            ports[3],
        ),
        (
            "SWITCHBOARD__SERVICES__CLICKHOUSE__EMBEDDED_TCP_PORT",
            ports[4],
        ),
    ] {
        cmd.env(key, port.to_string());
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Up {
        child,
        base: format!("http://127.0.0.1:{}", ports[0]),
        ports: *ports,
        dir: dir.to_path_buf(),
    }
}

/// The end of a log file (what matters), cut on a character boundary.
fn tail(path: &std::path::Path, bytes: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let cut = log.len().saturating_sub(bytes);
    let cut = (cut..log.len())
        .find(|i| log.is_char_boundary(*i))
        .unwrap_or(0);
    log[cut..].to_string()
}

/// `up`'s own log, and the end of each service's.
fn log_of(dir: &std::path::Path) -> String {
    let mut out = tail(&dir.join("up.log"), 12_000);
    if let Ok(entries) = std::fs::read_dir(dir.join("data/logs")) {
        for e in entries.flatten() {
            out.push_str(&format!(
                "\n--- {} ---\n{}",
                e.path().display(),
                tail(&e.path(), 3_000)
            ));
        }
    }
    out
}

/// Waits for `/readyz` to answer 200 (every check passes).
pub async fn ready(up: &mut Up, http: &reqwest::Client, dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", up.base)).send().await {
            if r.status() == 200 {
                return;
            }
        }
        if let Ok(Some(s)) = up.child.try_wait() {
            panic!("up exited ({s}):\n{}", log_of(dir));
        }
        assert!(Instant::now() < deadline, "up not ready:\n{}", log_of(dir));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn sigint_and_wait(up: &mut Up) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    // `up` gives each of its three services 30 s to stop cleanly before it kills one, after the
    // roles drain: on a loaded two-core machine the whole stop can pass 90 s and still be clean.
    let asked = Instant::now();
    let deadline = asked + Duration::from_secs(150);
    loop {
        if let Some(s) = up.child.try_wait().unwrap() {
            println!(
                "up stopped {:.1} s after SIGINT",
                asked.elapsed().as_secs_f64()
            );
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "up did not stop after SIGINT:\n{}",
            log_of(&up.dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every process descending from `pid` (children first found, then theirs).
fn descendants(pid: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<i32>().ok())
        {
            parent_of.push((p, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, parent) in &parent_of {
            if *parent == p && !out.contains(child) {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}

/// Whether `pid` runs (a zombie waiting to be reaped does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

/// SIGKILLs `up` and everything it started (broker, Postgres and its backends, ClickHouse) at
/// once, as a power cut or an OOM killer would, and reaps `up`.
pub fn kill_everything(up: &mut Up) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let root = up.child.id() as i32;
    // The services' processes outlive `up` as orphans: adopt them, so they can be reaped here (a
    // zombie postmaster still "runs" for the next Postgres start, which then refuses to start).
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let all = descendants(root);
    // Freeze first so nothing notices the others dying and reacts, then kill.
    let _ = kill(Pid::from_raw(root), Signal::SIGSTOP);
    for p in &all {
        let _ = kill(Pid::from_raw(*p), Signal::SIGSTOP);
    }
    for p in all.iter().chain(std::iter::once(&root)) {
        let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
    }
    let _ = up.child.wait();
    // The services were in process groups of their own: wait until they are gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut gone = std::collections::HashSet::new();
    while gone.len() < all.len() && Instant::now() < deadline {
        for p in &all {
            if gone.contains(p) {
                continue;
            }
            use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
            match waitpid(Pid::from_raw(*p), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                // Reaped here, or not ours to reap (a grandchild reaped by its own parent).
                Ok(_) | Err(_)
                    if !alive(*p) || std::fs::metadata(format!("/proc/{p}")).is_err() =>
                {
                    gone.insert(*p);
                }
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
