//! The storage alarm: a full disk is an alarm, not a crash. Each member watches its data
//! directory (`StorageAlarm`): a thread samples the file system's free space (`statvfs`) and the
//! size of its databases every `SAMPLE_EVERY`, and the stores report a write that failed for want
//! of space or with an I/O error (`retry_while_full`: they wait and try again rather than hand
//! openraft an error, which would stop the member's Raft for good, docs/openraft-notes.md §3).
//!
//! The alarm is raised, by kind:
//! - `no_space`: free space below `[storage] reserve_bytes`, or a store's write failed with
//!   SQLITE_FULL / ENOSPC; cleared once free space is back above the reserve and a half
//!   (`Thresholds::judge`: hysteresis, so it does not flap) and no store is stalled;
//! - `quota`: `log.db` and `state.db` together above `[storage] quota_bytes`; cleared below 7/8
//!   of it;
//! - `io`: a store's write failed with another I/O error; cleared when its retry succeeds.
//!
//! The active master refuses writes while its own alarm is raised or another member reports a
//! quota alarm (`replicated::storage`); reads and watch streams go on. Nothing acknowledged is
//! lost: a store never reports a write done before it is (the durability rules are unchanged),
//! it only waits longer.

use super::types::NodeId;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How often free space and database sizes are sampled: a few hundred milliseconds of writes at
/// full speed are a few MiB, well within the reserve.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// How old a sample may be when the active master checks it before a write
/// (`sample_if_older`): a statvfs and two stats every 20 ms at most, whatever the write rate.
pub const FRESH_FOR_WRITES: Duration = Duration::from_millis(20);
/// The first pause of a store waiting for space; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(50);
/// The longest pause between two tries of a stalled write: space freed is used within a second.
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Why a member's alarm is raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    NoSpace,
    Quota,
    Io,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::NoSpace, Kind::Quota, Kind::Io];

    /// The name in metrics labels and in the status.
    pub fn name(self) -> &'static str {
        match self {
            Kind::NoSpace => "no_space",
            Kind::Quota => "quota",
            Kind::Io => "io",
        }
    }
}

/// The stores that write to the data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Log,
    State,
    Snapshot,
}

impl Store {
    fn index(self) -> usize {
        match self {
            Store::Log => 0,
            Store::State => 1,
            Store::Snapshot => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Store::Log => "log.db",
            Store::State => "state.db",
            Store::Snapshot => "snapshot.db",
        }
    }
}

/// One sample of the data directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Bytes an unprivileged writer may still use on the file system.
    pub free_bytes: u64,
    /// Bytes of `log.db` and `state.db` (what the quota counts).
    pub used_bytes: u64,
}

/// The sampled part of the alarm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Raised {
    pub no_space: bool,
    pub quota: bool,
}

/// The configured limits (`[storage]`).
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    pub reserve_bytes: u64,
    /// 0: no quota.
    pub quota_bytes: u64,
}

impl Thresholds {
    /// Free space above which a raised `no_space` clears: the reserve and half of it again.
    pub fn clear_free(&self) -> u64 {
        self.reserve_bytes.saturating_add(self.reserve_bytes / 2)
    }

    /// Database bytes below which a raised `quota` clears: 7/8 of the quota.
    pub fn clear_used(&self) -> u64 {
        self.quota_bytes - self.quota_bytes / 8
    }

    /// The alarm after `sample`, given what was raised before (hysteresis: raised below the
    /// reserve or above the quota, cleared only with a margin).
    pub fn judge(&self, before: Raised, sample: Sample) -> Raised {
        let no_space = if before.no_space {
            sample.free_bytes < self.clear_free()
        } else {
            sample.free_bytes < self.reserve_bytes
        };
        let quota = self.quota_bytes != 0
            && if before.quota {
                sample.used_bytes >= self.clear_used()
            } else {
                sample.used_bytes > self.quota_bytes
            };
        Raised { no_space, quota }
    }
}

/// What the status and the metrics show of a member's storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub path: PathBuf,
    pub sample: Sample,
    /// The kinds raised, in `Kind::ALL` order.
    pub kinds: Vec<Kind>,
    /// Why, for a person (empty when nothing is raised).
    pub message: String,
}

#[derive(Default)]
struct Inner {
    sample: Sample,
    sampled_at: Option<Instant>,
    raised: Raised,
    /// Per store (`Store::index`): the kind and error of a write waiting to be retried.
    stalled: [Option<(Kind, String)>; 3],
}

