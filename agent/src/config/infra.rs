//! Steps of the infrastructure probes in the config — `tcp`, `dns`, `tls`, `redis`, `postgres` —
//! with the same line:col diagnostics as HTTP steps. A step is `name`, one check keyed by the
//! probe's type (`redis: { address: … }`), `capture`, `assert` and `timeout`; addresses, DSNs,
//! regexes, record types and commands written literally are checked here, templated ones at run
//! time. Assertions may only use the queries the type offers.

use std::collections::HashMap;
use std::path::PathBuf;

use patrol_probes::assert::Assertion;
use patrol_probes::infra::{dns, postgres, redis};
use patrol_probes::net::Endpoint;
use patrol_probes::net::tls::load_ca_file;
use patrol_probes::spec::{
    Check, DnsCheck, InfraStep, PostgresCheck, Protocol, RedisCheck, SslMode, TcpCheck, TlsCheck,
    TlsOptions,
};
use patrol_probes::template::{Placeholder, Template};
use saphyr::YamlData;

use super::build::{
    captured_names, check_template_at, check_templates, field, name_safe, parse_asserts,
    parse_captures, template_at,
};
use super::yaml::{Node, Walker, did_you_mean};

const TCP_KEYS: [&str; 6] = ["address", "tls", "server_name", "ca_file", "send", "expect"];
const DNS_KEYS: [&str; 4] = ["name", "type", "server", "tcp"];
const TLS_KEYS: [&str; 3] = ["address", "server_name", "ca_file"];
const REDIS_KEYS: [&str; 8] = [
    "address",
    "password",
    "username",
    "database",
    "tls",
    "server_name",
    "ca_file",
    "commands",
];
const POSTGRES_KEYS: [&str; 8] = [
    "dsn",
    "password",
    "query",
    "statement_timeout",
    "read_only",
    "sslmode",
    "server_name",
    "ca_file",
];

/// What a dns step asserts when it asserts nothing itself: the name resolved.
const DNS_DEFAULT_ASSERTS: [&str; 2] = ["rcode == \"NOERROR\"", "answers count >= 1"];

/// Parses the steps of a `protocol` probe; `vars` are the config's var names.
pub fn steps(
    w: &mut Walker<'_>,
    node: &Node<'_>,
    protocol: Protocol,
    vars: &[String],
) -> Vec<InfraStep> {
    let Some(items) = w.list(node, "steps") else {
        return Vec::new();
    };
    let kind = protocol.name();
    if items.is_empty() {
        w.error(
            node,
            "a probe needs at least one step",
            format!("add a step with a `{kind}:` check"),
        );
    }
    let captured = captured_names(w, items);
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let visible: Vec<String> = vars
            .iter()
            .cloned()
            .chain(captured[..i].iter().flatten().map(|(n, _)| n.clone()))
            .collect();
        let later: Vec<(String, String)> = captured[i..].iter().flatten().cloned().collect();
        let Some(mut step) = step(w, item, protocol, &visible, &later) else {
            continue;
        };
        let n = used.entry(step.name.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            if let Some(name_node) = field(item, "name") {
                w.error(
                    name_node,
                    format!("duplicate step name `{}`", step.name),
                    "step names must be unique within a probe",
                );
            }
            step.name = format!("{}_{}", step.name, n);
        }
        out.push(step);
    }
    out
}

