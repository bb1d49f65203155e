//! The zone's answers, as a pure function of the question, where the client is, and which
//! proxies and name servers the health checks currently allow.
//!
//! - Outside the zone: REFUSED, never a referral or a recursive answer (not an open resolver).
//! - The apex: SOA, and NS naming the configured name servers or else the healthy DNS nodes
//!   (`ns-<address>.<zone>`), with glue; other types get NODATA.
//! - `ns-<address>.<zone>`: the address of that DNS node while it is published.
//! - Any other name is `<origin>.<zone>`: A/AAAA (ANY is answered as A, never more) name up to
//!   `answersPerQuery` proxies chosen by [`select::choose`]; other types get NODATA. A name
//!   that cannot be an origin (the proxy would refuse it) is NXDOMAIN.
//! - No healthy proxy at all: SERVFAIL. A resolver then tries another name server or reports
//!   the failure; an address known dead is never published, not even with a short TTL.
//! - Negative answers carry the SOA, whose TTL and minimum are the answer TTL.

use std::net::IpAddr;

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_server::proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};

use super::placement::Placed;
use super::select::{self, LiveProxy, Reach};
use crate::config::{DnsConfig, NameServer};
use crate::proxy::target::Origin;

/// Label prefix of the names DNS nodes publish themselves under.
const NS_PREFIX: &str = "ns-";
/// SOA timers (refresh, retry, expire): secondaries do not exist, these are conventional.
const SOA_TIMERS: (i32, i32, i32) = (3600, 600, 86_400);
/// Least TTL of NS records and their glue, which change only when DNS nodes come and go.
const MIN_NS_TTL: u32 = 60;

/// What the health checks currently allow to be published.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Published {
    /// Healthy proxies.
    pub proxies: Vec<LiveProxy>,
    /// Healthy DNS nodes.
    pub nameservers: Vec<IpAddr>,
}

/// An answer, before it is put in a message.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// The response code.
    pub rcode: ResponseCode,
    /// Whether the AA flag is set (every answer from inside the zone).
    pub authoritative: bool,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section: NS records.
    pub name_servers: Vec<Record>,
    /// Authority section: the SOA, for negative answers.
    pub soa: Vec<Record>,
    /// Additional section: glue.
    pub additionals: Vec<Record>,
    /// For questions about an origin's addresses, how near the proxies named are.
    pub reach: Option<Reach>,
}

impl Answer {
    /// An answer with no records.
    pub fn empty(rcode: ResponseCode, authoritative: bool) -> Self {
        Self {
            rcode,
            authoritative,
            answers: Vec::new(),
            name_servers: Vec::new(),
            soa: Vec::new(),
            additionals: Vec::new(),
            reach: None,
        }
    }
}

/// Why a zone cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// The zone or a name server name is not a domain name.
    #[error("{name} is not a valid domain name: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The zone and how it answers.
#[derive(Clone, Debug)]
pub struct Zone {
    apex: Name,
    apex_lower: LowerName,
    zone_text: String,
    answer_ttl: u32,
    answers_per_query: usize,
    configured_ns: Vec<(Name, Vec<IpAddr>)>,
    serial: u32,
    /// Where clients that no network places are treated as being: this DNS node's locality.
    home: Vec<String>,
}

impl Zone {
    /// The zone `zone` as `dns` configures it, answering unplaced clients as if they were at
    /// `home` (the answering node's locality), with SOA serial `serial`.
    pub fn new(
        zone: &str,
        dns: &DnsConfig,
        home: Vec<String>,
        serial: u32,
    ) -> Result<Self, ZoneError> {
        let name = |text: &str| {
            Name::from_ascii(text)
                .map(|name| name.to_lowercase())
                .map(|mut name| {
                    name.set_fqdn(true);
                    name
                })
                .map_err(|err| ZoneError::BadName {
                    name: text.to_owned(),
                    reason: err.to_string(),
                })
        };
        let apex = name(zone)?;
        let configured_ns = dns
            .nameservers
            .iter()
            .map(
                |NameServer {
                     name: ns,
                     addresses,
                 }| Ok((name(ns)?, addresses.clone())),
            )
            .collect::<Result<_, ZoneError>>()?;
        Ok(Self {
            apex_lower: LowerName::new(&apex),
            zone_text: apex.to_ascii().trim_end_matches('.').to_owned(),
            apex,
            answer_ttl: u32::try_from(dns.answer_ttl.as_secs()).unwrap_or(u32::MAX),
            answers_per_query: usize::try_from(dns.answers_per_query).unwrap_or(usize::MAX),
            configured_ns,
            serial,
            home,
        })
    }