/// A member's storage alarm (see the module doc). Shared by the stores, the core and the status.
pub struct StorageAlarm {
    member: NodeId,
    dir: PathBuf,
    files: [PathBuf; 2],
    thresholds: Thresholds,
    inner: Mutex<Inner>,
}

impl StorageAlarm {
    /// The alarm of member `member`'s data directory `dir` (holding `log.db` and `state.db`),
    /// sampled once now.
    pub fn new(member: NodeId, dir: &Path, thresholds: Thresholds) -> Arc<StorageAlarm> {
        let alarm = Arc::new(StorageAlarm {
            member,
            dir: dir.to_owned(),
            files: [
                dir.join(super::db::LOG_FILE),
                dir.join(super::db::STATE_FILE),
            ],
            thresholds,
            inner: Mutex::default(),
        });
        alarm.sample_now();
        alarm
    }

    /// An alarm that is never raised by sampling (no directory to watch): for stores opened
    /// without one (their own tests).
    pub fn none() -> Arc<StorageAlarm> {
        Arc::new(StorageAlarm {
            member: 0,
            dir: PathBuf::new(),
            files: [PathBuf::new(), PathBuf::new()],
            thresholds: Thresholds {
                reserve_bytes: 0,
                quota_bytes: 0,
            },
            inner: Mutex::default(),
        })
    }

    pub fn member(&self) -> NodeId {
        self.member
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Samples the directory now and updates the alarm; logs when it is raised or cleared.
    pub fn sample_now(&self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        let free = match free_bytes(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "statvfs of the data directory failed");
                return;
            }
        };
        let used = self
            .files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum();
        let sample = Sample {
            free_bytes: free,
            used_bytes: used,
        };
        let (before, after) = {
            let mut inner = self.lock();
            let before = inner.raised;
            inner.sample = sample;
            inner.sampled_at = Some(Instant::now());
            inner.raised = self.thresholds.judge(before, sample);
            (before, inner.raised)
        };
        if after != before {
            let report = self.report();
            if after.no_space || after.quota {
                tracing::error!(
                    dir = %self.dir.display(),
                    free_bytes = sample.free_bytes,
                    used_bytes = sample.used_bytes,
                    "storage alarm raised: {}",
                    report.message
                );
            } else {
                tracing::info!(
                    dir = %self.dir.display(),
                    free_bytes = sample.free_bytes,
                    used_bytes = sample.used_bytes,
                    "storage alarm cleared"
                );
            }
        }
    }

    /// Samples now if the last sample is older than `age` (before a write is accepted).
    pub fn sample_if_older(&self, age: Duration) {
        let stale = self.lock().sampled_at.is_none_or(|at| at.elapsed() >= age);
        if stale {
            self.sample_now();
        }
    }

    /// Samples every `SAMPLE_EVERY` on a thread of its own until the returned sender is dropped.
    pub fn start_sampler(self: &Arc<Self>) -> std::io::Result<mpsc::Sender<()>> {
        let (stop, stopped) = mpsc::channel::<()>();
        let me = self.clone();
        std::thread::Builder::new()
            .name("storage-watch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(SAMPLE_EVERY)
                {
                    me.sample_now();
                }
            })?;
        Ok(stop)
    }

    /// A write of `store` failed with `kind` (`error`): raised until `resumed`.
    pub fn stalled(&self, store: Store, kind: Kind, error: &str) {
        self.lock().stalled[store.index()] = Some((kind, error.to_string()));
    }

    /// `store`'s writes succeed again.
    pub fn resumed(&self, store: Store) {
        self.lock().stalled[store.index()] = None;
    }

    /// Whether a write of one of the stores waits for space (or the device) now.
    pub fn is_stalled(&self) -> bool {
        self.lock().stalled.iter().any(Option::is_some)
    }

    /// Whether any kind is raised.
    pub fn is_raised(&self) -> bool {
        let inner = self.lock();
        inner.raised.no_space || inner.raised.quota || inner.stalled.iter().any(Option::is_some)
    }

    /// What the status and the metrics show.
    pub fn report(&self) -> Report {
        let inner = self.lock();
        let stalled = |k: Kind| inner.stalled.iter().flatten().any(|(s, _)| *s == k);
        let kinds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|&k| match k {
                Kind::NoSpace => inner.raised.no_space || stalled(k),
                Kind::Quota => inner.raised.quota,
                Kind::Io => stalled(k),
            })
            .collect();
        let t = &self.thresholds;
        let s = inner.sample;
        let mut why = Vec::new();
        if inner.raised.no_space {
            why.push(format!(
                "{} free, below the reserve of {} ([storage] reserve_bytes)",
                mib(s.free_bytes),
                mib(t.reserve_bytes)
            ));
        }
        if inner.raised.quota {
            why.push(format!(
                "its databases take {}, over the quota of {} ([storage] quota_bytes)",
                mib(s.used_bytes),
                mib(t.quota_bytes)
            ));
        }
        for (store, stall) in [Store::Log, Store::State, Store::Snapshot]
            .into_iter()
            .zip(&inner.stalled)
        {
            if let Some((_, e)) = stall {
                why.push(format!("writing {} failed: {e}", store.name()));
            }
        }
        let message = if why.is_empty() {
            String::new()
        } else {
            format!(
                "member {} cannot take writes in {}: {}",
                self.member,
                self.dir.display(),
                why.join("; ")
            )
        };
        Report {
            path: self.dir.clone(),
            sample: s,
            kinds,
            message,
        }
    }
}