fn step(
    w: &mut Walker<'_>,
    node: &Node<'_>,
    protocol: Protocol,
    visible: &[String],
    later: &[(String, String)],
) -> Option<InfraStep> {
    let kind = protocol.name();
    let queries = protocol.queries();
    let YamlData::Mapping(map) = &node.data else {
        w.error(
            node,
            format!("a {kind} step must be a mapping with a `{kind}:` check"),
            format!("write e.g. `- {}`", example(protocol)),
        );
        return None;
    };
    let mut name = None;
    let mut timeout = None;
    let mut check = None;
    let mut check_node = None;
    let mut captures = Vec::new();
    let mut assert_nodes = Vec::new();
    let mut asserted = false;
    for (k, v) in map {
        let Some(key) = w.scalar(k) else { continue };
        match key.as_str() {
            "name" => {
                if let Some(n) = w.string(v, "step name") {
                    if !name_safe(&n) {
                        w.error(
                            v,
                            format!("step name `{n}` must be letters, digits, `_` and `-`"),
                            "it becomes the `step` metric label; write e.g. users_exist",
                        );
                    }
                    name = Some(n);
                }
            }
            "timeout" => timeout = w.duration(v, "step timeout"),
            "capture" => captures = parse_captures(w, v, kind, &queries),
            "assert" => {
                asserted = true;
                assert_nodes = parse_asserts(w, v, kind, &queries);
            }
            k_ if k_ == kind => {
                check_node = Some(v);
                check = parse_check(w, protocol, v);
            }
            other => {
                let mut keys = [kind, "name", "capture", "assert", "timeout"];
                let help = if let Some(p) = Protocol::from_name(other) {
                    format!(
                        "this is a `type: {kind}` probe; a {} check goes in a `type: {}` probe",
                        p.name(),
                        p.name()
                    )
                } else if other == "request" {
                    format!("`request` is for http steps; a {kind} step takes `{kind}:`")
                } else {
                    keys.sort_unstable();
                    did_you_mean(other, keys.iter().copied())
                        .map(|s| format!("did you mean `{s}`?"))
                        .unwrap_or_else(|| format!("a {kind} step takes: {}", keys.join(", ")))
                };
                w.error(k, format!("unknown key `{other}` in a {kind} step"), help);
            }
        }
    }
    if check_node.is_none() {
        w.error(
            node,
            format!("this step has no `{kind}:` check"),
            format!("write e.g. `- {}`", example(protocol)),
        );
        return None;
    }
    let check = check?;
    if let Some(cn) = check_node {
        check_templates(w, cn, check.templates(), visible, later);
    }
    for (n, a) in &assert_nodes {
        for (t, offset) in a.templates() {
            check_template_at(w, n, t, offset, visible, later);
        }
    }
    let mut asserts: Vec<Assertion> = assert_nodes.into_iter().map(|(_, a)| a).collect();
    if protocol == Protocol::Dns && !asserted {
        asserts = DNS_DEFAULT_ASSERTS
            .iter()
            .map(|a| Assertion::parse(a).expect("the default dns assertions are valid"))
            .collect();
    }
    Some(InfraStep {
        name: name.unwrap_or_else(|| kind.to_string()),
        check,
        captures,
        asserts,
        timeout,
    })
}

/// A one-line example step for help texts.
fn example(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp: { address: \"{{ smtp_host }}:25\", expect: \"^220 \" }",
        Protocol::Dns => "dns: { name: api.example.com, type: A }",
        Protocol::Tls => "tls: { address: \"api.example.com:443\" }",
        Protocol::Redis => "redis: { address: \"{{ redis_host }}:6379\" }",
        Protocol::Postgres => "postgres: { dsn: \"postgres://smoke@{{ db_host }}/app\" }",
    }
}

fn parse_check(w: &mut Walker<'_>, protocol: Protocol, v: &Node<'_>) -> Option<Check> {
    Some(match protocol {
        Protocol::Tcp => Check::Tcp(tcp(w, v)?),
        Protocol::Dns => Check::Dns(dns(w, v)?),
        Protocol::Tls => Check::Tls(tls(w, v)?),
        Protocol::Redis => Check::Redis(redis(w, v)?),
        Protocol::Postgres => Check::Postgres(postgres(w, v)?),
    })
}

fn tcp(w: &mut Walker<'_>, v: &Node<'_>) -> Option<TcpCheck> {
    let entries = w.map(v, "tcp", &TCP_KEYS, &["address"])?;
    let mut address = None;
    let mut use_tls = false;
    let mut options = TlsNodes::default();
    let mut send = None;
    let mut expect = None;
    for (k, _, n) in entries {
        match k.as_str() {
            "address" => address = address_at(w, n, None),
            "tls" => use_tls = w.boolean(n, "tls").unwrap_or(false),
            "send" => send = template_at(w, n, "send"),
            "expect" => expect = regex_at(w, n),
            other => options.take(w, other, n),
        }
    }
    let tls = options.finish(w, use_tls, "tcp");
    Some(TcpCheck {
        address: address?,
        use_tls,
        tls,
        send,
        expect,
    })
}

