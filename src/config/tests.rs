use super::*;

const GOOD: &str = r#"version: 1
threads: 1
lb:
  listen: ["127.0.0.1:8080"]
  algorithm: weighted
  upstreams:
    - { name: s1, addr: "127.0.0.1:9001", weight: 5 }
    - name: s2
      addr: "127.0.0.1:9002"
      weight: 3
  timeouts: { connect: 500ms, read: 10s }
dashboard:
  listen: "127.0.0.1:5000"
"#;

fn errors(text: &str) -> Vec<String> {
    match Config::parse(text) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
    }
}

fn one_error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:?}");
    e[0].clone()
}

#[test]
fn accepts_a_good_file_and_fills_defaults() {
    let (c, server) = Config::parse(GOOD).unwrap();
    assert_eq!(server.threads, 1);
    assert_eq!(c.lb.pools[0].algorithm, Algorithm::Weighted);
    assert_eq!(c.lb.pools[0].upstreams.len(), 2);
    assert_eq!(c.lb.pools[0].upstreams[1].weight, 3);
    assert_eq!(c.lb.timeouts.connect, Duration::from_millis(500));
    assert_eq!(c.lb.pools[0].retries, 1);
    assert_eq!(c.lb.pools[0].health_check.path, "/health");
    assert_eq!(c.lb.pools[0].health_check.interval, Duration::from_secs(5));
    assert_eq!(c.lb.pools[0].circuit_breaker.fail_threshold, 3);
    assert_eq!(
        c.lb.pools[0].circuit_breaker.failure_status,
        [502, 503, 504]
    );
    assert_eq!(c.lb.pools[0].sticky.mode, StickyMode::Off);
    assert_eq!(c.lb.pools[0].sticky.max_age, Duration::from_secs(3600));
    assert_eq!(c.dashboard.admin_token, None);
    assert!(c.demo.is_none());
    assert_eq!(c.lb.limits.max_header_bytes, 32 * 1024);
    assert_eq!(c.lb.limits.max_body, 10 * 1024 * 1024);
    assert_eq!(c.lb.limits.keepalive_timeout, Duration::from_secs(60));
}

#[test]
fn limits_take_sizes_as_numbers_or_text() {
    let text = GOOD.replace(
        "  timeouts:",
        "  limits: { max_header_bytes: 8192, max_body: 1MB }\n  timeouts:",
    );
    let (c, _) = Config::parse(&text).unwrap();
    assert_eq!(c.lb.limits.max_header_bytes, 8192);
    assert_eq!(c.lb.limits.max_body, 1_000_000);
    let bad = GOOD.replace(
        "  timeouts:",
        "  limits: { max_body: lots, max_header_bytes: 0 }\n  timeouts:",
    );
    let e = errors(&bad);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e.iter()
            .any(|p| p.starts_with("lb.limits.max_body: `lots` is not a size")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|p| p.starts_with("lb.limits.max_header_bytes: must be greater than zero")),
        "{e:?}"
    );
}

#[test]
fn the_shipped_config_is_valid() {
    let text = include_str!("../../conf/lb.yaml");
    let (c, _) = Config::parse(text).unwrap();
    assert!(c.demo.is_some());
    // The second example: two demo pools behind routes.
    let text = include_str!("../../conf/routes.yaml");
    let (c, _) = Config::parse(text).unwrap_or_else(|e| panic!("{e}"));
    let pools: Vec<&str> = c.lb.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pools, ["default", "web", "api"]);
    assert_eq!(c.lb.routes.len(), 3);
    assert_eq!(c.demo.unwrap().backends.len(), 4);
}

#[test]
fn zero_weight_names_key_and_line() {
    let text = GOOD.replace("weight: 3", "weight: 0");
    assert_eq!(
        one_error(&text),
        "lb.upstreams[1].weight: must be at least 1 (line 10)"
    );
}

#[test]
fn negative_weight_is_refused() {
    let text = GOOD.replace("weight: 5", "weight: -2");
    assert_eq!(
        one_error(&text),
        "lb.upstreams[0].weight: must be at least 1 (line 7)"
    );
}

#[test]
fn duplicate_names_are_refused() {
    let text = GOOD.replace("name: s2", "name: s1");
    assert_eq!(
        one_error(&text),
        "lb.upstreams[1].name: duplicate upstream name `s1` (line 8)"
    );
}

#[test]
fn empty_upstream_list_is_refused() {
    let text = "lb:\n  upstreams: []\n";
    assert_eq!(
        one_error(text),
        "lb.upstreams: needs at least one upstream (or lb.etcd to supply them) (line 2)"
    );
}

