//! The `mosquitto-reload` sidecar: Mosquitto 2.0 re-reads its certificates, CRL, password file
//! and ACL on SIGHUP without dropping clients, but does not notice on its own that a mounted
//! Secret or ConfigMap changed. Next to it in a pod with `shareProcessNamespace: true`, this
//! loop polls the mounted files and signals the broker when one changes.
//!
//! Polling content, not inotify or mtimes: the kubelet swaps a volume's contents by re-pointing
//! a `..data` symlink, which neither changes the watched path's inode nor reliably its mtime.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `/proc/PID/comm` of the processes signalled by default.
pub const DEFAULT_PROCESS_NAME: &str = "mosquitto";

/// The watched files and a hash of the content each had when last read.
#[derive(Debug)]
pub struct WatchedFiles {
    files: Vec<WatchedFile>,
}

#[derive(Debug)]
struct WatchedFile {
    path: PathBuf,
    /// SHA-256 of the last content read; `None` while it has never been readable.
    digest: Option<Vec<u8>>,
    /// Whether it was unreadable at the last poll (logged once per outage, not every poll).
    unreadable: bool,
}

impl WatchedFiles {
    /// Reads every file once; those that cannot be read count as changed when they appear.
    pub fn new(paths: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut files: Vec<WatchedFile> = paths
            .into_iter()
            .map(|path| WatchedFile {
                path,
                digest: None,
                unreadable: false,
            })
            .collect();
        for file in &mut files {
            match read_digest(&file.path) {
                Ok(digest) => file.digest = Some(digest),
                Err(e) => {
                    tracing::warn!(path = %file.path.display(), error = %e, "watched file not readable yet");
                    file.unreadable = true;
                }
            }
        }
        Self { files }
    }

    /// Re-reads every file; the paths whose content differs from the last read. A file that
    /// cannot be read keeps its last known content (a reload would not find it either).
    pub fn poll(&mut self) -> Vec<PathBuf> {
        let mut changed = Vec::new();
        for file in &mut self.files {
            match read_digest(&file.path) {
                Ok(digest) => {
                    if file.unreadable {
                        tracing::info!(path = %file.path.display(), "watched file readable again");
                        file.unreadable = false;
                    }
                    if file.digest.as_ref() != Some(&digest) {
                        file.digest = Some(digest);
                        changed.push(file.path.clone());
                    }
                }
                Err(e) => {
                    if !file.unreadable {
                        tracing::warn!(path = %file.path.display(), error = %e, "watched file not readable");
                        file.unreadable = true;
                    }
                }
            }
        }
        changed
    }
}

fn read_digest(path: &Path) -> std::io::Result<Vec<u8>> {
    let content = std::fs::read(path)?;
    Ok(ring::digest::digest(&ring::digest::SHA256, &content)
        .as_ref()
        .to_vec())
}

/// Ids of the processes under `proc_root` (normally `/proc`) whose `comm` is exactly `name`
/// (`mosquitto`, not `mosquitto_sub`), in ascending order.
pub fn find_processes(proc_root: &Path, name: &str) -> std::io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .filter(|pid| *pid > 0)
        else {
            continue;
        };
        // A process may exit between listing and reading: skip it.
        let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) else {
            continue;
        };
        if comm.strip_suffix('\n').unwrap_or(&comm) == name {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Sends SIGHUP to `pid`. Through `nix`, a safe wrapper of kill(2): std has no signal API and
/// this workspace forbids `unsafe` (so no direct `libc::kill`).
pub fn send_sighup(pid: i32) -> nix::Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
}

/// Which processes to signal.
#[derive(Debug, Clone)]
pub struct ReloadTarget {
    /// Normally `/proc`.
    pub proc_root: PathBuf,
    /// Exact `comm` of the processes.
    pub process_name: String,
}

impl Default for ReloadTarget {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            process_name: DEFAULT_PROCESS_NAME.to_string(),
        }
    }
}

/// Polls `paths` every `interval` until `shutdown` resolves; after a poll that saw a change,
/// signals every process of `target` once. Returns the number of reloads signalled.
pub async fn run(
    paths: Vec<PathBuf>,
    interval: Duration,
    target: ReloadTarget,
    shutdown: impl Future<Output = ()>,
) -> u64 {
    let files: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let mut watched = WatchedFiles::new(paths);
    // Logged once the files' first contents are known: a change from here on is noticed.
    tracing::info!(
        files = ?files,
        interval_seconds = interval.as_secs_f64(),
        process = target.process_name,
        "watching files to reload the broker"
    );
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; the files were just read.
    ticker.tick().await;
    tokio::pin!(shutdown);
    let mut reloads = 0;
    loop {
        tokio::select! {
            () = &mut shutdown => return reloads,
            _ = ticker.tick() => {}
        }
        let changed = watched.poll();
        if changed.is_empty() {
            continue;
        }
        for path in &changed {
            tracing::info!(path = %path.display(), "watched file changed");
        }
        if signal_all(&target) > 0 {
            reloads += 1;
        }
    }
}