fn dns(w: &mut Walker<'_>, v: &Node<'_>) -> Option<DnsCheck> {
    let entries = w.map(v, "dns", &DNS_KEYS, &["name"])?;
    let mut name = None;
    let mut record = Some("A".to_string());
    let mut server = None;
    let mut tcp = false;
    for (k, _, n) in entries {
        match k.as_str() {
            "name" => {
                name = template_at(w, n, "name");
                if let Some(t) = name.as_ref().filter(|t| t.is_literal())
                    && let Err(e) = dns::parse_name(t.source())
                {
                    w.error(n, e, "write a host name, e.g. api.citadelbuy.com");
                }
            }
            "type" => {
                record = w
                    .string(n, "record type")
                    .and_then(|t| match dns::parse_record_type(&t) {
                        Ok(_) => Some(t.to_ascii_uppercase()),
                        Err(e) => {
                            let help = did_you_mean(&t.to_ascii_uppercase(), dns::RECORD_TYPES)
                                .map(|s| format!("did you mean `{s}`?"))
                                .unwrap_or_else(|| {
                                    format!("use one of {}", dns::RECORD_TYPES.join(", "))
                                });
                            w.error(n, e, help);
                            None
                        }
                    })
            }
            "server" => server = address_at(w, n, Some(53)),
            _ => tcp = w.boolean(n, "tcp").unwrap_or(false),
        }
    }
    Some(DnsCheck {
        name: name?,
        record: record?,
        server,
        tcp,
    })
}

fn tls(w: &mut Walker<'_>, v: &Node<'_>) -> Option<TlsCheck> {
    let entries = w.map(v, "tls", &TLS_KEYS, &["address"])?;
    let mut address = None;
    let mut options = TlsNodes::default();
    for (k, _, n) in entries {
        match k.as_str() {
            "address" => address = address_at(w, n, Some(443)),
            other => options.take(w, other, n),
        }
    }
    let tls = options.finish(w, true, "tls");
    Some(TlsCheck {
        address: address?,
        tls,
    })
}

fn redis(w: &mut Walker<'_>, v: &Node<'_>) -> Option<RedisCheck> {
    let entries = w.map(v, "redis", &REDIS_KEYS, &["address"])?;
    let mut address = None;
    let mut use_tls = false;
    let mut options = TlsNodes::default();
    let mut username = None;
    let mut password = None;
    let mut database = None;
    let mut commands = vec![vec![Template::literal("PING")]];
    let mut ok = true;
    for (k, _, n) in entries {
        match k.as_str() {
            "address" => address = address_at(w, n, Some(6379)),
            "tls" => use_tls = w.boolean(n, "tls").unwrap_or(false),
            "username" => username = template_at(w, n, "username"),
            "password" => password = password_at(w, n, "password"),
            "database" => {
                database = w.count(n, "database").and_then(|d| {
                    let d = u32::try_from(d).ok();
                    if d.is_none() {
                        w.error(
                            n,
                            "database number too large",
                            "Redis databases are 0-15 by default",
                        );
                    }
                    d
                })
            }
            "commands" => match redis_commands(w, n) {
                Some(c) => commands = c,
                None => ok = false,
            },
            other => options.take(w, other, n),
        }
    }
    let tls = options.finish(w, use_tls, "redis");
    if !ok {
        return None;
    }
    Some(RedisCheck {
        address: address?,
        use_tls,
        tls,
        username,
        password,
        database,
        commands,
    })
}

