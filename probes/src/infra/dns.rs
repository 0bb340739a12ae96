//! `dns` checks: one query, timed, never cached. With `server`, that server is asked directly
//! (UDP, falling back to TCP on a truncated answer, or TCP throughout with `tcp: true`).
//! Without it the name is resolved as the system would: `/etc/hosts` first for A and AAAA,
//! then the nameservers of `/etc/resolv.conf` in order (each gets an equal share of the time
//! left). Names are absolute: no search domains are appended.
//!
//! The step observes `rcode` (`NOERROR`, `NXDOMAIN`, ...) and `answers`: the records of the
//! asked type in the answer section, as text. The query's round trip is the `resolve` phase.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query as DnsQuery, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout_at};

use super::{Ctx, Failed, Observed, render};
use crate::net::dial::{connect_error, io_error};
use crate::net::{Dial, Endpoint};
use crate::query::named;
use crate::result::{Outcome, Phases};
use crate::spec::DnsCheck;
use crate::template::Scope;
use crate::value::Value;

/// Record types a `dns` step can ask for.
pub const RECORD_TYPES: [&str; 10] = [
    "A", "AAAA", "CNAME", "TXT", "MX", "NS", "SOA", "SRV", "CAA", "PTR",
];

const HOSTS: &str = "/etc/hosts";
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The UDP payload size announced with EDNS: the DNS-flag-day value, safe from fragmentation.
const UDP_PAYLOAD: u16 = 1232;

/// Checks a record type as written in a config (`A`, `mx`, ...).
pub fn parse_record_type(text: &str) -> Result<RecordType, String> {
    let upper = text.trim().to_ascii_uppercase();
    if !RECORD_TYPES.contains(&upper.as_str()) {
        return Err(format!(
            "unsupported record type `{text}`; use one of {}",
            RECORD_TYPES.join(", ")
        ));
    }
    RecordType::from_str(&upper).map_err(|e| format!("invalid record type `{text}`: {e}"))
}

