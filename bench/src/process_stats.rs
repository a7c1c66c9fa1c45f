//! CPU time and memory of the processes a contender runs, read from /proc
//! (Linux only; elsewhere every reading is `None`).

use std::collections::HashMap;
use std::time::Duration;

/// Clock ticks per second in /proc/<pid>/stat: USER_HZ, 100 on Linux.
const TICKS_PER_SECOND: u64 = 100;

/// CPU used so far (user + system) by `pid` alone.
pub(crate) fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = read_stat(pid)?;
    Some(ticks(stat.own_ticks))
}

/// CPU used so far by `pid`, its children already reaped (per-event
/// processes) and its live descendants (workers).
pub(crate) fn cpu_of_tree(pid: u32) -> Option<Duration> {
    let root = read_stat(pid)?;
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut stats: HashMap<u32, Stat> = HashMap::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = read_stat(child) {
            children.entry(stat.ppid).or_default().push(child);
            stats.insert(child, stat);
        }
    }
    let mut total = root.own_ticks + root.reaped_ticks;
    let mut queue = children.get(&pid).cloned().unwrap_or_default();
    while let Some(next) = queue.pop() {
        if let Some(stat) = stats.get(&next) {
            total += stat.own_ticks + stat.reaped_ticks;
        }
        queue.extend(children.get(&next).into_iter().flatten());
    }
    Some(ticks(total))
}

/// A `Vm*` line of /proc/<pid>/status, in KiB: `VmRSS` (resident now) or
/// `VmHWM` (the peak).
pub(crate) fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field)
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

struct Stat {
    ppid: u32,
    /// utime + stime.
    own_ticks: u64,
    /// cutime + cstime: children waited for.
    reaped_ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses /proc/<pid>/stat; the command name in parentheses may hold spaces,
/// so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 of proc(5) (state): field n is fields[n - 3].
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        ppid: u32::try_from(field(4)?).ok()?,
        own_ticks: field(14)? + field(15)?,
        reaped_ticks: field(16)? + field(17)?,
    })
}

fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 1000 / TICKS_PER_SECOND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let line = "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 250 30 7 3 20 0 1 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.ppid, 17);
        assert_eq!(stat.own_ticks, 280);
        assert_eq!(stat.reaped_ticks, 10);
        assert_eq!(ticks(stat.own_ticks), Duration::from_millis(2800));
    }

    #[test]
    fn status_lines_give_kib() {
        let status = "Name:\tjetrun\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_has_a_stat_and_memory() {
        assert!(cpu_of(std::process::id()).is_some());
        assert!(memory_kib(std::process::id(), "VmRSS").unwrap() > 0);
    }
}