/// `commands: [PING, "GET {{ key }}", [SET, k, "a b"]]`: a string is split like redis-cli
/// would, a list is the arguments as given; every argument is a template.
fn redis_commands(w: &mut Walker<'_>, node: &Node<'_>) -> Option<Vec<Vec<Template>>> {
    let items = w.list(node, "commands")?;
    if items.is_empty() {
        w.error(
            node,
            "commands must not be empty",
            "leave `commands` out to send PING, or list commands like [PING, \"GET key\"]",
        );
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        let args: Vec<Template> = match &item.data {
            YamlData::Sequence(parts) => {
                let args: Vec<Template> = parts
                    .iter()
                    .filter_map(|p| template_at(w, p, "a command argument"))
                    .collect();
                if args.len() != parts.len() {
                    ok = false;
                    continue;
                }
                if args.is_empty() {
                    w.error(item, "empty command", "write e.g. [GET, key]");
                    ok = false;
                    continue;
                }
                args
            }
            _ => {
                let Some(text) = w.string(item, "a command") else {
                    ok = false;
                    continue;
                };
                match redis::split_command(&text) {
                    Ok(words) => {
                        let mut args = Vec::new();
                        for (word, at) in words {
                            match Template::parse(&word) {
                                Ok(t) => args.push(t),
                                Err(e) => {
                                    w.error_in(item, at + e.offset, 2, e.message, e.help);
                                    ok = false;
                                }
                            }
                        }
                        args
                    }
                    Err((at, message)) => {
                        w.error_in(
                            item,
                            at,
                            1,
                            message,
                            Some(
                                "quote arguments with spaces: SET greeting \"hello world\"".into(),
                            ),
                        );
                        ok = false;
                        continue;
                    }
                }
            }
        };
        out.push(args);
    }
    ok.then_some(out)
}

fn postgres(w: &mut Walker<'_>, v: &Node<'_>) -> Option<PostgresCheck> {
    let entries = w.map(v, "postgres", &POSTGRES_KEYS, &["dsn"])?;
    let mut dsn = None;
    let mut password = None;
    let mut query = Template::literal("SELECT 1");
    let mut statement_timeout = None;
    let mut read_only = true;
    let mut sslmode = None;
    let mut options = TlsNodes::default();
    for (k, _, n) in entries {
        match k.as_str() {
            "dsn" => {
                dsn = template_at(w, n, "dsn");
                if let Some(t) = dsn.as_ref().filter(|t| t.is_literal()) {
                    match postgres::parse_dsn(t.source()) {
                        Ok(parsed) if parsed.config.get_password().is_some() => w.warn_in(
                            n,
                            0,
                            1,
                            "the DSN holds a password written in the config file",
                            "take it out of the DSN and set `password: \"{{ env.PGPASSWORD }}\"`",
                        ),
                        Ok(_) => {}
                        Err(e) => w.error(
                            n,
                            e,
                            "write e.g. postgres://smoke@db.internal:5432/app?sslmode=verify-full",
                        ),
                    }
                }
            }
            "password" => password = password_at(w, n, "password"),
            "query" => {
                if let Some(t) = template_at(w, n, "query") {
                    if t.source().trim().is_empty() {
                        w.error(n, "the query is empty", "write e.g. SELECT 1");
                    }
                    query = t;
                }
            }
            "statement_timeout" => statement_timeout = w.duration(n, "statement_timeout"),
            "read_only" => read_only = w.boolean(n, "read_only").unwrap_or(true),
            "sslmode" => {
                sslmode = w
                    .string(n, "sslmode")
                    .and_then(|m| match SslMode::parse(&m) {
                        Ok(mode) => Some(mode),
                        Err(e) => {
                            w.error(n, e, "libpq's modes: disable, prefer, require, verify-full");
                            None
                        }
                    })
            }
            other => options.take(w, other, n),
        }
    }
    let tls = options.finish(w, sslmode != Some(SslMode::Disable), "postgres");
    Some(PostgresCheck {
        dsn: dsn?,
        password,
        query,
        statement_timeout,
        read_only,
        sslmode,
        tls,
    })
}

/// `server_name` and `ca_file` as found, checked once the check's other keys are known.
#[derive(Default)]
struct TlsNodes<'n, 's> {
    server_name: Option<Template>,
    ca_file: Option<PathBuf>,
    first: Option<(String, &'n Node<'s>)>,
}