/// Bytes as MiB with one decimal, for messages.
fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// The bytes an unprivileged writer may still use on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` points to a statvfs the call fills in.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st` in.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the fields' types differ between platforms
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Whether `e` is a write that failed for want of space or with an I/O error, and which.
pub fn full_or_io(e: &rusqlite::Error) -> Option<Kind> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            rusqlite::ErrorCode::DiskFull => Some(Kind::NoSpace),
            rusqlite::ErrorCode::SystemIoFailure => Some(Kind::Io),
            _ => None,
        },
        _ => None,
    }
}

/// The kind of an `std::io::Error` that is worth waiting out (ENOSPC, EDQUOT, EIO).
pub fn io_kind(e: &std::io::Error) -> Option<Kind> {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Some(Kind::NoSpace),
        Some(libc::EIO) => Some(Kind::Io),
        _ => None,
    }
}

/// Pauses between the tries of a stalled write: doubling from `RETRY_FIRST` to `RETRY_MAX`.
pub struct Pause(Duration);

impl Default for Pause {
    fn default() -> Self {
        Pause(RETRY_FIRST)
    }
}

impl Pause {
    pub fn wait(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(RETRY_MAX);
    }
}

/// Runs the write `f` of `store` until it succeeds or fails with an error that is not a lack of
/// space or an I/O error (`full_or_io`), which it returns. While it fails so, the alarm shows it
/// (logged once, at the first failure) and the write is tried again after a pause: the caller
/// (a store's own thread, or a blocking task) waits, and nothing is reported written before it
/// is.
pub fn retry_while_full<T>(
    alarm: &StorageAlarm,
    store: Store,
    f: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    retry_classified(alarm, store, full_or_io, f)
}

/// `retry_while_full` for file operations (`io_kind`: ENOSPC, EDQUOT, EIO).
pub fn retry_io<T>(
    alarm: &StorageAlarm,
    store: Store,
    f: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    retry_classified(alarm, store, io_kind, f)
}