/// Checks a name to resolve.
pub fn parse_name(text: &str) -> Result<Name, String> {
    let mut name = Name::from_utf8(text.trim())
        .map_err(|e| format!("`{text}` is not a valid DNS name: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

pub(crate) async fn run(
    check: &DnsCheck,
    ctx: &Ctx<'_>,
    scope: &mut Scope,
) -> Result<Observed, Failed> {
    let name_text = render(&check.name, scope, "name")?;
    let name = parse_name(&name_text).map_err(Failed::error)?;
    let record = parse_record_type(&check.record).map_err(Failed::error)?;
    let server = match &check.server {
        Some(t) => Some(render(t, scope, "server")?),
        None => None,
    };
    let mut request_line = format!("dns {record} {name_text}");
    let started = Instant::now();
    let answered = match &server {
        Some(server) => {
            request_line.push_str(&format!(" @{server}"));
            let endpoint = Endpoint::parse(server, Some(53)).map_err(Failed::error)?;
            // Finding the server is not part of the lookup being timed.
            let mut finding = Dial::new(ctx.deadline);
            let addrs = finding
                .resolve(&endpoint.host, endpoint.port)
                .await
                .map_err(|f| Failed::from(f).with_line(&request_line))?;
            let started = Instant::now();
            let response = ask(&addrs[..1], &name, record, check.tcp, ctx.deadline)
                .await
                .map_err(|f| f.with_line(&request_line))?;
            Answer::from_message(&response, record, started.elapsed())
        }
        None => match from_hosts(&name_text, record) {
            Some(addrs) => {
                request_line.push_str(&format!(" ({HOSTS})"));
                Answer {
                    rcode: "NOERROR".into(),
                    answers: addrs,
                    shown: String::new(),
                    took: started.elapsed(),
                }
            }
            None => {
                let servers = system_nameservers();
                let shown: Vec<String> = servers.iter().map(ToString::to_string).collect();
                request_line.push_str(&format!(" @{} ({RESOLV_CONF})", shown.join(",")));
                let started = Instant::now();
                let response = ask(&servers, &name, record, check.tcp, ctx.deadline)
                    .await
                    .map_err(|f| f.with_line(&request_line))?;
                Answer::from_message(&response, record, started.elapsed())
            }
        },
    };
    let shown_reply = if answered.shown.is_empty() {
        format!("{}\n{}", answered.rcode, answered.answers.join("\n"))
    } else {
        answered.shown.clone()
    };
    Ok(Observed {
        phases: Phases {
            resolve: answered.took,
            ..Phases::default()
        },
        values: vec![
            (named::RCODE.to_string(), Value::Text(answered.rcode)),
            (
                named::ANSWERS.to_string(),
                Value::List(answered.answers.into_iter().map(Value::Text).collect()),
            ),
        ],
        request_line,
        shown_reply: shown_reply.trim_end().to_string(),
        ..Observed::default()
    })
}

/// What a lookup found.
struct Answer {
    rcode: String,
    answers: Vec<String>,
    /// The whole response, dig-like, for `-v`.
    shown: String,
    took: Duration,
}

impl Answer {
    fn from_message(message: &Message, record: RecordType, took: Duration) -> Answer {
        let rcode = rcode_name(message.metadata.response_code);
        let answers = message
            .answers
            .iter()
            .filter(|r| r.record_type() == record)
            .map(|r| r.data.to_string())
            .collect();
        let mut shown = format!("{rcode}\n");
        for r in &message.answers {
            shown.push_str(&format!(
                "{} {} {} {}\n",
                r.name,
                r.ttl,
                r.record_type(),
                r.data
            ));
        }
        Answer {
            rcode,
            answers,
            shown,
            took,
        }
    }
}

/// The mnemonic dig prints for a response code.
pub fn rcode_name(code: ResponseCode) -> String {
    match u16::from(code) {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        16 => "BADVERS".into(),
        n => format!("RCODE{n}"),
    }
}

/// Asks the servers in order until one answers; each gets an equal share of the time left.
async fn ask(
    servers: &[SocketAddr],
    name: &Name,
    record: RecordType,
    tcp: bool,
    deadline: Instant,
) -> Result<Message, Failed> {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.add_query(DnsQuery::query(name.clone(), record));
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD);
    query.set_edns(edns);
    let bytes = query
        .to_vec()
        .map_err(|e| Failed::error(format!("could not encode the DNS query: {e}")))?;
    let id = query.metadata.id;
    let mut failures = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(servers.len() - i).unwrap_or(1);
        let attempt_deadline = Instant::now() + share;
        let answer = if tcp {
            ask_tcp(*server, &bytes, id, attempt_deadline).await
        } else {
            match ask_udp(*server, &bytes, id, attempt_deadline).await {
                Ok(m) if m.metadata.truncation => {
                    ask_tcp(*server, &bytes, id, attempt_deadline).await
                }
                other => other,
            }
        };
        match answer {
            Ok(m) => return Ok(m),
            Err(f) => failures.push(f),
        }
    }
    // Every server failed: a timeout only when each of them timed out.
    let outcome = if failures.iter().all(|f| f.outcome == Outcome::Timeout) {
        Outcome::Timeout
    } else {
        Outcome::Error
    };
    let message = failures
        .into_iter()
        .map(|f| f.message)
        .collect::<Vec<_>>()
        .join("; ");
    Err(Failed {
        outcome,
        message: if message.is_empty() {
            "no DNS server to ask".into()
        } else {
            message
        },
        ..Failed::error("")
    })
}

async fn ask_udp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    deadline: Instant,
) -> Result<Message, Failed> {
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let io = |e: std::io::Error| {
        Failed::error(format!(
            "{} asking {server} over UDP: {e}",
            connect_error(&e)
        ))
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(server).await.map_err(io)?;
    let waited = Instant::now();
    match timeout_at(deadline, socket.send(query)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(io(e)),
        Err(_) => return Err(timed_out(server, waited)),
    }
    let mut buf = vec![0u8; 65535];
    loop {
        let n = match timeout_at(deadline, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(io(e)),
            Err(_) => return Err(timed_out(server, waited)),
        };
        // Stray datagrams (late answers to someone else's query) are not ours: keep waiting.
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == id => return Ok(m),
            Ok(_) => continue,
            Err(e) => {
                return Err(Failed::error(format!(
                    "invalid DNS answer from {server}: {e}"
                )));
            }
        }
    }
}

