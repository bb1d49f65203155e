//! The DNS server's request handler (hickory-server's [`RequestHandler`]): given a parsed query
//! (from UDP or TCP alike), it places the client, asks the [`Zone`], and sends a response that
//! fits.
//!
//! - Only standard queries with one question are answered (NOTIMP, FORMERR otherwise).
//! - EDNS(0): a query with an OPT record gets one back (1232-byte payload), and an EDNS Client
//!   Subnet is placed instead of the resolver and echoed with the scope the answer depends on.
//! - A UDP response that would not fit the client's payload size loses whole records from the
//!   end and has TC set, so the client retries over TCP; nothing partial goes on the wire.
//! - Response rate limiting per source network (UDP only: a TCP source cannot be spoofed):
//!   over the limit, one response in [`SLIP`] is sent empty with TC set (a real client retries
//!   over TCP), the others are dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use ipnet::IpNet;
use prometheus::IntCounter;

use super::answer::{Answer, Published, Zone};
use super::metrics::DnsMetrics;
use super::placement::{ClientPlacement, client_network};
use super::select::Reach;
use crate::config::RateLimit;
use crate::proxy::ratelimit::RateLimiter;

/// Payload size offered in responses' OPT records (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Largest UDP response to a query without EDNS.
const PLAIN_UDP_PAYLOAD: usize = 512;
/// Of the responses withheld by rate limiting, one in this many is sent truncated.
pub const SLIP: u64 = 2;

/// What the health checks publish, shared with the prober that updates it.
pub type SharedPublished = Arc<RwLock<Arc<Published>>>;

/// Answers queries for one zone.
pub struct DnsHandler {
    zone: Zone,
    placement: ClientPlacement,
    published: SharedPublished,
    limiter: RateLimiter<IpNet>,
    withheld: AtomicU64,
    counters: Counters,
    metrics: DnsMetrics,
}

impl DnsHandler {
    /// A handler for `zone`, placing clients by `placement`, publishing what `published`
    /// holds, limiting each source network to `response_rate`; `level_names` name the
    /// locality levels in metrics, most local first.
    pub fn new(
        zone: Zone,
        placement: ClientPlacement,
        published: SharedPublished,
        response_rate: RateLimit,
        level_names: Vec<String>,
        metrics: DnsMetrics,
    ) -> Self {
        Self {
            zone,
            placement,
            published,
            limiter: RateLimiter::new(response_rate),
            withheld: AtomicU64::new(0),
            counters: Counters::new(&metrics, &level_names),
            metrics,
        }
    }

    /// Whether a FORMERR for an unparseable query from `source` may go out: response rate
    /// limiting applies to it as to any response (a withheld one is dropped, never slipped:
    /// a truncated FORMERR is no use). Counts it when it goes out.
    pub fn admit_format_error(&self, source: SocketAddr, protocol: Protocol) -> bool {
        let admitted = self.rate_limit(source, protocol).is_none();
        if admitted {
            self.count(None, ResponseCode::FormErr, None);
        }
        admitted
    }

    /// Whether rate limiting withholds a response to `source`, and if so whether it slips
    /// through truncated.
    fn rate_limit(&self, source: SocketAddr, protocol: Protocol) -> Option<Withheld> {
        if protocol != Protocol::Udp {
            return None;
        }
        self.limiter
            .check(
                client_network(source.ip(), u8::MAX),
                std::time::Instant::now(),
            )
            .err()?;
        let slipped = self
            .withheld
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SLIP);
        let (withheld, action) = if slipped {
            (Withheld::Slipped, "slipped")
        } else {
            (Withheld::Dropped, "dropped")
        };
        self.metrics.rate_limited.with_label_values(&[action]).inc();
        Some(withheld)
    }

    fn count(&self, qtype: Option<RecordType>, rcode: ResponseCode, reach: Option<Reach>) {
        let qtype = match qtype {
            Some(RecordType::A) => 0,
            Some(RecordType::AAAA) => 1,
            Some(RecordType::ANY) => 2,
            Some(RecordType::NS) => 3,
            Some(RecordType::SOA) => 4,
            _ => 5,
        };
        let rcode = RCODES
            .iter()
            .position(|(code, _)| *code == rcode)
            .unwrap_or(RCODES.len());
        self.counters.queries[qtype * (RCODES.len() + 1) + rcode].inc();
        if let Some(reach) = reach {
            let levels = self.counters.answers.len() - 2;
            let index = match reach {
                Reach::Level(level) => level.min(levels - 1),
                Reach::Global => levels,
                Reach::None => levels + 1,
            };
            self.counters.answers[index].inc();
        }
    }
}

/// The query and answer counters, looked up once: a labelled lookup per query costs a hash
/// and a lock.
struct Counters {
    /// By question type (the order of `QTYPES`), then response code (`RCODES`, then other).
    queries: Vec<IntCounter>,
    /// By level (most local first), then global, then none.
    answers: Vec<IntCounter>,
}

const QTYPES: [&str; 6] = ["A", "AAAA", "ANY", "NS", "SOA", "other"];
const RCODES: [(ResponseCode, &str); 7] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::BADVERS, "BADVERS"),
];

impl Counters {
    fn new(metrics: &DnsMetrics, level_names: &[String]) -> Self {
        let rcodes = RCODES.iter().map(|(_, name)| *name).chain(["other"]);
        let queries = QTYPES
            .iter()
            .flat_map(|qtype| {
                rcodes
                    .clone()
                    .map(move |rcode| metrics.queries.with_label_values(&[*qtype, rcode]))
            })
            .collect();
        let mut levels: Vec<&str> = level_names.iter().map(String::as_str).collect();
        if levels.is_empty() {
            levels.push("local");
        }
        let answers = levels
            .into_iter()
            .chain(["global", "none"])
            .map(|level| metrics.answers.with_label_values(&[level]))
            .collect();
        Self { queries, answers }
    }
}

