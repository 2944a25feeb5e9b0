//! Process and machine figures from `/proc`.

/// `getconf CLK_TCK`: the unit of the CPU times in `/proc` (100 when it cannot be read).
pub(crate) fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (utime, stime) in clock ticks of process `pid`, all threads.
pub(crate) fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0);
    (field(14), field(15))
}

/// Resident memory of process `pid` (`VmRSS`), KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// CPU time of every process on the machine (utime + stime of each `/proc/<pid>/stat`, kernel
/// threads such as `ksoftirqd` included), in clock ticks. Each process's pair is exact (the
/// kernel scales it to the scheduler's run time), unlike the machine-wide counters of
/// `/proc/stat`, which sample the 250 Hz tick and missed most of the media threads' work once
/// their ticks ran in step with it. A process that exits within a window takes its time along.
pub(crate) fn all_processes_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .map(|pid| {
            let (user, system) = cpu_ticks(pid);
            user + system
        })
        .sum()
}

/// Children of this process whose command is `name` (SIPp), for their CPU figures.
pub(crate) fn children_named(name: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
            let parent = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            comm == name && parent == Some(me)
        })
        .collect()
}
