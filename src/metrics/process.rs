//! The process's own figures, under the names every Prometheus client library gives them
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds` …), so the
//! usual dashboards and alerts (CPU, memory, descriptors near the limit, restarts) work on
//! voxgate unchanged.
//!
//! Why not the prometheus crate's `process` feature: it keeps CPU time in whole seconds (an
//! integer counter), so `rate(process_cpu_seconds_total[1m])` of a gateway using a third of a
//! core moves in steps of 1/60 of a core, and per-call CPU cannot be read off it. Here CPU time
//! comes from `getrusage` (microseconds), memory and threads from `/proc/self/status`, the
//! descriptors from `/proc/self/fd` and their limit from `getrlimit`. The figures are read at
//! each scrape; one that cannot be read keeps its last value.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use nix::sys::resource::{getrlimit, getrusage, Resource, UsageWho};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, Opts};

/// `process_*` metrics of the running process.
#[derive(Clone)]
pub struct ProcessCollector {
    inner: Arc<Inner>,
}

struct Inner {
    descs: Vec<Desc>,
    cpu_seconds: Counter,
    open_fds: IntGauge,
    max_fds: IntGauge,
    virtual_bytes: IntGauge,
    resident_bytes: IntGauge,
    start_time_seconds: Gauge,
    threads: IntGauge,
    /// Two scrapes at once must not both add the same CPU time.
    collecting: Mutex<()>,
}

/// What `/proc/self/status` says of memory and threads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// `VmSize`, in bytes.
    pub virtual_bytes: Option<u64>,
    /// `VmRSS`, in bytes.
    pub resident_bytes: Option<u64>,
    /// `Threads`.
    pub threads: Option<u64>,
}

impl Status {
    /// Reads the lines it knows from the text of `/proc/<pid>/status` (sizes are in kB there).
    pub fn parse(text: &str) -> Status {
        let mut status = Status::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let mut words = value.split_whitespace();
            let number = words.next().and_then(|word| word.parse::<u64>().ok());
            let in_bytes = match words.next() {
                Some("kB") => number.and_then(|kb| kb.checked_mul(1024)),
                Some(_) => None,
                None => number,
            };
            match key {
                "VmSize" => status.virtual_bytes = in_bytes,
                "VmRSS" => status.resident_bytes = in_bytes,
                "Threads" => status.threads = number,
                _ => {}
            }
        }
        status
    }
}

impl ProcessCollector {
    /// The collector for this process; its start time is taken as now (create it at start-up).
    pub fn for_self() -> ProcessCollector {
        let cpu_seconds = Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds",
        )
        .expect("valid metric definition");
        let open_fds = IntGauge::new("process_open_fds", "Number of open file descriptors")
            .expect("valid metric definition");
        let max_fds = IntGauge::new(
            "process_max_fds",
            "Maximum number of open file descriptors (the soft limit)",
        )
        .expect("valid metric definition");
        let virtual_bytes = IntGauge::new(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
        )
        .expect("valid metric definition");
        let resident_bytes = IntGauge::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
        )
        .expect("valid metric definition");
        let start_time_seconds = Gauge::with_opts(Opts::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
        ))
        .expect("valid metric definition");
        let threads = IntGauge::new("process_threads", "Number of OS threads in the process")
            .expect("valid metric definition");
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        start_time_seconds.set(started.as_secs_f64());
        let mut descs = Vec::new();
        for collector in [
            &cpu_seconds as &dyn Collector,
            &open_fds,
            &max_fds,
            &virtual_bytes,
            &resident_bytes,
            &start_time_seconds,
            &threads,
        ] {
            descs.extend(collector.desc().into_iter().cloned());
        }
        ProcessCollector {
            inner: Arc::new(Inner {
                descs,
                cpu_seconds,
                open_fds,
                max_fds,
                virtual_bytes,
                resident_bytes,
                start_time_seconds,
                threads,
                collecting: Mutex::new(()),
            }),
        }
    }

    /// Reads the process's figures into the metrics.
    fn refresh(&self) {
        let inner = &self.inner;
        if let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) {
            let seconds =
                |time: nix::sys::time::TimeVal| time.tv_sec() as f64 + time.tv_usec() as f64 / 1e6;
            let total = seconds(usage.user_time()) + seconds(usage.system_time());
            let counted = inner.cpu_seconds.get();
            if total > counted {
                inner.cpu_seconds.inc_by(total - counted);
            }
        }
        if let Some(open) = open_fds() {
            inner.open_fds.set(open);
        }
        if let Ok((soft, _hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            inner.max_fds.set(i64::try_from(soft).unwrap_or(i64::MAX));
        }
        if let Ok(text) = std::fs::read_to_string("/proc/self/status") {
            let status = Status::parse(&text);
            let set = |gauge: &IntGauge, value: Option<u64>| {
                if let Some(value) = value {
                    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
                }
            };
            set(&inner.virtual_bytes, status.virtual_bytes);
            set(&inner.resident_bytes, status.resident_bytes);
            set(&inner.threads, status.threads);
        }
    }
}

/// The process's open descriptors, not counting the one that lists them.
fn open_fds() -> Option<i64> {
    let listed = std::fs::read_dir("/proc/self/fd").ok()?.count();
    i64::try_from(listed.saturating_sub(1)).ok()
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.descs.iter().collect()
    }

    /// Every family, always in the order of [`Collector::desc`].
    fn collect(&self) -> Vec<MetricFamily> {
        let inner = &self.inner;
        let _one_at_a_time = inner
            .collecting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.refresh();
        let mut families = Vec::with_capacity(inner.descs.len());
        families.extend(inner.cpu_seconds.collect());
        families.extend(inner.open_fds.collect());
        families.extend(inner.max_fds.collect());
        families.extend(inner.virtual_bytes.collect());
        families.extend(inner.resident_bytes.collect());
        families.extend(inner.start_time_seconds.collect());
        families.extend(inner.threads.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_memory_and_threads_from_the_status_text() {
        let text = "Name:\tvoxgate\nState:\tS (sleeping)\nVmPeak:\t  999 kB\n\
                    VmSize:\t  1200 kB\nVmRSS:\t     300 kB\nThreads:\t7\nSigQ:\t0/31\n";
        assert_eq!(
            Status::parse(text),
            Status {
                virtual_bytes: Some(1200 * 1024),
                resident_bytes: Some(300 * 1024),
                threads: Some(7),
            }
        );
        // A kernel thread's status has no Vm lines; odd units and garbage are not guessed at.
        assert_eq!(
            Status::parse("VmRSS:\t12 MB\nThreads:\tmany\nnonsense\n"),
            Status::default()
        );
    }

    #[test]
    fn exports_this_process_with_cpu_time_finer_than_seconds() {
        let collector = ProcessCollector::for_self();
        // Burn a little CPU so the counter has something below a second to show.
        let mut spin = 0u64;
        for i in 0..2_000_000u64 {
            spin = spin.wrapping_add(i * i);
        }
        std::hint::black_box(spin);
        let families = collector.collect();
        let names: Vec<&str> = families.iter().map(|family| family.name()).collect();
        let described: Vec<&str> = collector
            .desc()
            .iter()
            .map(|desc| desc.fq_name.as_str())
            .collect();
        assert_eq!(names, described, "one family per description, in order");
        let value = |name: &str| {
            let family = families
                .iter()
                .find(|family| family.name() == name)
                .expect("exported");
            let metric = &family.get_metric()[0];
            match family.get_field_type() {
                prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
                _ => metric.get_gauge().get_value(),
            }
        };
        let cpu = value("process_cpu_seconds_total");
        assert!(cpu > 0.0 && cpu.fract() != 0.0, "CPU seconds {cpu}");
        assert!(
            value("process_open_fds") >= 3.0,
            "stdin, stdout, stderr at least"
        );
        assert!(value("process_max_fds") >= value("process_open_fds"));
        let resident = value("process_resident_memory_bytes");
        assert!(resident > 1e6 && resident <= value("process_virtual_memory_bytes"));
        assert!(value("process_threads") >= 1.0);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(started <= now && now - started < 60.0, "{started} vs {now}");
        // The counter only ever grows, also across scrapes.
        let again = collector.collect();
        let later = again[0].get_metric()[0].get_counter().get_value();
        assert!(later >= cpu);
    }
}