enum Withheld {
    Dropped,
    Slipped,
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let withheld = self.rate_limit(request.src(), request.protocol());
        if let Some(Withheld::Dropped) = withheld {
            return not_sent(request, ResponseCode::Refused);
        }
        let query = request.request_info().ok().map(|info| info.query.clone());
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let (answer, ecs_scope) = match (&query, request.metadata.op_code, withheld) {
            (_, _, Some(Withheld::Slipped)) => {
                metadata.truncation = true;
                (Answer::empty(ResponseCode::NoError, false), 0)
            }
            (_, op_code, _) if op_code != OpCode::Query => {
                (Answer::empty(ResponseCode::NotImp, false), 0)
            }
            // RFC 6891 6.1.3: this server speaks EDNS version 0 only.
            _ if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) => {
                (Answer::empty(ResponseCode::BADVERS, false), 0)
            }
            (None, _, _) => (Answer::empty(ResponseCode::FormErr, false), 0),
            (Some(query), _, _) => {
                let ecs = client_subnet(request);
                let (address, source_prefix) = ecs.map_or_else(
                    || (request.src().ip(), full_prefix(request.src().ip())),
                    |subnet| (subnet.addr(), subnet.source_prefix()),
                );
                let placed = self.placement.place(address, source_prefix);
                let published = self
                    .published
                    .read()
                    .expect("published lock poisoned")
                    .clone();
                let answer = self.zone.answer(
                    query.name(),
                    query.query_type(),
                    query.query_class(),
                    &placed,
                    &published,
                );
                // The answer depends on where the client is only when it names proxies.
                let scope = if answer.reach.is_some() {
                    placed.scope
                } else {
                    0
                };
                (answer, scope)
            }
        };
        let mut answer = answer;
        metadata.response_code = answer.rcode;
        metadata.authoritative = answer.authoritative;
        let response_edns = request.edns.as_ref().map(|_| {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            // Extended response codes (BADVERS) carry their upper bits in the OPT record.
            edns.set_rcode_high(answer.rcode.high());
            if let Some(subnet) = client_subnet(request) {
                edns.options_mut()
                    .insert(EdnsOption::Subnet(ClientSubnet::new(
                        subnet.addr(),
                        subnet.source_prefix(),
                        ecs_scope,
                    )));
            }
            edns
        });
        if request.protocol() == Protocol::Udp && fit(&mut answer, request, response_edns.as_ref())
        {
            metadata.truncation = true;
        }
        self.count(
            query.as_ref().map(|q| q.query_type()),
            answer.rcode,
            answer.reach,
        );
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &response_edns {
            builder.edns(edns);
        }
        let response = builder.build(
            metadata,
            answer.answers.iter(),
            answer.name_servers.iter(),
            answer.soa.iter(),
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, src = %request.src(), "cannot send a DNS response");
                not_sent(request, ResponseCode::ServFail)
            }
        }
    }
}

/// The EDNS Client Subnet of the query, if it has a usable one.
fn client_subnet(request: &Request) -> Option<ClientSubnet> {
    match request.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(subnet) => Some(*subnet),
        _ => None,
    }
}

fn full_prefix(address: IpAddr) -> u8 {
    if address.to_canonical().is_ipv4() {
        32
    } else {
        128
    }
}

/// The header of a response that was not sent, for hickory's bookkeeping.
fn not_sent(request: &Request, rcode: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = rcode;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

/// Removes whole records from the end of the answer until the response fits the client's
/// UDP payload size (computed without name compression, so it is an upper bound); true when
/// more than glue was removed.
fn fit(answer: &mut Answer, request: &Request, edns: Option<&Edns>) -> bool {
    let limit = match (&request.edns, edns) {
        (Some(asked), Some(_)) => usize::from(asked.max_payload().clamp(512, EDNS_PAYLOAD)),
        _ => PLAIN_UDP_PAYLOAD,
    };
    let question: usize = request
        .queries
        .queries()
        .iter()
        .map(|query| wire_length(&Name::from(query.name())) + 4)
        .sum();
    let opt = edns.map_or(0, |edns| {
        let options: usize = edns
            .options()
            .options
            .iter()
            .map(|(_, option)| 4 + usize::from(option.len()))
            .sum();
        11 + options
    });
    let records = |answer: &Answer| -> usize {
        [
            &answer.answers,
            &answer.name_servers,
            &answer.soa,
            &answer.additionals,
        ]
        .into_iter()
        .flatten()
        .map(record_length)
        .sum()
    };
    // Glue may go without notice (RFC 2181 9); anything else dropped sets TC.
    let mut truncated = false;
    while 12 + question + opt + records(answer) > limit {
        if answer.additionals.pop().is_some() {
            continue;
        }
        truncated = true;
        if answer.name_servers.pop().is_none()
            && answer.answers.pop().is_none()
            && answer.soa.pop().is_none()
        {
            break;
        }
    }
    truncated
}

/// Wire length of a name without compression (an upper bound of what is sent).
fn wire_length(name: &Name) -> usize {
    name.iter().map(|label| label.len() + 1).sum::<usize>() + 1
}

fn record_length(record: &Record) -> usize {
    let rdata = match &record.data {
        RData::A(_) => 4,
        RData::AAAA(_) => 16,
        RData::NS(ns) => wire_length(&ns.0),
        RData::SOA(soa) => wire_length(&soa.mname) + wire_length(&soa.rname) + 20,
        // The zone sends no other kind.
        other => other.to_string().len() + 24,
    };
    wire_length(&record.name) + 10 + rdata
}
