//! voxgate's metrics as monitoring sees them: a real Prometheus server (Debian's `prometheus`)
//! scrapes the running binary over loopback and finds a SIPp call counted, with every family's
//! type as voxgate declares it; and `promtool check metrics` (Prometheus's own linter: naming,
//! units, `_total` on counters, help texts) finds nothing to say about any family.
// Integration tests measure deadlines with the wall clock; the sans-IO rule is for src/.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::prometheus::{promtool_check, Prometheus};
use common::{Gateway, GatewayConfig, Sipp};
use voxgate::metrics::{Metrics, ToolResult};

/// Long enough for a few 1 s scrapes on a loaded CI machine.
const SCRAPED: Duration = Duration::from_secs(30);

/// Every family with at least one series: the primed ones as they start, the rest counted once
/// through the API the gateway uses.
fn every_family_with_a_series() -> Metrics {
    let metrics = Metrics::new();
    metrics.count_sip("INVITE", true);
    metrics.prime_inbound_auth(["pbx"]);
    metrics.registration.prime("carrier");
    metrics
        .transfer
        .record("operator", "refer", "success", Duration::from_secs(3));
    metrics.realtime.count_tool("end_call", ToolResult::Ok);
    metrics.realtime.count_error("rate_limit_exceeded");
    metrics
}

#[test]
fn promtool_finds_nothing_to_say_about_any_metric() {
    let metrics = every_family_with_a_series();
    let exposition = metrics.render();
    for family in metrics.catalogue() {
        assert!(
            exposition.contains(&format!("# TYPE {} {}\n", family.name, family.kind)),
            "{} has no series here: count it once in every_family_with_a_series",
            family.name
        );
    }
    let (passed, printed) = promtool_check(&exposition);
    assert!(
        passed && printed.trim().is_empty(),
        "promtool check metrics:\n{printed}\non:\n{exposition}"
    );
}

#[test]
fn a_prometheus_server_scrapes_voxgate_and_sees_the_call_counted() {
    // A speech agent no call is routed to: its tool's and destination's series are exported
    // at 0 from start-up all the same.
    let gateway = Gateway::start_with(GatewayConfig {
        extra: "[[agents]]\nname = \"assistant\"\nkind = \"openai\"\nmodel = \"gpt-realtime\"\n\
                [[agents.tools]]\nname = \"lookup_order\"\ndescription = \"Finds an order\"\n\
                url = \"http://127.0.0.1:9/orders\"\n\
                [[agents.transfers]]\nname = \"sales\"\nuri = \"sip:sales@127.0.0.1\"\n\
                description = \"Sales\"\nmethod = \"refer_then_bridge\"\n\n\
                [realtime]\nurl = \"ws://127.0.0.1:9/v1/realtime\"\n"
            .into(),
        env: vec![("OPENAI_API_KEY".to_owned(), "sk-test-key".to_owned())],
        ..GatewayConfig::default()
    });
    let prometheus = Prometheus::start(gateway.metrics_addr());
    let up = prometheus.wait_query("up{job=\"voxgate\"}", SCRAPED, |v| v == 1.0);
    assert_eq!(up, [1.0], "voxgate's target is up:\n{}", prometheus.log());

    let completed = "voxgate_calls_total{job=\"voxgate\",result=\"completed\"}";
    let before = prometheus.wait_query(completed, SCRAPED, |v| v == 0.0);
    assert_eq!(
        before,
        [0.0],
        "the primed series is scraped before any call"
    );
    for (query, series) in [
        // ok, http_error, timeout, error
        ("voxgate_tool_calls_total{tool=\"lookup_order\"} == 0", 4.0),
        // REFER: 5 outcomes, then the bridge: 4
        ("voxgate_transfers_total{destination=\"sales\"} == 0", 9.0),
    ] {
        let counted = prometheus.wait_query(&format!("count({query})"), SCRAPED, |v| v == series);
        assert_eq!(counted, [series], "{query}");
    }
    Sipp::new("uac_basic.xml", gateway.sip_addr())
        .pause_ms(500)
        .run()
        .assert_success();
    let after = prometheus.wait_query(completed, SCRAPED, |v| v == 1.0);
    assert_eq!(after, [1.0], "the call is counted once");
    let invites = prometheus.wait_query(
        "voxgate_sip_messages_total{method=\"INVITE\",direction=\"in\"}",
        SCRAPED,
        |v| v >= 1.0,
    );
    assert_eq!(invites, [1.0], "one INVITE in");
    // The call's INVITE and BYE transactions wait 32 s for retransmissions (UDP); the scrape
    // comes well within that.
    let held = prometheus.wait_query(
        "voxgate_sip_transactions{job=\"voxgate\",role=\"server\"}",
        SCRAPED,
        |v| v >= 1.0,
    );
    assert!(
        held.len() == 1 && held[0] >= 1.0,
        "server transactions {held:?}"
    );

    // The process's own figures, as every client library names them: what the usual
    // dashboards graph. CPU time is finer than whole seconds (the call took a fraction of one),
    // and the start time is this gateway's.
    let version = format!(
        "voxgate_build_info{{job=\"voxgate\",version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        prometheus.wait_query(&version, SCRAPED, |v| v == 1.0),
        [1.0]
    );
    let cpu = prometheus.wait_query("process_cpu_seconds_total{job=\"voxgate\"}", SCRAPED, |v| {
        v > 0.0
    });
    assert!(
        cpu.len() == 1 && cpu[0] > 0.0 && cpu[0].fract() != 0.0,
        "CPU seconds {cpu:?}"
    );
    let descriptors = prometheus.wait_query(
        "process_open_fds{job=\"voxgate\"} < process_max_fds{job=\"voxgate\"}",
        SCRAPED,
        |v| v > 0.0,
    );
    assert_eq!(descriptors.len(), 1, "open descriptors below the limit");
    let age = prometheus.wait_query(
        "time() - process_start_time_seconds{job=\"voxgate\"}",
        SCRAPED,
        |v| v >= 0.0,
    );
    assert!(
        age.len() == 1 && (0.0..120.0).contains(&age[0]),
        "started {age:?} s ago"
    );
    let resident = prometheus.wait_query(
        "process_resident_memory_bytes{job=\"voxgate\"}",
        SCRAPED,
        |v| v > 0.0,
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.pid()))
        .expect("the gateway's status");
    let rss_kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    assert!(
        resident.len() == 1 && (resident[0] / 1024.0 / rss_kb - 1.0).abs() < 0.5,
        "resident {resident:?} bytes, the kernel says {rss_kb} kB"
    );

    // Prometheus's view of each family's type is the one voxgate declares.
    let metadata = prometheus
        .api("/api/v1/metadata")
        .expect("the metadata API answers");
    let scraped = metadata["data"]
        .as_object()
        .expect("metadata by metric name");
    let mut seen = 0;
    for family in Metrics::new().catalogue() {
        let Some(entries) = scraped.get(&family.name) else {
            continue; // no series until it is first counted (a labelled counter)
        };
        seen += 1;
        assert_eq!(
            entries[0]["type"], family.kind,
            "{}: Prometheus's metadata {entries}",
            family.name
        );
        assert_eq!(entries[0]["help"], family.help.as_str(), "{}", family.name);
    }
    assert!(seen >= 15, "only {seen} families scraped: {metadata}");
    assert!(
        !prometheus.log().contains("level=error"),
        "Prometheus logged errors:\n{}",
        prometheus.log()
    );
}