    /// Answers `qtype` `qclass` questions about `name` from a client placed at `placed`.
    pub fn answer(
        &self,
        name: &LowerName,
        qtype: RecordType,
        qclass: DNSClass,
        placed: &Placed<'_>,
        published: &Published,
    ) -> Answer {
        if !self.apex_lower.zone_of(name) || !matches!(qclass, DNSClass::IN | DNSClass::ANY) {
            return Answer::empty(ResponseCode::Refused, false);
        }
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Answer::empty(ResponseCode::Refused, true);
        }
        // Name servers are worked out only for the answers that show them: not for the
        // common case, a proxy's address.
        let nameservers = || self.nameservers(published);
        if *name == self.apex_lower {
            let nameservers = nameservers();
            return match qtype {
                RecordType::SOA => Answer {
                    answers: vec![self.soa(&nameservers)],
                    ..Answer::empty(ResponseCode::NoError, true)
                },
                // No name server known (none configured, none healthy): NODATA, not an
                // empty NOERROR without a SOA.
                RecordType::NS if !nameservers.is_empty() => Answer {
                    answers: self.ns_records(&nameservers),
                    additionals: self.glue(&nameservers),
                    ..Answer::empty(ResponseCode::NoError, true)
                },
                _ => self.negative(ResponseCode::NoError, &nameservers),
            };
        }
        let owner = Name::from(name);
        let self_published = owner
            .iter()
            .next()
            .is_some_and(|label| label.starts_with(NS_PREFIX.as_bytes()))
            && self.is_directly_below_apex(&owner);
        if self_published || self.configured_ns.iter().any(|(ns, _)| *ns == owner) {
            let nameservers = nameservers();
            // A name server that is gone leaves an empty name: names below it may be origins.
            let Some((_, addresses)) = nameservers.iter().find(|(ns, _)| *ns == owner) else {
                return self.negative(ResponseCode::NoError, &nameservers);
            };
            let records = self.address_records(&owner, addresses, qtype, self.ns_ttl());
            return if records.is_empty() {
                self.negative(ResponseCode::NoError, &nameservers)
            } else {
                Answer {
                    answers: records,
                    ..Answer::empty(ResponseCode::NoError, true)
                }
            };
        }
        if Origin::from_zone_host(&owner.to_ascii(), &self.zone_text).is_err() {
            // NXDOMAIN denies every name below (RFC 8020), so it is only for a label no origin
            // can have; `8080.<zone>` or `4.<zone>` are above origins (`host.8080.<zone>`,
            // `1.2.3.4.<zone>`) that a resolver minimising its queries asks for first.
            let rcode = if owner.iter().all(is_host_label) {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            };
            return self.negative(rcode, &nameservers());
        }
        let ipv6 = match qtype {
            RecordType::A | RecordType::ANY => false,
            RecordType::AAAA => true,
            _ => return self.negative(ResponseCode::NoError, &nameservers()),
        };
        if published.proxies.is_empty() {
            return Answer::empty(ResponseCode::ServFail, true);
        }
        let locality = placed.locality.unwrap_or(&self.home);
        let (chosen, reach) = select::choose(
            &published.proxies,
            locality,
            placed.network,
            self.answers_per_query,
            ipv6,
        );
        let mut answer = if chosen.is_empty() {
            self.negative(ResponseCode::NoError, &nameservers())
        } else {
            Answer {
                answers: self.address_records(&owner, &chosen, qtype, self.answer_ttl),
                ..Answer::empty(ResponseCode::NoError, true)
            }
        };
        answer.reach = Some(reach);
        answer
    }

    /// The name servers to publish with their addresses: the configured ones, or else the
    /// healthy DNS nodes under names of their own.
    fn nameservers(&self, published: &Published) -> Vec<(Name, Vec<IpAddr>)> {
        if !self.configured_ns.is_empty() {
            return self.configured_ns.clone();
        }
        published
            .nameservers
            .iter()
            .filter_map(|address| {
                let label = format!(
                    "{NS_PREFIX}{}",
                    address.to_string().replace(['.', ':'], "-")
                );
                let name = Name::from_ascii(label)
                    .ok()?
                    .append_domain(&self.apex)
                    .ok()?;
                Some((name, vec![*address]))
            })
            .collect()
    }

    fn is_directly_below_apex(&self, name: &Name) -> bool {
        name.num_labels() == self.apex.num_labels() + 1
    }

    fn ns_ttl(&self) -> u32 {
        self.answer_ttl.max(MIN_NS_TTL)
    }

    fn soa(&self, nameservers: &[(Name, Vec<IpAddr>)]) -> Record {
        let primary = nameservers
            .first()
            .map_or_else(|| self.apex.clone(), |(name, _)| name.clone());
        let hostmaster = Name::from_ascii("hostmaster")
            .and_then(|label| label.append_domain(&self.apex))
            .unwrap_or_else(|_| self.apex.clone());
        let (refresh, retry, expire) = SOA_TIMERS;
        Record::from_rdata(
            self.apex.clone(),
            self.answer_ttl,
            RData::SOA(SOA::new(
                primary,
                hostmaster,
                self.serial,
                refresh,
                retry,
                expire,
                self.answer_ttl,
            )),
        )
    }

    fn ns_records(&self, nameservers: &[(Name, Vec<IpAddr>)]) -> Vec<Record> {
        nameservers
            .iter()
            .map(|(name, _)| {
                Record::from_rdata(
                    self.apex.clone(),
                    self.ns_ttl(),
                    RData::NS(NS(name.clone())),
                )
            })
            .collect()
    }

    /// Addresses of the name servers inside the zone (outside it, resolvers find them).
    fn glue(&self, nameservers: &[(Name, Vec<IpAddr>)]) -> Vec<Record> {
        nameservers
            .iter()
            .filter(|(name, _)| self.apex.zone_of(name))
            .flat_map(|(name, addresses)| {
                addresses
                    .iter()
                    .map(|address| self.address_record(name, *address, self.ns_ttl()))
            })
            .collect()
    }

    fn negative(&self, rcode: ResponseCode, nameservers: &[(Name, Vec<IpAddr>)]) -> Answer {
        Answer {
            soa: vec![self.soa(nameservers)],
            ..Answer::empty(rcode, true)
        }
    }

    /// Records of `addresses` matching `qtype` (A for IPv4, AAAA for IPv6, ANY as A).
    fn address_records(
        &self,
        owner: &Name,
        addresses: &[IpAddr],
        qtype: RecordType,
        ttl: u32,
    ) -> Vec<Record> {
        addresses
            .iter()
            .filter(|address| match qtype {
                RecordType::A | RecordType::ANY => address.is_ipv4(),
                RecordType::AAAA => address.is_ipv6(),
                _ => false,
            })
            .map(|address| self.address_record(owner, *address, ttl))
            .collect()
    }

    fn address_record(&self, owner: &Name, address: IpAddr, ttl: u32) -> Record {
        let rdata = match address {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        Record::from_rdata(owner.clone(), ttl, rdata)
    }
}