#[test]
fn bad_address_is_refused() {
    let text = GOOD.replace("127.0.0.1:9002", "127.0.0.1");
    let e = one_error(&text);
    assert!(
        e.starts_with("lb.upstreams[1].addr: `127.0.0.1` is not an address"),
        "{e}"
    );
    assert!(e.ends_with("(line 9)"), "{e}");
}

#[test]
fn unknown_algorithm_is_refused_with_its_line() {
    let text = GOOD.replace("algorithm: weighted", "algorithm: fastest");
    let e = one_error(&text);
    assert!(
        e.starts_with(
            "lb.algorithm: `fastest` is not one of `round_robin`, `weighted`, `dynamic`, `p2c`"
        ),
        "{e}"
    );
    assert!(e.ends_with("(line 5)"), "{e}");
}

#[test]
fn unknown_key_in_our_section_is_refused() {
    let text = GOOD.replace("timeouts: {", "timeout: {");
    let e = one_error(&text);
    assert!(e.starts_with("lb: unknown field `timeout`"), "{e}");
    assert!(e.ends_with("(line 11)"), "{e}");
}

#[test]
fn unknown_top_level_key_is_refused() {
    let text = format!("{GOOD}dashbaord:\n  listen: x\n");
    assert_eq!(
        one_error(&text),
        "dashbaord: unknown key, did you mean `dashboard`? (line 14)"
    );
    let text = format!("{GOOD}zzz:\n  listen: x\n");
    assert_eq!(
        one_error(&text),
        "zzz: unknown key (ours are lb, dashboard, demo; the rest are Pingora's server keys) (line 14)"
    );
}

