//! CPU time from `/proc`: of this process, and of server processes with their descendants.
//!
//! A server is given as root pids (`--server-pid`). A [`TreeSnapshot`] reads every
//! `/proc/*/stat` once, follows parent pids down from the roots, and keeps each process's
//! `utime + stime` and `cutime + cstime` (children it reaped), keyed by pid and start time so a
//! reused pid is not mistaken for the same process. [`TreeSnapshot::cpu_ticks_since`] then
//! counts, for processes present at both ends, the growth of both sums; for processes started
//! during the window, all of their time. A process that exits during the window is counted
//! through its parent's `cutime + cstime` once reaped, with the CPU it used before the window
//! (an over-count); one that exits unreaped, or whose parent is outside the tree, is missed.

use anyhow::{Context, bail};
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

/// Clock ticks per second: `getconf CLK_TCK`, asked once; 100 if that fails.
pub(crate) fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|&ticks| ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// The fields of `/proc/PID/stat` this module uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    pid: u32,
    ppid: u32,
    /// `utime + stime`, ticks.
    own: u64,
    /// `cutime + cstime`, ticks.
    children: u64,
    /// Start time after boot, ticks.
    start: u64,
}

/// Parses `/proc/PID/stat`; `None` if it is not in the expected format.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let (pid, rest) = text.split_once(" (")?;
    // The command name may hold spaces and parentheses: the fields resume after the last ')'.
    let (_, fields) = rest.rsplit_once(") ")?;
    let mut fields = fields.split_ascii_whitespace();
    // Fields 3.. (1-based): state ppid pgrp session tty tpgid flags minflt cminflt majflt
    // cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime.
    let mut nth = |n: usize| fields.nth(n)?.parse::<u64>().ok();
    let ppid = nth(1)?;
    let utime = nth(9)?;
    let stime = nth(0)?;
    let cutime = nth(0)?;
    let cstime = nth(0)?;
    let start = nth(4)?;
    Some(ProcStat {
        pid: pid.trim().parse().ok()?,
        ppid: u32::try_from(ppid).ok()?,
        own: utime + stime,
        children: cutime + cstime,
        start,
    })
}

fn read_stat(path: &str) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// This process's `utime + stime`, in ticks.
pub(crate) fn self_ticks() -> anyhow::Result<u64> {
    let stat = read_stat("/proc/self/stat").context("cannot read /proc/self/stat")?;
    Ok(stat.own)
}

/// CPU counters of a set of processes: the roots and all their descendants at one instant.
#[derive(Debug, Clone, Default)]
pub(crate) struct TreeSnapshot {
    /// By (pid, start time): (own, children) ticks.
    procs: HashMap<(u32, u64), (u64, u64)>,
}

impl TreeSnapshot {
    /// Reads `/proc` for `roots` and their descendants. Fails if a root does not exist.
    pub(crate) fn take(roots: &[u32]) -> anyhow::Result<Self> {
        let all: Vec<ProcStat> = std::fs::read_dir("/proc")
            .context("cannot list /proc")?
            .filter_map(Result::ok)
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter_map(|entry| read_stat(&format!("{}/stat", entry.path().display())))
            .collect();
        Self::from_stats(roots, &all)
    }

    fn from_stats(roots: &[u32], all: &[ProcStat]) -> anyhow::Result<Self> {
        let mut children: HashMap<u32, Vec<&ProcStat>> = HashMap::new();
        for stat in all {
            children.entry(stat.ppid).or_default().push(stat);
        }
        let mut procs = HashMap::new();
        let mut seen = HashSet::new();
        let mut queue = Vec::new();
        for &root in roots {
            match all.iter().find(|s| s.pid == root) {
                Some(stat) => queue.push(stat),
                None => bail!("--server-pid {root}: no such process"),
            }
        }
        while let Some(stat) = queue.pop() {
            if !seen.insert(stat.pid) {
                continue;
            }
            procs.insert((stat.pid, stat.start), (stat.own, stat.children));
            if let Some(kids) = children.get(&stat.pid) {
                queue.extend(kids.iter().copied());
            }
        }
        Ok(Self { procs })
    }

    /// How many processes the snapshot holds.
    pub(crate) fn processes(&self) -> usize {
        self.procs.len()
    }

    /// CPU ticks the processes of `self` used since `before` (see the module doc).
    pub(crate) fn cpu_ticks_since(&self, before: &Self) -> u64 {
        self.procs
            .iter()
            .map(|(key, &(own, children))| match before.procs.get(key) {
                Some(&(own0, children0)) => (own + children).saturating_sub(own0 + children0),
                None => own + children,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(pid: u32, ppid: u32, own: u64, children: u64, start: u64) -> ProcStat {
        ProcStat {
            pid,
            ppid,
            own,
            children,
            start,
        }
    }

    #[test]
    fn parses_a_stat_line_with_an_awkward_name() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    150 25 7 3 20 0 4 0 987654 10000 100 18446744073709551615";
        assert_eq!(parse_stat(line), Some(stat(4242, 1, 175, 10, 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_itself() {
        assert!(read_stat("/proc/self/stat").is_some());
        assert!(ticks_per_second() > 0.0);
    }

    #[test]
    fn counts_descendants_new_processes_and_reaped_children() {
        let before = [
            stat(10, 1, 100, 0, 5),
            stat(11, 10, 50, 0, 6),
            stat(12, 11, 10, 0, 7),
            stat(20, 1, 999, 0, 8), // not in the tree
        ];
        let after = [
            stat(10, 1, 110, 40, 5), // reaped children worth 40 ticks
            stat(11, 10, 70, 0, 6),
            stat(13, 11, 5, 0, 9),  // started during the window
            stat(12, 11, 1, 0, 99), // pid 12 reused: a new process
            stat(20, 1, 2000, 0, 8),
        ];
        let t0 = TreeSnapshot::from_stats(&[10], &before).unwrap();
        let t1 = TreeSnapshot::from_stats(&[10], &after).unwrap();
        assert_eq!(t0.processes(), 3);
        assert_eq!(t1.processes(), 4);
        assert_eq!(t1.cpu_ticks_since(&t0), 10 + 40 + 20 + 5 + 1);
        assert!(TreeSnapshot::from_stats(&[77], &before).is_err());
    }
}
