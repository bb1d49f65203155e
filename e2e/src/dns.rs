//! Asking a Coral DNS server for a name's addresses, as `dig` would: for the tests and for
//! `coral up`.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, Query};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_server::proto::rr::{Name, RData, RecordType};

/// How long a server has to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

/// The A records `server` gives over UDP for `name`, sorted; with `client_subnet` (such as
/// `198.51.100.0/24`) the query carries it as EDNS Client Subnet. An error says why there is
/// no answer.
pub async fn a_records(
    server: SocketAddr,
    name: &str,
    client_subnet: Option<&str>,
) -> Result<Vec<IpAddr>, String> {
    let mut query = Message::query();
    let name = Name::from_str(name).map_err(|e| format!("{name}: {e}"))?;
    query.add_query(Query::query(name, RecordType::A));
    if let Some(subnet) = client_subnet {
        let subnet = ClientSubnet::from_str(subnet).map_err(|e| format!("{subnet}: {e}"))?;
        let mut edns = Edns::new();
        edns.options_mut().insert(EdnsOption::Subnet(subnet));
        query.set_edns(edns);
    }
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let socket = tokio::net::UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| e.to_string())?;
    socket
        .send_to(&bytes, server)
        .await
        .map_err(|e| format!("{server}: {e}"))?;
    let mut buffer = [0; 1232];
    let length = tokio::time::timeout(ANSWER_WAIT, socket.recv(&mut buffer))
        .await
        .map_err(|_| format!("{server} did not answer within {ANSWER_WAIT:?}"))?
        .map_err(|e| format!("{server}: {e}"))?;
    let response = Message::from_vec(&buffer[..length]).map_err(|e| e.to_string())?;
    let mut addresses: Vec<IpAddr> = response
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(address) => Some(IpAddr::V4(address.0)),
            _ => None,
        })
        .collect();
    addresses.sort();
    Ok(addresses)
}