impl<'n, 's> TlsNodes<'n, 's> {
    fn take(&mut self, w: &mut Walker<'_>, key: &str, n: &'n Node<'s>) {
        self.first.get_or_insert_with(|| (key.to_string(), n));
        if key == "server_name" {
            self.server_name = template_at(w, n, "server_name");
            return;
        }
        let Some(path) = w.string(n, "ca_file") else {
            return;
        };
        // The file may only exist where the agent runs (a mounted secret): warn, don't refuse.
        if let Err(e) = load_ca_file(std::path::Path::new(&path)) {
            w.warn_in(
                n,
                0,
                1,
                e,
                "the step will error until the file holds PEM certificates",
            );
        }
        self.ca_file = Some(PathBuf::from(path));
    }

    fn finish(self, w: &mut Walker<'_>, tls: bool, kind: &str) -> TlsOptions {
        if !tls && let Some((key, node)) = &self.first {
            let help = if kind == "postgres" {
                "set `sslmode` to prefer, require or verify-full, or remove it"
            } else {
                "add `tls: true`, or remove it"
            };
            w.warn_in(
                node,
                0,
                1,
                format!("`{key}` has no effect without TLS in a {kind} step"),
                help,
            );
        }
        TlsOptions {
            server_name: self.server_name,
            ca_file: self.ca_file,
        }
    }
}

/// `host:port` (templates allowed); a literal one is checked now.
fn address_at(w: &mut Walker<'_>, n: &Node<'_>, default_port: Option<u16>) -> Option<Template> {
    let t = template_at(w, n, "address")?;
    if t.is_literal()
        && let Err(e) = Endpoint::parse(t.source(), default_port)
    {
        w.error(
            n,
            e,
            "write host:port, e.g. db.internal:5432 or 127.0.0.1:6379",
        );
        return None;
    }
    Some(t)
}

/// A password: a template, with a warning when it is written in the config itself.
fn password_at(w: &mut Walker<'_>, n: &Node<'_>, what: &str) -> Option<Template> {
    let t = template_at(w, n, what)?;
    let from_secret = t.placeholders().any(|(p, _)| {
        !matches!(
            p,
            Placeholder::Random | Placeholder::Uuid | Placeholder::Timestamp
        )
    });
    if !from_secret && !t.source().is_empty() {
        w.warn_in(
            n,
            0,
            1,
            format!("the {what} is written in the config file"),
            "read it from a secret: `{{ env.NAME }}` or `{{ file./run/secrets/NAME }}` (it is masked either way)",
        );
    }
    Some(t)
}