#[test]
fn bad_duration_is_refused() {
    let text = GOOD.replace("read: 10s", "read: 10 parsecs");
    let e = one_error(&text);
    assert!(
        e.starts_with("lb.timeouts.read: `10 parsecs` is not a duration"),
        "{e}"
    );
    assert!(e.ends_with("(line 11)"), "{e}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let text = GOOD.replace("weight: 3", "weight: heavy");
    let e = one_error(&text);
    assert!(
        e.starts_with("lb.upstreams[1].weight: \"heavy\" is not a whole number"),
        "{e}"
    );
    assert!(e.ends_with("(line 10)"), "{e}");
}

#[test]
fn several_problems_are_all_reported_in_file_order() {
    let text = GOOD
        .replace("weight: 3", "weight: 0")
        .replace("name: s2", "name: s1")
        .replace("connect: 500ms", "connect: soon");
    let e = errors(&text);
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(e[0].contains("line 8"), "{e:?}");
    assert!(e[1].contains("line 10"), "{e:?}");
    assert!(e[2].contains("line 11"), "{e:?}");
}

#[test]
fn pingora_keys_are_checked_too() {
    let text = GOOD.replace("threads: 1", "threads: many");
    let e = one_error(&text);
    assert!(e.starts_with("threads: invalid type"), "{e}");
    assert!(e.ends_with("(line 2)"), "{e}");
}

#[test]
fn yaml_syntax_error_names_the_line() {
    let text = GOOD.replace("  algorithm: weighted", "  algorithm: [weighted");
    let e = errors(&text).join("\n");
    assert!(e.contains("line"), "{e}");
}

#[test]
fn short_secret_and_bad_cidr_are_refused() {
    let text = GOOD.replace(
        "  timeouts:",
        "  trusted_proxies: [\"10.0.0.0/8\", \"not-a-net\"]\n  sticky: { mode: cookie, secret: short }\n  timeouts:",
    );
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with("lb.trusted_proxies[1]: `not-a-net`"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("lb.sticky.secret: must be at least 16 bytes"),
        "{e:?}"
    );
}

#[test]
fn unknown_sticky_mode_is_refused() {
    let text = GOOD.replace("  timeouts:", "  sticky: { mode: sometimes }\n  timeouts:");
    let e = one_error(&text);
    assert!(
        e.starts_with("lb.sticky.mode: `sometimes` is not one of `off`, `cookie`, `ip`"),
        "{e}"
    );
}

#[test]
fn sub_second_connection_timers_are_refused_by_key_and_line() {
    let text = GOOD.replace(
        "  timeouts:",
        "  limits:\n    header_timeout: 1500ms\n    keepalive_timeout: 2s\n  timeouts:",
    );
    let e = one_error(&text);
    assert!(
        e.starts_with("lb.limits.header_timeout: `1500ms` is not a whole number of seconds"),
        "{e}"
    );
    assert!(e.ends_with("(line 12)"), "{e}");
}

#[test]
fn the_old_place_of_trusted_proxies_names_the_new_one() {
    let text = GOOD.replace(
        "  timeouts:",
        "  sticky: { trusted_proxies: [\"10.0.0.0/8\"] }\n  timeouts:",
    );
    let e = one_error(&text);
    assert!(
        e.starts_with("lb.sticky.trusted_proxies: has moved to lb.trusted_proxies"),
        "{e}"
    );
    assert!(e.ends_with("(line 11)"), "{e}");
}

#[test]
fn dns_and_srv_entries_become_discovered_groups() {
    let text = GOOD.replace(
        "  timeouts:",
        "    - { name: api, dns: \"api.internal:8080\", weight: 2 }\n    - { name: grpc, srv: \"_grpc._tcp.api.consul\" }\n  discovery: { resolvers: [\"10.0.0.2:53\"], refresh: 2s }\n  timeouts:",
    );
    let (c, _) = Config::parse(&text).unwrap();
    assert_eq!(c.lb.pools[0].upstreams.len(), 2);
    assert_eq!(
        c.lb.pools[0].discovered,
        [
            DiscoveredGroup {
                name: "api".into(),
                source: DiscoverySource::Dns {
                    host: "api.internal".into(),
                    port: 8080
                },
                weight: 2,
                protocol: Default::default(),
            },
            DiscoveredGroup {
                name: "grpc".into(),
                source: DiscoverySource::Srv {
                    name: "_grpc._tcp.api.consul".into()
                },
                weight: 1,
                protocol: Default::default(),
            },
        ]
    );
    assert_eq!(c.lb.discovery.resolvers, ["10.0.0.2:53".parse().unwrap()]);
    assert_eq!(c.lb.discovery.refresh, Duration::from_secs(2));
    let (c, _) = Config::parse(GOOD).unwrap();
    assert_eq!(c.lb.discovery.refresh, Duration::from_secs(5));
    assert!(c.lb.discovery.resolvers.is_empty());
}

#[test]
fn a_discovery_entry_is_refused_by_key_and_line() {
    let bad = GOOD.replace(
        "  timeouts:",
        "    - { name: both, addr: \"127.0.0.1:1\", dns: \"a.internal:80\" }\n    - { name: noport, dns: \"a.internal\" }\n    - { name: \"a@b\", srv: \"_x._tcp.y\" }\n  discovery: { resolvers: [\"ns.internal\"], refresh: 10ms }\n  timeouts:",
    );
    let e = errors(&bad);
    assert_eq!(e.len(), 5, "{e:?}");
    assert!(
        e[0].starts_with("lb.upstreams[2]: needs exactly one of addr")
            && e[0].ends_with("(line 11)"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("lb.upstreams[3].dns: `a.internal` is not host:port"),
        "{e:?}"
    );
    assert!(
        e[2].starts_with("lb.upstreams[4].name: `a@b` may hold only"),
        "{e:?}"
    );
    assert!(
        e[3].starts_with("lb.discovery.resolvers[0]: `ns.internal` is not a name server address"),
        "{e:?}"
    );
    assert!(
        e[4].starts_with("lb.discovery.refresh: must be at least 100ms"),
        "{e:?}"
    );
}

#[test]
fn slow_start_is_off_by_default_and_takes_a_duration() {
    let (c, _) = Config::parse(GOOD).unwrap();
    assert!(c.lb.pools[0].slow_start.is_zero());
    let on = GOOD.replace("  timeouts:", "  slow_start: 30s\n  timeouts:");
    assert_eq!(
        Config::parse(&on).unwrap().0.lb.pools[0].slow_start,
        Duration::from_secs(30)
    );
    let bad = GOOD.replace("  timeouts:", "  slow_start: soon\n  timeouts:");
    assert!(one_error(&bad).starts_with("lb.slow_start: `soon` is not a duration"));
}

#[test]
fn concurrency_limits_are_off_by_default_and_a_pool_inherits_them() {
    let (c, _) = Config::parse(GOOD).unwrap();
    let off = c.lb.pools[0].concurrency;
    assert!(!off.adaptive);
    assert_eq!(off.queue_timeout, Duration::from_millis(10));
    let on = GOOD.replace(
        "  timeouts:",
        "  concurrency: { adaptive: true, queue_timeout: 25ms }\n  pools:\n    api:\n      \
         concurrency: { queue_timeout: 0s }\n      upstreams: [{ name: a, addr: \"127.0.0.1:9003\" }]\n  \
         routes: [{ pool: api }]\n  timeouts:",
    );
    let pools = Config::parse(&on).unwrap().0.lb.pools;
    let api = pools.iter().find(|p| p.name == "api").unwrap();
    assert!(pools[0].concurrency.adaptive && api.concurrency.adaptive);
    assert_eq!(
        pools[0].concurrency.queue_timeout,
        Duration::from_millis(25)
    );
    assert!(api.concurrency.queue_timeout.is_zero(), "its own: no queue");
    let bad = GOOD.replace(
        "  timeouts:",
        "  concurrency: { queue_timeout: soon }\n  timeouts:",
    );
    assert!(
        one_error(&bad).starts_with("lb.concurrency.queue_timeout: `soon` is not a duration"),
        "{}",
        one_error(&bad)
    );
    let unknown = GOOD.replace(
        "  timeouts:",
        "  concurrency: { adaptve: true }\n  timeouts:",
    );
    assert!(
        one_error(&unknown).contains("adaptive"),
        "{}",
        one_error(&unknown)
    );
}

#[test]
fn proxy_protocol_takes_the_peers_trusted_to_send_it() {
    let (c, _) = Config::parse(GOOD).unwrap();
    assert!(c.lb.proxy_protocol.is_none());
    let on = GOOD.replace(
        "  timeouts:",
        "  proxy_protocol: { trusted: [\"10.0.0.0/8\", \"192.0.2.7\"] }\n  timeouts:",
    );
    let trusted = Config::parse(&on).unwrap().0.lb.proxy_protocol.unwrap();
    assert_eq!(trusted.len(), 2);
    assert!(trusted[1].contains(&"192.0.2.7".parse::<std::net::IpAddr>().unwrap()));
    let empty = GOOD.replace(
        "  timeouts:",
        "  proxy_protocol: { trusted: [] }\n  timeouts:",
    );
    assert!(one_error(&empty).starts_with("lb.proxy_protocol.trusted: list the proxies"));
    let bad = GOOD.replace(
        "  timeouts:",
        "  proxy_protocol: { trusted: [nlb] }\n  timeouts:",
    );
    assert!(
        one_error(&bad).starts_with("lb.proxy_protocol.trusted[0]: `nlb` is not a CIDR"),
        "{}",
        one_error(&bad)
    );
}

#[test]
fn a_misspelt_key_does_not_hide_the_other_problems_and_the_key_meant_is_named() {
    let text = GOOD
        .replace("algorithm: weighted", "algoritm: weighted")
        .replace("weight: 3", "weight: 0")
        .replace(
            "{ name: s1, addr: \"127.0.0.1:9001\", weight: 5 }",
            "{ name: s1, addr: \"127.0.0.1:9001\", wieght: 5 }",
        );
    let e = errors(&text);
    assert_eq!(
        e,
        [
            "lb: unknown field `algoritm`, did you mean `algorithm`? (line 5)",
            "lb.upstreams[0]: unknown field `wieght`, did you mean `weight`? (line 7)",
            "lb.upstreams[1].weight: must be at least 1 (line 10)",
        ],
        "{e:?}"
    );
    let far = GOOD.replace("algorithm: weighted", "colour: blue");
    assert!(
        one_error(&far).starts_with("lb: unknown field `colour`, expected one of `listen`"),
        "{far}"
    );
}

#[test]
fn etcd_may_supply_every_upstream_and_its_keys_are_checked() {
    let (c, _) = Config::parse(
        "lb:\n  upstreams: []\n  etcd: { endpoints: [\"127.0.0.1:2379\"], id: lb-1 }\n",
    )
    .unwrap();
    let etcd = c.lb.etcd.unwrap();
    assert_eq!(
        (etcd.prefix.as_str(), etcd.id.as_str()),
        ("/hybrid-lb/", "lb-1")
    );
    assert!(c.lb.pools[0].upstreams.is_empty());
    let e = errors(
        "lb:\n  upstreams: []\n  etcd:\n    endpoints: [\"nowhere\", \"https://10.0.0.1:2379\"]\n    prefix: /lb\n    username: root\n",
    );
    assert_eq!(
        e,
        [
            "lb.etcd.password: needed with lb.etcd.username (line 3)",
            "lb.etcd.endpoints[0]: `nowhere` is not host:port; write e.g. 127.0.0.1:2379 (line 4)",
            "lb.etcd.endpoints[1]: https:// needs lb.etcd.tls (at least its ca) (line 4)",
            "lb.etcd.prefix: `/lb` must end with `/`, e.g. /hybrid-lb/ (line 5)",
        ]
    );
}

#[test]
fn tls_to_etcd_needs_a_readable_ca_and_a_whole_client_pair() {
    let e = errors(
        "lb:\n  upstreams: []\n  etcd:\n    endpoints: [\"http://127.0.0.1:2379\"]\n    tls: { ca: /nonexistent/ca.pem, cert: /tmp/c.pem }\n",
    );
    assert_eq!(e.len(), 3, "{e:?}");
    assert!(
        e[0].starts_with("lb.etcd.endpoints[0]: http:// with lb.etcd.tls set"),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("lb.etcd.tls.ca: cannot read /nonexistent/ca.pem"),
        "{e:?}"
    );
    assert!(
        e[2].starts_with("lb.etcd.tls.key: needed with lb.etcd.tls.cert"),
        "{e:?}"
    );
}

#[test]
fn an_etcd_entry_is_checked_as_a_file_entry_is() {
    let u = upstream_entry(
        "s4",
        br#"{"addr": "127.0.0.1:9004", "weight": 3, "h2": true}"#,
    )
    .unwrap();
    assert_eq!((u.name.as_str(), u.weight, u.protocol.h2), ("s4", 3, true));
    assert_eq!(
        upstream_entry("s4", br#"{"addr": "127.0.0.1:1", "weight": 20000}"#).unwrap_err(),
        "weight: must be at most 10000"
    );
    // A CA path that is not a regular file is refused before it is read.
    let err = upstream_entry(
        "s4",
        br#"{"addr": "127.0.0.1:1", "tls": {"sni": "a.test", "ca": "/dev/zero"}}"#,
    )
    .unwrap_err();
    assert!(err.contains("not a regular file"), "{err}");
    assert!(upstream_entry("a@b", br#"{"addr": "127.0.0.1:1"}"#)
        .unwrap_err()
        .starts_with("name: "));
}

#[test]
fn four_mistakes_are_all_named_at_once() {
    // A value of the wrong kind no longer hides the rest of the file.
    let text = "version: 1\nthread: 1\nlb:\n  sticky: { mode: cookies }\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:9001\", weight: 0 }\n  health_check: { interval: 5 }\ndashbaord:\n  listen: \"127.0.0.1:5000\"\n";
    let e = errors(text);
    let all = e.join("\n");
    for want in [
        "thread: unknown key, did you mean `threads`? (line 2)",
        "lb.sticky.mode: `cookies` is not one of `off`, `cookie`, `ip`; did you mean `cookie`? (line 4)",
        "lb.upstreams[0].weight: must be at least 1 (line 6)",
        "lb.health_check.interval: `5` is a number where text goes (a duration needs its unit: write `5s` or `5ms`) (line 7)",
        "dashbaord: unknown key, did you mean `dashboard`? (line 8)",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    assert_eq!(e.len(), 5, "{all}");
}

#[test]
fn a_word_for_a_number_and_a_name_that_does_not_resolve_are_said_plainly() {
    let e = errors(&GOOD.replace("weight: 3", "weight: \"three\""));
    assert!(
        e[0].contains("lb.upstreams[1].weight: \"three\" is not a whole number"),
        "{e:?}"
    );
    let e = errors(&GOOD.replace("127.0.0.1:9001", "no-such-host.invalid:9001"));
    assert!(
        e[0].contains("`no-such-host.invalid` did not resolve"),
        "{e:?}"
    );
}

#[test]
fn bad_indentation_quotes_its_line() {
    let text = "lb:\n  upstreams:\n    - { name: a, addr: \"127.0.0.1:9001\" }\n   timeouts: { read: 5s }\n";
    let e = errors(text);
    assert!(e[0].contains("at `timeouts: { read: 5s }`"), "{e:?}");
    assert!(e[0].contains("indented"), "{e:?}");
}

#[test]
fn a_pinned_self_signed_ca_certificate_is_refused_with_the_way_to_make_one_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, ca: bool| {
        let mut params = rcgen::CertificateParams::new(vec!["up.internal".to_string()]).unwrap();
        params.is_ca = if ca {
            rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
        } else {
            rcgen::IsCa::ExplicitNoCa
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, cert.pem()).unwrap();
        path
    };
    let file = |ca: &std::path::Path| {
        format!(
            "lb:\n  upstreams:\n    - {{ name: a, addr: \"127.0.0.1:9443\", tls: {{ sni: up.internal, ca: \"{}\" }} }}\n",
            ca.display()
        )
    };
    let e = one_error(&file(&write("ca-true.pem", true)));
    assert!(e.starts_with("lb.upstreams[0].tls.ca: "), "{e}");
    assert!(e.contains("marked CA:TRUE"), "{e}");
    assert!(e.contains("basicConstraints=critical,CA:FALSE"), "{e}");
    Config::parse(&file(&write("ca-false.pem", false))).unwrap_or_else(|e| panic!("{e}"));
}
