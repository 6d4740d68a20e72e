//! The machine the benchmark ran on (CPU, cores, kernel, memory, load), read from /proc, and the
//! process facts the scenarios need: a process's resident memory, the open-files limit.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub memory_mb: u64,
    pub hostname: String,
    /// 1-minute load average when the run began and when it ended.
    pub load_start: Option<f64>,
    pub load_end: Option<f64>,
    /// Processes named chatfeed* running when the bench began that it did not start (another
    /// cluster competing for the CPUs).
    pub foreign_chatfeed_processes: usize,
    /// The commit the binaries were built from (`git rev-parse HEAD`), when known.
    pub git_commit: Option<String>,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

impl Machine {
    pub fn now() -> Machine {
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_mb = read("/proc/meminfo")
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))?
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb / 1024);
        let git_commit = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .into(),
            memory_mb,
            hostname: read("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .into(),
            load_start: load_average(),
            load_end: None,
            foreign_chatfeed_processes: chatfeed_processes(),
            git_commit,
        }
    }
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    read("/proc/loadavg")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Live processes whose name starts with "chatfeed" (other than this one).
pub fn chatfeed_processes() -> usize {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            read(&format!("/proc/{pid}/comm")).is_some_and(|c| c.starts_with("chatfeed"))
                && chatfeed_e2e::cluster::alive(pid)
        })
        .count()
}

/// Resident memory of `pid` (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    read(&format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The open-files limit of `pid` (soft), from /proc/<pid>/limits.
pub fn nofile_limit(pid: u32) -> Option<u64> {
    read(&format!("/proc/{pid}/limits"))?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Raises this process's soft open-files limit to the hard limit (the processes it starts inherit
/// it); returns the soft limit in force afterwards.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
        r.rlim_cur
    }
}

/// CPU time (user + system) `pid` has used so far, in milliseconds (from /proc/<pid>/stat).
pub fn cpu_ms(pid: u32) -> Option<f64> {
    let stat = read(&format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based) of the whole line.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * tick_ms())
}

/// One clock tick (the unit of /proc's CPU times) in milliseconds.
fn tick_ms() -> f64 {
    // SAFETY: sysconf has no preconditions.
    1000.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// The whole machine's CPU time so far, every CPU together, from the first line of /proc/stat:
/// (busy, all) in milliseconds, busy being all but idle and iowait. Two readings give the share
/// of the machine in use between them, whoever used it.
pub fn machine_cpu_ms() -> Option<(f64, f64)> {
    let stat = read("/proc/stat")?;
    machine_cpu_ms_of(stat.lines().next()?)
}

fn machine_cpu_ms_of(line: &str) -> Option<(f64, f64)> {
    let mut f = line.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is counted in user already).
    let t: Vec<f64> = f.take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if t.len() < 8 {
        return None;
    }
    let all: f64 = t.iter().sum();
    let busy = all - t[3] - t[4];
    Some((busy * tick_ms(), all * tick_ms()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machine_line_of_proc_stat() {
        let ms = tick_ms();
        let (busy, all) = machine_cpu_ms_of("cpu  100 5 50 800 20 3 2 0 0 0").unwrap();
        assert_eq!(busy, 160.0 * ms);
        assert_eq!(all, 980.0 * ms);
        assert_eq!(machine_cpu_ms_of("cpu0 100 5 50 800 20 3 2 0 0 0"), None);
        assert_eq!(machine_cpu_ms_of("cpu  100 5 50"), None);
    }

    #[test]
    fn a_busy_thread_shows_in_both_readings() {
        let me = std::process::id();
        let (busy0, all0) = machine_cpu_ms().expect("/proc/stat");
        let own0 = cpu_ms(me).expect("/proc/self/stat");
        let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let (busy1, all1) = machine_cpu_ms().unwrap();
        let own = cpu_ms(me).unwrap() - own0;
        // 300 ms of spinning: this process used most of it (ticks are 10 ms), and the machine
        // was at least that busy.
        assert!(own >= 150.0, "own CPU {own} ms");
        assert!(busy1 - busy0 >= 150.0, "machine busy {} ms", busy1 - busy0);
        assert!(all1 > all0);
    }
}
