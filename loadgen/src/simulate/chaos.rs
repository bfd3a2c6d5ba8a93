//! Several instances of every role on one machine: the load balancer in front of the front doors
//! (HAProxy from Debian, on loopback, health-checking `/readyz` as a deployment's does), and the
//! chaos loop that SIGKILLs a random instance of a random role every interval and starts it again
//! after a pause, recording what each kill cost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// One process of the system: how to start it again, and the running child.
pub(crate) struct Proc {
    pub name: String,
    pub role: String,
    /// Its own HTTP address (`/readyz`, `/metrics`).
    pub url: String,
    /// `SWITCHBOARD__*` and the other variables it starts with.
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
    /// The running pid, read by the sampler (a restarted process has a new one).
    pub pid: Arc<AtomicU32>,
}

/// Starts processes of the system (and starts them again).
pub(crate) struct Launcher {
    pub exe: PathBuf,
    pub config: PathBuf,
    /// Where each process's log goes (`<name>.log`, appended to on a restart).
    pub out: PathBuf,
}

impl Launcher {
    pub(crate) fn spawn(&self, p: &mut Proc) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.out.join(format!("{}.log", p.name)))?;
        let mut c = Command::new(&self.exe);
        c.arg("--config")
            .arg(&self.config)
            .args(["run", "--role", &p.role])
            .envs(p.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = c
            .spawn()
            .with_context(|| format!("cannot start the {} process", p.name))?;
        p.pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
        p.child = Some(child);
        Ok(())
    }
}

/// The load balancer's ports on loopback.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LbPorts {
    pub ingest: u16,
    pub serving: u16,
    pub smtp: u16,
}

/// HAProxy's configuration: HTTP to the ingest and serving instances, checked on `/readyz`
/// every 500 ms (a draining or dead instance is out within a second), connection failures and
/// empty answers retried on another instance (every front door is idempotent by its id), the
/// WebSockets and event streams of chat customers and agents held for an hour; SMTP as TCP to
/// the ingest instances' listeners.
pub(crate) fn haproxy_config(
    lb: LbPorts,
    maxconn: u64,
    ingest: &[(String, u16, u16)],
    serving: &[(String, u16)],
) -> String {
    let mut s = format!("global\n  maxconn {maxconn}\n\n");
    s.push_str(
        "defaults\n  mode http\n  timeout connect 2s\n  timeout client 1h\n  timeout server 1h\n  \
         timeout tunnel 1h\n  timeout http-request 30s\n  retries 3\n  option redispatch 1\n  \
         retry-on conn-failure empty-response response-timeout\n  \
         default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions\n\n",
    );
    let http = |s: &mut String, name: &str, port: u16, servers: &[(String, u16)]| {
        s.push_str(&format!(
            "frontend {name}\n  bind 127.0.0.1:{port}\n  default_backend {name}\n\n\
             backend {name}\n  balance leastconn\n  option httpchk GET /readyz\n  \
             http-check expect status 200\n"
        ));
        for (n, p) in servers {
            s.push_str(&format!("  server {n} 127.0.0.1:{p} check\n"));
        }
        s.push('\n');
    };
    let ingest_http: Vec<(String, u16)> = ingest.iter().map(|(n, h, _)| (n.clone(), *h)).collect();
    http(&mut s, "ingest", lb.ingest, &ingest_http);
    http(&mut s, "serving", lb.serving, serving);
    s.push_str(&format!(
        "frontend smtp\n  mode tcp\n  bind 127.0.0.1:{}\n  default_backend smtp\n\n\
         backend smtp\n  mode tcp\n  balance roundrobin\n",
        lb.smtp
    ));
    for (n, http_port, smtp_port) in ingest {
        // In service while the instance's /readyz says so (the SMTP port has no health answer).
        s.push_str(&format!(
            "  server {n} 127.0.0.1:{smtp_port} check port {http_port}\n"
        ));
    }
    s.push_str("  option httpchk GET /readyz\n  http-check expect status 200\n");
    s
}

/// Connections HAProxy may hold within this process's open-file limit (it inherits it; each
/// connection takes two descriptors, one per side).
pub(crate) fn haproxy_maxconn() -> u64 {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    (soft.saturating_sub(200) / 2).clamp(100, 100_000)
}