fn retry_classified<T, E: std::fmt::Display>(
    alarm: &StorageAlarm,
    store: Store,
    classify: fn(&E) -> Option<Kind>,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut pause = Pause::default();
    let mut failed = false;
    loop {
        match f() {
            Ok(v) => {
                if failed {
                    alarm.resumed(store);
                    alarm.sample_now();
                    tracing::info!(
                        dir = %alarm.dir().display(),
                        store = store.name(),
                        "storage writes resumed"
                    );
                }
                return Ok(v);
            }
            Err(e) => {
                let Some(kind) = classify(&e) else {
                    if failed {
                        alarm.resumed(store);
                    }
                    return Err(e);
                };
                if !failed {
                    failed = true;
                    tracing::error!(
                        dir = %alarm.dir().display(),
                        store = store.name(),
                        kind = kind.name(),
                        error = %e,
                        "a storage write failed: waiting for space (or the device) and trying \
                         again; free space in the data directory"
                    );
                }
                alarm.stalled(store, kind, &e.to_string());
                pause.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn t(reserve: u64, quota: u64) -> Thresholds {
        Thresholds {
            reserve_bytes: reserve * MIB,
            quota_bytes: quota * MIB,
        }
    }

    fn s(free: u64, used: u64) -> Sample {
        Sample {
            free_bytes: free * MIB,
            used_bytes: used * MIB,
        }
    }

    /// `no_space` is raised below the reserve, stays raised until free space is back above the
    /// reserve and a half (no flapping around the threshold), then clears. Fails if the
    /// threshold or the hysteresis moved.
    #[test]
    fn no_space_has_hysteresis() {
        let th = t(8, 0);
        let mut r = Raised::default();
        r = th.judge(r, s(9, 1));
        assert!(!r.no_space, "9 MiB free is above an 8 MiB reserve");
        r = th.judge(r, s(8, 1));
        assert!(!r.no_space, "exactly the reserve is not below it");
        r = th.judge(
            r,
            Sample {
                free_bytes: 8 * MIB - 1,
                used_bytes: MIB,
            },
        );
        assert!(r.no_space, "below the reserve raises");
        for free in [9, 11] {
            r = th.judge(r, s(free, 1));
            assert!(
                r.no_space,
                "{free} MiB free is within the margin: still raised"
            );
        }
        r = th.judge(r, s(12, 1));
        assert!(!r.no_space, "1.5 × the reserve clears");
        r = th.judge(r, s(10, 1));
        assert!(
            !r.no_space,
            "once cleared, only below the reserve raises again"
        );
        assert!(!r.quota, "no quota configured: never raised");
    }

    /// `quota` is raised above the quota and clears below 7/8 of it; a quota of 0 is none.
    #[test]
    fn quota_has_hysteresis() {
        let th = t(1, 16);
        let mut r = Raised::default();
        r = th.judge(r, s(100, 16));
        assert!(!r.quota, "exactly the quota is allowed");
        r = th.judge(
            r,
            Sample {
                free_bytes: 100 * MIB,
                used_bytes: 16 * MIB + 1,
            },
        );
        assert!(r.quota && !r.no_space);
        r = th.judge(r, s(100, 15));
        assert!(
            r.quota,
            "15 MiB is within the 2 MiB margin of a 16 MiB quota"
        );
        r = th.judge(
            r,
            Sample {
                free_bytes: 100 * MIB,
                used_bytes: 14 * MIB - 1,
            },
        );
        assert!(!r.quota, "below 7/8 of the quota clears");
        let none = t(1, 0);
        assert!(!none.judge(Raised::default(), s(100, 1 << 20)).quota);
    }

    /// A stalled store raises the alarm whatever the samples say, with its kind and error in
    /// the report, which names the member and the directory; resuming clears it.
    #[test]
    fn stalls_raise_until_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let alarm = StorageAlarm::new(7, dir.path(), t(1, 0));
        assert!(!alarm.is_raised(), "a temp dir has more than 1 MiB free");
        alarm.stalled(Store::Log, Kind::Io, "disk I/O error");
        assert!(alarm.is_raised());
        let r = alarm.report();
        assert_eq!(r.kinds, vec![Kind::Io]);
        assert!(r.message.contains("member 7"), "{}", r.message);
        assert!(r.message.contains(&dir.path().display().to_string()));
        assert!(r.message.contains("log.db") && r.message.contains("disk I/O error"));
        alarm.resumed(Store::Log);
        assert!(!alarm.is_raised());
        assert!(alarm.report().message.is_empty());
    }

    /// SQLite's "database or disk is full" and "disk I/O error" are waited out; other errors
    /// (a constraint, a corrupt file) are not.
    #[test]
    fn which_errors_are_waited_out() {
        let err = |code: i32| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        assert_eq!(
            full_or_io(&err(rusqlite::ffi::SQLITE_FULL)),
            Some(Kind::NoSpace)
        );
        assert_eq!(
            full_or_io(&err(rusqlite::ffi::SQLITE_IOERR)),
            Some(Kind::Io)
        );
        assert_eq!(full_or_io(&err(rusqlite::ffi::SQLITE_CORRUPT)), None);
        assert_eq!(full_or_io(&err(rusqlite::ffi::SQLITE_CONSTRAINT)), None);
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(io_kind(&enospc), Some(Kind::NoSpace));
        assert_eq!(io_kind(&std::io::Error::other("x")), None);
    }
}