/// Whether a label can be part of a host name: letters, digits and inner hyphens, 1 to 63
/// bytes.
fn is_host_label(label: &[u8]) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && label.first() != Some(&b'-')
        && label.last() != Some(&b'-')
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;
    use std::time::Duration;

    use ipnet::IpNet;

    use super::*;
    use crate::config::DnsTcpLimits;

    fn dns(nameservers: Vec<NameServer>) -> DnsConfig {
        DnsConfig {
            port: 53,
            answer_ttl: Duration::from_secs(20),
            answers_per_query: 2,
            nameservers,
            members_file: None,
            member_services: None,
            response_rate: DnsConfig::default_response_rate(),
            tcp: DnsTcpLimits::default(),
        }
    }

    fn zone() -> Zone {
        Zone::new("nyud.net", &dns(vec![]), vec!["z1".into(), "r1".into()], 7).unwrap()
    }

    fn published() -> Published {
        let proxy = |address: &str, zone: &str| LiveProxy {
            address: address.parse().unwrap(),
            locality: vec![zone.into(), "r1".into()],
            load: 0.0,
        };
        Published {
            proxies: vec![
                proxy("192.0.2.1", "z1"),
                proxy("192.0.2.2", "z2"),
                proxy("2001:db8::1", "z1"),
            ],
            nameservers: vec!["192.0.2.53".parse().unwrap()],
        }
    }

    fn ask(zone: &Zone, name: &str, qtype: RecordType, published: &Published) -> Answer {
        let placed = Placed {
            locality: None,
            network: IpNet::from_str("198.51.100.0/24").unwrap(),
            scope: 24,
        };
        let name = LowerName::from(Name::from_str(name).unwrap());
        zone.answer(&name, qtype, DNSClass::IN, &placed, published)
    }

    fn rdata(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|record| record.data.to_string())
            .collect()
    }

    #[test]
    fn origin_names_get_proxies_near_the_node_for_unplaced_clients() {
        let answer = ask(
            &zone(),
            "www.example.com.nyud.net.",
            RecordType::A,
            &published(),
        );
        assert_eq!(answer.rcode, ResponseCode::NoError);
        assert!(answer.authoritative);
        assert_eq!(rdata(&answer.answers), ["192.0.2.1"]);
        assert_eq!(answer.answers[0].ttl, 20);
        assert_eq!(answer.reach, Some(Reach::Level(0)));
        let v6 = ask(
            &zone(),
            "WWW.Example.COM.8080.nyud.net.",
            RecordType::AAAA,
            &published(),
        );
        assert_eq!(rdata(&v6.answers), ["2001:db8::1"]);
    }

    #[test]
    fn negative_answers_carry_the_soa_and_outsiders_are_refused() {
        let zone = zone();
        let nodata = ask(
            &zone,
            "www.example.com.nyud.net.",
            RecordType::TXT,
            &published(),
        );
        assert_eq!(
            (nodata.rcode, nodata.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(nodata.soa.len(), 1);
        let RData::SOA(soa) = &nodata.soa[0].data else {
            panic!("{nodata:?}")
        };
        assert_eq!((soa.serial, soa.minimum, nodata.soa[0].ttl), (7, 20, 20));
        let nxdomain = ask(&zone, "_sip._tcp.nyud.net.", RecordType::A, &published());
        assert_eq!(nxdomain.rcode, ResponseCode::NXDomain);
        assert_eq!(nxdomain.soa.len(), 1);
        // Names above origins (a port label, the tail of an IPv4 address) exist, empty.
        for above in ["8080.nyud.net.", "4.nyud.net.", "3.4.nyud.net."] {
            let empty = ask(&zone, above, RecordType::A, &published());
            assert_eq!(
                (empty.rcode, empty.answers.len()),
                (ResponseCode::NoError, 0),
                "{above}"
            );
            assert_eq!(empty.soa.len(), 1);
        }
        let outside = ask(&zone, "www.example.com.", RecordType::A, &published());
        assert_eq!(
            (outside.rcode, outside.authoritative),
            (ResponseCode::Refused, false)
        );
        let lookalike = ask(&zone, "www.notnyud.net.", RecordType::A, &published());
        assert_eq!(lookalike.rcode, ResponseCode::Refused);
        let transfer = ask(&zone, "nyud.net.", RecordType::AXFR, &published());
        assert_eq!(transfer.rcode, ResponseCode::Refused);
    }

    #[test]
    fn no_healthy_proxy_is_servfail_and_a_missing_family_is_nodata() {
        let none = ask(
            &zone(),
            "a.example.nyud.net.",
            RecordType::A,
            &Published::default(),
        );
        assert_eq!(none.rcode, ResponseCode::ServFail);
        assert!(none.answers.is_empty());
        let mut v4_only = published();
        v4_only.proxies.retain(|proxy| proxy.address.is_ipv4());
        let aaaa = ask(&zone(), "a.example.nyud.net.", RecordType::AAAA, &v4_only);
        assert_eq!(
            (aaaa.rcode, aaaa.answers.len(), aaaa.reach),
            (ResponseCode::NoError, 0, Some(Reach::None))
        );
    }

    #[test]
    fn the_apex_names_healthy_dns_nodes_with_glue_or_the_configured_servers() {
        let zone = zone();
        let ns = ask(&zone, "nyud.net.", RecordType::NS, &published());
        assert_eq!(rdata(&ns.answers), ["ns-192-0-2-53.nyud.net."]);
        assert_eq!(rdata(&ns.additionals), ["192.0.2.53"]);
        let glue = ask(
            &zone,
            "ns-192-0-2-53.nyud.net.",
            RecordType::A,
            &published(),
        );
        assert_eq!(rdata(&glue.answers), ["192.0.2.53"]);
        let gone = ask(
            &zone,
            "ns-192-0-2-54.nyud.net.",
            RecordType::A,
            &published(),
        );
        assert_eq!((gone.rcode, gone.answers.len()), (ResponseCode::NoError, 0));
        let mut no_dns_node = published();
        no_dns_node.nameservers.clear();
        let none = ask(&zone, "nyud.net.", RecordType::NS, &no_dns_node);
        assert_eq!(
            (none.rcode, none.answers.len(), none.soa.len()),
            (ResponseCode::NoError, 0, 1)
        );
        let soa = ask(&zone, "nyud.net.", RecordType::SOA, &published());
        let RData::SOA(soa) = &soa.answers[0].data else {
            panic!()
        };
        assert_eq!(soa.mname.to_string(), "ns-192-0-2-53.nyud.net.");

        let configured = Zone::new(
            "nyud.net",
            &dns(vec![
                NameServer {
                    name: "ns1.nyud.net".into(),
                    addresses: vec!["203.0.113.1".parse().unwrap()],
                },
                NameServer {
                    name: "ns.example.org".into(),
                    addresses: vec![],
                },
            ]),
            vec![],
            1,
        )
        .unwrap();
        let ns = ask(&configured, "nyud.net.", RecordType::NS, &published());
        assert_eq!(rdata(&ns.answers), ["ns1.nyud.net.", "ns.example.org."]);
        assert_eq!(
            rdata(&ns.additionals),
            ["203.0.113.1"],
            "glue only inside the zone"
        );
    }
}