/// SIGHUP to every process of `target`; how many were signalled.
fn signal_all(target: &ReloadTarget) -> usize {
    let pids = match find_processes(&target.proc_root, &target.process_name) {
        Ok(pids) => pids,
        Err(e) => {
            tracing::error!(proc = %target.proc_root.display(), error = %e, "cannot list processes");
            return 0;
        }
    };
    if pids.is_empty() {
        // Nothing to tell: a broker that starts later reads the new files anyway.
        tracing::warn!(
            process = target.process_name,
            "no process to reload (is shareProcessNamespace set on the pod?)"
        );
    }
    let mut signalled = 0;
    for pid in pids {
        match send_sighup(pid) {
            Ok(()) => {
                signalled += 1;
                tracing::info!(pid, process = target.process_name, "sent SIGHUP");
            }
            Err(e) => {
                tracing::error!(pid, process = target.process_name, error = %e, "SIGHUP failed (same user as the broker?)");
            }
        }
    }
    signalled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("iot-reload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_change_of_content_is_seen_once_and_a_rewrite_of_the_same_content_not_at_all() {
        let dir = scratch("poll");
        let crl = dir.join("crl.pem");
        let missing = dir.join("later.pem");
        std::fs::write(&crl, "one").unwrap();
        let mut watched = WatchedFiles::new([crl.clone(), missing.clone()]);
        assert!(watched.poll().is_empty());
        std::fs::write(&crl, "one").unwrap();
        assert!(watched.poll().is_empty(), "same content");
        std::fs::write(&crl, "two").unwrap();
        assert_eq!(watched.poll(), std::slice::from_ref(&crl));
        assert!(watched.poll().is_empty());
        std::fs::write(&missing, "x").unwrap();
        assert_eq!(
            watched.poll(),
            std::slice::from_ref(&missing),
            "a file that appears"
        );
        std::fs::remove_file(&crl).unwrap();
        assert!(
            watched.poll().is_empty(),
            "a vanished file is no reason to reload"
        );
        std::fs::write(&crl, "two").unwrap();
        assert!(watched.poll().is_empty(), "back with the content last seen");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The kubelet's way of updating a mounted Secret: a new timestamped directory and the
    /// `..data` symlink re-pointed; the watched path is a symlink through `..data`.
    #[test]
    fn a_symlink_swap_like_the_kubelets_is_a_change() {
        let dir = scratch("symlink");
        std::fs::create_dir(dir.join("..2026_01_01")).unwrap();
        std::fs::write(dir.join("..2026_01_01/crl.pem"), "old").unwrap();
        std::os::unix::fs::symlink("..2026_01_01", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/crl.pem", dir.join("crl.pem")).unwrap();
        let mut watched = WatchedFiles::new([dir.join("crl.pem")]);
        std::fs::create_dir(dir.join("..2026_01_02")).unwrap();
        std::fs::write(dir.join("..2026_01_02/crl.pem"), "new").unwrap();
        std::os::unix::fs::symlink("..2026_01_02", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(watched.poll(), [dir.join("crl.pem")]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_processes_named_exactly_are_found() {
        let proc_root = scratch("proc");
        for (pid, comm) in [
            ("12", "mosquitto\n"),
            ("7", "mosquitto\n"),
            ("30", "mosquitto_sub\n"),
            ("31", "mosquitto2\n"),
            ("40", "iot-operator\n"),
        ] {
            std::fs::create_dir(proc_root.join(pid)).unwrap();
            std::fs::write(proc_root.join(pid).join("comm"), comm).unwrap();
        }
        std::fs::create_dir(proc_root.join("self")).unwrap();
        std::fs::create_dir(proc_root.join("99")).unwrap(); // exited: no comm
        std::fs::write(proc_root.join("uptime"), "1.0").unwrap();
        assert_eq!(find_processes(&proc_root, "mosquitto").unwrap(), [7, 12]);
        std::fs::remove_dir_all(proc_root).unwrap();
    }
}
