//! The agent's own CPU and memory, read from `/proc/self` (Linux): CPU as the share of one
//! core used since the previous reading, memory as the resident set size.

use std::time::Instant;

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on every Linux port).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time (user + system) in seconds from the text of `/proc/self/stat`.
pub fn parse_cpu_seconds(stat: &str) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ... utime(11) stime(12).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Resident set size in bytes from the text of `/proc/self/status`.
pub fn parse_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Successive readings of this process's usage.
#[derive(Debug)]
pub struct ProcessUsage {
    last: Option<(Instant, f64)>,
}

impl Default for ProcessUsage {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessUsage {
    /// Starts measuring now.
    pub fn new() -> Self {
        let mut usage = Self { last: None };
        usage.last = cpu_seconds().map(|c| (Instant::now(), c));
        usage
    }

    /// `(cpu percent of one core since the last call, rss bytes)`.
    pub fn sample(&mut self) -> (f64, u64) {
        let now = Instant::now();
        let cpu = cpu_seconds();
        let percent = match (self.last, cpu) {
            (Some((then, before)), Some(after)) => {
                let wall = now.duration_since(then).as_secs_f64();
                if wall > 0.0 {
                    (100.0 * (after - before) / wall).max(0.0)
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        if let Some(c) = cpu {
            self.last = Some((now, c));
        }
        let rss = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_rss_bytes(&s))
            .unwrap_or(0);
        (percent, rss)
    }
}

fn cpu_seconds() -> Option<f64> {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_cpu_seconds(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_status_are_parsed_even_with_odd_command_names() {
        let stat = "1234 (phoenix (agent) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 8 0";
        assert_eq!(parse_cpu_seconds(stat), Some(3.0));
        let status = "Name:\tphoenix-agent\nVmPeak:\t  9000 kB\nVmRSS:\t   12288 kB\n";
        assert_eq!(parse_rss_bytes(status), Some(12288 * 1024));
        assert_eq!(parse_cpu_seconds("garbage"), None);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        let mut usage = ProcessUsage::new();
        let (cpu, rss) = usage.sample();
        assert!(cpu >= 0.0);
        assert!(rss > 0);
    }
}
