//! Child processes of the benchmark: pinned start-up, readiness, `/proc` figures, and a
//! guard that kills each one's whole process tree however the benchmark ends.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// How the benchmark's processes are spread over CPU cores.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// Core of the load generator and the mock; `None` when not pinning.
    pub load_core: Option<usize>,
    /// Core of the proxy under test.
    pub proxy_core: Option<usize>,
    /// One line saying what was done, for the report.
    pub note: String,
}

impl Pinning {
    /// Pins when `taskset` exists and there are at least two cores. Pins this process (all
    /// threads; it has only one yet) to the load core with `taskset -a -p`, so that the load
    /// generator and the mock share one core and the proxy has the other to itself.
    pub fn decide(cores: usize) -> Self {
        let unpinned = |why: &str| Pinning {
            load_core: None,
            proxy_core: None,
            note: format!("no pinning ({why})"),
        };
        if cores < 2 {
            return unpinned("1 core");
        }
        if which("taskset").is_none() {
            return unpinned("taskset not found; apt-get install util-linux");
        }
        let pinned = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", "0", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !pinned.is_ok_and(|s| s.success()) {
            return unpinned("taskset -p failed");
        }
        Pinning {
            load_core: Some(0),
            proxy_core: Some(1),
            note: "load generator + mock on core 0, proxy on core 1 (taskset)".to_owned(),
        }
    }
}

/// The path of `name` on `PATH`, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A command to start, optionally pinned to a core.
pub fn command(program: &Path, core: Option<usize>) -> Command {
    match core {
        Some(core) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(core.to_string()).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// A running child. Dropping it kills the child and every descendant.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    pid: u32,
    log: PathBuf,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    /// Spawns `command` with stderr (and stdout, unless `pipe_stdout`) to `log`.
    pub fn spawn(
        name: &str,
        mut command: Command,
        log: PathBuf,
        pipe_stdout: bool,
    ) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&log).with_context(|| format!("creating {log:?}"))?;
        command
            .stdin(Stdio::null())
            .stderr(file.try_clone()?)
            .kill_on_drop(true);
        if pipe_stdout {
            command.stdout(Stdio::piped());
        } else {
            command.stdout(file);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let Some(pid) = child.id() else {
            bail!("{name} exited at once");
        };
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Self {
            name: name.to_owned(),
            child,
            pid,
            log,
            stdout,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reads stdout lines until one starts with `prefix`; returns the rest of that line.
    pub async fn wait_for_line(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let Some(stdout) = self.stdout.as_mut() else {
            bail!("{}: stdout is not piped", self.name);
        };
        let read = async {
            let mut line = String::new();
            loop {
                line.clear();
                if stdout.read_line(&mut line).await? == 0 {
                    bail!("exited before printing {prefix:?}");
                }
                if let Some(rest) = line.trim_end().strip_prefix(prefix) {
                    return Ok(rest.to_owned());
                }
            }
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(rest)) => Ok(rest),
            Ok(Err(error)) => bail!("{}: {error}\n{}", self.name, self.log_tail(15)),
            Err(_) => bail!("{}: no {prefix:?} line within {timeout:?}", self.name),
        }
    }

    /// Stops the child gracefully: SIGTERM, then up to `grace` for it to exit (nginx's master
    /// reaps its workers meanwhile, so none is left a zombie); whatever is left is killed.
    pub async fn stop(mut self, grace: Duration) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = tokio::time::timeout(grace, self.child.wait()).await;
        // Drop kills any descendant still there.
    }

    /// `Some(description)` if the child has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(error) => Some(error.to_string()),
        }
    }

    /// The last `lines` lines of the child's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// CPU time (user + system) of the child and its descendants, in clock ticks.
    pub fn tree_cpu_ticks(&self) -> u64 {
        tree(self.pid).into_iter().filter_map(cpu_ticks).sum()
    }

    /// Resident memory of the child and its descendants, in bytes.
    pub fn tree_rss_bytes(&self) -> u64 {
        tree(self.pid).into_iter().filter_map(rss_bytes).sum()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Descendants first (nginx workers, LiteLLM's children): killing only the direct child
        // would orphan them. `kill` is a separate program because this crate forbids unsafe.
        let mut pids: Vec<String> = descendants(self.pid)
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        pids.push(self.pid.to_string());
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.start_kill();
    }
}

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    all.extend(descendants(pid));
    all
}

/// Every descendant of `root`, found by scanning `/proc/*/stat` for parent ids.
pub fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat_fields(pid)?.first()?.parse().ok()?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &parents {
            if ppid == parent && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

/// Fields of `/proc/PID/stat` from the 4th (ppid) on; the 2nd (comm) may contain spaces.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &text[text.rfind(')')? + 1..];
    Some(
        after_comm
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect(),
    )
}

/// utime + stime of one process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    // Field 14 is utime and 15 stime; the vector starts at field 4.
    let utime: u64 = fields.get(14 - 4)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 4)?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS of one process, in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that fails, the Linux value).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

/// A free local port: bind port 0 and release it. Racy in principle, fine on a quiet machine.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("switchboard-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir:?}"))?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_from_proc() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(clock_ticks_per_second() > 0);
    }

    #[tokio::test]
    async fn a_dropped_proc_takes_its_children_with_it() {
        let dir = TempDir::new().unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 30 & sleep 30 & echo ready; wait"]);
        let mut proc = Proc::spawn("sh", command, dir.0.join("sh.log"), true).unwrap();
        proc.wait_for_line("ready", Duration::from_secs(5))
            .await
            .unwrap();
        let children = descendants(proc.pid());
        assert_eq!(children.len(), 2, "{children:?}");
        drop(proc);
        tokio::time::sleep(Duration::from_millis(200)).await;
        for pid in children {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for its new parent to reap it.
            assert!(
                stat.is_empty() || stat.contains(") Z "),
                "{pid} survived: {stat}"
            );
        }
    }
}