async fn ask_tcp(
    server: SocketAddr,
    query: &[u8],
    id: u16,
    deadline: Instant,
) -> Result<Message, Failed> {
    let waited = Instant::now();
    let exchange = async {
        let mut stream = TcpStream::connect(server).await.map_err(|e| {
            format!(
                "{} connecting to {server} (DNS over TCP): {e}",
                connect_error(&e)
            )
        })?;
        let len = u16::try_from(query.len()).map_err(|_| "DNS query too long".to_string())?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        let talk =
            |e: std::io::Error| format!("{} talking to {server} (DNS over TCP): {e}", io_error(&e));
        stream.write_all(&framed).await.map_err(talk)?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await.map_err(talk)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut buf).await.map_err(talk)?;
        let message = Message::from_vec(&buf)
            .map_err(|e| format!("invalid DNS answer from {server}: {e}"))?;
        if message.metadata.id != id {
            return Err(format!("DNS answer from {server} is for another query"));
        }
        Ok(message)
    };
    match timeout_at(deadline, exchange).await {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(message)) => Err(Failed::error(message)),
        Err(_) => Err(timed_out(server, waited)),
    }
}

fn timed_out(server: SocketAddr, since: Instant) -> Failed {
    Failed {
        outcome: Outcome::Timeout,
        message: format!(
            "no answer from {server} within {:.3}s (resolve)",
            since.elapsed().as_secs_f64()
        ),
        ..Failed::error("")
    }
}

/// The addresses `/etc/hosts` gives `name` for an A or AAAA query, if it has any.
fn from_hosts(name: &str, record: RecordType) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(HOSTS).ok()?;
    let found = hosts_lookup(&text, name, record);
    (!found.is_empty()).then_some(found)
}

/// Looks `name` up in hosts-file text.
pub fn hosts_lookup(text: &str, name: &str, record: RecordType) -> Vec<String> {
    let want_v4 = match record {
        RecordType::A => true,
        RecordType::AAAA => false,
        _ => return Vec::new(),
    };
    let name = name.trim_end_matches('.');
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        if ip.is_ipv4() != want_v4 {
            continue;
        }
        if fields.any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(name)) {
            let ip = ip.to_string();
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    out
}

/// The nameservers of `/etc/resolv.conf`; 127.0.0.1 when it names none (as glibc does).
fn system_nameservers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
    let found = nameservers(&text);
    if found.is_empty() {
        vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))]
    } else {
        found
    }
}

/// The `nameserver` lines of resolv.conf text.
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some("nameserver")).then(|| fields.next())?
        })
        .filter_map(|ip| {
            // A scoped IPv6 address (fe80::1%eth0) keeps its address, not its scope.
            ip.split('%').next()?.parse::<IpAddr>().ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_files_answer_a_and_aaaa_only() {
        let hosts = "127.0.0.1 localhost # loopback\n::1 localhost ip6-localhost\n\n10.0.0.5 db.internal db\n";
        assert_eq!(
            hosts_lookup(hosts, "localhost", RecordType::A),
            vec!["127.0.0.1"]
        );
        assert_eq!(
            hosts_lookup(hosts, "LOCALHOST.", RecordType::AAAA),
            vec!["::1"]
        );
        assert_eq!(hosts_lookup(hosts, "db", RecordType::A), vec!["10.0.0.5"]);
        assert!(hosts_lookup(hosts, "db", RecordType::MX).is_empty());
        assert!(hosts_lookup(hosts, "nope", RecordType::A).is_empty());
    }

    #[test]
    fn resolv_conf_nameservers_are_read_in_order() {
        let conf = "search example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n# nameserver 1.1.1.1\noptions ndots:5\n";
        let found = nameservers(conf);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].to_string(), "10.0.0.2:53");
        assert_eq!(found[1].to_string(), "[fe80::1]:53");
    }

    #[test]
    fn record_types_and_names_are_checked() {
        assert_eq!(parse_record_type("mx"), Ok(RecordType::MX));
        assert!(
            parse_record_type("AXFR")
                .expect_err("unsupported")
                .starts_with("unsupported record type `AXFR`")
        );
        assert!(parse_name("api.citadelbuy.com").is_ok());
        assert!(parse_name("bad..name").is_err());
        assert_eq!(rcode_name(ResponseCode::NXDomain), "NXDOMAIN");
    }
}
