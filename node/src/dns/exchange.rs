//! One DNS message in, its responses out: the part UDP and TCP share. hickory-server parses
//! the query and the [`DnsHandler`] answers it through a [`ResponseHandler`] that keeps the
//! encoded response for the transport to send; a query that cannot be parsed gets FORMERR,
//! and what is not a query at all (too short for a header, or a response: reflection) gets
//! nothing.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::MessageType;
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
        Ok(request) if request.metadata.message_type == MessageType::Response => None,
        Ok(request) => {
            let collector = Collector::default();
            handler
                .handle_request::<_, TokioTime>(&request, collector.clone())
                .await;
            Some(collector.take())
        }
        Err(_) => Some(vec![format_error(&header)]),
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
    use super::*;

    #[test]
    fn a_format_error_keeps_the_id_and_opcode() {
        let query = [0xab, 0xcd, 0x28, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xff];
        let response = format_error(&query);
        assert_eq!(response, [0xab, 0xcd, 0xa8, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
