//! Reading a process's CPU time and memory from `/proc` (Linux), and the machine's CPU use, so
//! the report can say what the API under test cost while it was measured.

use std::time::Duration;

use serde::Serialize;

/// CPU time a process has used, from `/proc/PID/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    pub user_ticks: u64,
    pub system_ticks: u64,
}

impl CpuTicks {
    pub fn total(&self) -> u64 {
        self.user_ticks + self.system_ticks
    }
}

/// Parse `utime` and `stime` (fields 14 and 15) out of `/proc/PID/stat`. The command name
/// (field 2) is in parentheses and may itself hold spaces or parentheses, so fields are
/// counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<CpuTicks> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    // After the name: field 3 (state) is index 0, so utime (14) is index 11.
    let user_ticks = fields.nth(11)?.parse().ok()?;
    let system_ticks = fields.next()?.parse().ok()?;
    Some(CpuTicks {
        user_ticks,
        system_ticks,
    })
}

/// Resident memory now and its peak, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

/// Parse `VmRSS` and `VmHWM` (both in kB) out of `/proc/PID/status`.
pub fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let rest = line[name.len()..].trim_start_matches(':').trim();
        rest.strip_suffix("kB").unwrap_or(rest).trim().parse().ok()
    };
    Some(Memory {
        rss_kib: field("VmRSS")?,
        peak_rss_kib: field("VmHWM")?,
    })
}

/// Busy and total jiffies of all CPUs, from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    pub busy_ticks: u64,
    pub total_ticks: u64,
}

/// Parse the aggregate `cpu` line of `/proc/stat`; idle and iowait count as not busy.
pub fn parse_machine_stat(text: &str) -> Option<MachineTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is
    // already included in user, so only the first eight are summed.
    let counted = &values[..values.len().min(8)];
    let total_ticks: u64 = counted.iter().sum();
    let idle_ticks = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some(MachineTicks {
        busy_ticks: total_ticks.saturating_sub(idle_ticks),
        total_ticks,
    })
}

/// CPU use as a percentage of one core: 100 is one core fully busy, 200 two.
pub fn cpu_percent_of_one_core(ticks_used: u64, ticks_per_second: u64, elapsed: Duration) -> f64 {
    let elapsed_s = elapsed.as_secs_f64();
    if ticks_per_second == 0 || elapsed_s <= 0.0 {
        return 0.0;
    }
    ticks_used as f64 / ticks_per_second as f64 / elapsed_s * 100.0
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second()
}

/// One reading of a process: `None` when it is gone or `/proc` is not there.
#[derive(Debug, Clone, Copy)]
pub struct ProcessSample {
    pub cpu: CpuTicks,
    pub memory: Memory,
}

pub fn sample_process(pid: &str) -> Option<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcessSample {
        cpu: parse_stat(&stat)?,
        memory: parse_status(&status)?,
    })
}

pub fn sample_machine() -> Option<MachineTicks> {
    parse_machine_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A command name with spaces and a ')' in it must not shift the fields.
        let stat = "4242 (phoenix api) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    1234 567 0 0 20 0 9 0 100 1000000 2000 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(CpuTicks {
                user_ticks: 1234,
                system_ticks: 567
            })
        );
        assert_eq!(parse_stat("12 (short) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn status_gives_rss_and_its_peak_in_kib() {
        let status = "Name:\tphoenix-api\nVmPeak:\t 1000000 kB\nVmHWM:\t  204800 kB\n\
                      VmRSS:\t  153600 kB\nThreads:\t3\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                rss_kib: 153_600,
                peak_rss_kib: 204_800
            })
        );
        assert_eq!(
            parse_status("Name:\tkthread\n"),
            None,
            "kernel threads have no VmRSS"
        );
    }

    #[test]
    fn machine_busy_excludes_idle_and_iowait() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n";
        assert_eq!(
            parse_machine_stat(text),
            Some(MachineTicks {
                busy_ticks: 150,
                total_ticks: 1000
            })
        );
    }

    #[test]
    fn cpu_percent_is_of_one_core() {
        // 300 ticks at 100/s over 2 s: 1.5 cores.
        assert_eq!(
            cpu_percent_of_one_core(300, 100, Duration::from_secs(2)),
            150.0
        );
        assert_eq!(cpu_percent_of_one_core(300, 100, Duration::ZERO), 0.0);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = sample_process("self").expect("/proc/self is readable on Linux");
        assert!(me.memory.rss_kib > 0);
        assert!(me.memory.peak_rss_kib >= me.memory.rss_kib);
        assert!(ticks_per_second() > 0);
        assert!(sample_machine().is_some());
    }
}
