//! What the report is made of: CPU time of this process, of the broker, of the machine, and a
//! fixed-size latency histogram.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

/// User + system CPU time of this whole process (all threads), from `getrusage`.
pub fn self_cpu() -> Duration {
    // SAFETY: `getrusage` only writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: `sysconf` has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

fn ticks(t: u64) -> Duration {
    let hz = clock_ticks_per_second();
    Duration::from_nanos(t.saturating_mul(1_000_000_000) / hz)
}

/// utime + stime of another process (all its threads), from `/proc/<pid>/stat`.
pub fn process_cpu(pid: u32) -> io::Result<Duration> {
    parse_stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

/// utime + stime from the text of a `/proc/.../stat` file.
fn parse_stat_cpu(stat: &str) -> io::Result<Duration> {
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other("malformed /proc stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the whole line are 12th and 13th after the name (index 11, 12).
    let field = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc stat"))
    };
    Ok(ticks(field(11)? + field(12)?))
}

/// Bytes a process caused to be written to storage (`write_bytes` of `/proc/<pid>/io`).
pub fn process_disk_writes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&status, "VmRSS:")
}

fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The soft limit on open files of another process (`/proc/<pid>/limits`).
pub fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Raises this process's soft limit on open files to at least `want` (up to the hard limit);
/// returns the limit now in force.
pub fn raise_open_files(want: u64) -> io::Result<u64> {
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur >= want {
            return Ok(lim.rlim_cur);
        }
        lim.rlim_cur = want.min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(lim.rlim_cur)
    }
}

/// CPU time of every thread of a process, by thread id, with the thread's name.
pub fn thread_cpu(pid: u32) -> HashMap<u32, (String, Duration)> {
    let mut threads = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let name = match (stat.find('('), stat.rfind(')')) {
            (Some(a), Some(b)) if a < b => stat[a + 1..b].to_string(),
            _ => String::new(),
        };
        if let Ok(cpu) = parse_stat_cpu(&stat) {
            threads.insert(tid, (name, cpu));
        }
    }
    threads
}

/// The thread that used the most CPU between two [`thread_cpu`] readings: name and time.
pub fn busiest_thread(
    before: &HashMap<u32, (String, Duration)>,
    after: &HashMap<u32, (String, Duration)>,
) -> Option<(String, Duration)> {
    after
        .iter()
        .map(|(tid, (name, cpu))| {
            let base = before.get(tid).map_or(Duration::ZERO, |(_, c)| *c);
            (name.clone(), cpu.saturating_sub(base))
        })
        .max_by_key(|(_, d)| *d)
}

/// Busy and total CPU time of the whole machine, from the first line of `/proc/stat`.
///
/// The kernel samples this at timer ticks, so it undercounts short bursts of work between ticks
/// on a mostly idle machine; under load it is accurate.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    pub busy: Duration,
    pub total: Duration,
}

pub fn machine_cpu() -> MachineCpu {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return MachineCpu::default();
    };
    let Some(line) = stat.lines().next() else {
        return MachineCpu::default();
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() < 5 {
        return MachineCpu::default();
    }
    // user nice system idle iowait irq softirq steal ...; idle and iowait are not busy.
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    MachineCpu {
        busy: ticks(total - idle),
        total: ticks(total),
    }
}

/// Latencies in nanoseconds, 64 buckets per power of two (about 1.6% resolution), fixed size.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize) * SUB as usize + 2 * SUB as usize;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

impl Histogram {
    #[inline]
    fn index(v: u64) -> usize {
        if v < 2 * SUB {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros();
        let shift = exp - SUB_BITS;
        (u64::from(shift) * SUB + (v >> shift)) as usize
    }

    /// The middle of a bucket's range.
    fn value(index: usize) -> u64 {
        let i = index as u64;
        if i < 2 * SUB {
            return i;
        }
        let shift = i / SUB - 1;
        let mantissa = i % SUB + SUB;
        (mantissa << shift) + (1 << shift) / 2
    }

    #[inline]
    pub fn record(&mut self, nanos: u64) {
        self.record_n(nanos, 1);
    }

    /// `count` samples of the same value.
    #[inline]
    pub fn record_n(&mut self, nanos: u64, count: u64) {
        self.counts[Self::index(nanos)] += count;
        self.total += count;
        self.max = self.max.max(nanos);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), in nanoseconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [
            (0.5, 50_000_000f64),
            (0.99, 99_000_000.0),
            (0.999, 99_900_000.0),
        ] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\twarren\nVmPeak:\t  20000 kB\nVmRSS:\t    9876 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(9876));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn histogram_indexes_are_contiguous_and_in_range() {
        let mut last = 0;
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1 << 40, u64::MAX] {
            let i = Histogram::index(v);
            assert!(i >= last && i < BUCKETS);
            last = i;
        }
        assert_eq!(Histogram::index(128), 128);
        assert_eq!(Histogram::index(256), 192);
    }
}
