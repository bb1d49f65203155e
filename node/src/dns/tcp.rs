//! DNS over TCP with limits: at most `maxConnections` open (more are closed on arrival) and
//! each closed after `idleTimeout` without a query. hickory-server's own TCP listener has an
//! idle timeout but no connection limit, so the framing (RFC 1035 4.2.2: a two-byte length,
//! then the message) is done here and each query goes to the same [`DnsHandler`] as UDP's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::NetError;
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::proto::op::MessageType;
use hickory_server::proto::rr::Record;
use hickory_server::proto::serialize::binary::BinEncoder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::handler::DnsHandler;
use super::metrics::DnsMetrics;
use crate::config::DnsTcpLimits;

/// Length of a DNS header: shorter messages are not DNS and get no answer.
const HEADER_LEN: usize = 12;

/// Accepts connections on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<DnsHandler>,
    limits: DnsTcpLimits,
    metrics: DnsMetrics,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            // Out of file descriptors and the like: pause rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.tcp_refused.inc();
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = connection(stream, peer, &handler, limits.idle_timeout) => {}
            }
            drop(slot);
        });
    }
}

/// Answers the queries of one connection, in order, until it closes, errs or idles.
async fn connection(mut stream: TcpStream, peer: SocketAddr, handler: &DnsHandler, idle: Duration) {
    let _ = stream.set_nodelay(true);
    loop {
        let Ok(Ok(length)) = tokio::time::timeout(idle, stream.read_u16()).await else {
            return;
        };
        let mut message = vec![0u8; usize::from(length)];
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut message)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let responses = match Request::from_bytes(message.clone(), peer, Protocol::Tcp) {
            Ok(request) if request.metadata.message_type == MessageType::Response => continue,
            Ok(request) => {
                let responder = TcpResponder::default();
                handler
                    .handle_request::<_, TokioTime>(&request, responder.clone())
                    .await;
                responder.take()
            }
            Err(_) if message.len() >= HEADER_LEN => vec![format_error(&message)],
            Err(_) => return,
        };
        for response in responses {
            let Ok(length) = u16::try_from(response.len()) else {
                return;
            };
            let mut framed = Vec::with_capacity(response.len() + 2);
            framed.extend_from_slice(&length.to_be_bytes());
            framed.extend_from_slice(&response);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
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
struct TcpResponder {
    encoded: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl TcpResponder {
    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.encoded.lock().expect("responder lock"))
    }
}

#[async_trait::async_trait]
impl ResponseHandler for TcpResponder {
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
