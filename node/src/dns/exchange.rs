//! One DNS message in, its responses out: the part UDP and TCP share. hickory-server parses
//! the query and the [`DnsHandler`] answers it through a [`ResponseHandler`] that keeps the
//! encoded response for the transport to send; a query that cannot be parsed gets FORMERR
//! (within response rate limiting, like any response), and what is not a query at all (too
//! short for a header, or a response: reflection) gets nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;

use super::handler::DnsHandler;

/// Length of a DNS header: shorter messages are not DNS and get no answer.
const HEADER_LEN: usize = 12;

/// The encoded responses to `message` from `peer`, or `None` when it is not a query.
pub async fn exchange(
    handler: &DnsHandler,
    message: Vec<u8>,
    peer: SocketAddr,
    protocol: Protocol,
) -> Option<Vec<Vec<u8>>> {
    // QR set: a response, which is never answered (reflection).
    if message.len() < HEADER_LEN || message[2] & 0x80 != 0 {
        return None;
    }
    let header: [u8; HEADER_LEN] = message[..HEADER_LEN].try_into().expect("length checked");
    match Request::from_bytes(message, peer, protocol) {
        Ok(request) => {
            let collector = Collector::default();
            handler
                .handle_request::<_, TokioTime>(&request, collector.clone())
                .await;
            Some(collector.take())
        }
        Err(_) if handler.admit_format_error(peer, protocol) => Some(vec![format_error(&header)]),
        Err(_) => None,
    }
}

/// A FORMERR response to an unparseable query: its ID and opcode, no sections.
fn format_error(query: &[u8]) -> Vec<u8> {
    let mut response = vec![0u8; HEADER_LEN];
    response[..2].copy_from_slice(&query[..2]);
    // QR = 1, the query's opcode, RCODE = 1 (FORMERR).
    response[2] = 0x80 | (query[2] & 0x78);
    response[3] = 1;
    response
}

/// Collects the encoded responses of one query.
#[derive(Clone, Default)]
struct Collector {
    encoded: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Collector {
    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.encoded.lock().expect("responder lock"))
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Collector {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let mut bytes = Vec::with_capacity(512);
        let info = response.destructive_emit(&mut BinEncoder::new(&mut bytes))?;
        self.encoded.lock().expect("responder lock").push(bytes);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::RwLock;
    use std::time::Duration;

    use hickory_server::proto::op::{Message, MessageType, Query, ResponseCode};
    use hickory_server::proto::rr::{Name, RData, RecordType};
    use proptest::prelude::*;

    use super::*;
    use crate::config::{DnsConfig, DnsTcpLimits, RateLimit};
    use crate::dns::answer::{Published, Zone};
    use crate::dns::metrics::DnsMetrics;
    use crate::dns::placement::ClientPlacement;
    use crate::dns::select::LiveProxy;

    const PROXIES: [&str; 2] = ["192.0.2.1", "192.0.2.2"];

    fn handler() -> DnsHandler {
        handler_limited_to(RateLimit {
            requests_per_second: u32::MAX,
            burst: u32::MAX,
        })
    }

    fn handler_limited_to(response_rate: RateLimit) -> DnsHandler {
        let dns = DnsConfig {
            port: 53,
            answer_ttl: Duration::from_secs(20),
            answers_per_query: 2,
            nameservers: vec![],
            members_file: None,
            member_services: None,
            response_rate: DnsConfig::default_response_rate(),
            tcp: DnsTcpLimits::default(),
        };
        let published = Published {
            proxies: PROXIES
                .iter()
                .map(|address| LiveProxy {
                    address: address.parse().unwrap(),
                    locality: vec![],
                    load: 0.0,
                })
                .collect(),
            nameservers: vec!["192.0.2.53".parse().unwrap()],
        };
        DnsHandler::new(
            Zone::new("nyud.net", &dns, vec![], 1).unwrap(),
            ClientPlacement::new(&[]),
            Arc::new(RwLock::new(Arc::new(published))),
            response_rate,
            vec![],
            DnsMetrics::unregistered(),
        )
    }

    fn run(handler: &DnsHandler, bytes: Vec<u8>, protocol: Protocol) -> Option<Vec<Vec<u8>>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let peer: SocketAddr = "198.51.100.7:5353".parse().unwrap();
        runtime.block_on(exchange(handler, bytes, peer, protocol))
    }

    /// What must hold of any response: it parses, it is a response, it answers the query's
    /// ID, and it names no address but the published proxies' and name server's.
    fn check_responses(query: &[u8], responses: &[Vec<u8>]) -> Result<(), TestCaseError> {
        prop_assert!(responses.len() <= 1);
        for response in responses {
            let message =
                Message::from_vec(response).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&response[..2], &query[..2]);
            prop_assert_eq!(message.metadata.message_type, MessageType::Response);
            for record in message.answers.iter().chain(&message.additionals) {
                if let RData::A(a) = &record.data {
                    let address = IpAddr::V4(a.0).to_string();
                    prop_assert!(PROXIES.contains(&address.as_str()) || address == "192.0.2.53");
                }
            }
        }
        Ok(())
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut message = Message::query();
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        message.metadata.id = 0x1234;
        message.to_vec().unwrap()
    }

    #[test]
    fn a_format_error_keeps_the_id_and_opcode() {
        let query = [0xab, 0xcd, 0x28, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff];
        let response = format_error(&query);
        assert_eq!(response, [0xab, 0xcd, 0xa8, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn responses_and_fragments_get_nothing_and_a_query_gets_one_answer() {
        let handler = handler();
        let good = query("www.example.com.nyud.net.", RecordType::A);
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(
            run(&handler, response, Protocol::Udp),
            None,
            "never answer a response"
        );
        assert_eq!(run(&handler, good[..11].to_vec(), Protocol::Udp), None);
        let answered = run(&handler, good.clone(), Protocol::Udp).unwrap();
        let message = Message::from_vec(&answered[0]).unwrap();
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert_eq!(message.answers.len(), 2);
    }

    #[test]
    fn format_errors_are_rate_limited_like_answers() {
        let handler = handler_limited_to(RateLimit {
            requests_per_second: 1,
            burst: 2,
        });
        let mut broken = query("www.example.com.nyud.net.", RecordType::A);
        broken.truncate(20);
        let sent: Vec<bool> = (0..6)
            .map(|_| run(&handler, broken.clone(), Protocol::Udp).is_some())
            .collect();
        assert!(sent[0], "the first FORMERR goes out");
        assert!(sent.iter().filter(|sent| **sent).count() <= 3, "{sent:?}");
        assert!(
            run(&handler, broken, Protocol::Tcp).is_some(),
            "TCP is not limited"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_get_a_well_formed_response_or_none(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            tcp in any::<bool>(),
        ) {
            let protocol = if tcp { Protocol::Tcp } else { Protocol::Udp };
            if let Some(responses) = run(&handler(), bytes.clone(), protocol) {
                check_responses(&bytes, &responses)?;
            }
        }

        #[test]
        fn mutated_queries_get_a_well_formed_response_or_none(
            label in "[a-z0-9]{1,20}",
            qtype in prop::sample::select(vec![RecordType::A, RecordType::AAAA, RecordType::NS, RecordType::SOA, RecordType::ANY, RecordType::TXT]),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        ) {
            let mut bytes = query(&format!("{label}.example.nyud.net."), qtype);
            for (index, byte) in edits {
                let index = index % bytes.len();
                bytes[index] = byte;
            }
            if let Some(responses) = run(&handler(), bytes.clone(), Protocol::Udp) {
                check_responses(&bytes, &responses)?;
            }
        }
    }
}