/// The HAProxy binary from Debian (scripts/setup.sh installs it).
fn haproxy_bin() -> Result<PathBuf> {
    for p in ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&paths) {
            if d.join("haproxy").is_file() {
                return Ok(d.join("haproxy"));
            }
        }
    }
    bail!("haproxy is not installed (scripts/setup.sh installs it from Debian)")
}

/// Writes the configuration, checks it and starts HAProxy in the foreground (ends with us).
pub(crate) async fn start_haproxy(out: &Path, config: &str) -> Result<Child> {
    let bin = haproxy_bin()?;
    let path = out.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let check = Command::new(&bin)
        .arg("-c")
        .arg("-q")
        .arg("-f")
        .arg(&path)
        .output()
        .await?;
    if !check.status.success() {
        bail!(
            "haproxy refused {}: {}",
            path.display(),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let log = std::fs::File::create(out.join("haproxy.log"))?;
    Command::new(&bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start haproxy")
}

/// What one kill cost.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Kill {
    pub process: String,
    pub role: String,
    /// Wall seconds into the run.
    pub at_secs: f64,
    /// From the kill until the restarted process answered `/readyz` (the pause included).
    pub ready_secs: f64,
    /// Accepted before the kill and not yet stored then (they waited for the stage to recover).
    pub delayed: i64,
    /// From the kill until those were stored; none when that took over 240 s (a system over
    /// its capacity; whether anything was lost is the run's final accounting).
    pub caught_up_secs: Option<f64>,
    /// Requests the callers sent again meanwhile (the load balancer's own retries not counted).
    pub retried: u64,
}

/// What the chaos loop needs to look at the run.
pub(crate) struct Probe {
    /// Messages accepted at the front doors so far.
    pub accepted: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Inbound messages stored so far.
    pub stored: Box<dyn Fn() -> futures::future::BoxFuture<'static, i64> + Send + Sync>,
    /// Requests sent again by the callers so far.
    pub retried: Box<dyn Fn() -> u64 + Send + Sync>,
}

/// `every` after the last kill recovered, SIGKILLs one instance (a random role, drawn from a
/// shuffled bag so every role is hit once per round, then a random instance of it), waits
/// `pause`, starts it again and waits for its `/readyz` and for what was accepted before the
/// kill to be stored.
pub(crate) async fn run(
    procs: Arc<Mutex<Vec<Proc>>>,
    launcher: Arc<Launcher>,
    every: Duration,
    pause: Duration,
    seed: u64,
    probe: Probe,
    stop: CancellationToken,
) -> Vec<Kill> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let began = Instant::now();
    let http = reqwest::Client::new();
    let mut kills = Vec::new();
    let mut bag: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return kills,
            _ = tokio::time::sleep(every) => {}
        }
        let (index, name, role, url) = {
            let p = procs.lock().await;
            if bag.is_empty() {
                bag = p.iter().map(|p| p.role.clone()).collect();
                bag.sort_unstable();
                bag.dedup();
                rand::seq::SliceRandom::shuffle(bag.as_mut_slice(), &mut rng);
            }
            let Some(role) = bag.pop() else {
                return kills;
            };
            let of: Vec<usize> = (0..p.len()).filter(|i| p[*i].role == role).collect();
            let i = of[rng.random_range(0..of.len())];
            (i, p[i].name.clone(), role, p[i].url.clone())
        };
        let killed_at = Instant::now();
        let accepted = (probe.accepted)() as i64;
        let stored = (probe.stored)().await;
        let retried = (probe.retried)();
        {
            let mut p = procs.lock().await;
            if let Some(c) = p[index].child.as_mut() {
                let _ = c.start_kill();
                let _ = c.wait().await;
            }
            p[index].child = None;
        }
        tracing::info!(process = %name, "chaos: killed");
        tokio::time::sleep(pause).await;
        {
            let mut p = procs.lock().await;
            if let Err(e) = launcher.spawn(&mut p[index]) {
                tracing::warn!(process = %name, error = %e, "chaos: restart failed");
            }
        }
        // Ready again, then the backlog of the kill stored.
        let deadline = killed_at + Duration::from_secs(240);
        let mut ready_secs = f64::NAN;
        while Instant::now() < deadline {
            if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
                if r.status().is_success() {
                    ready_secs = killed_at.elapsed().as_secs_f64();
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let delayed = (accepted - stored).max(0);
        let mut caught_up_secs = None;
        while Instant::now() < deadline {
            if (probe.stored)().await >= stored + delayed {
                caught_up_secs = Some(killed_at.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let k = Kill {
            process: name,
            role,
            at_secs: (killed_at - began).as_secs_f64(),
            ready_secs,
            delayed,
            caught_up_secs,
            retried: (probe.retried)().saturating_sub(retried),
        };
        tracing::info!(process = %k.process, ready_secs = k.ready_secs, delayed = k.delayed, "chaos: recovered");
        kills.push(k);
    }
}

/// One instance's graceful restart.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Restart {
    pub process: String,
    pub role: String,
    /// From SIGTERM until it exited (its unready window and drain).
    pub stopped_secs: f64,
    /// It exited by itself within 60 s (else it was killed).
    pub drained: bool,
    /// From its new start until `/readyz` answered 200 (and the balancer had a moment to see it).
    pub ready_secs: f64,
}

/// Restarts every instance one by one as a rolling update does: SIGTERM (the instance turns
/// unready, the balancer moves new requests away, it drains, commits and leaves its groups),
/// start again, wait until ready and in the balancer again, then the next one.
pub(crate) async fn rolling(procs: Arc<Mutex<Vec<Proc>>>, launcher: Arc<Launcher>) -> Vec<Restart> {
    let http = reqwest::Client::new();
    let count = procs.lock().await.len();
    let mut out = Vec::new();
    for index in 0..count {
        let (name, role, url, pid) = {
            let p = procs.lock().await;
            (
                p[index].name.clone(),
                p[index].role.clone(),
                p[index].url.clone(),
                p[index].child.as_ref().and_then(Child::id),
            )
        };
        let t = Instant::now();
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let drained = {
            let mut p = procs.lock().await;
            let drained = match p[index].child.as_mut() {
                Some(c) => match tokio::time::timeout(Duration::from_secs(60), c.wait()).await {
                    Ok(_) => true,
                    Err(_) => {
                        let _ = c.kill().await;
                        false
                    }
                },
                None => true,
            };
            p[index].child = None;
            drained
        };
        let stopped_secs = t.elapsed().as_secs_f64();
        let started = Instant::now();
        {
            let mut p = procs.lock().await;
            if let Err(e) = launcher.spawn(&mut p[index]) {
                tracing::warn!(process = %name, error = %e, "rolling restart: start failed");
            }
        }
        let mut ready_secs = f64::NAN;
        while started.elapsed() < Duration::from_secs(240) {
            if let Ok(r) = http.get(format!("{url}/readyz")).send().await {
                if r.status().is_success() {
                    // The balancer checks every 500 ms and needs one good answer.
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    ready_secs = started.elapsed().as_secs_f64();
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(process = %name, stopped_secs, ready_secs, "rolling restart: instance back");
        out.push(Restart {
            process: name,
            role,
            stopped_secs,
            drained,
            ready_secs,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_balancer_checks_readiness_of_every_instance() {
        let cfg = haproxy_config(
            LbPorts {
                ingest: 1000,
                serving: 1001,
                smtp: 1002,
            },
            4000,
            &[
                ("ingest".into(), 2000, 2500),
                ("ingest-2".into(), 2001, 2501),
            ],
            &[("serving".into(), 3000), ("serving-2".into(), 3001)],
        );
        for line in [
            "bind 127.0.0.1:1000",
            "bind 127.0.0.1:1001",
            "bind 127.0.0.1:1002",
            "server ingest-2 127.0.0.1:2001 check",
            "server serving 127.0.0.1:3000 check",
            "server ingest-2 127.0.0.1:2501 check port 2001",
            "option httpchk GET /readyz",
            "maxconn 4000",
        ] {
            assert!(cfg.contains(line), "{line} missing from\n{cfg}");
        }
        // Every backend is checked on /readyz: three backends, three checks.
        assert_eq!(cfg.matches("option httpchk GET /readyz").count(), 3);
    }
}