/// A regex for `expect`; a literal one is compiled now, pointing at the problem.
fn regex_at(w: &mut Walker<'_>, n: &Node<'_>) -> Option<Template> {
    let t = template_at(w, n, "expect")?;
    if t.is_literal()
        && let Err(e) = regex::Regex::new(t.source())
    {
        w.error(
            n,
            format!(
                "invalid regex: {}",
                e.to_string().lines().last().unwrap_or("").trim()
            ),
            "expect is a regular expression matched against the reply, e.g. \"^\\\\+PONG\"",
        );
        return None;
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use patrol_probes::spec::{Check, ProbeKind, Protocol, SslMode};

    use crate::config::{Severity, load_str};

    #[test]
    fn infra_steps_build_with_their_defaults() {
        let src = r#"vars:
  db_host: 127.0.0.1
probes:
  - name: cache
    type: redis
    retries: 2
    steps:
      - redis: { address: "127.0.0.1:6379" }
      - redis: { address: "127.0.0.1", commands: [ "SET k 'a b'", [GET, k] ] }
  - name: db
    type: postgres
    steps:
      - name: users
        postgres:
          dsn: "postgres://smoke@{{ db_host }}:5432/app"
          query: SELECT COUNT(*) FROM "User"
        capture: { users: value }
      - postgres:
          dsn: "host=127.0.0.1 user=smoke sslmode=require"
          sslmode: verify-full
          read_only: false
          query: "SELECT {{ users }}"
  - name: names
    type: dns
    steps:
      - dns: { name: api.citadelbuy.com, type: mx }
  - name: certs
    type: tls
    steps:
      - tls: { address: citadelbuy.com }
        assert: [ cert_expiry > 30d ]
"#;
        let (config, report) = load_str("t.yaml", src).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!(report.diagnostics.len(), 0, "{report}");
        let infra = |i: usize| match &config.probes[i].spec.kind {
            ProbeKind::Infra(p) => p.clone(),
            other => panic!("an infra probe, got {other:?}"),
        };
        let cache = infra(0);
        assert_eq!(cache.protocol, Protocol::Redis);
        assert_eq!(config.probes[0].spec.type_name(), "redis");
        assert_eq!(config.probes[0].spec.retries, 2);
        assert_eq!(config.probes[0].spec.step_names(), ["redis", "redis_2"]);
        let Check::Redis(ping) = &cache.steps[0].check else {
            panic!("a redis check")
        };
        let commands: Vec<Vec<&str>> = ping
            .commands
            .iter()
            .map(|c| c.iter().map(|t| t.source()).collect())
            .collect();
        assert_eq!(commands, [["PING"]]);
        let Check::Redis(two) = &cache.steps[1].check else {
            panic!("a redis check")
        };
        assert_eq!(two.commands[0][2].source(), "a b");
        assert_eq!(two.commands[1][0].source(), "GET");

        let db = infra(1);
        let Check::Postgres(users) = &db.steps[0].check else {
            panic!("a postgres check")
        };
        assert!(users.read_only);
        assert_eq!(users.sslmode, None);
        let Check::Postgres(second) = &db.steps[1].check else {
            panic!("a postgres check")
        };
        assert!(!second.read_only);
        assert_eq!(second.sslmode, Some(SslMode::VerifyFull));

        let names = infra(2);
        let Check::Dns(mx) = &names.steps[0].check else {
            panic!("a dns check")
        };
        assert_eq!(mx.record, "MX");
        let defaults: Vec<&str> = names.steps[0].asserts.iter().map(|a| a.source()).collect();
        assert_eq!(defaults, ["rcode == \"NOERROR\"", "answers count >= 1"]);

        let certs = infra(3);
        assert_eq!(certs.steps[0].asserts.len(), 1);
    }

    #[test]
    fn secrets_written_in_the_file_and_idle_tls_options_are_warnings() {
        let src = r#"probes:
  - name: cache
    type: redis
    steps:
      - redis: { address: "127.0.0.1:6379", password: hunter2, server_name: x }
  - name: db
    type: postgres
    steps:
      - postgres: { dsn: "postgres://u:pw@db/app", password: "{{ env.HOME }}" }
"#;
        let (_, report) = load_str("t.yaml", src).unwrap_or_else(|r| panic!("{r}"));
        let warnings: Vec<(usize, usize, &str)> = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .map(|d| (d.line, d.col, d.message.as_str()))
            .collect();
        assert_eq!(
            warnings,
            [
                (5, 55, "the password is written in the config file"),
                (
                    5,
                    77,
                    "`server_name` has no effect without TLS in a redis step"
                ),
                (9, 27, "the DSN holds a password written in the config file"),
            ]
        );
    }

    #[test]
    fn undefined_names_and_later_captures_are_errors_in_infra_steps_too() {
        let src = r#"probes:
  - name: db
    type: postgres
    steps:
      - postgres: { dsn: "postgres://smoke@{{ db_hots }}/app", query: "SELECT {{ later }}" }
      - postgres: { dsn: "postgres://smoke@db/app" }
        capture: { later: value }
"#;
        let report = load_str("t.yaml", src).expect_err("errors");
        let errors: Vec<(usize, usize, &str)> = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| (d.line, d.col, d.message.as_str()))
            .collect();
        assert_eq!(
            errors,
            [
                (5, 47, "undefined variable `db_hots`"),
                (5, 82, "`later` is used before the step that captures it"),
            ]
        );
    }
}
